use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::build::testing::valid;

fn plan(backup_yaml: &str) -> BackupPlan {
    valid(&format!("spec:\n  backup:\n{backup_yaml}"))
        .backup
        .expect("a backup plan")
}

fn every_minute() -> BackupPlan {
    plan("    schedule: '* * * * *'\n    volume: {claimName: b}\n")
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn member(name: &str, leader: bool, healthy: bool) -> MemberStatus {
    MemberStatus {
        name: name.to_owned(),
        is_leader: leader,
        healthy,
        ..MemberStatus::default()
    }
}

fn healthy_three() -> Vec<MemberStatus> {
    vec![
        member("kv-0", true, true),
        member("kv-1", false, true),
        member("kv-2", false, true),
    ]
}

fn seen<'a>(
    previous: Option<&'a BackupStatus>,
    jobs: &'a [JobSeen],
    members: &'a [MemberStatus],
    now: &str,
) -> Seen<'a> {
    Seen {
        cluster: "kv",
        previous,
        jobs,
        request: None,
        members,
        created: at("2026-12-07T10:00:30Z"),
        now: at(now),
    }
}

fn saved(name: &str) -> SavedBackup {
    SavedBackup {
        location: format!("s3://b/p/{name}"),
        name: name.to_owned(),
        revision: 42,
        size: 1000,
        taken_at: at("2026-12-07T10:01:01Z"),
        seconds: Some(1.234),
        pruned: 0,
    }
}

#[test]
fn nothing_starts_before_the_first_scheduled_time() {
    let members = healthy_three();
    let decision = decide(
        &every_minute(),
        &seen(None, &[], &members, "2026-12-07T10:00:50Z"),
    );
    assert_eq!(decision.start, None);
    assert_eq!(
        decision.status.next_schedule_time,
        Some(Time(at("2026-12-07T10:01:00Z")))
    );
    assert_eq!(decision.requeue, Some(Duration::from_secs(11)));
}

#[test]
fn a_due_backup_starts_from_a_healthy_follower() {
    let members = healthy_three();
    let decision = decide(
        &every_minute(),
        &seen(None, &[], &members, "2026-12-07T10:01:02Z"),
    );
    let start = decision.start.expect("a backup starts");
    assert_eq!(start.member, "kv-1");
    assert_eq!(start.trigger, Trigger::Schedule);
    assert_eq!(
        start.job,
        format!("kv-backup-{}", at("2026-12-07T10:01:02Z").as_second())
    );
    assert_eq!(decision.status.active, Some(start.job));
    assert_eq!(
        decision.status.next_schedule_time,
        Some(Time(at("2026-12-07T10:02:00Z")))
    );
}

#[test]
fn the_leader_backs_up_only_when_no_follower_is_healthy() {
    let members = vec![member("kv-0", false, false), member("kv-1", true, true)];
    assert_eq!(source_member(&members).as_deref(), Some("kv-1"));
    let learner = MemberStatus {
        is_learner: true,
        ..member("kv-2", false, true)
    };
    assert_eq!(source_member(std::slice::from_ref(&learner)), None);
    assert_eq!(
        source_member(&[learner, member("kv-0", false, true)]).as_deref(),
        Some("kv-0")
    );
}

#[test]
fn missed_times_make_one_backup_and_the_schedule_goes_on_from_now() {
    let previous = BackupStatus {
        last_schedule_time: Some(Time(at("2026-12-07T08:00:00Z"))),
        ..BackupStatus::default()
    };
    let members = healthy_three();
    let decision = decide(
        &every_minute(),
        &seen(Some(&previous), &[], &members, "2026-12-07T10:30:10Z"),
    );
    assert!(decision.start.is_some());
    assert_eq!(
        decision.status.last_schedule_time,
        Some(Time(at("2026-12-07T10:30:10Z")))
    );
    assert_eq!(
        decision.status.next_schedule_time,
        Some(Time(at("2026-12-07T10:31:00Z")))
    );
}

#[test]
fn no_healthy_member_is_a_failed_backup_without_a_job() {
    let members = vec![member("kv-0", false, false)];
    let decision = decide(
        &every_minute(),
        &seen(None, &[], &members, "2026-12-07T10:01:02Z"),
    );
    assert_eq!(decision.start, None);
    assert_eq!(decision.status.active, None);
    let failed = decision.status.last_failed.clone().expect("a failure");
    assert_eq!(failed.job, None);
    assert!(failed.reason.contains("no healthy member"));
    assert_eq!(failing(&decision.status).0, "True");
    // The schedule moves on: the next pass does not fail again until the next time.
    let again = decide(
        &every_minute(),
        &seen(Some(&decision.status), &[], &members, "2026-12-07T10:01:30Z"),
    );
    assert!(again.outcomes.is_empty());
}

#[test]
fn a_running_job_holds_off_the_next_one() {
    let previous = BackupStatus {
        active: Some("kv-backup-100".to_owned()),
        last_schedule_time: Some(Time(at("2026-12-07T10:01:00Z"))),
        ..BackupStatus::default()
    };
    let jobs = [JobSeen {
        name: "kv-backup-100".to_owned(),
        created: at("2026-12-07T10:01:00Z"),
        finished: None,
        outcome: JobOutcome::Running,
    }];
    let members = healthy_three();
    let decision = decide(
        &every_minute(),
        &seen(Some(&previous), &jobs, &members, "2026-12-07T10:05:00Z"),
    );
    assert_eq!(decision.start, None);
    assert_eq!(decision.status.active.as_deref(), Some("kv-backup-100"));
    assert_eq!(decision.requeue, Some(Duration::from_secs(3)));
}

