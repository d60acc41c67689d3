//! The status the operator writes, computed purely from the spec (or why it is invalid), what the
//! cluster reported, and the previous status (whose transition times survive unchanged
//! conditions and whose latched token and cluster ID never change).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::build::names::Names;
use crate::build::pdb::quorum;
use crate::crd::{BackupStatus, KVClusterStatus, MemberStatus, PeerTlsMove, RestoreStatus};
use crate::observe::{ClusterView, MAX_LAG};
use crate::validate::{SpecError, ValidSpec};
use crate::{backup, peer_move, restore};

/// Everything one status computation needs.
pub struct Observation<'a> {
    pub generation: Option<i64>,
    pub previous: &'a KVClusterStatus,
    pub view: &'a ClusterView,
    /// Member pods that exist.
    pub pods: i32,
    /// The membership change under way, or why a due one waits.
    pub change: Option<String>,
    /// Why this pass failed (an object could not be applied, a step could not be taken).
    pub error: Option<String>,
    /// A storage edit under way or refused: the `StorageChange` condition's reason and message.
    pub storage: Option<(&'static str, String)>,
    /// Member pods still on an older pod template (an upgrade under way).
    pub outdated: Vec<String>,
    /// The backups' status after this pass (None without `spec.backup`).
    pub backup: Option<BackupStatus>,
    pub now: Time,
}

