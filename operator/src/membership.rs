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
//! A member that fails otherwise (unhealthy, its pod not Ready for `spec.recovery`'s timeout:
//! crash-looping on a corrupt log, Pending, stuck; or a learner that runs for that long but
//! applies nothing without having caught up) is removed with a marker in the bootstrap ConfigMap
//! naming its claim; that claim is deleted (it is no member's any more), the StatefulSet makes
//! pod and claim anew, and the empty member joins as a learner.

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
    /// Restart a healthy member's pod on the StatefulSet's newer pod template (an upgrade).
    Roll { member: String },
    /// MemberPromote of a learner.
    Promote { member: String, id: u64 },
    /// MoveLeader away from a member that is about to leave or restart (`before` says which).
    MoveLeader {
        from: String,
        to: String,
        to_id: u64,
        before: &'static str,
    },
    /// MemberRemove.
    Remove { member: String, id: u64 },
    /// Restart the surviving member of a lost quorum as a cluster of one (its bootstrap file
    /// says `force-new-cluster`; the others are marked for replacement).
    ForceNewCluster { survivor: String, why: String },
    /// MemberRemove of a failed member that comes back empty: the plan marks its claim (by UID)
    /// for deletion once it is out.
    Replace {
        member: String,
        id: u64,
        claim_uid: Option<String>,
        why: String,
    },
    /// Drop the bootstrap file of a member the cluster no longer has.
    DropEntry { member: String },
    /// Delete the claim of a member that is gone.
    DeleteClaim { claim: String },
    /// Make root and the operator's user, then AuthEnable (`spec.auth.enabled`).
    EnableAuth,
    /// AuthDisable, as the operator's user.
    DisableAuth,
    /// MemberUpdate of a member's peer URL to https:// (peers moving to TLS, `peer_move`).
    UpdatePeerUrl {
        member: String,
        id: u64,
        peer_url: String,
    },
    /// Every member's peers reach it over TLS: peer TLS is latched in status, and members roll
    /// onto TLS only.
    PeersOnTls,
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
            Step::Roll { .. } => "roll",
            Step::Promote { .. } => "promote",
            Step::MoveLeader { .. } => "move_leader",
            Step::Remove { .. } => "remove",
            Step::Replace { .. } => "replace",
            Step::ForceNewCluster { .. } => "force_new_cluster",
            Step::DropEntry { .. } => "drop_entry",
            Step::DeleteClaim { .. } => "delete_claim",
            Step::EnableAuth => "enable_auth",
            Step::DisableAuth => "disable_auth",
            Step::UpdatePeerUrl { .. } => "update_peer_url",
            Step::PeersOnTls => "peers_on_tls",
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
            Step::Roll { member } => format!("restarting {member} on the new pod template"),
            Step::Promote { member, .. } => format!("promoting {member} to voter"),
            Step::MoveLeader { from, to, before, .. } => {
                format!("moving leadership from {from} to {to} before {from} {before}")
            }
            Step::Remove { member, .. } => format!("removing {member}"),
            Step::ForceNewCluster { survivor, why } => {
                format!("recovering the quorum with {survivor}: {why}")
            }
            Step::Replace { member, why, .. } => {
                format!("replacing {member} with an empty member: {why}")
            }
            Step::DropEntry { member } => format!("stopping removed member {member}"),
            Step::DeleteClaim { claim } => format!("deleting the claim {claim} of a removed member"),
            Step::EnableAuth => "turning auth on".into(),
            Step::DisableAuth => "turning auth off".into(),
            Step::UpdatePeerUrl { member, peer_url, .. } => {
                format!("moving {member}'s peers to TLS: its peer URL becomes {peer_url}")
            }
            Step::PeersOnTls => {
                "every member's peers reach it over TLS: members restart refusing plaintext peers".into()
            }
        }
    }
}

