//! Durable storage behind openraft: the Raft log on a write-ahead log, and the state machine with its
//! on-disk snapshots. Implements the openraft storage traits and nothing else.

pub mod force;
mod log_store;
mod snapshot;
mod state_machine;
pub mod wal;

pub use log_store::{AppendObserver, LogStore, LogStoreError};
pub use state_machine::{Machine, RevisionObserver, SharedMachine, StateMachine, Unobserved, seed};

/// Where the storage layer keeps its files inside `--data-dir`.
pub fn wal_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("member").join("wal")
}

pub fn snap_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("member").join("snap")
}
