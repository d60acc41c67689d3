//! Rolling members onto a new pod template (a version, image or setting change). The StatefulSet
//! leaves its pods alone (`OnDelete`); the operator restarts them one at a time, only while every
//! member is healthy and its pod Ready, waiting after each for it to rejoin and catch up,
//! followers first and the leader last, once leadership has moved to a member already on the new
//! template. So a roll never costs more than the one member being restarted, and at most one
//! election.

use std::collections::BTreeMap;

use crate::membership::{Placed, PodSeen, Step};

/// The step that rolls the next member, with membership as the spec asks (`placed` are all the
/// members, in ordinal order). `Settled` once every member's pod is on the current template.
pub(crate) fn next_roll(placed: &[Placed], pods: &BTreeMap<String, PodSeen>) -> Step {
    let outdated: Vec<&Placed> = placed
        .iter()
        .filter(|p| pods.get(&p.name).is_some_and(|pod| pod.outdated))
        .collect();
    if outdated.is_empty() {
        return Step::Settled;
    }
    if let Some(away) = placed
        .iter()
        .find(|p| pods.get(&p.name).is_none_or(|pod| pod.terminating))
    {
        return Step::Wait(format!("the roll waits for {}'s pod to come back", away.name));
    }
    // Ready too: a member answers before its pod's readiness probe has passed, and until then
    // clients of the Service cannot reach it.
    let unready = |p: &&Placed| pods.get(&p.name).is_some_and(|pod| pod.unready_seconds.is_some());
    if let Some(sick) = placed.iter().find(|p| !p.status.healthy || unready(p)) {
        let rolled = !outdated.iter().any(|p| p.ordinal == sick.ordinal);
        return Step::Wait(if rolled {
            format!("waiting for {} to rejoin and catch up", sick.name)
        } else {
            format!(
                "{} is not healthy; the roll waits until every member is",
                sick.name
            )
        });
    }
    // Followers first, from the highest ordinal down as a StatefulSet would.
    if let Some(follower) = outdated.iter().rev().find(|p| !p.status.is_leader) {
        return Step::Roll {
            member: follower.name.clone(),
        };
    }
    let leader = outdated[0];
    let heir = placed
        .iter()
        .find(|p| p.ordinal != leader.ordinal && !p.status.is_learner);
    match heir {
        Some(heir) => Step::MoveLeader {
            from: leader.name.clone(),
            to: heir.name.clone(),
            to_id: heir.id,
            before: "restarts on the new pod template",
        },
        // A cluster of one has no one to hand over to: it is unavailable while it restarts.
        None => Step::Roll {
            member: leader.name.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MemberStatus;

    /// Members 0..statuses.len(), each described by a word: `leader`, `follower`, `sick` or
    /// `learner`.
    fn statuses(words: &[&str]) -> Vec<MemberStatus> {
        words
            .iter()
            .map(|word| MemberStatus {
                is_leader: *word == "leader",
                is_learner: *word == "learner",
                healthy: *word != "sick",
                ..MemberStatus::default()
            })
            .collect()
    }

    fn placed(statuses: &[MemberStatus]) -> Vec<Placed<'_>> {
        statuses
            .iter()
            .enumerate()
            .map(|(o, status)| Placed {
                ordinal: o as i32,
                name: format!("kv-{o}"),
                id: 0x10 + o as u64,
                status,
            })
            .collect()
    }

    /// Pods of members 0..n: `old` on the previous template, `new` on the current, `gone`
    /// missing, `ending` terminating, `starting` on the current template but not Ready yet.
    fn pods(words: &[&str]) -> BTreeMap<String, PodSeen> {
        words
            .iter()
            .enumerate()
            .filter(|(_, word)| **word != "gone")
            .map(|(o, word)| {
                let seen = PodSeen {
                    outdated: *word == "old",
                    terminating: *word == "ending",
                    unready_seconds: (*word == "starting").then_some(1),
                    ..PodSeen::default()
                };
                (format!("kv-{o}"), seen)
            })
            .collect()
    }

    fn roll(members: &[&str], pod_words: &[&str]) -> Step {
        let statuses = statuses(members);
        next_roll(&placed(&statuses), &pods(pod_words))
    }

    #[test]
    fn followers_roll_first_from_the_top_and_the_leader_last_after_leadership_moves() {
        let members = ["follower", "leader", "follower"];
        assert_eq!(
            roll(&members, &["old", "old", "old"]),
            Step::Roll {
                member: "kv-2".into()
            }
        );
        assert_eq!(
            roll(&members, &["old", "old", "new"]),
            Step::Roll {
                member: "kv-0".into()
            }
        );
        assert_eq!(
            roll(&members, &["new", "old", "new"]),
            Step::MoveLeader {
                from: "kv-1".into(),
                to: "kv-0".into(),
                to_id: 0x10,
                before: "restarts on the new pod template",
            }
        );
        // Once it follows, the old leader is an outdated follower like any other.
        assert_eq!(
            roll(&["leader", "follower", "follower"], &["new", "old", "new"]),
            Step::Roll {
                member: "kv-1".into()
            }
        );
        assert_eq!(roll(&members, &["new", "new", "new"]), Step::Settled);
    }

    #[test]
    fn each_member_must_be_back_and_caught_up_before_the_next_restarts() {
        let members = ["follower", "leader", "follower"];
        let away = Step::Wait("the roll waits for kv-2's pod to come back".into());
        assert_eq!(roll(&members, &["old", "old", "ending"]), away);
        assert_eq!(roll(&members, &["old", "old", "gone"]), away);
        let rejoining = Step::Wait("waiting for kv-2 to rejoin and catch up".into());
        assert_eq!(
            roll(&["follower", "leader", "sick"], &["old", "old", "new"]),
            rejoining
        );
        // Answering is not enough: its pod must be Ready for the Service to send it clients.
        assert_eq!(roll(&members, &["old", "old", "starting"]), rejoining);
    }

    #[test]
    fn an_unhealthy_member_holds_the_roll() {
        assert_eq!(
            roll(&["sick", "leader", "follower"], &["old", "old", "old"]),
            Step::Wait("kv-0 is not healthy; the roll waits until every member is".into())
        );
    }

    #[test]
    fn a_cluster_of_one_restarts_its_only_member() {
        assert_eq!(
            roll(&["leader"], &["old"]),
            Step::Roll {
                member: "kv-0".into()
            }
        );
    }

    #[test]
    fn leadership_never_moves_to_a_learner() {
        assert_eq!(
            roll(&["learner", "leader", "follower"], &["new", "old", "new"]),
            Step::MoveLeader {
                from: "kv-1".into(),
                to: "kv-2".into(),
                to_id: 0x12,
                before: "restarts on the new pod template",
            }
        );
    }
}
