//! Membership changes, planned purely: from the spec's size, the members' bootstrap files and the
//! leader's member list, the one next step. Everything a step depends on is durable (the
//! cluster's own member list, the bootstrap ConfigMap, the claims), so an operator that crashes
//! between any two steps finds the same next step when it comes back.
//!
//! Growing: add the next ordinal as a learner → write its bootstrap file (the StatefulSet grows
//! with the files) → promote it once it is caught up. Shrinking: move leadership off the highest
//! ordinal → remove it → drop its file (the StatefulSet shrinks) → delete its claim once its pod is
//! gone, so a later member of that ordinal starts empty. One change at a time, and only while
//! every voter is healthy; nothing here reacts to a missing pod, so a pod loss never shrinks.
//!
//! Replacing: a member whose data was lost refuses to start (cairn says so in its pod's status).
//! It is removed, then added again as a new learner under the same name, and its pod restarted.

use std::collections::{BTreeMap, BTreeSet};

use crate::build::bootstrap::{MemberBootstrap, is_new};
use crate::build::names::Names;
use crate::observe::ClusterView;

/// The next thing to do about membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Membership is what the spec asks for.
    Settled,
    /// A change is due but cannot be made now, for the reason given.
    Wait(String),
    /// MemberAdd of `member` as a learner.
    AddLearner { member: String, peer_url: String },
    /// Write the bootstrap file of a member the cluster has accepted.
    WriteEntry {
        member: String,
        bootstrap: MemberBootstrap,
    },
    /// Restart a member's pod (a re-added member whose pod is waiting out a crash back-off).
    RestartPod { pod: String },
    /// MemberPromote of a learner.
    Promote { member: String, id: u64 },
    /// MoveLeader away from a member that is about to leave.
    MoveLeader { from: String, to: String, to_id: u64 },
    /// MemberRemove.
    Remove { member: String, id: u64 },
    /// Drop the bootstrap file of a member the cluster no longer has.
    DropEntry { member: String },
    /// Delete the claim of a member that is gone.
    DeleteClaim { claim: String },
}

impl Step {
    /// A short fixed name of the kind of step, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Settled => "settled",
            Step::Wait(_) => "wait",
            Step::AddLearner { .. } => "add_learner",
            Step::WriteEntry { .. } => "write_entry",
            Step::RestartPod { .. } => "restart_pod",
            Step::Promote { .. } => "promote",
            Step::MoveLeader { .. } => "move_leader",
            Step::Remove { .. } => "remove",
            Step::DropEntry { .. } => "drop_entry",
            Step::DeleteClaim { .. } => "delete_claim",
        }
    }

    /// What is going on, for status and events.
    pub fn describe(&self) -> String {
        match self {
            Step::Settled => "membership is as the spec asks".into(),
            Step::Wait(reason) => reason.clone(),
            Step::AddLearner { member, .. } => format!("adding {member} as a learner"),
            Step::WriteEntry { member, .. } => format!("starting {member}"),
            Step::RestartPod { pod } => format!("restarting {pod} to join as a new member"),
            Step::Promote { member, .. } => format!("promoting {member} to voter"),
            Step::MoveLeader { from, to, .. } => {
                format!("moving leadership from {from} to {to} before {from} leaves")
            }
            Step::Remove { member, .. } => format!("removing {member}"),
            Step::DropEntry { member } => format!("stopping removed member {member}"),
            Step::DeleteClaim { claim } => format!("deleting the claim {claim} of a removed member"),
        }
    }
}

/// What the plan is made from.
pub struct Current<'a> {
    pub names: &'a Names,
    /// `spec.replicas`.
    pub desired: i32,
    /// The bootstrap ConfigMap's files, by key (`<member>.yaml`).
    pub entries: &'a BTreeMap<String, String>,
    pub view: &'a ClusterView,
    /// Member claims that exist.
    pub claims: &'a BTreeSet<String>,
    /// Those of them that are being deleted (Kubernetes keeps a claim until no pod uses it).
    pub terminating_claims: &'a BTreeSet<String>,
    /// Member pods that exist.
    pub pods: &'a BTreeSet<String>,
    /// Member pods that refused to start because their data was lost.
    pub lost: &'a BTreeSet<String>,
}

