//! Scheduled and requested backups, decided purely: from the spec's plan, the previous backup
//! status and the backup Jobs seen, what the status becomes, whether a Job starts now (and from
//! which member), which Events to record and which old Jobs go. `jobs` does the API's part.

pub mod jobs;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{Timestamp, tz::TimeZone};
use serde::Deserialize;

use crate::crd::{BackupStatus, FailedBackup, MemberStatus, SuccessfulBackup};
use crate::validate::BackupPlan;

/// Annotating a KVCluster with this key and a value it has not had before takes a backup now.
pub const REQUEST_ANNOTATION: &str = "cairn.dev/backup-now";

/// Finished backup Jobs kept for `kubectl logs`, newest first; older ones are deleted.
const FINISHED_JOBS_KEPT: usize = 3;

/// What a backup Job's pod says on success (`cairnctl backup save --result-file`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedBackup {
    pub location: String,
    pub name: String,
    pub revision: i64,
    pub size: u64,
    pub taken_at: Timestamp,
    #[serde(default)]
    pub seconds: Option<f64>,
    #[serde(default)]
    pub pruned: u64,
}

/// How a backup Job stands.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Running,
    Succeeded(SavedBackup),
    /// With the reason, in the words of what failed.
    Failed(String),
}

/// One backup Job as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSeen {
    pub name: String,
    pub created: Timestamp,
    pub finished: Option<Timestamp>,
    pub outcome: JobOutcome,
}

/// Why a backup starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Request,
}

/// A backup Job to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub job: String,
    /// The member to stream the snapshot from.
    pub member: String,
    pub trigger: Trigger,
}

/// An Event to record on the KVCluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded { job: String, backup: SavedBackup },
    Failed { job: Option<String>, reason: String },
}

/// What to do about backups in this pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: BackupStatus,
    pub start: Option<Start>,
    /// Backups that finished since the last pass (or could not start), oldest first.
    pub outcomes: Vec<Outcome>,
    /// Finished Jobs to delete.
    pub delete: Vec<String>,
    /// When the next pass is needed for backups: the next scheduled time, or soon while a Job
    /// runs.
    pub requeue: Option<Duration>,
}

/// Everything one decision needs.
pub struct Seen<'a> {
    pub cluster: &'a str,
    pub previous: Option<&'a BackupStatus>,
    pub jobs: &'a [JobSeen],
    /// The value of `REQUEST_ANNOTATION`.
    pub request: Option<&'a str>,
    /// The members as status reports them.
    pub members: &'a [MemberStatus],
    /// When the KVCluster was created: the schedule counts from there until its first backup.
    pub created: Timestamp,
    pub now: Timestamp,
}

pub fn decide(plan: &BackupPlan, seen: &Seen) -> Decision {
    let mut status = seen.previous.cloned().unwrap_or_default();
    let mut outcomes = Vec::new();

    // Finished Jobs not yet in status, oldest first; the active one among them or not.
    let mut finished: Vec<&JobSeen> = seen
        .jobs
        .iter()
        .filter(|job| job.outcome != JobOutcome::Running)
        .filter(|job| !recorded(&status, job))
        .collect();
    finished.sort_by_key(|job| (job.created, job.name.clone()));
    for job in finished {
        let at = job.finished.unwrap_or(seen.now);
        match &job.outcome {
            JobOutcome::Succeeded(backup) => {
                status.last_successful = Some(SuccessfulBackup {
                    job: job.name.clone(),
                    name: backup.name.clone(),
                    location: backup.location.clone(),
                    revision: backup.revision,
                    size_bytes: backup.size,
                    time: Time(backup.taken_at),
                    seconds: backup.seconds.map(|s| (s * 100.0).round() / 100.0),
                });
                outcomes.push(Outcome::Succeeded {
                    job: job.name.clone(),
                    backup: backup.clone(),
                });
            }
            JobOutcome::Failed(reason) => {
                status.last_failed = Some(FailedBackup {
                    job: Some(job.name.clone()),
                    time: Time(at),
                    reason: reason.clone(),
                });
                outcomes.push(Outcome::Failed {
                    job: Some(job.name.clone()),
                    reason: reason.clone(),
                });
            }
            JobOutcome::Running => {}
        }
    }
    let running = seen
        .jobs
        .iter()
        .find(|job| job.outcome == JobOutcome::Running)
        .map(|job| job.name.clone());
    // A Job status named as running that is gone without finishing was deleted under it.
    if let Some(active) = status.active.take()
        && running.is_none()
        && !seen.jobs.iter().any(|job| job.name == active)
    {
        let reason = format!("the Job {active} was deleted before it finished");
        status.last_failed = Some(FailedBackup {
            job: Some(active.clone()),
            time: Time(seen.now),
            reason: reason.clone(),
        });
        outcomes.push(Outcome::Failed {
            job: Some(active),
            reason,
        });
    }
    status.active = running;

    // The schedule counts from its last start, or from the cluster's creation.
    let since = status.last_schedule_time.as_ref().map_or(seen.created, |t| t.0);
    let next = next_time(plan, since);
    let scheduled = !plan.suspend && next.is_some_and(|next| next <= seen.now);
    let requested = seen
        .request
        .filter(|value| status.last_request.as_deref() != Some(*value));
    let trigger = match (scheduled, requested) {
        _ if status.active.is_some() => None,
        (_, Some(_)) => Some(Trigger::Request),
        (true, None) => Some(Trigger::Schedule),
        (false, None) => None,
    };
    let mut start = None;
    if let Some(trigger) = trigger {
        // A request is acted on once, and a schedule's missed times make one backup.
        match trigger {
            Trigger::Request => status.last_request = requested.map(str::to_owned),
            Trigger::Schedule => status.last_schedule_time = Some(Time(seen.now)),
        }
        match source_member(seen.members) {
            Some(member) => {
                let job = job_name(seen.cluster, seen.now);
                status.active = Some(job.clone());
                start = Some(Start { job, member, trigger });
            }
            None => {
                let reason = "no healthy member to take the backup from".to_owned();
                status.last_failed = Some(FailedBackup {
                    job: None,
                    time: Time(seen.now),
                    reason: reason.clone(),
                });
                outcomes.push(Outcome::Failed { job: None, reason });
            }
        }
    }
    let since = status.last_schedule_time.as_ref().map_or(seen.created, |t| t.0);
    let next = if plan.suspend {
        None
    } else {
        next_time(plan, since)
    };
    status.next_schedule_time = next.map(Time);

    let mut done: Vec<&JobSeen> = seen
        .jobs
        .iter()
        .filter(|job| job.outcome != JobOutcome::Running)
        .collect();
    done.sort_by_key(|job| std::cmp::Reverse((job.created, job.name.clone())));
    let delete = done
        .iter()
        .skip(FINISHED_JOBS_KEPT)
        .map(|job| job.name.clone())
        .collect();

    let requeue = if status.active.is_some() {
        Some(Duration::from_secs(3))
    } else {
        next.map(|next| {
            let wait = next.duration_since(seen.now).as_secs().max(0) as u64;
            Duration::from_secs(wait + 1)
        })
    };
    Decision {
        status,
        start,
        outcomes,
        delete,
        requeue,
    }
}

