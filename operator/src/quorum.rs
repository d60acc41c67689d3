//! Recovering from the loss of a quorum, decided purely. When fewer than a majority of the voters
//! answer and none leads, status says which member would carry on (the one that answers with the
//! most applied entries) and what could be lost. Once recovery is allowed (`Automatic` after the
//! grace period while no other member's pod is Ready, or the `cairn.dev/recover-quorum`
//! annotation), that member's bootstrap file gets `force-new-cluster` and its pod is restarted:
//! it comes back as a cluster of one with its data. Every other member is marked for
//! replacement, so once the survivor leads alone, they are replaced by empty members one at a
//! time, as after any other failure.

use std::collections::BTreeMap;

use crate::build::names::Names;
use crate::crd::QuorumLossPolicy;
use crate::membership::{ClaimSeen, PodSeen};
use crate::observe::ClusterView;

/// The annotation that allows a manual recovery: `true`, or the name of the member to keep.
pub const ANNOTATION: &str = "cairn.dev/recover-quorum";
/// The bootstrap ConfigMap key naming the survivor while a recovery is under way.
pub const RECOVERY_KEY: &str = "quorum-recovery";
/// The line that makes a member's bootstrap file force a new cluster.
pub const FORCE_LINE: &str = "force-new-cluster: true\n";

/// What the decision is made from.
pub struct Lost<'a> {
    pub names: &'a Names,
    pub view: &'a ClusterView,
    pub policy: QuorumLossPolicy,
    /// Seconds without a quorum before `Automatic` recovery.
    pub grace: u64,
    /// How long the quorum has been lost, as far as status tells.
    pub lost_for: Option<u64>,
    /// The annotation's value, if the KVCluster has it.
    pub approval: Option<&'a str>,
    /// Each member's applied index when it was last seen (the previous status).
    pub last_seen: &'a BTreeMap<String, u64>,
    pub claims: &'a BTreeMap<String, ClaimSeen>,
    /// The member pods, as the kubelets report them (a path to the members that does not go
    /// through this operator's network).
    pub pods: &'a BTreeMap<String, PodSeen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The quorum is not lost.
    NotLost,
    /// It is lost; recovery waits, for the reason given (which says what it would do).
    Wait(String),
    /// Recover now: `survivor` carries on; `others` (member, claim UID) are replaced.
    Recover {
        survivor: String,
        others: Vec<(String, Option<String>)>,
        why: String,
    },
}

pub fn decide(lost: &Lost) -> Decision {
    let view = lost.view;
    let voters: Vec<_> = view.members.iter().filter(|m| !m.is_learner).collect();
    // A leader cut off from the others may still say it leads: what counts is who answers.
    let answering: Vec<_> = voters.iter().filter(|m| m.healthy).collect();
    if !has_lost_quorum(view) {
        return Decision::NotLost;
    }
    let heading = format!(
        "quorum lost: {} of {} voters answer",
        answering.len(),
        voters.len()
    );
    let name_of = |m: &crate::crd::MemberStatus| {
        lost.names
            .ordinal_of_peer_url(&m.peer_url)
            .map(|o| lost.names.member(o))
    };
    let named = lost.approval.filter(|a| *a != "true");
    let chosen = match named {
        Some(wanted) => answering.iter().find(|m| name_of(m).as_deref() == Some(wanted)),
        None => answering
            .iter()
            .max_by_key(|m| (m.applied_index, std::cmp::Reverse(name_of(m)))),
    };
    let Some(survivor) = chosen.and_then(|m| Some((name_of(m)?, m.applied_index.unwrap_or(0)))) else {
        return Decision::Wait(match named {
            Some(wanted) => format!("{heading}; {wanted}, named by {ANNOTATION}, does not answer"),
            None => format!("{heading}; no member answers to carry on from"),
        });
    };
    let (survivor, applied) = survivor;
    let others: Vec<String> = voters
        .iter()
        .chain(
            view.members
                .iter()
                .filter(|m| m.is_learner)
                .collect::<Vec<_>>()
                .iter(),
        )
        .filter_map(|m| name_of(m))
        .filter(|name| *name != survivor)
        .collect();
    let ahead: Vec<String> = others
        .iter()
        .filter_map(|name| {
            let seen = *lost.last_seen.get(name)?;
            (seen > applied).then(|| format!("{name} had applied {seen}"))
        })
        .collect();
    let risk = if ahead.is_empty() {
        "no member was seen further ahead".to_owned()
    } else {
        format!(
            "writes after index {applied} could be lost ({})",
            ahead.join(", ")
        )
    };
    // Their readiness probe passes only with a leader and a quorum read: a member whose pod is
    // Ready may be serving a majority this operator cannot reach (a partition), and forcing a
    // second cluster then would split the data in two.
    let ready: Vec<&str> = others
        .iter()
        .filter(|name| {
            lost.pods
                .get(*name)
                .is_some_and(|pod| !pod.terminating && pod.unready_seconds.is_none())
        })
        .map(String::as_str)
        .collect();
    let mut plan = format!(
        "{heading}. Recovery keeps {survivor} (applied index {applied}) as a cluster of one with its \
         data and replaces {} with empty members; {risk}",
        others.join(", ")
    );
    if !ready.is_empty() {
        plan.push_str(&format!(
            ". But the pods of {} are Ready: they may still serve a quorum this operator cannot \
             reach, and recovering would make two clusters",
            ready.join(", ")
        ));
    }
    let allowed = match lost.policy {
        QuorumLossPolicy::Automatic => {
            let lost_for = lost.lost_for.unwrap_or(0);
            if lost_for < lost.grace {
                return Decision::Wait(format!(
                    "{plan}. Automatic recovery in {}s",
                    lost.grace - lost_for
                ));
            }
            if !ready.is_empty() && lost.approval.is_none() {
                return Decision::Wait(format!(
                    "{plan}. Automatic recovery waits; annotate the KVCluster {ANNOTATION}=true \
                     to recover anyway"
                ));
            }
            true
        }
        QuorumLossPolicy::Manual => lost.approval.is_some(),
    };
    if !allowed {
        return Decision::Wait(format!(
            "{plan}. Annotate the KVCluster {ANNOTATION}=true (or =<member>) to recover"
        ));
    }
    let others = others
        .into_iter()
        .map(|name| {
            let ordinal = lost.names.ordinal_of_member(&name);
            let uid = ordinal
                .and_then(|o| lost.claims.get(&lost.names.claim(o)))
                .and_then(|claim| claim.uid.clone());
            (name, uid)
        })
        .collect();
    Decision::Recover {
        survivor,
        others,
        why: plan,
    }
}

