//! Planning one reconcile pass, purely: from the valid spec and everything observed (the
//! bootstrap ConfigMap, the StatefulSet's size, the member pods and claims, the cluster's own
//! view of itself), the bootstrap files and StatefulSet size to apply and the one membership step
//! to take. Nothing here talks to the API, so every state the operator can meet is a unit test.

use std::collections::BTreeMap;

use crate::access::Access;
use crate::build::bootstrap::initial_members;
use crate::build::names::Names;
use crate::membership::{
    ClaimSeen, Current, PodSeen, Step, joining_file, listed_ordinals, next_step, ordinals_with_entry,
    rebuilt_entries, replacement_key, replacements, sealed_entries,
};
use crate::observe::ClusterView;
use crate::peer_move;
use crate::quorum::{self, Decision, RECOVERY_KEY};
use crate::storage::{StorageDecision, decide};
use crate::validate::{StoragePlan, ValidSpec};

/// Everything one pass read, from the API and from the members.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The bootstrap ConfigMap's files; None when the ConfigMap does not exist.
    pub bootstrap: Option<BTreeMap<String, String>>,
    /// The StatefulSet's `spec.replicas`; None when it does not exist.
    pub statefulset_replicas: Option<i32>,
    /// The storage the StatefulSet's members were made with; None without a StatefulSet.
    pub statefulset_storage: Option<StoragePlan>,
    /// Member pods, by name, terminating ones included.
    pub pods: BTreeMap<String, PodSeen>,
    /// Member claims, by name.
    pub claims: BTreeMap<String, ClaimSeen>,
    /// What the members said.
    pub view: ClusterView,
    /// Whether a cluster has formed before (its ID is latched in status).
    pub formed_before: bool,
    /// How long the quorum has been lost, as status tells.
    pub quorum_lost_seconds: Option<u64>,
    /// The `cairn.dev/recover-quorum` annotation's value.
    pub approval: Option<String>,
    /// Each member's applied index when last seen (the previous status).
    pub last_seen: BTreeMap<String, u64>,
    /// Objects of this cluster's names owned by an earlier KVCluster of the same name, which
    /// garbage collection has not deleted yet.
    pub leftovers: Vec<String>,
    /// The operator's credentials and root's password, from their Secrets.
    pub access: Access,
    /// Seconds since the member list last showed a peer URL newly on https:// (peers moving to
    /// TLS); None before the first.
    pub peer_urls_quiet_seconds: Option<u64>,
}

/// What one pass does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The files the bootstrap ConfigMap must hold; None leaves it as it is.
    pub bootstrap: Option<BTreeMap<String, String>>,
    /// How many pods the StatefulSet runs; None leaves the member objects as they are.
    pub members: Option<i32>,
    /// The membership step; its file edits are already in `bootstrap`.
    pub step: Step,
    /// The storage the StatefulSet keeps, the claims to grow, and storage edits refused.
    pub storage: StorageDecision,
    /// A quorum recovery is done: the annotation that allowed it goes.
    pub clear_approval: bool,
}

pub fn plan(spec: &ValidSpec, observed: &Observed) -> Plan {
    let storage = decide(
        &spec.storage,
        observed.statefulset_storage.as_ref(),
        observed.claims.iter().map(|(name, claim)| (name, claim.size)),
    );
    let hold = |step: Step| Plan {
        bootstrap: None,
        members: None,
        step,
        storage: StorageDecision {
            grow: Vec::new(),
            ..storage.clone()
        },
        clear_approval: false,
    };
    if spec.paused {
        return hold(Step::Settled);
    }
    // Applying over them would adopt an earlier cluster's objects, and its members their data.
    if !observed.leftovers.is_empty() {
        return hold(Step::Wait(format!(
            "{} of an earlier KVCluster of this name are still being deleted",
            observed.leftovers.join(", ")
        )));
    }
    let names = Names::of(spec);
    let view = &observed.view;
    let files = match &observed.bootstrap {
        Some(files) if !files.is_empty() => files.clone(),
        _ => match missing_bootstrap(spec, &names, observed) {
            Ok(files) => files,
            Err(wait) => return hold(wait),
        },
    };
    let mut files = sealed_entries(&names, view, &files).unwrap_or(files);
    let clear_approval = match recover_quorum(spec, &names, observed, &mut files) {
        Recovery::Stop(step) => {
            let members = statefulset_size(&names, &files, observed);
            return Plan {
                bootstrap: Some(files),
                members: Some(members),
                step,
                storage,
                clear_approval: false,
            };
        }
        Recovery::Go { done } => done,
    };
    let step = next_step(&Current {
        names: &names,
        desired: spec.replicas,
        entries: &files,
        view,
        claims: &observed.claims,
        pods: &observed.pods,
        member_timeout: spec.member_timeout_seconds,
        last_seen: &observed.last_seen,
    });
    match &step {
        Step::WriteEntry { member, bootstrap } => {
            files.insert(format!("{member}.yaml"), bootstrap.file());
        }
        Step::DropEntry { member } => {
            files.remove(&format!("{member}.yaml"));
        }
        // A member added again (a replacement) is told the cluster as it is now; a new one gets
        // its file once the cluster has it (`WriteEntry`), so its pod does not start before.
        Step::AddLearner { member, .. } if files.contains_key(&format!("{member}.yaml")) => {
            if let Some(file) = joining_file(&names, view, member) {
                files.insert(format!("{member}.yaml"), file);
            }
        }
        Step::Replace {
            member, claim_uid, ..
        } => {
            files.insert(replacement_key(member), claim_uid.clone().unwrap_or_default());
        }
        _ => {}
    }
    let step = match step {
        Step::Settled if spec.peer_move => peer_move::next_step(
            &names,
            view,
            &observed.pods,
            observed.peer_urls_quiet_seconds,
            peer_move::settle_seconds(spec.server.election_timeout_ms),
        ),
        Step::Settled => auth_step(spec, observed),
        step => step,
    };
    drop_stale_markers(&names, view, &mut files, &step);
    let members = statefulset_size(&names, &files, observed);
    Plan {
        bootstrap: Some(files),
        members: Some(members),
        step,
        storage,
        clear_approval,
    }
}

/// Auth follows the spec once membership is settled. Whether it is on is known from the
/// leader's answer to the operator's login; without credentials (auth never asked for) or
/// without a leader, nothing is done.
fn auth_step(spec: &ValidSpec, observed: &Observed) -> Step {
    let view = &observed.view;
    if let Some(refused) = &view.login_refused {
        return Step::Wait(format!(
            "the cluster refuses the operator's credentials (Secret {}): {refused}",
            Names::of(spec).operator_credentials_secret()
        ));
    }
    let wanted = spec.auth.is_some();
    match view.auth_enabled {
        Some(enabled) if enabled != wanted && view.list_from_leader => {}
        _ => return Step::Settled,
    }
    if !wanted {
        return Step::DisableAuth;
    }
    match &observed.access.problem {
        Some(problem) => Step::Wait(format!("auth cannot be turned on: {problem}")),
        None => Step::EnableAuth,
    }
}

/// Where a lost quorum leaves planning.
enum Recovery {
    /// Nothing else happens this pass: this is the step.
    Stop(Step),
    /// Membership is planned as usual; `done` when a recovery has just come through (or been
    /// called off), so the annotation that allowed it goes.
    Go { done: bool },
}

