//! `--force-new-cluster`: the vote and the membership entry that make one member the only voter
//! of its cluster, keeping every entry it has. Written to the log before Raft starts, they make
//! the member elect itself in a new term and commit everything in its log, as etcd's flag does.

use std::collections::{BTreeMap, BTreeSet};

use openraft::Membership;
use openraft::entry::RaftEntry;
use openraft::impls::leader_id_adv::LeaderId;

use crate::{Entry, LogId, PeerNode, Vote};

/// What the log holds when the member starts.
pub struct LogTail<'a> {
    /// The newest entry's ID, in the log or purged into a snapshot.
    pub last_log_id: Option<LogId>,
    pub vote: Option<Vote>,
    /// The newest membership, from the log or else from the state machine.
    pub membership: &'a Membership<u64, PeerNode>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForceError {
    #[error("--force-new-cluster needs this member's data, but its log is empty")]
    NoData,
    #[error("--force-new-cluster: member {0:x} is not in its cluster's membership")]
    NotMember(u64),
}

/// The vote and entry to write, or None when `member` is its cluster's only member already.
pub fn sole_member(member: u64, tail: &LogTail) -> Result<Option<(Vote, Entry)>, ForceError> {
    let last = tail.last_log_id.ok_or(ForceError::NoData)?;
    let node = tail
        .membership
        .get_node(&member)
        .cloned()
        .ok_or(ForceError::NotMember(member))?;
    let alone = tail.membership.voter_ids().eq([member]) && tail.membership.nodes().count() == 1;
    if alone {
        return Ok(None);
    }
    let voted = tail.vote.map_or(0, |v| v.leader_id().term);
    let term = voted.max(last.leader_id.term) + 1;
    let membership = Membership::new(vec![BTreeSet::from([member])], BTreeMap::from([(member, node)]))
        .expect("one voter with its node is a valid membership");
    let log_id = LogId::new(
        LeaderId {
            term,
            node_id: member,
        },
        last.index + 1,
    );
    Ok(Some((
        Vote::new(term, member),
        Entry::new_membership(log_id, membership),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(url: &str) -> PeerNode {
        PeerNode {
            peer_urls: vec![url.to_owned()],
        }
    }

    fn three() -> Membership<u64, PeerNode> {
        let nodes = BTreeMap::from([
            (1, node("http://a:2380")),
            (2, node("http://b:2380")),
            (3, node("http://c:2380")),
        ]);
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).unwrap()
    }

    #[test]
    fn the_member_alone_in_a_newer_term_after_its_last_entry() {
        let membership = three();
        let tail = LogTail {
            last_log_id: Some(LogId::new(LeaderId { term: 4, node_id: 2 }, 70)),
            vote: Some(Vote::new_committed(6, 3)),
            membership: &membership,
        };
        let (vote, entry) = sole_member(1, &tail).unwrap().expect("a change");
        assert_eq!(vote, Vote::new(7, 1));
        assert_eq!(entry.log_id, LogId::new(LeaderId { term: 7, node_id: 1 }, 71));
        let forced = entry.get_membership().expect("a membership entry");
        assert_eq!(forced.voter_ids().collect::<Vec<_>>(), vec![1]);
        assert_eq!(forced.get_node(&1), Some(&node("http://a:2380")));
        assert_eq!(forced.nodes().count(), 1);
    }

    #[test]
    fn nothing_to_force_without_data_or_when_alone_and_strangers_are_refused() {
        let membership = three();
        let empty = LogTail {
            last_log_id: None,
            vote: None,
            membership: &membership,
        };
        assert_eq!(sole_member(1, &empty).err(), Some(ForceError::NoData));
        let some = LogTail {
            last_log_id: Some(LogId::new(LeaderId { term: 1, node_id: 1 }, 3)),
            ..empty
        };
        assert_eq!(sole_member(9, &some).err(), Some(ForceError::NotMember(9)));
        let alone = Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, node("http://a:2380"))]),
        )
        .unwrap();
        let tail = LogTail {
            membership: &alone,
            ..some
        };
        assert_eq!(sole_member(1, &tail), Ok(None));
    }
}