/// Whether fewer than a majority of the voters answer.
pub fn has_lost_quorum(view: &ClusterView) -> bool {
    let voters = view.members.iter().filter(|m| !m.is_learner);
    let (all, answering) = voters.fold((0, 0), |(all, up), m| (all + 1, up + i32::from(m.healthy)));
    all > 0 && answering < crate::build::pdb::quorum(all)
}

/// Whether a recovery of `survivor` has come through: it leads a cluster of itself alone.
pub fn recovered(names: &Names, view: &ClusterView, survivor: &str) -> bool {
    let alone = match view.members.as_slice() {
        [only] => names
            .ordinal_of_peer_url(&only.peer_url)
            .is_some_and(|o| names.member(o) == survivor),
        _ => false,
    };
    view.list_from_leader && alone && view.leader.as_deref() == Some(survivor)
}

/// The survivor's bootstrap file with or without the force line.
pub fn with_force(file: &str, force: bool) -> String {
    let without = file.replace(FORCE_LINE, "");
    if force {
        format!("{without}{FORCE_LINE}")
    } else {
        without
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MemberStatus;

    fn names() -> Names {
        Names::new("kv", "prod")
    }

    fn member(ordinal: i32, answering: bool, applied: u64) -> MemberStatus {
        let names = names();
        let name = names.member(ordinal);
        MemberStatus {
            peer_url: names.peer_url(&name),
            name,
            id: format!("{ordinal:x}"),
            healthy: answering,
            applied_index: answering.then_some(applied),
            ..MemberStatus::default()
        }
    }

    fn decide_with(
        members: Vec<MemberStatus>,
        policy: QuorumLossPolicy,
        lost_for: u64,
        approval: Option<&str>,
    ) -> Decision {
        decide_with_pods(members, policy, lost_for, approval, &BTreeMap::new())
    }

    fn decide_with_pods(
        members: Vec<MemberStatus>,
        policy: QuorumLossPolicy,
        lost_for: u64,
        approval: Option<&str>,
        pods: &BTreeMap<String, PodSeen>,
    ) -> Decision {
        let names = names();
        let view = ClusterView {
            members,
            ..ClusterView::default()
        };
        let last_seen = BTreeMap::from([("kv-1".to_owned(), 120), ("kv-2".to_owned(), 90)]);
        let claims = BTreeMap::from([(
            "data-kv-1".to_owned(),
            ClaimSeen {
                uid: Some("c1".into()),
                ..ClaimSeen::default()
            },
        )]);
        decide(&Lost {
            names: &names,
            view: &view,
            policy,
            grace: 60,
            lost_for: Some(lost_for),
            approval,
            last_seen: &last_seen,
            claims: &claims,
            pods,
        })
    }

    fn lost_two_of_three() -> Vec<MemberStatus> {
        vec![member(0, true, 100), member(1, false, 0), member(2, false, 0)]
    }

    #[test]
    fn manual_recovery_says_what_it_would_do_and_waits_for_the_annotation() {
        let waiting = decide_with(lost_two_of_three(), QuorumLossPolicy::Manual, 999, None);
        assert_eq!(
            waiting,
            Decision::Wait(
                "quorum lost: 1 of 3 voters answer. Recovery keeps kv-0 (applied index 100) as a \
                 cluster of one with its data and replaces kv-1, kv-2 with empty members; writes \
                 after index 100 could be lost (kv-1 had applied 120). Annotate the KVCluster \
                 cairn.dev/recover-quorum=true (or =<member>) to recover"
                    .into()
            )
        );
        let Decision::Recover { survivor, others, .. } =
            decide_with(lost_two_of_three(), QuorumLossPolicy::Manual, 0, Some("true"))
        else {
            panic!("approved");
        };
        assert_eq!(survivor, "kv-0");
        assert_eq!(
            others,
            vec![
                ("kv-1".to_owned(), Some("c1".to_owned())),
                ("kv-2".to_owned(), None)
            ]
        );
        let named = decide_with(lost_two_of_three(), QuorumLossPolicy::Manual, 0, Some("kv-2"));
        assert_eq!(
            named,
            Decision::Wait(
                "quorum lost: 1 of 3 voters answer; kv-2, named by cairn.dev/recover-quorum, does \
                 not answer"
                    .into()
            )
        );
    }

    #[test]
    fn automatic_recovery_waits_out_the_grace_and_keeps_the_member_furthest_ahead() {
        let mut members = lost_two_of_three();
        members.push(member(3, true, 130));
        members.push(member(4, false, 0));
        let wait = decide_with(members.clone(), QuorumLossPolicy::Automatic, 20, None);
        assert!(
            matches!(&wait, Decision::Wait(m) if m.ends_with("Automatic recovery in 40s")),
            "{wait:?}"
        );
        let Decision::Recover { survivor, .. } = decide_with(members, QuorumLossPolicy::Automatic, 60, None)
        else {
            panic!("recovers after the grace");
        };
        assert_eq!(survivor, "kv-3", "the most applied entries");
    }

    #[test]
    fn automatic_recovery_never_forces_while_another_member_s_pod_is_ready() {
        // kv-1 does not answer this operator, but its kubelet finds it Ready: it may lead a
        // majority behind a partition.
        let pods = BTreeMap::from([
            ("kv-0".to_owned(), PodSeen::default()),
            ("kv-1".to_owned(), PodSeen::default()),
            (
                "kv-2".to_owned(),
                PodSeen {
                    unready_seconds: Some(400),
                    ..PodSeen::default()
                },
            ),
        ]);
        let auto = decide_with_pods(lost_two_of_three(), QuorumLossPolicy::Automatic, 999, None, &pods);
        let Decision::Wait(why) = auto else {
            panic!("forced with a Ready pod: {auto:?}");
        };
        assert!(
            why.ends_with(
                "But the pods of kv-1 are Ready: they may still serve a quorum this operator cannot \
                 reach, and recovering would make two clusters. Automatic recovery waits; annotate \
                 the KVCluster cairn.dev/recover-quorum=true to recover anyway"
            ),
            "{why}"
        );
        // The user may know better (the pod is Ready but cut off from everyone).
        let approved = decide_with_pods(
            lost_two_of_three(),
            QuorumLossPolicy::Automatic,
            999,
            Some("true"),
            &pods,
        );
        assert!(matches!(approved, Decision::Recover { .. }), "{approved:?}");
    }

    #[test]
    fn a_leader_that_lost_the_others_does_not_hide_the_loss() {
        let mut members = lost_two_of_three();
        members[0].is_leader = true;
        let names = names();
        let view = ClusterView {
            leader: Some("kv-0".into()),
            list_from_leader: true,
            members,
            ..ClusterView::default()
        };
        assert!(has_lost_quorum(&view));
        let decision = decide(&Lost {
            names: &names,
            view: &view,
            policy: QuorumLossPolicy::Manual,
            grace: 60,
            lost_for: None,
            approval: Some("true"),
            last_seen: &BTreeMap::new(),
            claims: &BTreeMap::new(),
            pods: &BTreeMap::new(),
        });
        assert!(matches!(decision, Decision::Recover { ref survivor, .. } if survivor == "kv-0"));
    }

    #[test]
    fn a_quorum_that_answers_is_not_lost() {
        let mut members = lost_two_of_three();
        members[1].healthy = true;
        members[1].applied_index = Some(100);
        assert_eq!(
            decide_with(members, QuorumLossPolicy::Automatic, 999, Some("true")),
            Decision::NotLost
        );
        let nobody = vec![member(0, false, 0), member(1, false, 0), member(2, false, 0)];
        assert_eq!(
            decide_with(nobody, QuorumLossPolicy::Automatic, 999, None),
            Decision::Wait("quorum lost: 0 of 3 voters answer; no member answers to carry on from".into())
        );
    }

    #[test]
    fn the_force_line_comes_and_goes() {
        let file = "initial-cluster: a\ninitial-cluster-state: existing\n";
        let forced = with_force(file, true);
        assert_eq!(forced, format!("{file}{FORCE_LINE}"));
        assert_eq!(with_force(&forced, true), forced);
        assert_eq!(with_force(&forced, false), file);
    }
}