#[test]
fn finished_jobs_are_recorded_once_and_the_newest_decides_the_condition() {
    let previous = BackupStatus {
        active: Some("kv-backup-200".to_owned()),
        last_schedule_time: Some(Time(at("2026-12-07T10:01:00Z"))),
        ..BackupStatus::default()
    };
    let failed = JobSeen {
        name: "kv-backup-200".to_owned(),
        created: at("2026-12-07T10:01:00Z"),
        finished: Some(at("2026-12-07T10:01:05Z")),
        outcome: JobOutcome::Failed("Error: access denied".to_owned()),
    };
    let members = healthy_three();
    let jobs = [failed.clone()];
    let first = decide(
        &every_minute(),
        &seen(Some(&previous), &jobs, &members, "2026-12-07T10:01:10Z"),
    );
    assert_eq!(
        first.outcomes,
        vec![Outcome::Failed {
            job: Some("kv-backup-200".to_owned()),
            reason: "Error: access denied".to_owned()
        }]
    );
    assert_eq!(
        failing(&first.status),
        ("True", "BackupFailed", "Error: access denied".to_owned())
    );
    let again = decide(
        &every_minute(),
        &seen(Some(&first.status), &jobs, &members, "2026-12-07T10:01:20Z"),
    );
    assert!(again.outcomes.is_empty(), "{:?}", again.outcomes);

    // The next one succeeds: recorded, and the condition clears.
    let succeeded = JobSeen {
        name: "kv-backup-300".to_owned(),
        created: at("2026-12-07T10:02:00Z"),
        finished: Some(at("2026-12-07T10:02:03Z")),
        outcome: JobOutcome::Succeeded(saved("b-1")),
    };
    let mut status = again.status.clone();
    status.active = Some("kv-backup-300".to_owned());
    let jobs = [failed, succeeded];
    let third = decide(
        &every_minute(),
        &seen(Some(&status), &jobs, &members, "2026-12-07T10:02:05Z"),
    );
    assert_eq!(third.outcomes.len(), 1);
    let ok = third.status.last_successful.clone().unwrap();
    assert_eq!(
        (ok.job.as_str(), ok.revision, ok.size_bytes),
        ("kv-backup-300", 42, 1000)
    );
    assert_eq!(ok.seconds, Some(1.23));
    assert_eq!(failing(&third.status).0, "False");
    assert_eq!(third.status.last_failed.unwrap().reason, "Error: access denied");
}

#[test]
fn a_request_starts_a_backup_once_even_while_suspended() {
    let suspended = plan("    schedule: '0 0 1 1 *'\n    suspend: true\n    volume: {claimName: b}\n");
    let members = healthy_three();
    let mut first = seen(None, &[], &members, "2026-12-07T10:01:02Z");
    first.request = Some("now-1");
    let decision = decide(&suspended, &first);
    assert_eq!(decision.start.map(|s| s.trigger), Some(Trigger::Request));
    assert_eq!(decision.status.last_request.as_deref(), Some("now-1"));
    assert_eq!(decision.status.next_schedule_time, None);

    let mut status = decision.status.clone();
    status.active = None;
    let mut again = seen(Some(&status), &[], &members, "2026-12-07T10:05:00Z");
    again.request = Some("now-1");
    assert_eq!(decide(&suspended, &again).start, None);
}

#[test]
fn a_job_deleted_while_it_ran_is_a_failure() {
    let previous = BackupStatus {
        active: Some("kv-backup-100".to_owned()),
        ..BackupStatus::default()
    };
    let members = healthy_three();
    let decision = decide(
        &every_minute(),
        &seen(Some(&previous), &[], &members, "2026-12-07T10:00:40Z"),
    );
    assert!(decision.status.last_failed.unwrap().reason.contains("deleted"));
}

#[test]
fn only_the_newest_finished_jobs_are_kept() {
    let jobs: Vec<JobSeen> = (0..6)
        .map(|i| JobSeen {
            name: format!("kv-backup-{}", 100 + i),
            created: Timestamp::from_second(100 + i).unwrap(),
            finished: Some(Timestamp::from_second(101 + i).unwrap()),
            outcome: JobOutcome::Failed("x".to_owned()),
        })
        .collect();
    let previous = BackupStatus {
        last_failed: Some(FailedBackup {
            job: Some("kv-backup-105".to_owned()),
            time: Time(Timestamp::from_second(106).unwrap()),
            reason: "x".to_owned(),
        }),
        ..BackupStatus::default()
    };
    let members = healthy_three();
    let decision = decide(
        &every_minute(),
        &seen(Some(&previous), &jobs, &members, "2026-12-07T10:00:40Z"),
    );
    assert!(decision.outcomes.is_empty());
    assert_eq!(
        decision.delete,
        vec!["kv-backup-102", "kv-backup-101", "kv-backup-100"]
    );
}

#[test]
fn job_names_fit_a_label_for_the_longest_cluster_names() {
    let long = "a".repeat(crate::validate::MAX_NAME_LENGTH);
    let name = job_name(&long, at("2026-12-07T10:00:00Z"));
    assert!(name.len() <= 63, "{name}");
    assert!(name.ends_with(&format!("-backup-{}", at("2026-12-07T10:00:00Z").as_second())));
}
