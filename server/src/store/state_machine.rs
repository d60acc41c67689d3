//! The state machine behind openraft: applies committed entries to the application state, builds
//! and installs snapshots, and shares the state with readers.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::Serialize;

use super::snapshot;
use crate::auth::AuthStore;
use crate::mvcc::Mvcc;
use crate::pb::cairnpb::{RaftRequest, RaftResponse};
use crate::state::AppState;
use crate::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// The application state plus what Raft needs to know about it.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub app: AppState,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
}

/// The encoding of releases before auth: the same fields, without the auth store.
type EncodedBeforeAuth = (AppState, Option<LogId>, StoredMembership);
type Encoded = (AppState, Option<LogId>, StoredMembership, AuthStore);

/// A machine is encoded as the first release encoded it, followed by the auth store, so that a
/// release with auth reads every state written before it (snapshot files, and snapshots a leader
/// of an earlier release sends).
impl Serialize for Machine {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (
            &self.app,
            &self.last_applied,
            &self.last_membership,
            &self.app.auth,
        )
            .serialize(serializer)
    }
}

impl Machine {
    /// Decodes a machine in either encoding; every byte must belong to it.
    pub fn decode(bytes: &[u8]) -> Result<Machine, postcard::Error> {
        let current = postcard::take_from_bytes::<Encoded>(bytes);
        if let Ok(((mut app, last_applied, last_membership, auth), [])) = current {
            app.auth = auth;
            return Ok(Machine {
                app,
                last_applied,
                last_membership,
            });
        }
        match postcard::take_from_bytes::<EncodedBeforeAuth>(bytes) {
            Ok(((app, last_applied, last_membership), [])) => Ok(Machine {
                app,
                last_applied,
                last_membership,
            }),
            _ => Err(current.err().unwrap_or(postcard::Error::DeserializeBadEncoding)),
        }
    }
}

/// Readers (the client API) and the Raft apply loop share the machine through this handle.
pub type SharedMachine = Arc<RwLock<Machine>>;

/// Told of every move of the store's revision, with the write lock still held, so it sees each
/// revision once and in order (watchers are fed this way).
pub trait RevisionObserver: Send + Sync + 'static {
    /// Revisions `(before, mvcc.revision()]` were just applied.
    fn advanced(&self, mvcc: &Mvcc, before: i64);
    /// The whole state was replaced: loaded at start, or installed from a leader's snapshot.
    fn replaced(&self, mvcc: &Mvcc);
    /// An entry was applied with this answer (auth tokens follow the log this way).
    fn entry_applied(&self, _request: &RaftRequest, _response: &RaftResponse) {}
    /// A client entry took this long to apply, the write lock's wait included.
    fn applied_in(&self, _took: std::time::Duration) {}
}

#[derive(Clone)]
pub struct StateMachine {
    machine: SharedMachine,
    snap_dir: PathBuf,
    observer: Arc<dyn RevisionObserver>,
}

/// An observer for state machines nobody watches (storage tests).
pub struct Unobserved;

impl RevisionObserver for Unobserved {
    fn advanced(&self, _: &Mvcc, _: i64) {}
    fn replaced(&self, _: &Mvcc) {}
}

fn read(machine: &SharedMachine) -> std::sync::RwLockReadGuard<'_, Machine> {
    machine.read().expect("state machine lock poisoned")
}

fn write(machine: &SharedMachine) -> std::sync::RwLockWriteGuard<'_, Machine> {
    machine.write().expect("state machine lock poisoned")
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

/// Writes `machine` as the only snapshot in `snap_dir`: the state a member first starts from when a
/// restore seeds its data dir.
pub fn seed(snap_dir: &Path, machine: &Machine) -> io::Result<()> {
    let meta = SnapshotMeta {
        last_log_id: machine.last_applied,
        last_membership: machine.last_membership.clone(),
    };
    snapshot::save_with(snap_dir, &meta, &mut |out| {
        postcard::to_io(machine, out)
            .map(|_| ())
            .map_err(io::Error::other)
    })
}