pub fn for_valid_spec(spec: &ValidSpec, token: &str, seen: &Observation) -> KVClusterStatus {
    let view = seen.view;
    let names = Names::of(spec);
    let members: Vec<MemberStatus> = view.members.iter().map(|m| named(&names, m)).collect();
    // By the name status shows: a leader that has not published its name yet is its pod.
    let leader = members.iter().find(|m| m.is_leader).map(|m| m.name.clone());
    let voters = view.voters();
    let healthy = view.healthy_voters();
    let quorate = view.leader.is_some() && voters > 0 && healthy >= quorum(voters as i32) as usize;
    let unhealthy: Vec<String> = view
        .members
        .iter()
        .filter(|m| !m.healthy)
        .map(why_unhealthy)
        .collect();
    let latched_id = seen.previous.cluster_id.as_deref();
    let foreign: Vec<String> = match (latched_id, view.cluster_id.as_deref()) {
        (Some(latched), Some(seen_id)) if latched != seen_id => vec![format!(
            "the members report cluster {seen_id}, but this KVCluster's is {latched}"
        )],
        _ => view
            .members
            .iter()
            .filter(|m| m.foreign_cluster_id.is_some())
            .map(why_unhealthy)
            .collect(),
    };
    // Members publish their names and client URLs a moment after they start; until every one
    // has, clients cannot find them all and the cluster is not settled yet.
    let unpublished: Vec<String> = view
        .members
        .iter()
        .zip(&members)
        .filter(|(seen, _)| seen.name.is_empty())
        .map(|(_, shown)| shown.name.clone())
        .collect();
    let settled = foreign.is_empty()
        && unpublished.is_empty()
        && seen.outdated.is_empty()
        && voters == spec.replicas as usize
        && view.members.len() == voters
        && unhealthy.is_empty()
        && quorate
        && !spec.peer_move;

    let available = if quorate {
        (
            "True",
            "Quorate",
            format!(
                "leader {}, {healthy} of {voters} voters healthy",
                leader.as_deref().unwrap_or_default()
            ),
        )
    } else if view.members.is_empty() {
        ("False", "Unreachable", "no member answered yet".to_owned())
    } else if view.leader.is_none() {
        ("False", "NoLeader", "the members report no leader".to_owned())
    } else {
        (
            "False",
            "QuorumLost",
            format!(
                "{healthy} of {voters} voters healthy; {} needed",
                quorum(voters as i32)
            ),
        )
    };
    let progressing = if settled {
        (
            "False",
            "Stable",
            format!("{} members, as the spec asks", spec.replicas),
        )
    } else if view.cluster_id.is_none() && seen.previous.cluster_id.is_none() {
        let forming = format!("forming a cluster of {} members", spec.replicas);
        let message = match &seen.change {
            Some(change) => format!("{forming}: {change}"),
            None => forming,
        };
        ("True", "Bootstrapping", message)
    } else if !seen.outdated.is_empty() {
        let rolling = format!(
            "{} of {} members on an older pod template ({})",
            seen.outdated.len(),
            view.members.len(),
            seen.outdated.join(", ")
        );
        let message = match &seen.change {
            Some(change) => format!("{rolling}: {change}"),
            None => rolling,
        };
        ("True", "RollingUpdate", message)
    } else if spec.peer_move {
        let message = seen
            .change
            .clone()
            .unwrap_or_else(|| "moving the peers to TLS".to_owned());
        ("True", "PeerTLSMove", message)
    } else if let Some(change) = &seen.change {
        ("True", "MembershipChange", change.clone())
    } else if view.members.len() != spec.replicas as usize {
        (
            "True",
            "MembershipDiffers",
            format!(
                "{} members, the spec asks for {}",
                view.members.len(),
                spec.replicas
            ),
        )
    } else if !unpublished.is_empty() && unhealthy.is_empty() {
        (
            "True",
            "MembersStarting",
            format!(
                "waiting for {} to publish {} name and client URLs",
                unpublished.join(", "),
                if unpublished.len() == 1 { "its" } else { "their" }
            ),
        )
    } else {
        (
            "True",
            "Recovering",
            "waiting for every member to be healthy".to_owned(),
        )
    };
    let degraded = if let Some(error) = &seen.error {
        ("True", "ReconcileFailed", error.clone())
    } else if view.members.is_empty() {
        ("Unknown", "NotObserved", "no member has answered yet".to_owned())
    } else if !foreign.is_empty() {
        ("True", "ClusterIDMismatch", foreign.join("; "))
    } else if unhealthy.is_empty() {
        (
            "False",
            "AllHealthy",
            "every member answers and keeps up with the leader".to_owned(),
        )
    } else {
        ("True", "MemberUnhealthy", unhealthy.join("; "))
    };
    let warnings = match spec.warnings.first() {
        None => ("False", "None", "no warnings".to_owned()),
        Some(first) => (
            "True",
            first.reason(),
            spec.warnings
                .iter()
                .map(|w| w.message())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };

    let phase = if spec.paused {
        "Paused"
    } else if seen.error.is_some() {
        "Degraded"
    } else if settled {
        "Running"
    } else if progressing.1 == "Bootstrapping"
        || (progressing.1 == "MembersStarting"
            && seen.previous.phase.as_deref().is_none_or(|p| p == "Creating"))
    {
        "Creating"
    } else if matches!(progressing.1, "RollingUpdate" | "PeerTLSMove") && quorate && foreign.is_empty() {
        // A member restarting onto the new template is briefly unhealthy; that is the roll.
        "Upgrading"
    } else if !quorate || !unhealthy.is_empty() || !foreign.is_empty() {
        "Degraded"
    } else {
        "Scaling"
    };
    let mut status = KVClusterStatus {
        observed_generation: seen.generation,
        replicas: seen.pods,
        ready_replicas: healthy as i32,
        selector: Some(names.selector()),
        members,
        leader,
        cluster_id: seen
            .previous
            .cluster_id
            .clone()
            .or_else(|| view.cluster_id.clone()),
        cluster_token: Some(token.to_owned()),
        version: view.version.clone().or_else(|| seen.previous.version.clone()),
        phase: Some(phase.to_owned()),
        membership_change: seen.change.clone(),
        // Kept from the last look while no leader answers.
        auth_enabled: view.auth_enabled.or(seen.previous.auth_enabled),
        peer_tls: Some(spec.peer_tls),
        peer_tls_move: spec.peer_move.then(|| PeerTlsMove {
            last_url_change: peer_move::last_url_change(seen.previous, view, &seen.now),
        }),
        backup: spec.backup.as_ref().and(seen.backup.clone()),
        restored_from: seen.previous.restored_from.clone(),
        conditions: Vec::new(),
    };
    let storage = match &seen.storage {
        Some((reason, message)) => ("True", *reason, message.clone()),
        None => (
            "False",
            "AsSpecified",
            "the claims are as the spec asks".to_owned(),
        ),
    };
    for (type_, (state, reason, message)) in [
        ("Available", available),
        ("Progressing", progressing),
        ("Degraded", degraded),
        ("SpecWarnings", warnings),
        ("StorageChange", storage),
    ] {
        set_condition(&mut status, seen, type_, state, reason, &message);
    }
    if spec.restore.is_some() {
        let (state, reason, message) = match &status.restored_from {
            Some(from) => ("True", "Chosen", restore::chosen_message(from)),
            None => (
                "False",
                "ClusterExisted",
                "the cluster existed before spec.bootstrap.restore was set; a restore makes only \
                 new clusters"
                    .to_owned(),
            ),
        };
        set_condition(&mut status, seen, "RestoreSource", state, reason, &message);
    }
    // A failed backup is a warning of its own: the cluster serves on, so it is never Degraded.
    if let Some(backups) = status.backup.clone() {
        let (state, reason, message) = backup::failing(&backups);
        set_condition(&mut status, seen, "BackupFailing", state, reason, &message);
    }
    status
}

/// The member as status shows it: one added but not started yet has no name in the member
/// list, and the API refuses a status with an empty member name (every status write would fail
/// until it starts, which a cluster without a quorum never lets it do). It is named after the
/// pod it was added for.
fn named(names: &Names, member: &MemberStatus) -> MemberStatus {
    let mut member = member.clone();
    if member.name.is_empty()
        && let Some(ordinal) = names.ordinal_of_peer_url(&member.peer_url)
    {
        member.name = names.member(ordinal);
    }
    member
}

/// Why a member does not count as healthy, in a few words.
fn why_unhealthy(member: &MemberStatus) -> String {
    let name = if member.name.is_empty() {
        &member.id
    } else {
        &member.name
    };
    if let Some(other) = &member.foreign_cluster_id {
        return format!("{name} reports another cluster ({other})");
    }
    match member.lag {
        _ if member.applied_index.is_none() => format!("{name} does not answer"),
        Some(lag) if lag > MAX_LAG => format!("{name} is {lag} entries behind the leader"),
        _ => format!("{name} is not healthy"),
    }
}

/// A pass that could not observe the cluster: the previous status stays, with Degraded saying
/// why.
pub fn for_failed_pass(error: &str, seen: &Observation) -> KVClusterStatus {
    let mut status = seen.previous.clone();
    status.observed_generation = seen.generation;
    status.phase = Some("Degraded".to_owned());
    set_condition(&mut status, seen, "Degraded", "True", "ReconcileFailed", error);
    status
}

/// A cluster waiting for the backup it is made from to be chosen: the previous status, phase
/// Creating, with the `RestoreSource` condition `(state, reason, message)` and, once chosen, the
/// backup latched.
pub fn for_restore(
    seen: &Observation,
    (state, reason, message): (&str, &str, &str),
    chosen: Option<RestoreStatus>,
) -> KVClusterStatus {
    let mut status = seen.previous.clone();
    status.observed_generation = seen.generation;
    status.phase = Some("Creating".to_owned());
    if chosen.is_some() {
        status.restored_from = chosen;
    }
    set_condition(&mut status, seen, "RestoreSource", state, reason, message);
    status
}

/// An invalid spec changes nothing: the previous status stays, with Degraded saying why.
pub fn for_invalid_spec(error: &SpecError, seen: &Observation) -> KVClusterStatus {
    let mut status = seen.previous.clone();
    status.observed_generation = seen.generation;
    status.phase = Some("Invalid".to_owned());
    set_condition(
        &mut status,
        seen,
        "Degraded",
        "True",
        "InvalidSpec",
        &error.to_string(),
    );
    status
}

fn set_condition(
    status: &mut KVClusterStatus,
    seen: &Observation,
    type_: &str,
    state: &str,
    reason: &str,
    message: &str,
) {
    let previous = seen.previous.conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == state => p.last_transition_time.clone(),
        _ => seen.now.clone(),
    };
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(Condition {
        type_: type_.to_owned(),
        status: state.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: seen.generation,
        last_transition_time,
    });
}