/// One member pod as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSeen {
    /// Being deleted (it still holds its claim until it is gone).
    pub terminating: bool,
    /// Its member refused to start, now or last time, because its data was lost.
    pub lost_data: bool,
    /// Its member refused to start, now or last time, because it was not a member yet (a pod
    /// that started before its MemberAdd, waiting out a crash back-off).
    pub not_yet_member: bool,
    /// How long the pod has not been Ready, in seconds; None while it is.
    pub unready_seconds: Option<u64>,
    /// How long the pod has been Ready, in seconds; None while it is not.
    pub ready_seconds: Option<u64>,
    /// The pod's IP, once it has one.
    pub address: Option<String>,
    /// Its member serves clients over TLS (the pod's own spec says).
    pub client_tls: bool,
    /// Its member serves its peers over TLS, alone or beside plaintext (the pod's own spec says).
    pub peer_tls: bool,
    /// Made from an older pod template than the StatefulSet's (which leaves its pods alone:
    /// the operator restarts them, `upgrade`).
    pub outdated: bool,
}

/// One member claim as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimSeen {
    pub uid: Option<String>,
    /// Being deleted (Kubernetes keeps a claim until no pod uses it).
    pub terminating: bool,
    pub size: crate::storage::ClaimSize,
}

/// What the next step is chosen from.
pub struct Current<'a> {
    pub names: &'a Names,
    /// `spec.replicas`.
    pub desired: i32,
    /// The bootstrap ConfigMap's files, by key (`<member>.yaml`).
    pub entries: &'a BTreeMap<String, String>,
    pub view: &'a ClusterView,
    /// Member claims that exist, by name.
    pub claims: &'a BTreeMap<String, ClaimSeen>,
    /// Member pods that exist, by name.
    pub pods: &'a BTreeMap<String, PodSeen>,
    /// Seconds a member may fail before it is replaced.
    pub member_timeout: u64,
    /// Each member's applied index at the previous look.
    pub last_seen: &'a BTreeMap<String, u64>,
}

/// A member of the list, placed at its ordinal.
pub(crate) struct Placed<'a> {
    pub ordinal: i32,
    pub name: String,
    pub id: u64,
    pub status: &'a crate::crd::MemberStatus,
}

/// The members of the leader's list, each at its ordinal, in ordinal order; or why the list
/// cannot be acted on.
pub(crate) fn place<'a>(names: &Names, view: &'a ClusterView) -> Result<Vec<Placed<'a>>, Step> {
    if !view.list_from_leader {
        return Err(Step::Wait("waiting for the leader's member list".into()));
    }
    let mut placed = Vec::new();
    for member in &view.members {
        let Some(ordinal) = names.ordinal_of_peer_url(&member.peer_url) else {
            return Err(Step::Wait(format!(
                "member {} ({}) is not one of this cluster's pods; remove it with `member remove`",
                member.id, member.peer_url
            )));
        };
        let Ok(id) = u64::from_str_radix(&member.id, 16) else {
            return Err(Step::Wait(format!("member ID {:?} is not hex", member.id)));
        };
        placed.push(Placed {
            ordinal,
            name: names.member(ordinal),
            id,
            status: member,
        });
    }
    placed.sort_by_key(|p| p.ordinal);
    Ok(placed)
}

/// The ordinals that have a bootstrap file.
pub fn ordinals_with_entry(names: &Names, entries: &BTreeMap<String, String>) -> BTreeSet<i32> {
    entries
        .keys()
        .filter_map(|key| names.ordinal_of_member(key.strip_suffix(".yaml")?))
        .collect()
}

/// The bootstrap ConfigMap key that marks `member` as being replaced; its value is the UID of
/// the claim to delete.
pub fn replacement_key(member: &str) -> String {
    format!("{member}.replacing")
}

/// The members being replaced, by ordinal, with the UID of the claim that goes.
pub fn replacements(names: &Names, entries: &BTreeMap<String, String>) -> BTreeMap<i32, String> {
    entries
        .iter()
        .filter_map(|(key, uid)| {
            let ordinal = names.ordinal_of_member(key.strip_suffix(".replacing")?)?;
            Some((ordinal, uid.clone()))
        })
        .collect()
}

/// The ordinals of the members in the leader's list (all of them, learners too).
pub fn listed_ordinals(names: &Names, view: &ClusterView) -> BTreeSet<i32> {
    view.members
        .iter()
        .filter_map(|m| names.ordinal_of_peer_url(&m.peer_url))
        .collect()
}

