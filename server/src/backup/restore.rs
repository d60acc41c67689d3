//! A new member's data dir from a snapshot file (etcdutl's `snapshot restore`): the file's keys with
//! their history, leases and users; the membership given by the flags; new member and cluster IDs
//! from the cluster token. Every initial member is restored from the same file and they start as
//! one cluster at the snapshot's revision.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::{BackupError, SnapshotFile, backend};
use crate::bootstrap::{data_dir, identity};
use crate::state::AppState;
use crate::store::{self, Machine};
use crate::{LogId, PeerNode, StoredMembership};

/// The member a restore makes, as etcdutl's flags name it.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    pub name: String,
    pub data_dir: PathBuf,
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub token: String,
    pub advertise_peer_urls: Vec<String>,
    /// Accept a file without a SHA-256 trailer (a copy of a member's database file).
    pub skip_hash_check: bool,
}

/// What a restore made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub revision: i64,
    pub member_id: u64,
    pub cluster_id: u64,
}

fn refuse(reason: impl Into<String>) -> BackupError {
    BackupError::Restore(reason.into())
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut urls = urls.to_vec();
    urls.sort();
    urls
}

impl RestoreTarget {
    /// The flags agree with each other, and the data dir holds nothing a restore could overwrite
    /// (worth knowing before a backup is downloaded).
    pub fn check(&self) -> Result<(), BackupError> {
        let listed = self.initial_cluster.get(&self.name).ok_or_else(|| {
            refuse(format!(
                "member name {:?} is not in --initial-cluster ({})",
                self.name,
                self.initial_cluster
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if sorted(listed) != sorted(&self.advertise_peer_urls) {
            return Err(refuse(format!(
                "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                self.name,
                listed.join(","),
                self.advertise_peer_urls.join(",")
            )));
        }
        if self.token.is_empty() {
            return Err(refuse("--initial-cluster-token must not be empty"));
        }
        match fs::read_dir(&self.data_dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(refuse(format!(
                        "data dir {} exists and is not empty; restore only into a new or empty directory",
                        self.data_dir.display()
                    )));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(refuse(format!(
                "cannot use data dir {}: {e}",
                self.data_dir.display()
            ))),
        }
    }
}

/// Restores `snapshot` into `target.data_dir`. The data dir is assembled beside itself and renamed
/// into place, so a failed restore leaves nothing a member could start from.
pub fn restore(snapshot: &Path, target: &RestoreTarget) -> Result<Restored, BackupError> {
    target.check()?;
    let file = SnapshotFile::open(snapshot, !target.skip_hash_check)?;
    let contents = backend::read(&file.db)?;
    drop(file);

    let ids: BTreeMap<u64, PeerNode> = target
        .initial_cluster
        .values()
        .map(|urls| {
            (
                identity::member_id(urls, &target.token, None),
                PeerNode {
                    peer_urls: urls.clone(),
                },
            )
        })
        .collect();
    if ids.len() != target.initial_cluster.len() {
        return Err(refuse("two members of --initial-cluster have the same peer URLs"));
    }
    let member_id = identity::member_id(&target.initial_cluster[&target.name], &target.token, None);
    let cluster_id = identity::cluster_id(&ids.keys().copied().collect::<Vec<_>>());
    // Every member restores the same first entry, so their logs agree from the start.
    let log_id = LogId {
        leader_id: openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: *ids.keys().next().expect("at least this member"),
        },
        index: 1,
    };
    let voters: BTreeSet<u64> = ids.keys().copied().collect();
    let membership = openraft::Membership::new(vec![voters], ids)
        .map_err(|e| refuse(format!("--initial-cluster: {e}")))?;
    let revision = contents.mvcc.revision();
    let machine = Machine {
        app: AppState {
            mvcc: contents.mvcc,
            auth: contents.auth,
            ..Default::default()
        },
        last_applied: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
    };

    let staging = staging_dir(&target.data_dir);
    let written = write_member(&staging, &machine, target, member_id, cluster_id);
    let placed = written.and_then(|()| {
        fs::create_dir_all(&target.data_dir)?;
        fs::rename(staging.join("member"), target.data_dir.join("member"))?;
        fs::File::open(&target.data_dir)?.sync_all()
    });
    let _ = fs::remove_dir_all(&staging);
    placed.map_err(|e| {
        refuse(format!(
            "cannot write data dir {}: {e}",
            target.data_dir.display()
        ))
    })?;
    Ok(Restored {
        revision,
        member_id,
        cluster_id,
    })
}

/// A directory beside the data dir (same file system, so the rename is atomic).
fn staging_dir(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!(".{name}.restoring-{}", std::process::id()))
}

fn write_member(
    staging: &Path,
    machine: &Machine,
    target: &RestoreTarget,
    member_id: u64,
    cluster_id: u64,
) -> std::io::Result<()> {
    let _ = fs::remove_dir_all(staging);
    store::seed(&store::snap_dir(staging), machine)?;
    let identity = data_dir::MemberIdentity {
        name: target.name.clone(),
        member_id,
        cluster_id,
        token: target.token.clone(),
    };
    data_dir::save(staging, &identity).map_err(std::io::Error::other)
}
