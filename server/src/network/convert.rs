//! Conversions between openraft's types and the peer plane's protobuf messages. Decoding checks
//! that every field a message must carry is there: a message from a peer is untrusted input.

use std::collections::{BTreeMap, BTreeSet};

use openraft::EntryPayload;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};

use crate::pb::peerpb;
use crate::{Entry, LogId, PeerNode, SnapshotMeta, StoredMembership, TypeConfig, Vote};

type Membership = openraft::Membership<u64, PeerNode>;
type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;
type TransferLeaderError = openraft::raft::TransferLeaderError<TypeConfig>;

/// A peer message that lacks a field it must carry, or holds an impossible value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed peer message: {0}")]
pub struct Malformed(pub String);

fn missing(field: &str) -> Malformed {
    Malformed(format!("{field} is missing"))
}

fn leader_id_to(id: &LeaderId) -> peerpb::LeaderId {
    peerpb::LeaderId {
        term: id.term,
        node_id: id.node_id,
    }
}

fn leader_id_from(id: Option<peerpb::LeaderId>, field: &str) -> Result<LeaderId, Malformed> {
    let id = id.ok_or_else(|| missing(field))?;
    Ok(LeaderId {
        term: id.term,
        node_id: id.node_id,
    })
}

pub fn vote_to(vote: &Vote) -> peerpb::Vote {
    peerpb::Vote {
        leader_id: Some(leader_id_to(&vote.leader_id)),
        committed: vote.committed,
    }
}

pub fn vote_from(vote: Option<peerpb::Vote>, field: &str) -> Result<Vote, Malformed> {
    let vote = vote.ok_or_else(|| missing(field))?;
    let leader_id = leader_id_from(vote.leader_id, field)?;
    Ok(if vote.committed {
        Vote::new_committed(leader_id.term, leader_id.node_id)
    } else {
        Vote::new(leader_id.term, leader_id.node_id)
    })
}

pub fn log_id_to(log_id: Option<&LogId>) -> Option<peerpb::LogId> {
    log_id.map(|l| peerpb::LogId {
        leader_id: Some(leader_id_to(&l.leader_id)),
        index: l.index,
    })
}

/// An absent log ID means "none" (the very beginning of the log).
pub fn log_id_from(log_id: Option<peerpb::LogId>, field: &str) -> Result<Option<LogId>, Malformed> {
    log_id
        .map(|l| {
            Ok(LogId {
                leader_id: leader_id_from(l.leader_id, field)?,
                index: l.index,
            })
        })
        .transpose()
}

fn membership_to(membership: &Membership) -> peerpb::Membership {
    peerpb::Membership {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|ids| peerpb::NodeIdSet {
                ids: ids.iter().copied().collect(),
            })
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| {
                (
                    *id,
                    peerpb::PeerNode {
                        peer_urls: node.peer_urls.clone(),
                    },
                )
            })
            .collect(),
    }
}