/// Whether status already tells of this finished Job.
fn recorded(status: &BackupStatus, job: &JobSeen) -> bool {
    let succeeded = status.last_successful.as_ref().map(|b| b.job.as_str());
    let failed = status.last_failed.as_ref().and_then(|b| b.job.as_deref());
    let newest_recorded = [succeeded, failed]
        .into_iter()
        .flatten()
        .any(|name| name == job.name || older(&job.name, name));
    newest_recorded && status.active.as_deref() != Some(job.name.as_str())
}

/// Whether the Job `a` was made before `b` (their names end in the second they were made).
fn older(a: &str, b: &str) -> bool {
    match (stamp(a), stamp(b)) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

fn stamp(job: &str) -> Option<i64> {
    job.rsplit_once("-backup-")?.1.parse().ok()
}

/// The first scheduled time after `since`.
fn next_time(plan: &BackupPlan, since: Timestamp) -> Option<Timestamp> {
    let zoned = since.to_zoned(TimeZone::UTC);
    plan.schedule
        .find_next_occurrence(&zoned, false)
        .ok()
        .map(|next| next.timestamp())
}

/// The member a backup streams from: a healthy follower, so the leader is not loaded; the
/// healthy leader when it is alone.
pub fn source_member(members: &[MemberStatus]) -> Option<String> {
    let healthy = |m: &&MemberStatus| m.healthy && !m.is_learner && !m.name.is_empty();
    let follower = members.iter().filter(healthy).find(|m| !m.is_leader);
    follower
        .or_else(|| members.iter().filter(healthy).find(|m| m.is_leader))
        .map(|m| m.name.clone())
}

/// A backup Job's name: the cluster's (cut to leave room) and the second it was made, which
/// orders Jobs and keeps within the 63 characters a Job's pods can carry in a label.
pub fn job_name(cluster: &str, now: Timestamp) -> String {
    let prefix: String = cluster.chars().take(63 - "-backup-".len() - 10).collect();
    let prefix = prefix.trim_end_matches('-');
    format!("{prefix}-backup-{}", now.as_second())
}

/// The `BackupFailing` condition: True while the newest backup failed.
pub fn failing(status: &BackupStatus) -> (&'static str, &'static str, String) {
    let failed = status.last_failed.as_ref();
    let succeeded = status.last_successful.as_ref();
    match (failed, succeeded) {
        (Some(failed), Some(ok)) if failed.time.0 <= ok.time.0 || newer_job(ok, failed) => (
            "False",
            "BackupSucceeded",
            format!("the last backup, {}, succeeded", ok.name),
        ),
        (Some(failed), _) => ("True", "BackupFailed", failed.reason.clone()),
        (None, Some(ok)) => (
            "False",
            "BackupSucceeded",
            format!("the last backup, {}, succeeded", ok.name),
        ),
        (None, None) => ("False", "NoBackupYet", "no backup has run yet".to_owned()),
    }
}

/// Whether the successful backup's Job came after the failed one's.
fn newer_job(ok: &SuccessfulBackup, failed: &FailedBackup) -> bool {
    failed.job.as_deref().is_some_and(|job| older(job, &ok.job))
}

#[cfg(test)]
mod tests;