/// Detects and recovers a lost quorum (`quorum`), editing `files`: the record of a recovery
/// under way, the survivor's force line, the others' replacement markers.
fn recover_quorum(
    spec: &ValidSpec,
    names: &Names,
    observed: &Observed,
    files: &mut BTreeMap<String, String>,
) -> Recovery {
    let view = &observed.view;
    if let Some(survivor) = files.get(RECOVERY_KEY).cloned() {
        let called_off = view.members.len() > 1 && !quorum::has_lost_quorum(view);
        if !quorum::recovered(names, view, &survivor) && !called_off {
            return Recovery::Stop(recovery_under_way(view, names, &survivor));
        }
        // The survivor leads alone: the force goes from its file (a later restart must not
        // drop members added since), and the others are replaced as after any failure. Or a
        // quorum answers again before the survivor was forced: recovery is called off, and the
        // markers of the members that came back go (they are listed).
        files.remove(RECOVERY_KEY);
        if let Some(file) = files.get_mut(&format!("{survivor}.yaml")) {
            *file = quorum::with_force(file, false);
        }
        return Recovery::Go { done: true };
    }
    if !observed.formed_before {
        return Recovery::Go { done: false };
    }
    let decision = quorum::decide(&quorum::Lost {
        names,
        view,
        policy: spec.quorum_loss,
        grace: spec.quorum_loss_seconds,
        lost_for: observed.quorum_lost_seconds,
        approval: observed.approval.as_deref(),
        last_seen: &observed.last_seen,
        claims: &observed.claims,
        pods: &observed.pods,
    });
    match decision {
        Decision::NotLost => Recovery::Go { done: false },
        Decision::Wait(why) => {
            let step = Step::Wait(why);
            drop_stale_markers(names, view, files, &step);
            Recovery::Stop(step)
        }
        Decision::Recover {
            survivor,
            others,
            why,
        } => {
            files.insert(RECOVERY_KEY.to_owned(), survivor.clone());
            if let Some(file) = files.get_mut(&format!("{survivor}.yaml")) {
                *file = quorum::with_force(file, true);
            }
            for (member, claim_uid) in others {
                files.insert(replacement_key(&member), claim_uid.unwrap_or_default());
            }
            Recovery::Stop(Step::ForceNewCluster { survivor, why })
        }
    }
}

/// A replacement's marker lasts from its removal until it is added back; markers of members the
/// cluster has (a removal that did not happen) or of files gone are stale.
fn drop_stale_markers(names: &Names, view: &ClusterView, files: &mut BTreeMap<String, String>, step: &Step) {
    let listed = listed_ordinals(names, view);
    let filed = ordinals_with_entry(names, files);
    let adding = match step {
        Step::AddLearner { member, .. } => names.ordinal_of_member(member),
        _ => None,
    };
    let replaced = match step {
        Step::Replace { member, .. } => names.ordinal_of_member(member),
        _ => None,
    };
    for (ordinal, _) in replacements(names, files) {
        let stale = Some(ordinal) == adding
            || (listed.contains(&ordinal) && Some(ordinal) != replaced)
            || !filed.contains(&ordinal);
        if stale && view.list_from_leader {
            files.remove(&replacement_key(&names.member(ordinal)));
        }
    }
}

/// While the survivor of a lost quorum is being restarted as a cluster of one: restart it again
/// if it answers without having been forced (the restart did not happen), else wait for it.
fn recovery_under_way(view: &ClusterView, names: &Names, survivor: &str) -> Step {
    let answering_unforced = view.members.len() > 1
        && view.members.iter().any(|m| {
            m.healthy
                && names
                    .ordinal_of_peer_url(&m.peer_url)
                    .is_some_and(|o| names.member(o) == survivor)
        });
    if answering_unforced {
        return Step::RestartPod {
            pod: survivor.to_owned(),
        };
    }
    Step::Wait(format!(
        "recovering the quorum: waiting for {survivor} to lead as a cluster of one"
    ))
}

/// The files when the ConfigMap is missing: the initial members' for a cluster that never
/// formed and has left nothing behind; for one that has, rebuilt from the leader's member list,
/// never from the spec (files from the spec would shrink the StatefulSet past members, or form a
/// second cluster).
fn missing_bootstrap(
    spec: &ValidSpec,
    names: &Names,
    observed: &Observed,
) -> Result<BTreeMap<String, String>, Step> {
    let untouched = !observed.formed_before
        && observed.view.members.is_empty()
        && observed.claims.is_empty()
        && observed.pods.is_empty();
    if untouched {
        let members = initial_members(spec);
        return Ok(members
            .iter()
            .map(|(member, plan)| (format!("{member}.yaml"), plan.file()))
            .collect());
    }
    if let Some(files) = rebuilt_entries(names, &observed.view) {
        return Ok(files);
    }
    if !observed.formed_before && observed.pods.is_empty() && !observed.claims.is_empty() {
        let claims: Vec<&str> = observed.claims.keys().map(String::as_str).collect();
        return Err(Step::Wait(format!(
            "claims {claims:?} of an earlier cluster of this name exist; delete them to create this one"
        )));
    }
    Err(Step::Wait(
        "the bootstrap ConfigMap is gone; it is rebuilt from the leader's member list once the leader answers"
            .into(),
    ))
}