impl StateMachine {
    /// Opens the state machine at the newest snapshot in `snap_dir`; Raft re-applies the log after it.
    pub fn open(snap_dir: &Path, observer: Arc<dyn RevisionObserver>) -> io::Result<StateMachine> {
        let machine: Machine = match snapshot::load_latest(snap_dir)? {
            Some(file) => Machine::decode(&file.data).map_err(invalid)?,
            None => Machine::default(),
        };
        observer.replaced(&machine.app.mvcc);
        Ok(StateMachine {
            machine: Arc::new(RwLock::new(machine)),
            snap_dir: snap_dir.to_owned(),
            observer,
        })
    }

    pub fn shared(&self) -> SharedMachine {
        self.machine.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // The key space is a persistent map, so this copy is cheap and the lock is held briefly;
        // encoding and writing the copy happen off the async threads while writes go on.
        let copy = read(&self.machine).clone();
        let meta = SnapshotMeta {
            last_log_id: copy.last_applied,
            last_membership: copy.last_membership.clone(),
        };
        let dir = self.snap_dir.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let data = postcard::to_stdvec(&copy).map_err(io::Error::other)?;
            snapshot::save(&dir, &meta, &data).map(|()| (meta, data))
        })
        .await
        .map_err(io::Error::other)??;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "snapshot saved");
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let machine = read(&self.machine);
        Ok((machine.last_applied, machine.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let started = std::time::Instant::now();
            let response = {
                let mut machine = write(&self.machine);
                machine.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Normal(request) => {
                        let before = machine.app.mvcc.revision();
                        let response = machine.app.apply(&request);
                        if machine.app.mvcc.revision() != before {
                            self.observer.advanced(&machine.app.mvcc, before);
                        }
                        self.observer.entry_applied(&request, &response);
                        self.observer.applied_in(started.elapsed());
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        // A member that leaves the membership is removed for good, on every member
                        // at the same entry.
                        let gone: Vec<u64> = machine
                            .last_membership
                            .membership()
                            .nodes()
                            .map(|(id, _)| *id)
                            .filter(|id| membership.get_node(id).is_none())
                            .collect();
                        for id in gone {
                            machine.app.record_removed(id);
                        }
                        machine.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                        RaftResponse {
                            response: None,
                            revision: machine.app.mvcc.revision(),
                        }
                    }
                    EntryPayload::Blank => RaftResponse {
                        response: None,
                        revision: machine.app.mvcc.revision(),
                    },
                }
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), io::Error> {
        let dir = self.snap_dir.clone();
        let saved_meta = meta.clone();
        let installed = tokio::task::spawn_blocking(move || {
            let installed = Machine::decode(&data).map_err(invalid)?;
            if installed.last_applied != saved_meta.last_log_id {
                return Err(invalid(format!(
                    "snapshot data is at {:?} but its metadata says {:?}",
                    installed.last_applied, saved_meta.last_log_id
                )));
            }
            snapshot::save(&dir, &saved_meta, &data).map(|()| installed)
        })
        .await
        .map_err(io::Error::other)??;
        let mut machine = write(&self.machine);
        *machine = installed;
        self.observer.replaced(&machine.app.mvcc);
        drop(machine);
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let dir = self.snap_dir.clone();
        let file = tokio::task::spawn_blocking(move || snapshot::load_latest(&dir))
            .await
            .map_err(io::Error::other)??;
        Ok(file.map(|f| Snapshot {
            meta: f.meta,
            snapshot: f.data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth() -> Machine {
        let mut machine = Machine::default();
        machine
            .app
            .auth
            .user_add(&crate::pb::etcdserverpb::AuthUserAddRequest {
                name: "root".into(),
                hashed_password: "hash".into(),
                ..Default::default()
            })
            .unwrap();
        machine
    }

    #[test]
    fn machines_of_either_encoding_decode_and_nothing_else_does() {
        let machine = with_auth();
        let encoded = postcard::to_stdvec(&machine).unwrap();
        let decoded = Machine::decode(&encoded).unwrap();
        assert_eq!(decoded.app.auth, machine.app.auth);

        // What releases before auth wrote: the same fields, no auth store.
        let before: EncodedBeforeAuth = (
            machine.app.clone(),
            machine.last_applied,
            machine.last_membership.clone(),
        );
        let old = Machine::decode(&postcard::to_stdvec(&before).unwrap()).unwrap();
        assert_eq!(old.app.auth, AuthStore::default());

        assert!(Machine::decode(&encoded[..encoded.len() - 1]).is_err());
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(Machine::decode(&longer).is_err());
    }
}