/// The bootstrap file of a member joining the cluster that has `members` (by ordinal): a
/// joining member checks its `--initial-cluster` against the member list, so members the list
/// has are given under the URL it has them (while peers move to TLS, some are https:// and some
/// http://), the others under the URL they are added with.
fn join_file(names: &Names, view: &ClusterView, members: impl IntoIterator<Item = i32>) -> MemberBootstrap {
    let listed: BTreeMap<i32, &str> = view
        .members
        .iter()
        .filter_map(|m| Some((names.ordinal_of_peer_url(&m.peer_url)?, m.peer_url.as_str())))
        .collect();
    let initial_cluster = members
        .into_iter()
        .map(|ordinal| {
            let member = names.member(ordinal);
            let url = listed
                .get(&ordinal)
                .map_or_else(|| names.peer_url(&member), |url| (*url).to_owned());
            format!("{member}={url}")
        })
        .collect::<Vec<_>>()
        .join(",");
    MemberBootstrap::Join { initial_cluster }
}

/// The bootstrap file of `member` joining the cluster the leader lists (a member added again
/// must be told the cluster as it is now, which may be smaller than when it first joined).
pub fn joining_file(names: &Names, view: &ClusterView, member: &str) -> Option<String> {
    let mut members = listed_ordinals(names, view);
    members.insert(names.ordinal_of_member(member)?);
    Some(join_file(names, view, members).file())
}

/// The bootstrap files rebuilt from the leader's member list (the ConfigMap is gone): every
/// member joins the cluster that exists, so none can ever form a new one. None without the
/// leader's list.
pub fn rebuilt_entries(names: &Names, view: &ClusterView) -> Option<BTreeMap<String, String>> {
    let placed = place(names, view).ok()?;
    let file = join_file(names, view, placed.iter().map(|p| p.ordinal)).file();
    Some(
        placed
            .iter()
            .map(|p| (format!("{}.yaml", p.name), file.clone()))
            .collect(),
    )
}

/// The majority of `voters`.
fn quorum(voters: usize) -> usize {
    crate::build::pdb::quorum(voters as i32) as usize
}