/// A member of the list, placed at its ordinal.
struct Placed<'a> {
    ordinal: i32,
    name: String,
    id: u64,
    status: &'a crate::crd::MemberStatus,
}

pub fn next_step(current: &Current) -> Step {
    let names = current.names;
    let view = current.view;
    if !view.list_from_leader {
        return Step::Wait("waiting for the leader's member list".into());
    }
    let mut placed = Vec::new();
    for member in &view.members {
        let Some(ordinal) = names.ordinal_of_peer_url(&member.peer_url) else {
            return Step::Wait(format!(
                "member {} ({}) is not one of this cluster's pods; remove it with `member remove`",
                member.id, member.peer_url
            ));
        };
        let Ok(id) = u64::from_str_radix(&member.id, 16) else {
            return Step::Wait(format!("member ID {:?} is not hex", member.id));
        };
        placed.push(Placed {
            ordinal,
            name: names.member(ordinal),
            id,
            status: member,
        });
    }
    placed.sort_by_key(|p| p.ordinal);
    let with_entry: BTreeSet<i32> = current
        .entries
        .keys()
        .filter_map(|key| names.ordinal_of_member(key.strip_suffix(".yaml")?))
        .collect();
    let listed: BTreeSet<i32> = placed.iter().map(|p| p.ordinal).collect();

    // Finish what an earlier step began, before anything new: a member the cluster no longer
    // has either goes (beyond the spec's size) or comes back as a new member (a replacement).
    if let Some(&gone) = with_entry.difference(&listed).last() {
        let member = names.member(gone);
        if gone >= current.desired {
            return Step::DropEntry { member };
        }
        return Step::AddLearner {
            peer_url: names.peer_url(&member),
            member,
        };
    }
    if let Some(learner) = placed.iter().find(|p| p.status.is_learner) {
        if !with_entry.contains(&learner.ordinal) {
            return Step::WriteEntry {
                member: learner.name.clone(),
                bootstrap: MemberBootstrap::Join {
                    initial_cluster: names.initial_cluster(placed.iter().map(|p| p.name.clone())),
                },
            };
        }
        if !learner.status.healthy && current.lost.contains(&learner.name) {
            return Step::RestartPod {
                pod: learner.name.clone(),
            };
        }
        if !learner.status.healthy {
            return Step::Wait(format!("waiting for learner {} to start", learner.name));
        }
        return Step::Promote {
            member: learner.name.clone(),
            id: learner.id,
        };
    }
    if let Some(lost) = placed
        .iter()
        .find(|p| current.lost.contains(&p.name) && !p.status.healthy)
    {
        if let Some(sick) = placed
            .iter()
            .find(|p| p.ordinal != lost.ordinal && !p.status.healthy)
        {
            return Step::Wait(format!(
                "{} lost its data and must be replaced, but {} is not healthy either",
                lost.name, sick.name
            ));
        }
        return Step::Remove {
            member: lost.name.clone(),
            id: lost.id,
        };
    }
    let size = with_entry.len() as i32;
    if let Some(claim) = current
        .claims
        .iter()
        .find(|claim| names.ordinal_of_claim(claim).is_some_and(|o| o >= size))
    {
        let ordinal = names.ordinal_of_claim(claim).unwrap_or_default();
        if current.pods.contains(&names.member(ordinal)) {
            return Step::Wait(format!("waiting for the pod {} to go", names.member(ordinal)));
        }
        if current.terminating_claims.contains(claim) {
            return Step::Wait(format!("waiting for the claim {claim} to be deleted"));
        }
        return Step::DeleteClaim { claim: claim.clone() };
    }

    let voters = placed.len() as i32;
    if voters == current.desired {
        return Step::Settled;
    }
    if let Some(sick) = placed.iter().find(|p| !p.status.healthy) {
        return Step::Wait(format!(
            "{} is not healthy; membership changes wait until every member is",
            sick.name
        ));
    }
    if voters != size || placed.last().is_some_and(|p| p.ordinal != voters - 1) {
        return Step::Wait(format!(
            "members {:?} are not the ordinals 0..{voters}; fix membership by hand",
            placed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()
        ));
    }
    if voters < current.desired {
        let member = names.member(voters);
        if current.pods.contains(&member) {
            return Step::Wait(format!("waiting for the old pod {member} to go"));
        }
        return Step::AddLearner {
            peer_url: names.peer_url(&member),
            member,
        };
    }
    let Some(leaving) = placed.last() else {
        return Step::Settled;
    };
    if leaving.status.is_leader {
        let Some(heir) = placed.iter().find(|p| p.ordinal != leaving.ordinal) else {
            return Step::Wait("no other member to lead".into());
        };
        return Step::MoveLeader {
            from: leaving.name.clone(),
            to: heir.name.clone(),
            to_id: heir.id,
        };
    }
    Step::Remove {
        member: leaving.name.clone(),
        id: leaving.id,
    }
}

