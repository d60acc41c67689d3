//! The robustness suite's short profile, run by the workspace's test command: every nemesis for
//! 15 seconds on a fresh 3-member cluster (and a kill on a single member) with fixed seeds, each
//! history checked; then the self-tests, in which a planted bug must make the check fail.
//! Runs one at a time (a shared lock): the machine has few cores and every run is a cluster.
//! Needs root, for the private network namespace each run makes.

use std::sync::Mutex;
use std::time::Duration;

use cairn_robustness::nemesis::Nemesis;
use cairn_robustness::run::{Plan, Report, run};
use cairn_robustness::traffic::Profile;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const RUN: Duration = Duration::from_secs(15);

fn plan(nemesis: Nemesis, profile: Profile, seed: u64, duration: Duration) -> Plan {
    let member = std::path::Path::new(env!("CARGO_BIN_EXE_cairn-member"));
    Plan::new(member, nemesis, profile, seed, duration)
}

fn report(plan: Plan) -> Report {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let report = run(plan).expect("the run could not be carried out");
    eprintln!("{}", report.summary());
    report
}

fn passes(plan: Plan) {
    let report = report(plan);
    if !report.passed() {
        let saved = report
            .save(&std::env::temp_dir().join("cairn-robustness-failures"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("(not saved: {e})"));
        panic!(
            "{}\nhistory: {saved}\n{}",
            report.summary(),
            report.problems.join("\n")
        );
    }
    assert!(
        report.operations > 1_000,
        "too little traffic to tell anything: {}",
        report.summary()
    );
    if report.plan.nemesis != Nemesis::None {
        assert!(report.faults > 0, "no fault was injected: {}", report.summary());
    }
}

#[test]
fn kill_a_random_member() {
    passes(plan(Nemesis::Kill, Profile::Kv, 1, RUN));
}

#[test]
fn kill_the_leader() {
    passes(plan(Nemesis::KillLeader, Profile::Kubernetes, 2, RUN));
}

#[test]
fn kill_the_only_member() {
    let mut plan = plan(Nemesis::Kill, Profile::Kv, 3, RUN);
    plan.members = 1;
    passes(plan);
}

#[test]
fn pause_a_member() {
    passes(plan(Nemesis::Pause, Profile::Leases, 4, RUN));
}

/// Seed 1 found that a read's header could carry a newer revision than its data.
#[test]
fn isolate_the_leader() {
    passes(plan(Nemesis::IsolateLeader, Profile::Kv, 1, RUN));
}

#[test]
fn isolate_a_member() {
    passes(plan(Nemesis::Isolate, Profile::Kubernetes, 5, RUN));
}

/// Seed 1 found that a read's header could carry a newer revision than its data.
#[test]
fn bridge_two_members_through_a_third() {
    passes(plan(Nemesis::Bridge, Profile::Kv, 1, RUN));
}

/// Members removed, wiped and added back (as voters, and as learners then promoted) mid-traffic.
#[test]
fn replace_members() {
    passes(plan(Nemesis::MemberChange, Profile::Kubernetes, 8, RUN));
}

/// A crash in the middle of a write leaves part of a record: replay drops it and the member rejoins.
#[test]
fn a_write_cut_short_by_a_crash() {
    passes(plan(Nemesis::TornWal, Profile::Kv, 9, RUN));
}

/// Seed 2 (like 4 and 5) showed a leader that came back from a power loss serving reads that
/// missed writes it had acknowledged: openraft restored it as leader at once, from a commit point
/// that was not synced.
#[test]
fn the_leader_loses_power() {
    passes(plan(Nemesis::PowerLossLeader, Profile::Kv, 2, RUN));
}

#[test]
fn a_member_loses_power() {
    passes(plan(Nemesis::PowerLoss, Profile::Leases, 10, RUN));
}

/// A flipped bit near the end of a log: repaired if it only cut the last record short, otherwise
/// the member refuses to start by name and is replaced.
#[test]
fn a_damaged_log() {
    passes(plan(Nemesis::CorruptWal, Profile::Kv, 11, RUN));
}

/// A member whose log syncs fail stops instead of acknowledging what is not durable.
#[test]
fn failing_fsync_stops_the_member() {
    passes(plan(Nemesis::FsyncFailure, Profile::Kubernetes, 12, RUN));
}

/// Self-test: linearizable reads served without ReadIndex are caught, with no fault at all (a
/// follower's state lags the leader's by a little, always).
#[test]
fn planted_stale_reads_are_caught() {
    let mut plan = plan(Nemesis::None, Profile::Kv, 6, Duration::from_secs(8));
    plan.planted = Some("stale-reads".into());
    let report = report(plan);
    assert!(
        report.problems.iter().any(|p| p.starts_with("not linearizable")),
        "reads without ReadIndex went unnoticed: {}",
        report.summary()
    );
}

/// Self-test: a member that acknowledges writes before they are on disk loses them when killed,
/// and the suite says which.
#[test]
fn planted_acknowledgement_before_sync_is_caught() {
    let mut plan = plan(Nemesis::Kill, Profile::Kv, 7, Duration::from_secs(10));
    plan.members = 1;
    plan.planted = Some("ack-before-sync".into());
    let report = report(plan);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("acknowledged at revision") && p.contains("nowhere")),
        "acknowledged writes lost in a crash went unnoticed: {}",
        report.summary()
    );
}