/// The next step. The invariants, which the property tests check over random states: a member
/// in the leader's list never loses its pod, claim or bootstrap file; no step leaves fewer
/// healthy voters than a quorum; at most one learner at a time; nothing is done without the
/// leader's list.
pub fn next_step(current: &Current) -> Step {
    let names = current.names;
    let placed = match place(names, current.view) {
        Ok(placed) => placed,
        Err(wait) => return wait,
    };
    let with_entry = ordinals_with_entry(names, current.entries);
    let listed: BTreeSet<i32> = placed.iter().map(|p| p.ordinal).collect();
    let live_pod = |name: &str| current.pods.get(name).filter(|pod| !pod.terminating);
    let lost = |name: &str| live_pod(name).is_some_and(|pod| pod.lost_data);
    let too_early = |name: &str| live_pod(name).is_some_and(|pod| pod.not_yet_member);
    let failing_for = |name: &str| live_pod(name).and_then(|pod| pod.unready_seconds);
    let timed_out = |name: &str| failing_for(name).is_some_and(|s| s >= current.member_timeout);
    let claim_uid = |ordinal: i32| current.claims.get(&names.claim(ordinal))?.uid.clone();
    let voters: Vec<&Placed> = placed.iter().filter(|p| !p.status.is_learner).collect();
    let healthy_voters = voters.iter().filter(|p| p.status.healthy).count();

    // Finish what an earlier step began, before anything new. A member the cluster has needs
    // its file (a learner just added, or a file lost by hand).
    if let Some(unfiled) = placed.iter().find(|p| !with_entry.contains(&p.ordinal)) {
        return Step::WriteEntry {
            member: unfiled.name.clone(),
            bootstrap: join_file(names, current.view, listed.iter().copied()),
        };
    }
    if let Some(learner) = placed.iter().find(|p| p.status.is_learner) {
        if learner.ordinal >= current.desired {
            // The spec shrank while it was being added; a learner does not vote, so it can go.
            return Step::Remove {
                member: learner.name.clone(),
                id: learner.id,
            };
        }
        if !learner.status.healthy && (lost(&learner.name) || too_early(&learner.name)) {
            return Step::RestartPod {
                pod: learner.name.clone(),
            };
        }
        if !learner.status.healthy && timed_out(&learner.name) {
            return Step::Replace {
                member: learner.name.clone(),
                id: learner.id,
                claim_uid: claim_uid(learner.ordinal),
                why: format!(
                    "learner {} has not started in {}s",
                    learner.name,
                    failing_for(&learner.name).unwrap_or_default()
                ),
            };
        }
        if let Some(why) = stalled(current, learner) {
            return Step::Replace {
                member: learner.name.clone(),
                id: learner.id,
                claim_uid: claim_uid(learner.ordinal),
                why,
            };
        }
        if !learner.status.healthy {
            let running = live_pod(&learner.name).is_some_and(|pod| pod.ready_seconds.is_some());
            let what = if running { "catch up" } else { "start" };
            return Step::Wait(format!("waiting for learner {} to {what}", learner.name));
        }
        if healthy_voters < quorum(voters.len()) {
            return Step::Wait(format!(
                "{healthy_voters} of {} voters are healthy; {} waits for a quorum",
                voters.len(),
                learner.name
            ));
        }
        return Step::Promote {
            member: learner.name.clone(),
            id: learner.id,
        };
    }
    // A member the cluster no longer has either comes back as a new member (below the spec's
    // size: a replacement) or goes; its file goes only when it is the highest, so that the
    // StatefulSet never shrinks past a member.
    let top_entry = with_entry.last().copied();
    let replacing = replacements(names, current.entries);
    let gone: Vec<i32> = with_entry.difference(&listed).copied().collect();
    for &gone in gone.iter().rev() {
        let member = names.member(gone);
        if gone < current.desired {
            if let Some(step) = replacing.get(&gone).and_then(|old| wipe(current, gone, old)) {
                return step;
            }
            return Step::AddLearner {
                peer_url: names.peer_url(&member),
                member,
            };
        }
        if Some(gone) == top_entry {
            return Step::DropEntry { member };
        }
    }
    let failed = voters
        .iter()
        .find(|p| !p.status.healthy && (lost(&p.name) || timed_out(&p.name)));
    if let Some(failed) = failed {
        let why = if lost(&failed.name) {
            "lost its data".to_owned()
        } else {
            format!(
                "has failed for {}s",
                failing_for(&failed.name).unwrap_or_default()
            )
        };
        if let Some(sick) = voters
            .iter()
            .find(|p| p.ordinal != failed.ordinal && !p.status.healthy)
        {
            return Step::Wait(format!(
                "{} {why} and must be replaced, but {} is not healthy either",
                failed.name, sick.name
            ));
        }
        if voters.len() < 2 || healthy_voters < quorum(voters.len() - 1) {
            return Step::Wait(format!(
                "{} {why}, and without it too few voters would be left",
                failed.name
            ));
        }
        if lost(&failed.name) {
            // Its claim is empty already: it comes back under its own name as it is.
            return Step::Remove {
                member: failed.name.clone(),
                id: failed.id,
            };
        }
        return Step::Replace {
            member: failed.name.clone(),
            id: failed.id,
            claim_uid: claim_uid(failed.ordinal),
            why: format!("{} {why}", failed.name),
        };
    }
    // Claims beyond every file and every member belong to no one: a later member of that
    // ordinal must start empty.
    let size = with_entry.iter().chain(&listed).max().map_or(0, |o| o + 1);
    for (claim, seen) in current.claims {
        let Some(ordinal) = names.ordinal_of_claim(claim) else {
            continue;
        };
        if ordinal < size || listed.contains(&ordinal) {
            continue;
        }
        let pod = names.member(ordinal);
        if current.pods.contains_key(&pod) {
            return Step::Wait(format!("waiting for the pod {pod} to go"));
        }
        if seen.terminating {
            return Step::Wait(format!("waiting for the claim {claim} to be deleted"));
        }
        return Step::DeleteClaim { claim: claim.clone() };
    }

    let target: BTreeSet<i32> = (0..current.desired).collect();
    if listed == target {
        return crate::upgrade::next_roll(&placed, current.pods);
    }
    if let Some(sick) = placed.iter().find(|p| !p.status.healthy) {
        return Step::Wait(format!(
            "{} is not healthy; membership changes wait until every member is",
            sick.name
        ));
    }
    let members = || placed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>();
    if (voters.len() as i32) < current.desired {
        let Some(next) = target.difference(&listed).next().copied() else {
            return Step::Settled;
        };
        if listed.last().is_some_and(|&highest| next < highest) {
            return Step::Wait(format!(
                "members {:?} leave out {}; add it back or remove the members above it by hand",
                members(),
                names.member(next)
            ));
        }
        let member = names.member(next);
        if current.pods.contains_key(&member) {
            return Step::Wait(format!("waiting for the old pod {member} to go"));
        }
        return Step::AddLearner {
            peer_url: names.peer_url(&member),
            member,
        };
    }
    let Some(leaving) = voters.last() else {
        return Step::Settled;
    };
    if leaving.ordinal < current.desired {
        return Step::Wait(format!(
            "members {:?} are not the ordinals 0..{}; fix membership by hand",
            members(),
            current.desired
        ));
    }
    if voters.len() < 2 {
        return Step::Wait("the last member cannot be removed".into());
    }
    if leaving.status.is_leader {
        let Some(heir) = voters.iter().find(|p| p.ordinal != leaving.ordinal) else {
            return Step::Wait("no other member to lead".into());
        };
        return Step::MoveLeader {
            from: leaving.name.clone(),
            to: heir.name.clone(),
            to_id: heir.id,
            before: "leaves",
        };
    }
    Step::Remove {
        member: leaving.name.clone(),
        id: leaving.id,
    }
}