/// The token a cluster is created with: unique to this resource (a re-created resource has a new
/// UID), so members of two clusters never accept each other's traffic.
pub fn cluster_token(namespace: &str, name: &str, uid: &str) -> String {
    format!("{namespace}-{name}-{uid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::testing::valid;

    fn member(name: &str, healthy: bool, leader: bool) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            id: format!("{:x}", name.len()),
            peer_url: String::new(),
            client_url: None,
            is_leader: leader,
            is_learner: false,
            healthy,
            applied_index: healthy.then_some(1),
            lag: healthy.then_some(0),
            foreign_cluster_id: None,
            version: Some("0.1.0".into()),
        }
    }

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    /// A pass that saw `view` with `pods` member pods at `now` seconds, nothing under way.
    fn observation<'a>(
        previous: &'a KVClusterStatus,
        view: &'a ClusterView,
        pods: i32,
        now: i64,
    ) -> Observation<'a> {
        Observation {
            generation: None,
            previous,
            view,
            pods,
            change: None,
            error: None,
            storage: None,
            outdated: Vec::new(),
            backup: None,
            now: time(now),
        }
    }

    fn condition<'a>(status: &'a KVClusterStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_member_not_started_yet_is_shown_under_its_pods_name() {
        let spec = valid("spec: {replicas: 3}");
        let names = Names::of(&spec);
        let mut unstarted = member("", false, false);
        unstarted.peer_url = names.peer_url("kv-1");
        let view = ClusterView {
            members: vec![member("kv-0", true, true), unstarted],
            leader: Some("kv-0".into()),
            ..ClusterView::default()
        };
        let previous = KVClusterStatus::default();
        let status = for_valid_spec(&spec, "t", &observation(&previous, &view, 2, 100));
        let shown: Vec<&str> = status.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(shown, ["kv-0", "kv-1"]);

        // A leader not named yet either.
        let mut leader = member("", true, true);
        leader.peer_url = names.peer_url("kv-2");
        let view = ClusterView {
            members: vec![member("kv-0", true, false), leader],
            leader: Some(String::new()),
            ..ClusterView::default()
        };
        let status = for_valid_spec(&spec, "t", &observation(&previous, &view, 2, 100));
        assert_eq!(status.leader.as_deref(), Some("kv-2"));

        // Every member healthy, one not published yet: not settled, and the status says who.
        let spec = valid("spec: {replicas: 2}");
        let view = ClusterView {
            cluster_id: Some("c1".into()),
            ..view
        };
        let status = for_valid_spec(&spec, "t", &observation(&previous, &view, 2, 100));
        let progressing = condition(&status, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "MembersStarting")
        );
        assert!(
            progressing.message.contains("kv-2 to publish its name"),
            "{}",
            progressing.message
        );
        assert_eq!(status.phase.as_deref(), Some("Creating"));
        let running = KVClusterStatus {
            phase: Some("Running".into()),
            ..KVClusterStatus::default()
        };
        let status = for_valid_spec(&spec, "t", &observation(&running, &view, 2, 100));
        assert_ne!(status.phase.as_deref(), Some("Running"));
        assert_ne!(status.phase.as_deref(), Some("Creating"));
    }

    #[test]
    fn a_quorate_cluster_of_the_asked_size_is_available_and_stable() {
        let view = ClusterView {
            members: vec![
                member("kv-0", true, true),
                member("kv-1", true, false),
                member("kv-2", true, false),
            ],
            leader: Some("kv-0".into()),
            cluster_id: Some("c1".into()),
            list_from_leader: true,
            version: Some("0.1.0".into()),
            ..ClusterView::default()
        };
        let previous = KVClusterStatus::default();
        let seen = Observation {
            generation: Some(2),
            ..observation(&previous, &view, 3, 100)
        };
        let status = for_valid_spec(&valid("spec: {}"), "prod-kv-u", &seen);
        assert_eq!(condition(&status, "Available").status, "True");
        assert_eq!(condition(&status, "Progressing").reason, "Stable");
        assert_eq!(condition(&status, "Degraded").status, "False");
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!((status.replicas, status.ready_replicas), (3, 3));
        assert_eq!(status.cluster_token.as_deref(), Some("prod-kv-u"));
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/instance=kv,app.kubernetes.io/name=cairn")
        );

        // A member stops answering: still quorate, but degraded; the Available transition time stays.
        let view = ClusterView {
            members: vec![
                member("kv-0", true, true),
                member("kv-1", false, false),
                member("kv-2", true, false),
            ],
            ..view
        };
        let seen = Observation {
            generation: Some(2),
            ..observation(&status, &view, 3, 200)
        };
        let next = for_valid_spec(&valid("spec: {}"), "prod-kv-u", &seen);
        assert_eq!(condition(&next, "Available").last_transition_time, time(100));
        assert_eq!(condition(&next, "Degraded").message, "kv-1 does not answer");
        assert_eq!(condition(&next, "Degraded").last_transition_time, time(200));
        assert_eq!(next.phase.as_deref(), Some("Degraded"));
    }

    #[test]
    fn another_cluster_answering_is_degraded_by_name() {
        let mut stranger = member("kv-2", false, false);
        stranger.applied_index = Some(9);
        stranger.foreign_cluster_id = Some("f00".into());
        let mut behind = member("kv-1", false, false);
        behind.applied_index = Some(1);
        behind.lag = Some(MAX_LAG + 7);
        let view = ClusterView {
            members: vec![member("kv-0", true, true), behind, stranger],
            leader: Some("kv-0".into()),
            cluster_id: Some("c1".into()),
            list_from_leader: true,
            version: None,
            ..ClusterView::default()
        };
        let previous = KVClusterStatus {
            cluster_id: Some("c1".into()),
            ..KVClusterStatus::default()
        };
        let seen = Observation {
            generation: Some(1),
            ..observation(&previous, &view, 3, 1)
        };
        let status = for_valid_spec(&valid("spec: {}"), "t", &seen);
        let degraded = condition(&status, "Degraded");
        assert_eq!(degraded.reason, "ClusterIDMismatch");
        assert_eq!(degraded.message, "kv-2 reports another cluster (f00)");
        assert_eq!(status.phase.as_deref(), Some("Degraded"));

        // Without the stranger, the lagging member is named with its lag.
        let view = ClusterView {
            members: view.members[..2].to_vec(),
            ..view.clone()
        };
        let seen = Observation { view: &view, ..seen };
        let status = for_valid_spec(&valid("spec: {}"), "t", &seen);
        assert_eq!(
            condition(&status, "Degraded").message,
            format!("kv-1 is {} entries behind the leader", MAX_LAG + 7)
        );

        // Every member agreeing on an ID that is not the latched one is a cluster-wide mismatch.
        let view = ClusterView {
            members: vec![member("kv-0", true, true)],
            cluster_id: Some("c2".into()),
            ..view.clone()
        };
        let seen = Observation { view: &view, ..seen };
        let status = for_valid_spec(&valid("spec: {replicas: 1}"), "t", &seen);
        assert_eq!(
            condition(&status, "Degraded").message,
            "the members report cluster c2, but this KVCluster's is c1"
        );
        assert_eq!(status.cluster_id.as_deref(), Some("c1"));
    }

    #[test]
    fn losing_quorum_and_bootstrapping_are_told_apart() {
        let previous = KVClusterStatus::default();
        let empty = ClusterView::default();
        let seen = observation(&previous, &empty, 3, 1);
        let status = for_valid_spec(&valid("spec: {}"), "t", &seen);
        assert_eq!(condition(&status, "Available").reason, "Unreachable");
        assert_eq!(condition(&status, "Progressing").reason, "Bootstrapping");
        assert_eq!(status.phase.as_deref(), Some("Creating"));

        let view = ClusterView {
            members: vec![
                member("kv-0", true, true),
                member("kv-1", false, false),
                member("kv-2", false, false),
            ],
            leader: Some("kv-0".into()),
            cluster_id: Some("c1".into()),
            list_from_leader: true,
            version: Some("0.1.0".into()),
            ..ClusterView::default()
        };
        let seen = observation(&previous, &view, 3, 1);
        let status = for_valid_spec(&valid("spec: {}"), "t", &seen);
        assert_eq!(condition(&status, "Available").reason, "QuorumLost");
        assert_eq!(
            condition(&status, "Available").message,
            "1 of 3 voters healthy; 2 needed"
        );
    }

    #[test]
    fn warnings_and_invalid_specs_become_conditions() {
        let previous = KVClusterStatus {
            cluster_token: Some("kept".into()),
            ..KVClusterStatus::default()
        };
        let view = ClusterView::default();
        let seen = Observation {
            generation: Some(5),
            ..observation(&previous, &view, 0, 1)
        };
        let status = for_valid_spec(&valid("spec: {replicas: 2}"), "t", &seen);
        assert_eq!(condition(&status, "SpecWarnings").reason, "EvenSize");

        let error = SpecError::Replicas(0);
        let status = for_invalid_spec(&error, &seen);
        assert_eq!(status.phase.as_deref(), Some("Invalid"));
        assert_eq!(status.cluster_token.as_deref(), Some("kept"));
        let degraded = condition(&status, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert_eq!(degraded.message, "spec.replicas is 0; it must be between 1 and 9");
        assert_eq!(degraded.observed_generation, Some(5));
    }

    #[test]
    fn a_roll_onto_a_new_template_is_upgrading_until_the_last_member_is_on_it() {
        let view = ClusterView {
            members: vec![
                member("kv-0", true, true),
                member("kv-1", false, false),
                member("kv-2", true, false),
            ],
            leader: Some("kv-0".into()),
            cluster_id: Some("c1".into()),
            list_from_leader: true,
            version: None,
            ..ClusterView::default()
        };
        let previous = KVClusterStatus::default();
        let seen = Observation {
            change: Some("waiting for kv-1 to rejoin and catch up".into()),
            outdated: vec!["kv-0".into(), "kv-2".into()],
            ..observation(&previous, &view, 3, 1)
        };
        let status = for_valid_spec(&valid("spec: {}"), "t", &seen);
        let progressing = condition(&status, "Progressing");
        assert_eq!(progressing.reason, "RollingUpdate");
        assert_eq!(
            progressing.message,
            "2 of 3 members on an older pod template (kv-0, kv-2): waiting for kv-1 to rejoin and \
             catch up"
        );
        assert_eq!(status.phase.as_deref(), Some("Upgrading"));
        assert_eq!(condition(&status, "Available").status, "True");

        // All healthy and one left: still not Running until it is on the new template too.
        let view = ClusterView {
            members: vec![
                member("kv-0", true, true),
                member("kv-1", true, false),
                member("kv-2", true, false),
            ],
            ..view
        };
        let seen = Observation {
            outdated: vec!["kv-0".into()],
            ..observation(&previous, &view, 3, 1)
        };
        let status = for_valid_spec(&valid("spec: {}"), "t", &seen);
        assert_eq!(status.phase.as_deref(), Some("Upgrading"));
        let seen = observation(&previous, &view, 3, 1);
        let status = for_valid_spec(&valid("spec: {}"), "t", &seen);
        assert_eq!(status.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn tokens_are_unique_per_resource() {
        assert_ne!(cluster_token("a", "kv", "u1"), cluster_token("b", "kv", "u1"));
        assert_ne!(cluster_token("a", "kv", "u1"), cluster_token("a", "kv", "u2"));
    }
}