/// One pod per ordinal up to the highest that has a file or is a member: a member's pod is never
/// cut off. Without the leader's list the members are not known, so the StatefulSet only grows.
fn statefulset_size(names: &Names, files: &BTreeMap<String, String>, observed: &Observed) -> i32 {
    let filed = ordinals_with_entry(names, files);
    let listed = listed_ordinals(names, &observed.view);
    let size = filed.iter().chain(&listed).max().map_or(0, |o| o + 1);
    if observed.view.list_from_leader {
        size
    } else {
        size.max(observed.statefulset_replicas.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::access::Credentials;
    use crate::build::bootstrap::is_new;
    use crate::build::names::PeerScheme;
    use crate::build::testing::valid;
    use crate::crd::MemberStatus;
    use crate::membership::{replacement_key, replacements};

    const ORDINALS: i32 = 7;

    /// The names of a default cluster (peer TLS on).
    fn names() -> Names {
        Names::of(&valid("spec: {}"))
    }

    fn spec(replicas: i32) -> ValidSpec {
        valid(&format!("spec: {{replicas: {replicas}}}"))
    }

    /// A member of the leader's list at `ordinal`.
    fn member(ordinal: i32, learner: bool, healthy: bool, started: bool) -> MemberStatus {
        let names = names();
        let name = names.member(ordinal);
        MemberStatus {
            peer_url: names.peer_url(&name),
            name: if started { name } else { String::new() },
            id: format!("{:x}", 0x100 + ordinal),
            is_learner: learner,
            healthy,
            applied_index: started.then_some(7),
            ..MemberStatus::default()
        }
    }

    fn view(mut members: Vec<MemberStatus>, leader: Option<i32>) -> ClusterView {
        for (ordinal, member) in members.iter_mut().enumerate() {
            member.is_leader = leader == Some(ordinal as i32);
        }
        members.retain(|m| !m.peer_url.is_empty());
        ClusterView {
            leader: members.iter().find(|m| m.is_leader).map(|m| m.name.clone()),
            cluster_id: Some("c1".into()),
            members,
            list_from_leader: true,
            ..ClusterView::default()
        }
    }

    fn existing(ordinals: impl IntoIterator<Item = i32>) -> BTreeMap<String, String> {
        ordinals
            .into_iter()
            .map(|o| {
                (
                    format!("kv-{o}.yaml"),
                    "initial-cluster-state: existing\n".to_owned(),
                )
            })
            .collect()
    }

    fn claims(ordinals: impl IntoIterator<Item = i32>) -> BTreeMap<String, ClaimSeen> {
        ordinals
            .into_iter()
            .map(|o| (format!("data-kv-{o}"), ClaimSeen::default()))
            .collect()
    }

    fn pods(ordinals: impl IntoIterator<Item = i32>) -> BTreeMap<String, PodSeen> {
        ordinals
            .into_iter()
            .map(|o| {
                let seen = PodSeen {
                    address: Some(format!("10.0.0.{o}")),
                    ..PodSeen::default()
                };
                (format!("kv-{o}"), seen)
            })
            .collect()
    }

    /// Five healthy voters, kv-0 leading, every file, claim and pod in place.
    fn five_members() -> Observed {
        Observed {
            bootstrap: Some(existing(0..5)),
            statefulset_replicas: Some(5),
            statefulset_storage: None,
            pods: pods(0..5),
            claims: claims(0..5),
            view: view((0..5).map(|o| member(o, false, true, true)).collect(), Some(0)),
            formed_before: true,
            ..Observed::default()
        }
    }

    #[test]
    fn auth_follows_the_spec_once_membership_is_settled() {
        let wanted = valid("spec: {replicas: 5, auth: {enabled: true}}");
        let access = Access {
            operator: Some(Credentials {
                user: "cairn-operator".into(),
                password: "o".into(),
            }),
            root_password: Some("r".into()),
            problem: None,
            identity: None,
        };
        let mut observed = five_members();
        observed.access = access.clone();
        // Whether auth is on is not known (no leader answered a login): nothing is done.
        assert_eq!(plan(&wanted, &observed).step, Step::Settled);
        observed.view.auth_enabled = Some(false);
        assert_eq!(plan(&wanted, &observed).step, Step::EnableAuth);
        // Membership goes first.
        let six = valid("spec: {replicas: 6, auth: {enabled: true}}");
        assert!(matches!(plan(&six, &observed).step, Step::AddLearner { .. }));
        // Only on the leader's word.
        observed.view.list_from_leader = false;
        assert_eq!(
            plan(&wanted, &observed).step,
            Step::Wait("waiting for the leader's member list".into())
        );
        observed.view.list_from_leader = true;
        // A missing root Secret is named, and waited for.
        observed.access.problem =
            Some("the Secret \"mine\" that spec.auth.rootPasswordSecret names does not exist".into());
        assert_eq!(
            plan(&wanted, &observed).step,
            Step::Wait(
                "auth cannot be turned on: the Secret \"mine\" that spec.auth.rootPasswordSecret names \
                 does not exist"
                    .into()
            )
        );
        observed.access = access;
        // On, as wanted; off again when the spec says so.
        observed.view.auth_enabled = Some(true);
        assert_eq!(plan(&wanted, &observed).step, Step::Settled);
        assert_eq!(plan(&spec(5), &observed).step, Step::DisableAuth);
        // Credentials the cluster refuses (changed by hand) are reported whatever the spec says.
        observed.view.login_refused =
            Some("etcdserver: authentication failed, invalid user ID or password".into());
        for spec in [&wanted, &spec(5)] {
            let Step::Wait(why) = plan(spec, &observed).step else {
                panic!("not waiting");
            };
            assert!(
                why.starts_with(
                    "the cluster refuses the operator's credentials (Secret kv-operator-credentials)"
                ),
                "{why}"
            );
        }
    }

    /// R1: with kv-3 removed from a 5-member cluster (a replacement under way, or `member
    /// remove` by hand), scaling to 3 once dropped kv-3's file, sized the StatefulSet to the
    /// 4 files left and deleted voter kv-4's pod and claim. Now kv-4 leaves the cluster first,
    /// and only then do the files and the StatefulSet shrink, from the top.
    #[test]
    fn r1_a_missing_member_below_a_voter_never_shrinks_the_statefulset_past_the_voter() {
        let mut observed = five_members();
        observed.view.members.remove(3);
        let step = |observed: &Observed| plan(&spec(3), observed);
        let first = step(&observed);
        assert_eq!(first.members, Some(5));
        assert_eq!(first.bootstrap, Some(existing(0..5)));
        assert_eq!(
            first.step,
            Step::Remove {
                member: "kv-4".into(),
                id: 0x104
            }
        );

        // kv-4 is out: its file goes (the highest), then kv-3's, one pod at a time.
        observed.view.members.retain(|m| m.name != "kv-4");
        let second = step(&observed);
        assert_eq!(
            second.step,
            Step::DropEntry {
                member: "kv-4".into()
            }
        );
        assert_eq!(second.members, Some(4));
        observed.bootstrap = second.bootstrap;
        let third = step(&observed);
        assert_eq!(
            third.step,
            Step::DropEntry {
                member: "kv-3".into()
            }
        );
        assert_eq!(third.members, Some(3));

        // The claims go once their pods have.
        observed.bootstrap = third.bootstrap;
        observed.pods = pods(0..3);
        let fourth = step(&observed);
        assert_eq!(
            fourth.step,
            Step::DeleteClaim {
                claim: "data-kv-3".into()
            }
        );
    }

    /// R2: the bootstrap ConfigMap was re-created from the spec when it went missing, which
    /// during a 5 → 3 scale-down sized the StatefulSet to 3 and deleted the claims of voters
    /// kv-3 and kv-4. Now it is rebuilt from the leader's member list, or nothing is done.
    #[test]
    fn r2_a_lost_bootstrap_configmap_is_rebuilt_from_the_members_never_from_the_spec() {
        let mut observed = five_members();
        observed.bootstrap = None;
        let rebuilt = plan(&spec(3), &observed);
        assert_eq!(rebuilt.members, Some(5));
        let files = rebuilt.bootstrap.expect("rebuilt files");
        assert_eq!(files.len(), 5);
        assert!(
            files.values().all(|file| !is_new(file)
                && file.contains("kv-4=https://kv-4.kv-peer.prod.svc.cluster.local:2380"))
        );
        assert_eq!(
            rebuilt.step,
            Step::Remove {
                member: "kv-4".into(),
                id: 0x104
            }
        );

        // Without the leader, nothing is touched at all.
        observed.view.list_from_leader = false;
        let held = plan(&spec(3), &observed);
        assert_eq!((held.bootstrap, held.members), (None, None));
        assert!(matches!(held.step, Step::Wait(_)));
    }

    /// A member whose pod has not been Ready for longer than the timeout (a corrupt log, say) is
    /// removed with its claim marked; the marked claim goes, the StatefulSet makes pod and claim
    /// anew, and the empty member is added back under its own name.
    #[test]
    fn a_member_failing_past_its_timeout_is_replaced_on_a_new_claim() {
        let spec = valid("spec: {replicas: 5, recovery: {memberTimeoutSeconds: 60}}");
        let mut observed = five_members();
        for (ordinal, claim) in observed.claims.values_mut().enumerate() {
            claim.uid = Some(format!("old-{ordinal}"));
        }
        // The lost members' pods fail their readiness probe (no leader).
        for lost in ["kv-1", "kv-2"] {
            observed.pods.get_mut(lost).unwrap().unready_seconds = Some(30);
        }
        observed.view.members[2].healthy = false;
        let failing = observed.pods.get_mut("kv-2").unwrap();
        failing.unready_seconds = Some(59);
        assert_eq!(plan(&spec, &observed).step, Step::Settled, "not yet");
        observed.pods.get_mut("kv-2").unwrap().unready_seconds = Some(61);
        let replace = plan(&spec, &observed);
        assert_eq!(
            replace.step,
            Step::Replace {
                member: "kv-2".into(),
                id: 0x102,
                claim_uid: Some("old-2".into()),
                why: "kv-2 has failed for 61s".into()
            }
        );
        let files = replace.bootstrap.expect("files");
        assert_eq!(files.get("kv-2.replacing").map(String::as_str), Some("old-2"));

        // Out of the cluster: its old claim goes, its pod too while the claim waits for it.
        observed.bootstrap = Some(files);
        observed.view.members.remove(2);
        let step = |observed: &Observed| plan(&spec, observed).step;
        assert_eq!(
            step(&observed),
            Step::DeleteClaim {
                claim: "data-kv-2".into()
            }
        );
        observed.claims.get_mut("data-kv-2").unwrap().terminating = true;
        assert_eq!(step(&observed), Step::RestartPod { pod: "kv-2".into() });
        observed.claims.remove("data-kv-2");
        observed.pods.remove("kv-2");
        assert_eq!(
            step(&observed),
            Step::Wait("waiting for the StatefulSet to make kv-2 and its claim anew".into())
        );

        // A new claim: the member is added back, and the marker goes with that step.
        observed.claims.insert(
            "data-kv-2".into(),
            ClaimSeen {
                uid: Some("new-2".into()),
                ..ClaimSeen::default()
            },
        );
        let added = plan(&spec, &observed);
        assert_eq!(
            added.step,
            Step::AddLearner {
                member: "kv-2".into(),
                peer_url: "https://kv-2.kv-peer.prod.svc.cluster.local:2380".into()
            }
        );
        assert!(!added.bootstrap.unwrap().contains_key("kv-2.replacing"));
    }

    /// Two of three members are lost for good: after the grace period the one that answers is
    /// restarted as a cluster of one (its file forces it), the others are marked for
    /// replacement, and once it leads alone the force and the record go and replacing begins.
    #[test]
    fn a_lost_quorum_is_recovered_from_the_member_that_answers_once_allowed() {
        let spec = valid("spec: {replicas: 3, recovery: {quorumLoss: Automatic, quorumLossSeconds: 30}}");
        let mut answering = member(0, false, true, true);
        answering.applied_index = Some(42);
        let lost = vec![
            answering,
            member(1, false, false, true),
            member(2, false, false, true),
        ];
        let mut lost_view = view(lost, None);
        lost_view.list_from_leader = false;
        let mut observed = Observed {
            bootstrap: Some(existing(0..3)),
            statefulset_replicas: Some(3),
            pods: pods(0..3),
            claims: claims(0..3),
            view: lost_view,
            formed_before: true,
            quorum_lost_seconds: Some(10),
            ..Observed::default()
        };
        for (ordinal, claim) in observed.claims.values_mut().enumerate() {
            claim.uid = Some(format!("old-{ordinal}"));
        }
        // The lost members' pods fail their readiness probe (no leader).
        for lost in ["kv-1", "kv-2"] {
            observed.pods.get_mut(lost).unwrap().unready_seconds = Some(30);
        }
        let waiting = plan(&spec, &observed);
        assert!(
            matches!(&waiting.step, Step::Wait(why) if why.ends_with("Automatic recovery in 20s")),
            "{waiting:?}"
        );
        assert_eq!(waiting.members, Some(3), "nothing shrinks");

        observed.quorum_lost_seconds = Some(31);
        let force = plan(&spec, &observed);
        assert!(matches!(&force.step, Step::ForceNewCluster { survivor, .. } if survivor == "kv-0"));
        let files = force.bootstrap.expect("files");
        assert_eq!(files.get("quorum-recovery").map(String::as_str), Some("kv-0"));
        assert!(files["kv-0.yaml"].ends_with("force-new-cluster: true\n"));
        assert_eq!(files.get("kv-1.replacing").map(String::as_str), Some("old-1"));
        assert_eq!(files.get("kv-2.replacing").map(String::as_str), Some("old-2"));

        // While it restarts, nothing else happens.
        observed.bootstrap = Some(files);
        observed.view.members[0].healthy = false;
        assert_eq!(
            plan(&spec, &observed).step,
            Step::Wait("recovering the quorum: waiting for kv-0 to lead as a cluster of one".into())
        );

        // It leads alone: the force and the record go, and the others are replaced.
        observed.view = view(vec![member(0, false, true, true)], Some(0));
        let done = plan(&spec, &observed);
        let files = done.bootstrap.expect("files");
        assert!(!files.contains_key("quorum-recovery"));
        assert!(!files["kv-0.yaml"].contains("force-new-cluster"));
        assert!(done.clear_approval);
        assert_eq!(
            done.step,
            Step::DeleteClaim {
                claim: "data-kv-2".into()
            }
        );
    }

    #[test]
    fn a_new_cluster_gets_the_initial_files_and_claims_of_an_old_one_stop_it() {
        let fresh = plan(&spec(3), &Observed::default());
        assert_eq!(fresh.members, Some(3));
        let files = fresh.bootstrap.expect("initial files");
        assert_eq!(files.len(), 3);
        assert!(files.values().all(|file| is_new(file)));

        let leftover = Observed {
            claims: claims(0..3),
            ..Observed::default()
        };
        let held = plan(&spec(3), &leftover);
        assert_eq!(held.members, None);
        assert_eq!(
            held.step,
            Step::Wait(
                "claims [\"data-kv-0\", \"data-kv-1\", \"data-kv-2\"] of an earlier cluster of this name \
                 exist; delete them to create this one"
                    .into()
            )
        );
    }

    fn listed<'a>(names: &Names, observed: &'a Observed) -> BTreeMap<i32, &'a MemberStatus> {
        observed
            .view
            .members
            .iter()
            .filter_map(|m| Some((names.ordinal_of_peer_url(&m.peer_url)?, m)))
            .collect()
    }

    fn ordinal_of(name: &str) -> i32 {
        names()
            .ordinal_of_member(name)
            .or_else(|| names().ordinal_of_claim(name))
            .expect("a member or claim name")
    }

    /// The safety invariants of one planned pass.
    fn check(spec: &ValidSpec, observed: &Observed, plan: &Plan) -> Result<(), TestCaseError> {
        let desired = spec.replicas;
        let names = Names::of(spec);
        let listed = listed(&names, observed);
        let voters: Vec<&&MemberStatus> = listed.values().filter(|m| !m.is_learner).collect();
        let healthy = voters.iter().filter(|m| m.healthy).count();
        let quorum = |n: usize| n / 2 + 1;
        let from_leader = observed.view.list_from_leader;

        if let Some(size) = plan.members {
            for ordinal in listed.keys() {
                prop_assert!(
                    *ordinal < size,
                    "the StatefulSet ({size}) cuts off member {ordinal}"
                );
            }
            if !from_leader {
                prop_assert!(size >= observed.statefulset_replicas.unwrap_or(0), "shrank blind");
            }
        }
        if let (Some(before), Some(after)) = (&observed.bootstrap, &plan.bootstrap) {
            for ordinal in listed.keys() {
                let key = format!("kv-{ordinal}.yaml");
                if before.contains_key(&key) {
                    prop_assert!(after.contains_key(&key), "dropped the file of member {ordinal}");
                }
            }
        }
        let untouched = !observed.formed_before
            && observed.view.members.is_empty()
            && observed.claims.is_empty()
            && observed.pods.is_empty();
        if observed.bootstrap.as_ref().is_none_or(BTreeMap::is_empty) && !untouched {
            let files = plan.bootstrap.iter().flat_map(|f| f.values());
            prop_assert!(
                files.clone().all(|f| !is_new(f)),
                "a lost ConfigMap came back from the spec"
            );
        }
        if !from_leader {
            prop_assert!(
                matches!(plan.step, Step::Wait(_)),
                "acted without the leader's list: {:?}",
                plan.step
            );
        }
        let marked = observed
            .bootstrap
            .as_ref()
            .map(|files| replacements(&names, files))
            .unwrap_or_default();
        if let Some(files) = &plan.bootstrap {
            for (ordinal, _) in replacements(&names, files) {
                let replacing =
                    matches!(&plan.step, Step::Replace { member, .. } if ordinal_of(member) == ordinal);
                let recovering = files.contains_key(RECOVERY_KEY);
                prop_assert!(
                    !listed.contains_key(&ordinal) || replacing || recovering || !from_leader,
                    "member {ordinal} is marked for replacement"
                );
            }
        }
        match &plan.step {
            Step::DeleteClaim { claim } => {
                let ordinal = ordinal_of(claim);
                prop_assert!(!listed.contains_key(&ordinal), "deleted member {ordinal}'s claim");
                let uid = observed.claims.get(claim).and_then(|c| c.uid.clone());
                let replaced = uid.is_some() && marked.get(&ordinal) == uid.as_ref();
                if !replaced {
                    prop_assert!(!observed.pods.contains_key(&names.member(ordinal)));
                    prop_assert!(plan.members.is_some_and(|size| ordinal >= size));
                    let files = plan.bootstrap.as_ref().expect("files");
                    let key = format!("kv-{ordinal}.yaml");
                    prop_assert!(!files.contains_key(&key));
                }
            }
            Step::DropEntry { member } => {
                prop_assert!(
                    !listed.contains_key(&ordinal_of(member)),
                    "dropped a member's file"
                );
            }
            Step::RestartPod { pod } => {
                let member = listed.get(&ordinal_of(pod));
                prop_assert!(
                    member.is_none_or(|m| m.is_learner && !m.healthy),
                    "restarted {pod}"
                );
            }
            Step::Replace {
                member,
                id,
                claim_uid,
                ..
            } => {
                let replaced = listed.get(&ordinal_of(member)).expect("a listed member");
                prop_assert_eq!(&replaced.id, &format!("{id:x}"));
                prop_assert!(!replaced.healthy);
                if !replaced.is_learner {
                    let left = voters.len() - 1;
                    prop_assert!(left >= 1 && healthy >= quorum(left), "replacement breaks quorum");
                }
                let files = plan.bootstrap.as_ref().expect("files");
                let marker = files.get(&replacement_key(member));
                prop_assert_eq!(marker.cloned(), Some(claim_uid.clone().unwrap_or_default()));
            }
            Step::Remove { member, id } => {
                let removed = listed.get(&ordinal_of(member)).expect("a listed member");
                prop_assert_eq!(&removed.id, &format!("{id:x}"));
                if !removed.is_learner {
                    let left = voters.len() - 1;
                    let healthy_left = healthy - usize::from(removed.healthy);
                    prop_assert!(left >= 1 && healthy_left >= quorum(left), "removal breaks quorum");
                }
            }
            Step::Promote { member, .. } => {
                let learner = listed.get(&ordinal_of(member)).expect("a listed member");
                prop_assert!(learner.is_learner && learner.healthy);
                prop_assert!(healthy + 1 >= quorum(voters.len() + 1));
            }
            Step::AddLearner { member, .. } => {
                prop_assert!(listed.values().all(|m| !m.is_learner), "a second learner");
                prop_assert!(!listed.contains_key(&ordinal_of(member)));
            }
            Step::MoveLeader { from, to, .. } => {
                prop_assert!(listed.get(&ordinal_of(from)).is_some_and(|m| m.is_leader));
                prop_assert!(listed.get(&ordinal_of(to)).is_some_and(|m| !m.is_learner));
            }
            Step::UpdatePeerUrl { member, .. } => {
                prop_assert!(spec.peer_move, "a peer URL changed outside a move");
                let quiet = observed.peer_urls_quiet_seconds;
                prop_assert!(
                    quiet.is_none_or(|q| q >= 15),
                    "changed {member}'s URL {quiet:?}s after the last"
                );
                let updated = listed.get(&ordinal_of(member)).expect("a listed member");
                prop_assert!(
                    updated.peer_url.starts_with("http://"),
                    "{member} is on TLS already"
                );
                ready_to_move(&names, observed, &listed)?;
            }
            Step::PeersOnTls => {
                prop_assert!(spec.peer_move, "peers on TLS outside a move");
                prop_assert!(listed.values().all(|m| m.peer_url.starts_with("https://")));
                ready_to_move(&names, observed, &listed)?;
            }
            Step::Settled | Step::EnableAuth | Step::DisableAuth => {
                prop_assert!(!spec.peer_move, "settled half way to peer TLS");
                let target: BTreeSet<i32> = (0..desired).collect();
                prop_assert_eq!(listed.keys().copied().collect::<BTreeSet<_>>(), target);
                prop_assert!(listed.values().all(|m| !m.is_learner));
                let outdated = |o: &i32| observed.pods.get(&names.member(*o)).is_some_and(|p| p.outdated);
                prop_assert!(!listed.keys().any(outdated), "settled with members to roll");
            }
            Step::Roll { member } => {
                let rolled = listed.get(&ordinal_of(member)).expect("a listed member");
                prop_assert!(
                    listed.values().all(|m| m.healthy && !m.is_learner),
                    "rolled {member} with a member unhealthy"
                );
                prop_assert!(
                    listed.keys().all(|o| observed
                        .pods
                        .get(&names.member(*o))
                        .is_some_and(|p| !p.terminating && p.unready_seconds.is_none())),
                    "rolled {member} with a member's pod away or not Ready"
                );
                prop_assert!(!rolled.is_leader || voters.len() == 1, "rolled the leader");
                prop_assert!(observed.pods.get(member).is_some_and(|p| p.outdated));
            }
            Step::ForceNewCluster { survivor, .. } => {
                prop_assert!(
                    quorum::has_lost_quorum(&observed.view),
                    "forced a cluster with a quorum"
                );
                let kept = listed.get(&ordinal_of(survivor));
                prop_assert!(kept.is_some_and(|m| m.healthy && !m.is_learner));
            }
            Step::Wait(_) | Step::WriteEntry { .. } => {}
        }
        Ok(())
    }

    /// Peer URLs change only in a whole cluster of voters that are healthy, Ready, on the
    /// StatefulSet's template and serving TLS to their peers.
    fn ready_to_move(
        names: &Names,
        observed: &Observed,
        listed: &BTreeMap<i32, &MemberStatus>,
    ) -> Result<(), TestCaseError> {
        prop_assert!(observed.view.list_from_leader);
        for (ordinal, member) in listed {
            prop_assert!(member.healthy && !member.is_learner, "member {ordinal}");
            let pod = observed.pods.get(&names.member(*ordinal));
            prop_assert!(
                pod.is_some_and(|p| p.peer_tls
                    && !p.outdated
                    && !p.terminating
                    && p.unready_seconds.is_none()),
                "member {ordinal}'s pod: {pod:?}"
            );
        }
        Ok(())
    }

    /// Any state at all: members, files, claims and pods at random ordinals, some of each
    /// terminating or lost, the ConfigMap sometimes gone, the list sometimes not the leader's;
    /// sometimes the peers are moving to TLS, with members on either scheme.
    fn any_state() -> impl Strategy<Value = (ValidSpec, Observed)> {
        let n = ORDINALS as usize;
        let members = prop::collection::vec(prop::option::weighted(0.7, any::<(bool, bool, bool)>()), n);
        let files = prop::collection::vec(prop::option::weighted(0.7, any::<bool>()), n);
        let claims = prop::collection::vec(prop::option::weighted(0.7, (any::<bool>(), any::<bool>())), n);
        let unready = prop::option::of(prop::sample::select(vec![5u64, 299, 300, 10_000]));
        let pods = prop::collection::vec(
            prop::option::weighted(
                0.7,
                (
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    unready,
                    any::<bool>(),
                ),
            ),
            n,
        );
        let markers = prop::collection::vec(prop::option::weighted(0.2, any::<bool>()), n);
        // Whether the peers move, each member's URL and pod on TLS, the quiet seconds.
        let moving = (
            any::<bool>(),
            prop::collection::vec(any::<(bool, bool)>(), n),
            prop::option::of(prop::sample::select(vec![0u64, 14, 15, 100])),
        );
        let flags = (
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.8),
            any::<bool>(),
        );
        (
            1..=ORDINALS,
            members,
            files,
            claims,
            pods,
            prop::option::of(0..ORDINALS),
            prop::option::of(0..=ORDINALS + 1),
            flags,
            markers,
            moving,
        )
            .prop_map(
                |(
                    desired,
                    members,
                    files,
                    claim_flags,
                    pod_flags,
                    leader,
                    replicas,
                    flags,
                    markers,
                    moving,
                )| {
                    let (configmap_gone, formed_before, from_leader, learners_lead) = flags;
                    let (moving, on_tls, quiet) = moving;
                    let spec = if moving {
                        valid(&format!(
                            "spec: {{replicas: {desired}, tls: {{peer: {{enabled: true}}}}}}"
                        ))
                        .with_latched_peer_tls(false, false)
                    } else {
                        spec(desired)
                    };
                    let names = Names::of(&spec);
                    let listed: Vec<MemberStatus> = members
                        .iter()
                        .enumerate()
                        .map(|(o, m)| match m {
                            Some((learner, healthy, started)) => {
                                member(o as i32, *learner && !learners_lead, *healthy, *started)
                            }
                            None => MemberStatus::default(),
                        })
                        .collect();
                    let mut view = view(listed, leader);
                    view.list_from_leader = from_leader;
                    for (m, (url_on_tls, _)) in view.members.iter_mut().zip(&on_tls) {
                        if moving && *url_on_tls {
                            m.peer_url = m.peer_url.replacen("http://", "https://", 1);
                        }
                    }
                    let mut bootstrap: BTreeMap<String, String> = files
                        .iter()
                        .enumerate()
                        .filter_map(|(o, new)| {
                            let state = if (*new)? { "new" } else { "existing" };
                            Some((
                                format!("kv-{o}.yaml"),
                                format!("initial-cluster-state: {state}\n"),
                            ))
                        })
                        .collect();
                    // Markers name the claim there is, or one long gone.
                    for (o, marker) in markers.iter().enumerate() {
                        if let Some(current) = marker {
                            let uid = if *current {
                                format!("u{o}")
                            } else {
                                "gone".to_owned()
                            };
                            bootstrap.insert(replacement_key(&names.member(o as i32)), uid);
                        }
                    }
                    let claims = claim_flags
                        .iter()
                        .enumerate()
                        .filter_map(|(o, flags)| {
                            let (terminating, renewed) = (*flags)?;
                            let seen = ClaimSeen {
                                uid: Some(if renewed {
                                    format!("new{o}")
                                } else {
                                    format!("u{o}")
                                }),
                                terminating,
                                ..ClaimSeen::default()
                            };
                            Some((names.claim(o as i32), seen))
                        })
                        .collect();
                    let pods = pod_flags
                        .iter()
                        .enumerate()
                        .filter_map(|(o, flags)| {
                            let (terminating, lost_data, not_yet_member, unready_seconds, outdated) =
                                (*flags)?;
                            let seen = PodSeen {
                                terminating,
                                lost_data,
                                not_yet_member,
                                unready_seconds,
                                ready_seconds: unready_seconds.is_none().then_some(10_000),
                                address: Some(format!("10.0.0.{o}")),
                                client_tls: false,
                                peer_tls: moving && on_tls[o].1,
                                outdated,
                            };
                            Some((names.member(o as i32), seen))
                        })
                        .collect();
                    let observed = Observed {
                        bootstrap: (!configmap_gone).then_some(bootstrap),
                        statefulset_replicas: replicas,
                        statefulset_storage: None,
                        pods,
                        claims,
                        // As far along as at the previous look: learners that run are stalled.
                        last_seen: view
                            .members
                            .iter()
                            .filter_map(|m| Some((m.name.clone(), m.applied_index?)))
                            .collect(),
                        view,
                        formed_before,
                        peer_urls_quiet_seconds: quiet,
                        ..Observed::default()
                    };
                    (spec, observed)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 4096,
            rng_seed: prop::test_runner::RngSeed::Fixed(0x0ca1_2b5e),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn no_plan_ever_harms_a_member_or_quorum((spec, observed) in any_state()) {
            let plan = plan(&spec, &observed);
            check(&spec, &observed, &plan)?;
        }

        /// From any healthy cluster, with or without a member taken out by hand, to any size:
        /// every pass is safe and the cluster arrives at exactly the spec's members, files and
        /// claims.
        #[test]
        fn every_resize_arrives_safely(
            from in 1..=6i32,
            to in 1..=6i32,
            removed in prop::option::of(0..6i32),
            leader in 0..6i32,
        ) {
            let mut world = World::healthy(from, leader % from);
            if let Some(removed) = removed.filter(|&r| r < from && from > 2) {
                world.members.remove(&removed);
            }
            world.run(to, 80)?;
            let target: BTreeSet<i32> = (0..to).collect();
            prop_assert_eq!(world.members.keys().copied().collect::<BTreeSet<_>>(), target.clone());
            prop_assert_eq!(world.files.clone(), target.clone());
            let claims: BTreeSet<i32> = world.claims.keys().copied().collect();
            prop_assert!(claims.is_subset(&target), "claims left behind: {claims:?}");
        }

        /// A member whose disk goes bad (its pod never Ready again) in a cluster of 3 or more,
        /// while the spec asks for any size: it is replaced by an empty member on a new claim,
        /// one safe step at a time, and the cluster arrives at the spec with no bad disk in use.
        #[test]
        fn a_failed_member_is_replaced_on_a_new_claim(
            from in 3..=6i32,
            to in 1..=6i32,
            broken in 0..6i32,
            leader in 0..6i32,
        ) {
            let broken = broken % from;
            let leader = if leader % from == broken { (broken + 1) % from } else { leader % from };
            let mut world = World::healthy(from, leader);
            let bad = world.claims[&broken].uid;
            world.bad_disks.insert(bad);
            world.run(to, 120)?;
            let target: BTreeSet<i32> = (0..to).collect();
            prop_assert_eq!(world.members.keys().copied().collect::<BTreeSet<_>>(), target);
            prop_assert!(world.claims.values().all(|c| !world.bad_disks.contains(&c.uid)));
        }

        /// A plaintext cluster asked for peer TLS, resizing or not: the members roll onto both
        /// schemes, their URLs change one at a time, a while apart, peer TLS is latched and they
        /// roll onto TLS only, with every member reachable by every other throughout.
        #[test]
        fn every_move_to_peer_tls_arrives_with_every_member_reachable(
            from in 1..=5i32,
            to in 1..=5i32,
            leader in 0..5i32,
        ) {
            let mut world = World::plaintext(from, leader % from);
            world.run_move(to, 200)?;
            let target: BTreeSet<i32> = (0..to).collect();
            prop_assert_eq!(world.members.keys().copied().collect::<BTreeSet<_>>(), target.clone());
            prop_assert!(world.peers_on_tls);
            prop_assert_eq!(&world.tls_urls, &target);
            prop_assert!(world.pod_schemes.iter().all(|(o, s)| !target.contains(o) || *s == PeerScheme::Tls));
        }

        /// A new pod template (an upgrade) while the spec asks for any size: every member ends
        /// on it, each restarted once at most, the leader of the time never, and the members
        /// keep their claims (a roll is a restart, not a replacement).
        #[test]
        fn a_new_template_rolls_every_member_once_and_never_the_leader(
            from in 1..=6i32,
            to in 1..=6i32,
            leader in 0..6i32,
        ) {
            let mut world = World::healthy(from, leader % from);
            world.outdated = world.pods.clone();
            let claims: BTreeMap<i32, u32> = world.claims.iter().map(|(&o, c)| (o, c.uid)).collect();
            world.run(to, 120)?;
            prop_assert!(world.outdated.is_empty(), "left on the old template: {:?}", world.outdated);
            let mut once = BTreeSet::new();
            for &(ordinal, was_leader) in &world.rolled {
                prop_assert!(once.insert(ordinal), "{ordinal} restarted twice");
                prop_assert!(!was_leader || from.min(to) == 1, "restarted leader {ordinal}");
            }
            for (ordinal, claim) in &world.claims {
                if let Some(&uid) = claims.get(ordinal) {
                    prop_assert_eq!(claim.uid, uid, "member {}'s claim was replaced", ordinal);
                }
            }
        }
    }

    /// A cluster the way the planner's steps and Kubernetes change it: the StatefulSet runs one
    /// pod per ordinal below its size and makes a missing claim when it makes a pod; a claim that
    /// is deleted while its pod runs waits for the pod; a member starts once its pod has its file,
    /// and stays unhealthy (its pod never Ready) on a bad disk.
    struct World {
        /// ordinal → (learner, started)
        members: BTreeMap<i32, (bool, bool)>,
        files: BTreeSet<i32>,
        markers: BTreeMap<String, String>,
        claims: BTreeMap<i32, Claim>,
        pods: BTreeSet<i32>,
        bad_disks: BTreeSet<u32>,
        next_uid: u32,
        size: i32,
        leader: i32,
        /// Pods made from the previous template.
        outdated: BTreeSet<i32>,
        /// Members restarted onto the new template, and whether each was leading then.
        rolled: Vec<(i32, bool)>,
        /// How the StatefulSet's template has members listen to their peers, and each pod.
        template: PeerScheme,
        pod_schemes: BTreeMap<i32, PeerScheme>,
        /// Members the list has under an https:// peer URL.
        tls_urls: BTreeSet<i32>,
        /// Peer TLS latched in status.
        peers_on_tls: bool,
        /// Seconds, advanced by every pass, and when a URL last changed.
        clock: u64,
        last_url_change: Option<u64>,
    }

    struct Claim {
        uid: u32,
        terminating: bool,
    }

    impl World {
        fn healthy(n: i32, leader: i32) -> World {
            let mut world = World {
                members: (0..n).map(|o| (o, (false, true))).collect(),
                files: (0..n).collect(),
                markers: BTreeMap::new(),
                claims: BTreeMap::new(),
                pods: BTreeSet::new(),
                bad_disks: BTreeSet::new(),
                next_uid: 0,
                size: n,
                leader,
                outdated: BTreeSet::new(),
                rolled: Vec::new(),
                template: PeerScheme::Tls,
                pod_schemes: BTreeMap::new(),
                tls_urls: BTreeSet::new(),
                peers_on_tls: true,
                clock: 0,
                last_url_change: None,
            };
            world.statefulset();
            world
        }

        /// A healthy cluster created without peer TLS.
        fn plaintext(n: i32, leader: i32) -> World {
            let mut world = World::healthy(n, leader);
            world.peers_on_tls = false;
            world.template = PeerScheme::Plain;
            for scheme in world.pod_schemes.values_mut() {
                *scheme = PeerScheme::Plain;
            }
            world
        }

        fn bad(&self, ordinal: i32) -> bool {
            self.claims
                .get(&ordinal)
                .is_some_and(|c| self.bad_disks.contains(&c.uid))
        }

        fn observe(&self) -> Observed {
            let names = names();
            let listed = (0..ORDINALS)
                .map(|o| match self.members.get(&o) {
                    Some(&(learner, started)) => {
                        let healthy = started && !self.bad(o);
                        member(o, learner, healthy, started)
                    }
                    None => MemberStatus::default(),
                })
                .collect();
            let pods = self
                .pods
                .iter()
                .map(|&o| {
                    let seen = PodSeen {
                        unready_seconds: self.bad(o).then_some(10_000),
                        address: Some(format!("10.0.0.{o}")),
                        outdated: self.outdated.contains(&o) || self.pod_schemes[&o] != self.template,
                        peer_tls: self.pod_schemes[&o] != PeerScheme::Plain,
                        ..PodSeen::default()
                    };
                    (names.member(o), seen)
                })
                .collect();
            let claims = self
                .claims
                .iter()
                .map(|(&o, claim)| {
                    let seen = ClaimSeen {
                        uid: Some(format!("w{}", claim.uid)),
                        terminating: claim.terminating,
                        ..ClaimSeen::default()
                    };
                    (names.claim(o), seen)
                })
                .collect();
            let mut bootstrap = existing(self.files.iter().copied());
            bootstrap.extend(self.markers.clone());
            let mut view = view(listed, Some(self.leader));
            // Members are listed under https:// once the cluster is on peer TLS, or their URL
            // has changed during a move.
            let plain = Names::new("kv", "prod");
            for member in &mut view.members {
                if let Some(o) = names.ordinal_of_peer_url(&member.peer_url)
                    && !self.peers_on_tls
                    && !self.tls_urls.contains(&o)
                {
                    member.peer_url = plain.peer_url(&names.member(o));
                }
            }
            Observed {
                bootstrap: Some(bootstrap),
                statefulset_replicas: Some(self.size),
                statefulset_storage: None,
                pods,
                claims,
                view,
                formed_before: true,
                peer_urls_quiet_seconds: self.last_url_change.map(|at| self.clock - at),
                ..Observed::default()
            }
        }

        /// The spec of `to` members that asks for peer TLS, as the controller sees it for a
        /// cluster created without: moving, until the move latches peer TLS.
        fn peer_spec(&self, to: i32) -> ValidSpec {
            let asked = valid(&format!(
                "spec: {{replicas: {to}, tls: {{peer: {{enabled: true}}}}}}"
            ));
            asked.with_latched_peer_tls(self.peers_on_tls, false)
        }

        /// Moves the peers to TLS while the spec asks for `to` members, 5 seconds a pass; at
        /// every pass each member is reachable by every other (see `check_links`).
        fn run_move(&mut self, to: i32, most: usize) -> Result<(), TestCaseError> {
            for _ in 0..most {
                let spec = self.peer_spec(to);
                let observed = self.observe();
                let plan = plan(&spec, &observed);
                check(&spec, &observed, &plan)?;
                // The template this pass applies makes pods outdated only from the next.
                let template = Names::of(&spec).peer_scheme;
                if plan.step == Step::Settled && self.template == template {
                    return Ok(());
                }
                self.template = template;
                match &plan.step {
                    Step::UpdatePeerUrl { member, peer_url, .. } => {
                        prop_assert!(peer_url.starts_with("https://"));
                        self.tls_urls.insert(ordinal_of(member));
                        self.last_url_change = Some(self.clock);
                    }
                    Step::PeersOnTls => self.peers_on_tls = true,
                    _ => {}
                }
                self.carry_out(&plan);
                self.clock += 5;
                self.check_links()?;
            }
            Err(TestCaseError::fail(format!(
                "no end in sight after {most} passes: {:?}",
                plan(&self.peer_spec(to), &self.observe()).step
            )))
        }

        /// Every member reaches every other: none is listed under https:// while its pod serves
        /// plaintext only, none serves TLS only while listed under http://, and while any is
        /// listed under https:// every pod has the certificate to dial it.
        fn check_links(&self) -> Result<(), TestCaseError> {
            for (ordinal, scheme) in &self.pod_schemes {
                if !self.pods.contains(ordinal) || !self.members.contains_key(ordinal) {
                    continue;
                }
                let listed_tls = self.tls_urls.contains(ordinal);
                prop_assert!(
                    !listed_tls || *scheme != PeerScheme::Plain,
                    "member {ordinal} is listed under https:// but serves plaintext only"
                );
                prop_assert!(
                    listed_tls || *scheme != PeerScheme::Tls,
                    "member {ordinal} serves TLS only but is listed under http://"
                );
                prop_assert!(
                    self.tls_urls.is_empty() || *scheme != PeerScheme::Plain,
                    "member {ordinal} has no certificate to dial its peers on TLS"
                );
            }
            Ok(())
        }

        /// Plans and carries out passes for a spec of `to` members until the plan is settled,
        /// checking every pass; fails after `most` passes.
        fn run(&mut self, to: i32, most: usize) -> Result<(), TestCaseError> {
            for _ in 0..most {
                let observed = self.observe();
                let plan = plan(&spec(to), &observed);
                check(&spec(to), &observed, &plan)?;
                if plan.step == Step::Settled {
                    return Ok(());
                }
                self.carry_out(&plan);
            }
            let last = plan(&spec(to), &self.observe());
            Err(TestCaseError::fail(format!(
                "no end in sight after {most} passes: {:?}",
                last.step
            )))
        }

        fn carry_out(&mut self, plan: &Plan) {
            let names = names();
            if let Some(files) = &plan.bootstrap {
                self.files = ordinals_with_entry(&names, files);
                self.markers = files
                    .iter()
                    .filter(|(key, _)| key.ends_with(".replacing"))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
            }
            if let Some(size) = plan.members {
                self.size = size;
            }
            match &plan.step {
                Step::AddLearner { member, .. } => {
                    self.members.insert(ordinal_of(member), (true, false));
                }
                Step::Promote { member, .. } => {
                    self.members.insert(ordinal_of(member), (false, true));
                }
                Step::MoveLeader { to, .. } => self.leader = ordinal_of(to),
                Step::Remove { member, .. } | Step::Replace { member, .. } => {
                    self.members.remove(&ordinal_of(member));
                }
                Step::DeleteClaim { claim } => {
                    let ordinal = ordinal_of(claim);
                    if self.pods.contains(&ordinal) {
                        if let Some(claim) = self.claims.get_mut(&ordinal) {
                            claim.terminating = true;
                        }
                    } else {
                        self.claims.remove(&ordinal);
                    }
                }
                Step::Roll { member } => {
                    let ordinal = ordinal_of(member);
                    self.rolled.push((ordinal, ordinal == self.leader));
                    self.pods.remove(&ordinal);
                    self.outdated.remove(&ordinal);
                }
                Step::RestartPod { pod } => {
                    let ordinal = ordinal_of(pod);
                    self.pods.remove(&ordinal);
                    self.outdated.remove(&ordinal);
                    if self.claims.get(&ordinal).is_some_and(|c| c.terminating) {
                        self.claims.remove(&ordinal);
                    }
                }
                _ => {}
            }
            self.statefulset();
        }

        /// The StatefulSet controller and the kubelet: pods below the size (each with a claim),
        /// none above; a member starts once its pod runs with its file on a good disk.
        fn statefulset(&mut self) {
            self.pods.retain(|&o| o < self.size);
            let pods = self.pods.clone();
            self.outdated.retain(|o| pods.contains(o));
            for ordinal in 0..self.size {
                if self.pods.insert(ordinal) {
                    self.pod_schemes.insert(ordinal, self.template);
                }
                if !self.claims.contains_key(&ordinal) {
                    self.next_uid += 1;
                    let claim = Claim {
                        uid: self.next_uid,
                        terminating: false,
                    };
                    self.claims.insert(ordinal, claim);
                }
            }
            let pods = self.pods.clone();
            self.claims
                .retain(|o, claim| !claim.terminating || pods.contains(o));
            for (ordinal, member) in self.members.iter_mut() {
                let bad = self
                    .claims
                    .get(ordinal)
                    .is_some_and(|c| self.bad_disks.contains(&c.uid));
                if self.files.contains(ordinal) && self.pods.contains(ordinal) && !bad {
                    member.1 = true;
                }
            }
        }
    }
}