/// Why a learner that runs (its pod Ready for the member timeout) counts as stuck: it has not
/// caught up, and it applied nothing since the previous look (a learner still catching up, even
/// slowly, is left to it). None while it is not.
fn stalled(current: &Current, learner: &Placed) -> Option<String> {
    let pod = current.pods.get(&learner.name).filter(|pod| !pod.terminating)?;
    let running = pod.ready_seconds.filter(|&s| s >= current.member_timeout)?;
    if learner.status.healthy {
        return None;
    }
    let before = *current.last_seen.get(&learner.name)?;
    let now = learner.status.applied_index.unwrap_or(0);
    if now > before {
        return None;
    }
    let behind = match learner.status.lag {
        Some(lag) => format!("{lag} entries behind"),
        None => "not answering".to_owned(),
    };
    Some(format!(
        "learner {} has not caught up in {running}s ({behind}, applying nothing)",
        learner.name
    ))
}

/// The step that makes room for an empty member where a replaced one was: its old claim (UID
/// `old`, empty when it had none) is deleted, and its pod too while the claim is still there or
/// missing, so that the StatefulSet makes both anew. None once the claim is a new one.
fn wipe(current: &Current, ordinal: i32, old: &str) -> Option<Step> {
    let names = current.names;
    let member = names.member(ordinal);
    let claim = names.claim(ordinal);
    let pod_up = current.pods.get(&member).is_some_and(|pod| !pod.terminating);
    match current.claims.get(&claim) {
        Some(seen) if seen.uid.as_deref() == Some(old) => {
            if !seen.terminating {
                Some(Step::DeleteClaim { claim })
            } else if pod_up {
                Some(Step::RestartPod { pod: member })
            } else {
                Some(Step::Wait(format!("waiting for the claim {claim} to be deleted")))
            }
        }
        Some(_) => None,
        None if pod_up => Some(Step::RestartPod { pod: member }),
        None => Some(Step::Wait(format!(
            "waiting for the StatefulSet to make {member} and its claim anew"
        ))),
    }
}

