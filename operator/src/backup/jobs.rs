//! The API's part of backups: reading a cluster's backup Jobs and what their pods left (the
//! result of `cairnctl backup save`, or why it failed), starting one, deleting old ones.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::{Api, Client, ResourceExt};

use super::{JobOutcome, JobSeen, SavedBackup};
use crate::build::FIELD_MANAGER;
use crate::build::backup_job::{JOB_LABEL, backup_selector};
use crate::build::names::Names;

/// A failure reason is cut to this many characters: status and Events are not logs.
const MAX_REASON: usize = 600;

/// The cluster's backup Jobs, each with its outcome.
pub async fn observe(client: &Client, names: &Names) -> Result<Vec<JobSeen>, kube::Error> {
    let selector = ListParams::default().labels(&backup_selector(names));
    let jobs = Api::<Job>::namespaced(client.clone(), &names.namespace)
        .list(&selector)
        .await?
        .items;
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let pods = Api::<Pod>::namespaced(client.clone(), &names.namespace)
        .list(&selector)
        .await?
        .items;
    Ok(jobs.iter().map(|job| seen(job, &pods)).collect())
}

/// How a Job of one pod ended, with what its pod left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Running,
    /// With the pod's termination message, when it is still there.
    Succeeded(Option<String>),
    /// With the reason, in the words of what failed.
    Failed(String),
}

/// How `job` ended (and when), from it and its pods.
pub fn ending(job: &Job, pods: &[Pod]) -> (JobEnd, Option<Time>) {
    let name = job.name_any();
    let status = job.status.clone().unwrap_or_default();
    let condition = |type_: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    let pod = pods
        .iter()
        .filter(|pod| pod.labels().get(JOB_LABEL) == Some(&name))
        .max_by_key(|pod| pod.creation_timestamp());
    let message = pod.and_then(termination_message);
    if let Some(done) = condition("Complete") {
        let at = status
            .completion_time
            .clone()
            .or(done.last_transition_time.clone());
        (JobEnd::Succeeded(message), at)
    } else if let Some(failed) = condition("Failed") {
        let reason = message
            .as_deref()
            .and_then(last_words)
            .or_else(|| failed.message.clone())
            .unwrap_or_else(|| format!("the Job {name} failed"));
        (JobEnd::Failed(cut(reason)), failed.last_transition_time.clone())
    } else {
        (JobEnd::Running, None)
    }
}

fn seen(job: &Job, pods: &[Pod]) -> JobSeen {
    let (end, finished) = ending(job, pods);
    let outcome = match end {
        JobEnd::Running => JobOutcome::Running,
        JobEnd::Failed(reason) => JobOutcome::Failed(reason),
        JobEnd::Succeeded(message) => match message.as_deref().map(serde_json::from_str::<SavedBackup>) {
            Some(Ok(saved)) => JobOutcome::Succeeded(saved),
            Some(Err(error)) => JobOutcome::Failed(format!(
                "the backup's pod left a result that cannot be read ({error})"
            )),
            None => JobOutcome::Failed("the backup's pod is gone, and with it its result".to_owned()),
        },
    };
    JobSeen {
        name: job.name_any(),
        created: job
            .creation_timestamp()
            .map_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH, |t| t.0),
        finished: finished.map(|t| t.0),
        outcome,
    }
}

/// What the backup container left when it ended.
fn termination_message(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let terminated = statuses.first()?.state.as_ref()?.terminated.as_ref()?;
    terminated.message.clone().filter(|m| !m.trim().is_empty())
}

/// The last lines of a failed backup's log that say something: cairnctl ends with its error.
fn last_words(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let from = lines
        .iter()
        .rposition(|line| line.starts_with("Error"))
        .unwrap_or(lines.len().saturating_sub(1));
    let words = lines.get(from..)?.join(" ");
    (!words.is_empty()).then_some(words)
}

fn cut(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// Starts a backup Job.
pub async fn start(client: &Client, namespace: &str, job: &Job) -> Result<(), kube::Error> {
    let name = job.name_any();
    Api::<Job>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(job),
        )
        .await
        .map(drop)
}

/// A Job of the cluster's and how it ended; None when there is no such Job.
pub async fn one(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<(JobEnd, Option<Time>)>, kube::Error> {
    let Some(job) = Api::<Job>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
    else {
        return Ok(None);
    };
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("{JOB_LABEL}={name}")))
        .await?
        .items;
    Ok(Some(ending(&job, &pods)))
}

/// Deletes a finished Job and its pod.
pub async fn delete(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match Api::<Job>::namespaced(client.clone(), namespace)
        .delete(name, &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_backups_reason_is_cairnctls_error() {
        let log = "connecting\nuploaded 256 MiB of 1 GiB\nError: cannot upload to s3://b/p: \
                   The request signature we calculated does not match\n  caused by: 403\n";
        assert_eq!(
            last_words(log).unwrap(),
            "Error: cannot upload to s3://b/p: The request signature we calculated does not \
             match caused by: 403"
        );
        assert_eq!(last_words("killed\n").unwrap(), "killed");
        assert_eq!(last_words("\n \n"), None);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character() {
        let reason = cut("é".repeat(1000));
        assert!(reason.len() <= MAX_REASON + '…'.len_utf8());
        assert!(reason.ends_with('…'));
    }
}
