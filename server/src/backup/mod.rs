//! Backups in etcd's format: snapshot files that etcd's tools read and write (a bbolt database of
//! etcd's backend schema followed by its SHA-256), their status, and a new cluster's data dir
//! restored from one, whether Cairn or etcd wrote it.

pub mod backend;
pub mod bolt;
pub mod file;
pub mod restore;
pub mod store;

pub use file::{SnapshotFile, Status, snapshot_status, write_snapshot};
pub use restore::{RestoreTarget, Restored, restore};

/// Why a snapshot file cannot be read or restored; each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read snapshot {path}: {reason}")]
    Io { path: String, reason: String },
    #[error(
        "snapshot {path} is corrupt: its SHA-256 trailer does not match its content (a truncated or damaged copy)"
    )]
    HashMismatch { path: String },
    #[error(
        "snapshot {path} has no SHA-256 trailer, so its integrity cannot be checked (a copy of a member's db file?); restore it with --skip-hash-check if you trust it"
    )]
    MissingHash { path: String },
    #[error("snapshot database: {0}")]
    Bolt(#[from] bolt::BoltError),
    #[error("snapshot bucket {bucket}, key {key:?}: {reason}")]
    Entry {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error("snapshot history: {0}")]
    Image(#[from] crate::mvcc::ImageError),
    #[error("{0}")]
    Restore(String),
}