fn membership_from(membership: Option<peerpb::Membership>, field: &str) -> Result<Membership, Malformed> {
    let membership = membership.ok_or_else(|| missing(field))?;
    let configs: Vec<BTreeSet<u64>> = membership
        .configs
        .into_iter()
        .map(|set| set.ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<u64, PeerNode> = membership
        .nodes
        .into_iter()
        .map(|(id, node)| {
            (
                id,
                PeerNode {
                    peer_urls: node.peer_urls,
                },
            )
        })
        .collect();
    // Every voter must be a node: openraft checks it, and the error names the problem.
    Membership::new(configs, nodes).map_err(|e| Malformed(format!("{field}: {e}")))
}

/// Moves an entry into its message: a leader sends each entry once, so its payload is not copied.
fn entry_to(entry: Entry) -> peerpb::Entry {
    use peerpb::entry::Payload;
    peerpb::Entry {
        log_id: log_id_to(Some(&entry.log_id)),
        payload: Some(match entry.payload {
            EntryPayload::Blank => Payload::Blank(peerpb::Blank {}),
            EntryPayload::Normal(request) => Payload::Normal(request),
            EntryPayload::Membership(membership) => Payload::Membership(membership_to(&membership)),
        }),
    }
}

fn entry_from(entry: peerpb::Entry) -> Result<Entry, Malformed> {
    use peerpb::entry::Payload;
    let log_id = log_id_from(entry.log_id, "entry log ID")?.ok_or_else(|| missing("entry log ID"))?;
    let payload = match entry.payload.ok_or_else(|| missing("entry payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Normal(request) => EntryPayload::Normal(request),
        Payload::Membership(membership) => {
            EntryPayload::Membership(membership_from(Some(membership), "entry membership")?)
        }
    };
    Ok(Entry { log_id, payload })
}

pub fn append_request_to(rpc: AppendEntriesRequest<TypeConfig>) -> peerpb::AppendEntriesRequest {
    peerpb::AppendEntriesRequest {
        vote: Some(vote_to(&rpc.vote)),
        prev_log_id: log_id_to(rpc.prev_log_id.as_ref()),
        leader_commit: log_id_to(rpc.leader_commit.as_ref()),
        entries: rpc.entries.into_iter().map(entry_to).collect(),
    }
}

pub fn append_request_from(
    rpc: peerpb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, Malformed> {
    Ok(AppendEntriesRequest {
        vote: vote_from(rpc.vote, "vote")?,
        prev_log_id: log_id_from(rpc.prev_log_id, "prev_log_id")?,
        entries: rpc
            .entries
            .into_iter()
            .map(entry_from)
            .collect::<Result<_, _>>()?,
        leader_commit: log_id_from(rpc.leader_commit, "leader_commit")?,
    })
}

pub fn append_reply_to(response: &AppendEntriesResponse<TypeConfig>) -> peerpb::AppendEntriesReply {
    use peerpb::append_entries_reply::Reply;
    let reply = match response {
        AppendEntriesResponse::Success => Reply::Success(peerpb::Blank {}),
        AppendEntriesResponse::PartialSuccess(matched) => Reply::PartialSuccess(peerpb::PartialSuccess {
            matched: log_id_to(matched.as_ref()),
        }),
        AppendEntriesResponse::Conflict => Reply::Conflict(peerpb::Blank {}),
        AppendEntriesResponse::HigherVote(vote) => Reply::HigherVote(vote_to(vote)),
    };
    peerpb::AppendEntriesReply { reply: Some(reply) }
}

pub fn append_reply_from(
    reply: peerpb::AppendEntriesReply,
) -> Result<AppendEntriesResponse<TypeConfig>, Malformed> {
    use peerpb::append_entries_reply::Reply;
    Ok(
        match reply.reply.ok_or_else(|| missing("append entries reply"))? {
            Reply::Success(_) => AppendEntriesResponse::Success,
            Reply::PartialSuccess(partial) => {
                AppendEntriesResponse::PartialSuccess(log_id_from(partial.matched, "matched")?)
            }
            Reply::Conflict(_) => AppendEntriesResponse::Conflict,
            Reply::HigherVote(vote) => {
                AppendEntriesResponse::HigherVote(vote_from(Some(vote), "higher vote")?)
            }
        },
    )
}

pub fn vote_request_to(rpc: &VoteRequest<TypeConfig>) -> peerpb::VoteRequest {
    peerpb::VoteRequest {
        vote: Some(vote_to(&rpc.vote)),
        last_log_id: log_id_to(rpc.last_log_id.as_ref()),
        leadership_transfer: rpc.leadership_transfer,
    }
}

pub fn vote_request_from(rpc: peerpb::VoteRequest) -> Result<VoteRequest<TypeConfig>, Malformed> {
    let mut request = VoteRequest::new(
        vote_from(rpc.vote, "vote")?,
        log_id_from(rpc.last_log_id, "last_log_id")?,
    );
    request.leadership_transfer = rpc.leadership_transfer;
    Ok(request)
}

pub fn vote_reply_to(response: &VoteResponse<TypeConfig>) -> peerpb::VoteReply {
    peerpb::VoteReply {
        vote: Some(vote_to(&response.vote)),
        vote_granted: response.vote_granted,
        last_log_id: log_id_to(response.last_log_id.as_ref()),
    }
}

pub fn vote_reply_from(reply: peerpb::VoteReply) -> Result<VoteResponse<TypeConfig>, Malformed> {
    Ok(VoteResponse {
        vote: vote_from(reply.vote, "vote")?,
        vote_granted: reply.vote_granted,
        last_log_id: log_id_from(reply.last_log_id, "last_log_id")?,
    })
}

pub fn snapshot_meta_to(meta: &SnapshotMeta) -> peerpb::SnapshotMeta {
    peerpb::SnapshotMeta {
        last_log_id: log_id_to(meta.last_log_id.as_ref()),
        last_membership_log_id: log_id_to(meta.last_membership.log_id().as_ref()),
        last_membership: Some(membership_to(meta.last_membership.membership())),
    }
}

pub fn snapshot_meta_from(meta: Option<peerpb::SnapshotMeta>) -> Result<SnapshotMeta, Malformed> {
    let meta = meta.ok_or_else(|| missing("snapshot metadata"))?;
    Ok(SnapshotMeta {
        last_log_id: log_id_from(meta.last_log_id, "snapshot last_log_id")?,
        last_membership: StoredMembership::new(
            log_id_from(meta.last_membership_log_id, "snapshot membership log ID")?,
            membership_from(meta.last_membership, "snapshot membership")?,
        ),
    })
}

pub fn snapshot_reply_to(response: &SnapshotResponse<TypeConfig>) -> peerpb::SnapshotReply {
    peerpb::SnapshotReply {
        vote: Some(vote_to(&response.vote)),
    }
}

pub fn snapshot_reply_from(reply: peerpb::SnapshotReply) -> Result<SnapshotResponse<TypeConfig>, Malformed> {
    Ok(SnapshotResponse {
        vote: vote_from(reply.vote, "vote")?,
    })
}

pub fn transfer_request_to(request: &TransferLeaderRequest<TypeConfig>) -> peerpb::TransferLeaderRequest {
    peerpb::TransferLeaderRequest {
        from_leader: Some(vote_to(request.from_leader())),
        to_node_id: *request.to_node_id(),
        last_log_id: log_id_to(request.last_log_id()),
    }
}

pub fn transfer_request_from(
    request: peerpb::TransferLeaderRequest,
) -> Result<TransferLeaderRequest<TypeConfig>, Malformed> {
    Ok(TransferLeaderRequest::new(
        vote_from(request.from_leader, "from_leader")?,
        request.to_node_id,
        log_id_from(request.last_log_id, "last_log_id")?,
    ))
}

pub fn transfer_reply_to(response: &TransferLeaderResponse<TypeConfig>) -> peerpb::TransferLeaderReply {
    use peerpb::transfer_leader_reply::Reply;
    let reply = match response {
        Ok(()) => Reply::Accepted(peerpb::Blank {}),
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            Reply::VoteChanged(peerpb::VoteChanged {
                expected: Some(vote_to(expected)),
                actual: Some(vote_to(actual)),
            })
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
            Reply::LogNotFlushed(peerpb::LogNotFlushed {
                expected: log_id_to(expected.as_ref()),
                actual: log_id_to(actual.as_ref()),
            })
        }
    };
    peerpb::TransferLeaderReply { reply: Some(reply) }
}

pub fn transfer_reply_from(
    reply: peerpb::TransferLeaderReply,
) -> Result<TransferLeaderResponse<TypeConfig>, Malformed> {
    use peerpb::transfer_leader_reply::Reply;
    Ok(
        match reply.reply.ok_or_else(|| missing("transfer leader reply"))? {
            Reply::Accepted(_) => Ok(()),
            Reply::VoteChanged(changed) => Err(TransferLeaderError::VoteChanged {
                expected: vote_from(changed.expected, "expected vote")?,
                actual: vote_from(changed.actual, "actual vote")?,
            }),
            Reply::LogNotFlushed(flushed) => Err(TransferLeaderError::LogNotFlushed {
                expected: log_id_from(flushed.expected, "expected log ID")?,
                actual: log_id_from(flushed.actual, "actual log ID")?,
            }),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::cairnpb::{RaftRequest, raft_request};
    use crate::pb::etcdserverpb::PutRequest;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId {
            leader_id: LeaderId { term, node_id: node },
            index,
        }
    }

    fn membership() -> Membership {
        let nodes = BTreeMap::from([
            (
                1,
                PeerNode {
                    peer_urls: vec!["http://a:2380".into()],
                },
            ),
            (
                2,
                PeerNode {
                    peer_urls: vec!["http://b:2380".into()],
                },
            ),
            (
                3,
                PeerNode {
                    peer_urls: vec!["http://c:2380".into()],
                },
            ),
        ]);
        Membership::new(vec![BTreeSet::from([1, 2]), BTreeSet::from([1, 2, 3])], nodes).unwrap()
    }

    /// An append with an entry of every kind, and a commit point.
    fn sample_append() -> AppendEntriesRequest<TypeConfig> {
        let put = RaftRequest {
            request: Some(raft_request::Request::Put(PutRequest {
                key: b"key".to_vec(),
                value: b"value".to_vec(),
                lease: 7,
                prev_kv: true,
                ..Default::default()
            })),
            caller: None,
        };
        AppendEntriesRequest {
            vote: Vote::new_committed(4, 2),
            prev_log_id: Some(log_id(3, 1, 9)),
            entries: vec![
                Entry {
                    log_id: log_id(4, 2, 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(4, 2, 11),
                    payload: EntryPayload::Normal(put),
                },
                Entry {
                    log_id: log_id(4, 2, 12),
                    payload: EntryPayload::Membership(membership()),
                },
            ],
            leader_commit: Some(log_id(4, 2, 10)),
        }
    }

    #[test]
    fn append_entries_survive_the_round_trip() {
        let rpc = sample_append();
        let back = append_request_from(append_request_to(rpc.clone())).unwrap();
        assert_eq!(format!("{back:?}"), format!("{rpc:?}"));
        for response in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::PartialSuccess(Some(log_id(1, 1, 1))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(9, 3)),
        ] {
            assert_eq!(append_reply_from(append_reply_to(&response)).unwrap(), response);
        }
    }

    #[test]
    fn votes_snapshots_and_transfers_survive_the_round_trip() {
        let mut rpc = VoteRequest::<TypeConfig>::new(Vote::new(5, 3), Some(log_id(4, 1, 20)));
        rpc.leadership_transfer = true;
        assert_eq!(vote_request_from(vote_request_to(&rpc)).unwrap(), rpc);
        let reply = VoteResponse::<TypeConfig>::new(Vote::new_committed(5, 3), None, true);
        assert_eq!(vote_reply_from(vote_reply_to(&reply)).unwrap(), reply);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 1, 100)),
            last_membership: StoredMembership::new(Some(log_id(1, 1, 3)), membership()),
        };
        assert_eq!(snapshot_meta_from(Some(snapshot_meta_to(&meta))).unwrap(), meta);
        let transfer = TransferLeaderRequest::<TypeConfig>::new(Vote::new_committed(2, 1), 3, None);
        let back = transfer_request_from(transfer_request_to(&transfer)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{transfer:?}"));
        let refused: TransferLeaderResponse<TypeConfig> = Err(TransferLeaderError::LogNotFlushed {
            expected: Some(log_id(2, 1, 7)),
            actual: None,
        });
        assert_eq!(transfer_reply_from(transfer_reply_to(&refused)).unwrap(), refused);
    }

    /// Peer messages of protocol version 1 as this release's members put them on the wire, kept
    /// as bytes in tests/fixtures/peer-v1: every later build must read each to the same value and
    /// write the same bytes, so members one release apart understand each other: a renumbered or
    /// retyped field fails here. What an older member could not act on comes with a new protocol
    /// version (`protocol::MAX_VERSION`) and fixtures of its own; these stay. Missing files are
    /// written with `CAIRN_WRITE_PEER_FIXTURES=1`; existing ones never are.
    #[test]
    fn version_1_peer_messages_read_and_write_as_their_fixtures() {
        use prost::Message;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peer-v1");
        let check = |name: &str, bytes: Vec<u8>| -> Vec<u8> {
            let path = dir.join(name);
            if !path.exists() && std::env::var_os("CAIRN_WRITE_PEER_FIXTURES").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let kept = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                bytes, kept,
                "{name}: this build writes other bytes than version 1"
            );
            kept
        };
        let append = sample_append();
        let kept = check(
            "append-entries-request.bin",
            append_request_to(append.clone()).encode_to_vec(),
        );
        let read = append_request_from(peerpb::AppendEntriesRequest::decode(&kept[..]).unwrap());
        assert_eq!(format!("{:?}", read.unwrap()), format!("{append:?}"));

        let partial = AppendEntriesResponse::<TypeConfig>::PartialSuccess(Some(log_id(4, 2, 11)));
        let kept = check(
            "append-entries-reply.bin",
            append_reply_to(&partial).encode_to_vec(),
        );
        let read = append_reply_from(peerpb::AppendEntriesReply::decode(&kept[..]).unwrap());
        assert_eq!(read.unwrap(), partial);

        let mut vote = VoteRequest::<TypeConfig>::new(Vote::new(5, 3), Some(log_id(4, 1, 20)));
        vote.leadership_transfer = true;
        let kept = check("vote-request.bin", vote_request_to(&vote).encode_to_vec());
        let read = vote_request_from(peerpb::VoteRequest::decode(&kept[..]).unwrap());
        assert_eq!(read.unwrap(), vote);

        let granted =
            VoteResponse::<TypeConfig>::new(Vote::new_committed(5, 3), Some(log_id(4, 1, 20)), true);
        let kept = check("vote-reply.bin", vote_reply_to(&granted).encode_to_vec());
        let read = vote_reply_from(peerpb::VoteReply::decode(&kept[..]).unwrap());
        assert_eq!(read.unwrap(), granted);

        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 1, 100)),
            last_membership: StoredMembership::new(Some(log_id(1, 1, 3)), membership()),
        };
        let first_chunk = peerpb::SnapshotChunk {
            vote: Some(vote_to(&Vote::new_committed(2, 1))),
            meta: Some(snapshot_meta_to(&meta)),
            data: b"snapshot bytes".to_vec().into(),
            done: false,
        };
        let kept = check("snapshot-chunk.bin", first_chunk.encode_to_vec());
        let read = peerpb::SnapshotChunk::decode(&kept[..]).unwrap();
        assert_eq!(snapshot_meta_from(read.meta).unwrap(), meta);
        assert_eq!(vote_from(read.vote, "vote").unwrap(), Vote::new_committed(2, 1));
        assert_eq!((&read.data[..], read.done), (&b"snapshot bytes"[..], false));

        let transfer =
            TransferLeaderRequest::<TypeConfig>::new(Vote::new_committed(2, 1), 3, Some(log_id(2, 1, 8)));
        let kept = check(
            "transfer-leader-request.bin",
            transfer_request_to(&transfer).encode_to_vec(),
        );
        let read = transfer_request_from(peerpb::TransferLeaderRequest::decode(&kept[..]).unwrap());
        assert_eq!(format!("{:?}", read.unwrap()), format!("{transfer:?}"));

        let hello = peerpb::HelloRequest {
            min_version: 1,
            max_version: 1,
        };
        let kept = check("hello-request.bin", hello.encode_to_vec());
        assert_eq!(peerpb::HelloRequest::decode(&kept[..]).unwrap(), hello);

        let forward = peerpb::ForwardRequest {
            request: Some(peerpb::forward_request::Request::Put(PutRequest {
                key: b"key".to_vec(),
                value: b"value".to_vec(),
                ..Default::default()
            })),
            caller: None,
        };
        let kept = check("forward-put-request.bin", forward.encode_to_vec());
        assert_eq!(peerpb::ForwardRequest::decode(&kept[..]).unwrap(), forward);
    }

    #[test]
    fn messages_missing_a_field_are_refused_by_name() {
        let error = append_request_from(peerpb::AppendEntriesRequest::default()).unwrap_err();
        assert_eq!(error.to_string(), "malformed peer message: vote is missing");
        let entry_without_payload = peerpb::AppendEntriesRequest {
            vote: Some(vote_to(&Vote::new(1, 1))),
            entries: vec![peerpb::Entry {
                log_id: log_id_to(Some(&log_id(1, 1, 1))),
                payload: None,
            }],
            ..Default::default()
        };
        let error = append_request_from(entry_without_payload).unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed peer message: entry payload is missing"
        );
        // A voter that is not a node is an impossible membership.
        let bad = peerpb::Membership {
            configs: vec![peerpb::NodeIdSet { ids: vec![7] }],
            nodes: Default::default(),
        };
        assert!(membership_from(Some(bad), "membership").is_err());
    }
}
