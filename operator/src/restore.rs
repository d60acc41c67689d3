//! A new cluster made from a backup (`spec.bootstrap.restore`): before anything of the cluster
//! exists, one Job chooses the backup (the newest, or the one named) and proves its location
//! readable; the choice is latched in `status.restoredFrom`, so every initial member restores
//! the same backup (`build::backup_job::restore_init_container`) however long they take to start.
//! A source that cannot be read is reported in the `RestoreSource` condition, and nothing starts.

use std::time::Duration;

use serde::Deserialize;

use crate::backup::jobs::{self, JobEnd};
use crate::build::backup_job::{restore_source_job, restore_source_job_name};
use crate::build::names::Names;
use crate::crd::RestoreStatus;
use crate::validate::{RestorePlan, ValidSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::Client;

/// A source that could not be read is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// What the restore-source Job's pod leaves (`cairnctl backup list --result-file`).
#[derive(Debug, Deserialize)]
struct Chosen {
    name: String,
    revision: i64,
    size: u64,
    location: String,
}

/// Where choosing the backup stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The Job runs (or was just started).
    Choosing(String),
    Chosen(RestoreStatus),
    /// The source could not be read, in the words of what failed.
    Unreadable(String),
}

/// Starts or reads the Job that chooses the backup to restore.
pub async fn choose(
    client: &Client,
    spec: &ValidSpec,
    plan: &RestorePlan,
    owner: &OwnerReference,
    now: &Time,
) -> Result<Choice, kube::Error> {
    let names = Names::of(spec);
    let name = restore_source_job_name(&names);
    let choosing = || Choice::Choosing(format!("choosing the backup to restore ({})", plan.backup));
    match jobs::one(client, &spec.namespace, &name).await? {
        None => {
            jobs::start(client, &spec.namespace, &restore_source_job(spec, plan, owner)).await?;
            Ok(choosing())
        }
        Some((JobEnd::Running, _)) => Ok(choosing()),
        Some((JobEnd::Succeeded(message), _)) => {
            let chosen = message
                .as_deref()
                .map(serde_json::from_str::<Chosen>)
                .and_then(Result::ok);
            jobs::delete(client, &spec.namespace, &name).await?;
            Ok(match chosen {
                Some(chosen) => Choice::Chosen(RestoreStatus {
                    backup: chosen.name,
                    location: chosen.location,
                    revision: chosen.revision,
                    size_bytes: chosen.size,
                }),
                None => Choice::Unreadable(format!(
                    "the Job {name} left no readable choice of backup: {}",
                    message.unwrap_or_default()
                )),
            })
        }
        Some((JobEnd::Failed(reason), finished)) => {
            let waited = finished
                .is_none_or(|at| now.0.duration_since(at.0).as_secs() >= RETRY_AFTER.as_secs() as i64);
            if waited {
                jobs::delete(client, &spec.namespace, &name).await?;
            }
            Ok(Choice::Unreadable(reason))
        }
    }
}

/// The `RestoreSource` condition once the backup is chosen.
pub fn chosen_message(from: &RestoreStatus) -> String {
    format!(
        "created from backup {} of revision {} ({} bytes) at {}",
        from.backup, from.revision, from.size_bytes, from.location
    )
}