/// The files of the members that formed the cluster say `new`; once the cluster exists they must
/// say `existing`, so that a member whose data is lost can never form a second, empty cluster
/// (it asks the cluster instead, which refuses a member that already started). `None` when no
/// file needs it or the cluster is not formed yet.
pub fn sealed_entries(
    names: &Names,
    view: &ClusterView,
    entries: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let formed =
        view.list_from_leader && !view.members.is_empty() && view.members.iter().all(|m| !m.name.is_empty());
    if !formed || !entries.values().any(|file| is_new(file)) {
        return None;
    }
    let sealed = join_file(names, view, listed_ordinals(names, view)).file();
    Some(
        entries
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
            ..ClusterView::default()
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
        let names = names();
        let view = view(members);
        // A claim named `<claim>-terminating` is that claim, being deleted.
        let claims: BTreeMap<String, ClaimSeen> = claims
            .iter()
            .map(|c| {
                let seen = ClaimSeen {
                    terminating: c.ends_with("-terminating"),
                    ..ClaimSeen::default()
                };
                (c.trim_end_matches("-terminating").to_owned(), seen)
            })
            .collect();
        let pods: BTreeMap<String, PodSeen> = pods
            .iter()
            .map(|p| {
                let seen = PodSeen {
                    lost_data: lost.contains(p),
                    ..PodSeen::default()
                };
                (p.to_string(), seen)
            })
            .collect();
        next_step(&Current {
            names: &names,
            desired,
            entries: &files,
            view: &view,
            claims: &claims,
            pods: &pods,
            member_timeout: 300,
            last_seen: &BTreeMap::new(),
        })
    }

    #[test]
    fn a_learner_that_runs_but_applies_nothing_past_the_timeout_is_replaced() {
        let names = names();
        let mut members = voters(3);
        members.push(MemberStatus {
            is_learner: true,
            healthy: false,
            applied_index: Some(40),
            lag: Some(9_000),
            ..member(3, 0x13)
        });
        let view = view(members);
        let files = entries(4);
        let seen = ClaimSeen {
            uid: Some("c3".into()),
            ..ClaimSeen::default()
        };
        let claims = BTreeMap::from([("data-kv-3".to_owned(), seen)]);
        let step = |ready: u64, before: Option<u64>| {
            let pods = (0..4)
                .map(|o| {
                    let seen = PodSeen {
                        ready_seconds: Some(ready),
                        ..PodSeen::default()
                    };
                    (format!("kv-{o}"), seen)
                })
                .collect();
            let last_seen = before
                .map(|index| BTreeMap::from([("kv-3".to_owned(), index)]))
                .unwrap_or_default();
            next_step(&Current {
                names: &names,
                desired: 4,
                entries: &files,
                view: &view,
                claims: &claims,
                pods: &pods,
                member_timeout: 300,
                last_seen: &last_seen,
            })
        };
        let waiting = Step::Wait("waiting for learner kv-3 to catch up".into());
        assert_eq!(step(299, Some(40)), waiting, "within its timeout");
        assert_eq!(step(300, Some(39)), waiting, "still applying");
        assert_eq!(step(300, None), waiting, "no earlier look to compare");
        assert_eq!(
            step(300, Some(40)),
            Step::Replace {
                member: "kv-3".into(),
                id: 0x13,
                claim_uid: Some("c3".into()),
                why: "learner kv-3 has not caught up in 300s (9000 entries behind, applying nothing)".into(),
            }
        );
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
                to_id: 0x10,
                before: "leaves",
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
        let step = next_step(&Current {
            names: &names,
            desired: 5,
            entries: &files,
            view: &view,
            claims: &BTreeMap::new(),
            pods: &BTreeMap::new(),
            member_timeout: 300,
            last_seen: &BTreeMap::new(),
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
        let mut members = voters(3);
        members[2].name = String::new();
        let forming = view(members);
        assert_eq!(
            sealed_entries(&names, &forming, &files),
            None,
            "kv-2 has not started"
        );
        let formed = view(voters(3));
        let sealed = sealed_entries(&names, &formed, &files).expect("files to seal");
        assert_eq!(sealed.len(), 3);
        assert!(
            sealed
                .values()
                .all(|file| file.ends_with("initial-cluster-state: existing\n")
                    && file.contains("kv-2=http://kv-2.kv-peer.prod.svc.cluster.local:2380"))
        );
        assert_eq!(sealed_entries(&names, &formed, &sealed), None);
    }
}