/// The files of the members that formed the cluster say `new`; once the cluster exists they must
/// say `existing`, so that a member whose data is lost can never form a second, empty cluster
/// (it asks the cluster instead, which refuses a member that already started). `None` when no
/// file needs it or the cluster is not formed yet.
pub fn sealed_entries(current: &Current) -> Option<BTreeMap<String, String>> {
    let names = current.names;
    let view = current.view;
    let formed =
        view.list_from_leader && !view.members.is_empty() && view.members.iter().all(|m| !m.name.is_empty());
    if !formed || !current.entries.values().any(|file| is_new(file)) {
        return None;
    }
    let initial_cluster = names.initial_cluster(view.members.iter().map(|m| m.name.clone()));
    let sealed = MemberBootstrap::Join { initial_cluster }.file();
    Some(
        current
            .entries
            .iter()
            .map(|(key, file)| {
                let file = if is_new(file) {
                    sealed.clone()
                } else {
                    file.clone()
                };
                (key.clone(), file)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MemberStatus;

    fn names() -> Names {
        Names::new("kv", "prod")
    }

    fn member(ordinal: i32, id: u64) -> MemberStatus {
        let names = names();
        let name = names.member(ordinal);
        MemberStatus {
            peer_url: names.peer_url(&name),
            name,
            id: format!("{id:x}"),
            healthy: true,
            ..MemberStatus::default()
        }
    }

    fn view(members: Vec<MemberStatus>) -> ClusterView {
        ClusterView {
            leader: members.iter().find(|m| m.is_leader).map(|m| m.name.clone()),
            cluster_id: Some("c1".into()),
            members,
            list_from_leader: true,
            version: None,
        }
    }

    /// Members 0..n, member 0 leading.
    fn voters(n: i32) -> Vec<MemberStatus> {
        (0..n)
            .map(|i| MemberStatus {
                is_leader: i == 0,
                ..member(i, 0x10 + i as u64)
            })
            .collect()
    }

    fn entries(n: i32) -> BTreeMap<String, String> {
        (0..n)
            .map(|i| (format!("kv-{i}.yaml"), "initial-cluster-state: existing\n".into()))
            .collect()
    }

    fn plan(
        desired: i32,
        members: Vec<MemberStatus>,
        files: BTreeMap<String, String>,
        claims: &[&str],
        pods: &[&str],
    ) -> Step {
        plan_with_lost(desired, members, files, claims, pods, &[])
    }

    fn plan_with_lost(
        desired: i32,
        members: Vec<MemberStatus>,
        files: BTreeMap<String, String>,
        claims: &[&str],
        pods: &[&str],
        lost: &[&str],
    ) -> Step {
        let lost: BTreeSet<String> = lost.iter().map(|p| p.to_string()).collect();
        let names = names();
        let view = view(members);
        let claims: BTreeSet<String> = claims.iter().map(|c| c.to_string()).collect();
        let pods: BTreeSet<String> = pods.iter().map(|p| p.to_string()).collect();
        let terminating: BTreeSet<String> = claims
            .iter()
            .filter(|c| c.ends_with("-terminating"))
            .map(|c| c.trim_end_matches("-terminating").to_owned())
            .collect();
        let claims: BTreeSet<String> = claims
            .iter()
            .map(|c| c.trim_end_matches("-terminating").to_owned())
            .collect();
        next_step(&Current {
            names: &names,
            desired,
            entries: &files,
            view: &view,
            claims: &claims,
            terminating_claims: &terminating,
            pods: &pods,
            lost: &lost,
        })
    }

    #[test]
    fn growing_adds_a_learner_writes_its_file_then_promotes_it() {
        let step = plan(4, voters(3), entries(3), &[], &[]);
        assert_eq!(
            step,
            Step::AddLearner {
                member: "kv-3".into(),
                peer_url: "http://kv-3.kv-peer.prod.svc.cluster.local:2380".into()
            }
        );

        // The cluster accepted it (it has no name until it starts): its file lists everyone.
        let mut members = voters(3);
        members.push(MemberStatus {
            name: String::new(),
            is_learner: true,
            healthy: false,
            ..member(3, 0x99)
        });
        let Step::WriteEntry { member, bootstrap } = plan(4, members.clone(), entries(3), &[], &[]) else {
            panic!("expected the joiner's file");
        };
        assert_eq!(member, "kv-3");
        assert_eq!(
            bootstrap.file(),
            "initial-cluster: kv-0=http://kv-0.kv-peer.prod.svc.cluster.local:2380,\
             kv-1=http://kv-1.kv-peer.prod.svc.cluster.local:2380,\
             kv-2=http://kv-2.kv-peer.prod.svc.cluster.local:2380,\
             kv-3=http://kv-3.kv-peer.prod.svc.cluster.local:2380\n\
             initial-cluster-state: existing\n"
        );

        // Its pod is starting; then it answers and is promoted.
        let step = plan(4, members.clone(), entries(4), &[], &["kv-3"]);
        assert_eq!(step, Step::Wait("waiting for learner kv-3 to start".into()));
        members[3].healthy = true;
        let step = plan(4, members.clone(), entries(4), &[], &["kv-3"]);
        assert_eq!(
            step,
            Step::Promote {
                member: "kv-3".into(),
                id: 0x99
            }
        );
        members[3].is_learner = false;
        assert_eq!(plan(4, members, entries(4), &[], &[]), Step::Settled);
    }

    #[test]
    fn a_stale_claim_of_the_next_ordinal_goes_before_the_member_is_added() {
        let step = plan(4, voters(3), entries(3), &["data-kv-0", "data-kv-3"], &[]);
        assert_eq!(
            step,
            Step::DeleteClaim {
                claim: "data-kv-3".into()
            }
        );
        let step = plan(4, voters(3), entries(3), &["data-kv-3"], &["kv-3"]);
        assert_eq!(step, Step::Wait("waiting for the pod kv-3 to go".into()));
        let step = plan(4, voters(3), entries(3), &["data-kv-3-terminating"], &[]);
        assert_eq!(
            step,
            Step::Wait("waiting for the claim data-kv-3 to be deleted".into())
        );
    }

    #[test]
    fn shrinking_moves_leadership_away_removes_drops_the_file_and_the_claim() {
        let mut members = voters(5);
        members[0].is_leader = false;
        members[4].is_leader = true;
        let step = plan(3, members.clone(), entries(5), &[], &[]);
        assert_eq!(
            step,
            Step::MoveLeader {
                from: "kv-4".into(),
                to: "kv-0".into(),
                to_id: 0x10
            }
        );
        let step = plan(3, voters(5), entries(5), &[], &[]);
        assert_eq!(
            step,
            Step::Remove {
                member: "kv-4".into(),
                id: 0x14
            }
        );
        let step = plan(3, voters(4), entries(5), &[], &[]);
        assert_eq!(
            step,
            Step::DropEntry {
                member: "kv-4".into()
            }
        );
        let step = plan(3, voters(4), entries(4), &["data-kv-4"], &["kv-4"]);
        assert_eq!(step, Step::Wait("waiting for the pod kv-4 to go".into()));
        let step = plan(3, voters(4), entries(4), &["data-kv-4"], &[]);
        assert_eq!(
            step,
            Step::DeleteClaim {
                claim: "data-kv-4".into()
            }
        );
        let step = plan(3, voters(4), entries(4), &[], &[]);
        assert_eq!(
            step,
            Step::Remove {
                member: "kv-3".into(),
                id: 0x13
            }
        );
    }

    #[test]
    fn a_member_whose_data_was_lost_is_removed_added_again_and_restarted() {
        let mut members = voters(3);
        members[1].healthy = false;
        let all = ["kv-0", "kv-1", "kv-2"];
        let step = plan_with_lost(3, members.clone(), entries(3), &[], &all, &["kv-1"]);
        assert_eq!(
            step,
            Step::Remove {
                member: "kv-1".into(),
                id: 0x11
            }
        );
        // Removed, its file stays: below the spec's size it comes back under its own name.
        members.remove(1);
        let step = plan_with_lost(3, members.clone(), entries(3), &[], &all, &["kv-1"]);
        assert_eq!(
            step,
            Step::AddLearner {
                member: "kv-1".into(),
                peer_url: "http://kv-1.kv-peer.prod.svc.cluster.local:2380".into()
            }
        );
        members.insert(
            1,
            MemberStatus {
                name: String::new(),
                is_learner: true,
                healthy: false,
                ..member(1, 0x77)
            },
        );
        let step = plan_with_lost(3, members.clone(), entries(3), &[], &all, &["kv-1"]);
        assert_eq!(step, Step::RestartPod { pod: "kv-1".into() });
        let step = plan_with_lost(3, members, entries(3), &[], &all, &[]);
        assert_eq!(step, Step::Wait("waiting for learner kv-1 to start".into()));

        // With another member down too, replacing waits.
        let mut members = voters(3);
        members[1].healthy = false;
        members[2].healthy = false;
        let step = plan_with_lost(3, members, entries(3), &[], &all, &["kv-1"]);
        assert_eq!(
            step,
            Step::Wait("kv-1 lost its data and must be replaced, but kv-2 is not healthy either".into())
        );
    }

    #[test]
    fn nothing_changes_while_a_voter_is_unhealthy_or_the_list_is_not_the_leaders() {
        let mut members = voters(3);
        members[1].healthy = false;
        let step = plan(5, members.clone(), entries(3), &[], &[]);
        assert_eq!(
            step,
            Step::Wait("kv-1 is not healthy; membership changes wait until every member is".into())
        );
        // A lost pod is an unhealthy member, never a reason to shrink.
        assert_eq!(
            plan(3, members, entries(3), &[], &["kv-0", "kv-2"]),
            Step::Settled
        );

        let names = names();
        let mut view = view(voters(3));
        view.list_from_leader = false;
        let files = entries(3);
        let empty = BTreeSet::new();
        let step = next_step(&Current {
            names: &names,
            desired: 5,
            entries: &files,
            view: &view,
            claims: &empty,
            terminating_claims: &empty,
            pods: &empty,
            lost: &empty,
        });
        assert_eq!(step, Step::Wait("waiting for the leader's member list".into()));
    }

    #[test]
    fn a_member_that_is_not_a_pod_of_the_cluster_stops_all_changes() {
        let mut members = voters(3);
        members[2].peer_url = "http://elsewhere:2380".into();
        let step = plan(5, members, entries(3), &[], &[]);
        assert_eq!(
            step,
            Step::Wait(
                "member 12 (http://elsewhere:2380) is not one of this cluster's pods; \
                 remove it with `member remove`"
                    .into()
            )
        );
    }

    #[test]
    fn bootstrap_files_say_existing_once_the_cluster_has_formed() {
        let names = names();
        let new_file = "initial-cluster: x\ninitial-cluster-state: new\n".to_owned();
        let files: BTreeMap<String, String> = (0..3)
            .map(|i| (format!("kv-{i}.yaml"), new_file.clone()))
            .collect();
        let empty = BTreeSet::new();
        let mut members = voters(3);
        members[2].name = String::new();
        let forming = view(members);
        let current = |view| Current {
            names: &names,
            desired: 3,
            entries: &files,
            view,
            claims: &empty,
            terminating_claims: &empty,
            pods: &empty,
            lost: &empty,
        };
        assert_eq!(sealed_entries(&current(&forming)), None, "kv-2 has not started");
        let formed = view(voters(3));
        let sealed = sealed_entries(&current(&formed)).expect("files to seal");
        assert_eq!(sealed.len(), 3);
        assert!(
            sealed
                .values()
                .all(|file| file.ends_with("initial-cluster-state: existing\n")
                    && file.contains("kv-2=http://kv-2.kv-peer.prod.svc.cluster.local:2380"))
        );
        let sealed_files = sealed;
        let again = Current {
            entries: &sealed_files,
            ..current(&formed)
        };
        assert_eq!(sealed_entries(&again), None);
    }
}
