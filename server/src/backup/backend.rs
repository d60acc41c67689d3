//! etcd's backend schema (the buckets an etcd snapshot holds and what each key and value is), with
//! Cairn's state written into it and read back out of it.
//!
//! Written: `key` (revision keys `main_sub[t]` with `mvccpb.KeyValue` values), `lease`, `meta`
//! (consistent index and compaction), `members` and `members_removed`, `alarm`, and the three auth
//! buckets. Read back: keys with their history, leases, compaction and auth; members and alarms
//! belong to the old cluster and stay behind.

use std::collections::BTreeMap;
use std::io;

use bytes::Bytes;
use prost::Message;

use super::BackupError;
use super::bolt::{Contents, Database, EntrySink, Item};
use crate::auth::{AuthStore, Grant, User};
use crate::mvcc::{ImageBuilder, Mvcc, Record, Stored};
use crate::pb::authpb;
use crate::pb::etcdserverpb::AlarmMember;
use crate::pb::mvccpb::KeyValue;
use crate::store::Machine;

/// etcd's `leasepb.Lease`: the lease bucket's values.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// Buckets written, in name order (bbolt keeps them sorted).
const BUCKETS: [&str; 9] = [
    "alarm",
    "auth",
    "authRoles",
    "authUsers",
    "key",
    "lease",
    "members",
    "members_removed",
    "meta",
];

const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";

/// etcd's revision key: main and sub revision, big-endian around an underscore, `t` for a delete.
fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// The main revision and tombstone mark of a revision key, or `None` if it is not one.
fn parse_revision_key(key: &[u8]) -> Option<(i64, bool)> {
    let tombstone = match key.len() {
        17 => false,
        18 if key[17] == b't' => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[..8].try_into().ok()?);
    (main > 0).then_some((main, tombstone))
}

/// A machine laid out as etcd's backend; the key bucket's order is computed once for both passes.
pub struct Backend<'a> {
    machine: &'a Machine,
    records: Vec<(&'a Bytes, &'a Record)>,
}

impl<'a> Backend<'a> {
    pub fn new(machine: &'a Machine) -> Backend<'a> {
        Backend {
            machine,
            records: machine.app.mvcc.records_by_revision(),
        }
    }

    fn visit_keys(&self, entry: &mut EntrySink<'_>) -> io::Result<()> {
        let mut value = Vec::new();
        let (mut main, mut sub) = (0, 0);
        for (key, record) in &self.records {
            let revision = record.mod_revision();
            sub = if revision == main { sub + 1 } else { 0 };
            main = revision;
            value.clear();
            let tombstone = match record {
                Record::Live(stored) => {
                    stored
                        .to_key_value(key)
                        .encode(&mut value)
                        .map_err(io::Error::other)?;
                    false
                }
                Record::Tombstone { .. } => {
                    KeyValue {
                        key: key.to_vec(),
                        ..Default::default()
                    }
                    .encode(&mut value)
                    .map_err(io::Error::other)?;
                    true
                }
            };
            entry(&revision_key(main, sub, tombstone), &value)?;
        }
        Ok(())
    }
}

/// Visits `(key, value)` pairs after sorting them by key, as a bucket must be written.
fn sorted(mut entries: Vec<(Vec<u8>, Vec<u8>)>, entry: &mut EntrySink<'_>) -> io::Result<()> {
    entries.sort();
    entries.iter().try_for_each(|(key, value)| entry(key, value))
}

impl Contents for Backend<'_> {
    fn bucket_names(&self) -> Vec<Vec<u8>> {
        BUCKETS.iter().map(|name| name.as_bytes().to_vec()).collect()
    }

    fn visit(&self, bucket: usize, entry: &mut EntrySink<'_>) -> io::Result<()> {
        let app = &self.machine.app;
        let (users, roles) = app.auth.contents();
        match BUCKETS[bucket] {
            "alarm" => sorted(
                app.alarms
                    .iter()
                    .map(|(member_id, alarm)| {
                        let member = AlarmMember {
                            member_id: *member_id,
                            alarm: *alarm,
                        };
                        (member.encode_to_vec(), Vec::new())
                    })
                    .collect(),
                entry,
            ),
            "auth" => {
                entry(AUTH_ENABLED, &[u8::from(app.auth.enabled)])?;
                entry(AUTH_REVISION, &app.auth.revision.to_be_bytes())
            }
            "authRoles" => sorted(
                roles
                    .iter()
                    .map(|(name, grants)| {
                        let role = authpb::Role {
                            name: name.as_bytes().to_vec(),
                            key_permission: grants.iter().map(Grant::to_pb).collect(),
                        };
                        (name.as_bytes().to_vec(), role.encode_to_vec())
                    })
                    .collect(),
                entry,
            ),
            "authUsers" => sorted(
                users
                    .iter()
                    .map(|(name, user)| {
                        let record = authpb::User {
                            name: name.as_bytes().to_vec(),
                            password: user.password_hash.as_bytes().to_vec(),
                            roles: user.roles.iter().cloned().collect(),
                            options: Some(authpb::UserAddOptions {
                                no_password: user.no_password,
                            }),
                        };
                        (name.as_bytes().to_vec(), record.encode_to_vec())
                    })
                    .collect(),
                entry,
            ),
            "key" => self.visit_keys(entry),
            "lease" => sorted(
                app.mvcc
                    .leases()
                    .map(|(id, lease)| {
                        let record = LeaseRecord {
                            id,
                            ttl: lease.granted_ttl,
                            remaining_ttl: 0,
                        };
                        (id.to_be_bytes().to_vec(), record.encode_to_vec())
                    })
                    .collect(),
                entry,
            ),
            "members" => sorted(
                self.machine
                    .last_membership
                    .membership()
                    .nodes()
                    .map(|(id, node)| {
                        let attributes = serde_json::json!({ "peerURLs": node.peer_urls });
                        (
                            format!("{id:x}").into_bytes(),
                            attributes.to_string().into_bytes(),
                        )
                    })
                    .collect(),
                entry,
            ),
            "members_removed" => sorted(
                app.removed
                    .iter()
                    .map(|id| (format!("{id:x}").into_bytes(), b"removed".to_vec()))
                    .collect(),
                entry,
            ),
            "meta" => {
                let index = self.machine.last_applied.map_or(0, |log_id| log_id.index);
                entry(CONSISTENT_INDEX, &index.to_be_bytes())?;
                let compacted = app.mvcc.compacted_revision();
                if compacted > 0 {
                    entry(FINISHED_COMPACT, &revision_key(compacted, 0, false))?;
                    entry(SCHEDULED_COMPACT, &revision_key(compacted, 0, false))?;
                }
                Ok(())
            }
            other => unreachable!("bucket {other} is listed but not written"),
        }
    }
}

/// What a backend holds that a new cluster starts from.
pub struct Restored {
    pub mvcc: Mvcc,
    pub auth: AuthStore,
}

fn bad_entry(bucket: &str, key: &[u8], reason: impl std::fmt::Display) -> BackupError {
    BackupError::Entry {
        bucket: bucket.to_owned(),
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn be_u64(bucket: &str, key: &[u8], value: &[u8]) -> Result<u64, BackupError> {
    value
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| bad_entry(bucket, key, format!("{} bytes where 8 belong", value.len())))
}

/// Reads the store, its leases and its auth out of an etcd backend, checking every entry.
pub fn read(db: &Database) -> Result<Restored, BackupError> {
    let mut builder = ImageBuilder::default();
    let mut bucket = String::new();
    let (mut finished, mut scheduled) = (None, None);
    let (mut auth_enabled, mut auth_revision) = (false, 0);
    let mut users = BTreeMap::new();
    let mut roles = BTreeMap::new();
    db.walk(&mut |item: Item<'_>| -> Result<(), BackupError> {
        let (key, value) = match item {
            Item::Bucket(name) => {
                bucket = String::from_utf8_lossy(name).into_owned();
                return Ok(());
            }
            Item::Entry { key, value } => (key, value),
        };
        read_entry(&bucket, key, value, &mut builder)?;
        {
            match (bucket.as_str(), key) {
                ("meta", FINISHED_COMPACT | SCHEDULED_COMPACT) => {
                    let (main, _) =
                        parse_revision_key(value).ok_or_else(|| bad_entry("meta", key, "not a revision"))?;
                    if key == FINISHED_COMPACT {
                        finished = Some(main);
                    } else {
                        scheduled = Some(main);
                    }
                }
                ("auth", AUTH_ENABLED) => auth_enabled = value == [1],
                ("auth", AUTH_REVISION) => auth_revision = be_u64("auth", key, value)?,
                ("authUsers", _) => {
                    let user = authpb::User::decode(value).map_err(|e| bad_entry("authUsers", key, e))?;
                    let name = String::from_utf8(user.name).map_err(|e| bad_entry("authUsers", key, e))?;
                    let password_hash =
                        String::from_utf8(user.password).map_err(|e| bad_entry("authUsers", key, e))?;
                    let restored = User {
                        password_hash,
                        no_password: user.options.is_some_and(|o| o.no_password),
                        roles: user.roles.into_iter().collect(),
                    };
                    users.insert(name, restored);
                }
                ("authRoles", _) => {
                    let role = authpb::Role::decode(value).map_err(|e| bad_entry("authRoles", key, e))?;
                    let name = String::from_utf8(role.name).map_err(|e| bad_entry("authRoles", key, e))?;
                    roles.insert(
                        name,
                        role.key_permission.iter().map(Grant::from_pb).collect::<Vec<_>>(),
                    );
                }
                _ => {}
            }
        }
        Ok(())
    })?;
    let mut mvcc = builder.finish(finished);
    if let (Some(scheduled), Some(finished)) = (scheduled, finished)
        && scheduled > finished
    {
        // A compaction was under way when the snapshot was taken: finish it, as etcd does.
        mvcc.compact(scheduled)
            .map_err(|e| bad_entry("meta", SCHEDULED_COMPACT, e))?;
    }
    Ok(Restored {
        mvcc,
        auth: AuthStore::restored(auth_enabled, auth_revision, users, roles),
    })
}

/// Reads one entry of the key or lease bucket into the store being built.
fn read_entry(bucket: &str, key: &[u8], value: &[u8], builder: &mut ImageBuilder) -> Result<(), BackupError> {
    match bucket {
        "key" => {
            let (main, tombstone) =
                parse_revision_key(key).ok_or_else(|| bad_entry("key", key, "not a revision key"))?;
            let kv = KeyValue::decode(value).map_err(|e| bad_entry("key", key, e))?;
            let record = if tombstone {
                Record::Tombstone { mod_revision: main }
            } else {
                if kv.mod_revision != main {
                    return Err(bad_entry(
                        "key",
                        key,
                        format!("value says revision {}, key says {main}", kv.mod_revision),
                    ));
                }
                Record::Live(Stored {
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    value: Bytes::from(kv.value),
                    lease: kv.lease,
                })
            };
            builder.record(&kv.key, record).map_err(BackupError::Image)
        }
        "lease" => {
            let lease = LeaseRecord::decode(value).map_err(|e| bad_entry("lease", key, e))?;
            if key != lease.id.to_be_bytes() {
                return Err(bad_entry("lease", key, "key and lease ID differ"));
            }
            builder.lease(lease.id, lease.ttl).map_err(BackupError::Image)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::bolt;

    #[test]
    fn revision_keys_are_etcds() {
        let key = revision_key(0x0102, 3, false);
        assert_eq!(key, [0, 0, 0, 0, 0, 0, 1, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(parse_revision_key(&key), Some((0x0102, false)));
        assert_eq!(parse_revision_key(&revision_key(5, 0, true)), Some((5, true)));
        assert_eq!(parse_revision_key(b"not a revision key"), None);
        assert_eq!(parse_revision_key(&revision_key(0, 0, false)), None);
    }

    #[test]
    fn a_machine_written_as_a_backend_reads_back_with_its_history_leases_and_auth() {
        use crate::pb::etcdserverpb::{AuthUserAddRequest, DeleteRangeRequest, PutRequest};
        let mut machine = Machine::default();
        let mvcc = &mut machine.app.mvcc;
        mvcc.lease_grant(0x42, 30).unwrap();
        for i in 0..500 {
            let put = PutRequest {
                key: format!("key/{}", i % 90).into_bytes(),
                value: vec![b'v'; i % 300],
                lease: if i % 7 == 0 { 0x42 } else { 0 },
                ..Default::default()
            };
            mvcc.put(&put).unwrap();
            if i % 11 == 0 {
                mvcc.delete_range(&DeleteRangeRequest {
                    key: format!("key/{}", i % 13).into_bytes(),
                    ..Default::default()
                });
            }
            if i == 250 {
                mvcc.compact(mvcc.revision() - 20).unwrap();
            }
        }
        machine.app.auth.role_add("reader").unwrap();
        machine
            .app
            .auth
            .user_add(&AuthUserAddRequest {
                name: "alice".into(),
                hashed_password: "$2a$10$abcdefghijklmnopqrstuv".into(),
                ..Default::default()
            })
            .unwrap();
        machine.app.auth.user_grant_role("alice", "reader").unwrap();

        let backend = Backend::new(&machine);
        let layout = bolt::plan(&backend).unwrap();
        let mut bytes = Vec::new();
        bolt::write(&backend, &layout, &mut bytes).unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        let db = Database::open(file.reopen().unwrap(), bytes.len() as u64).unwrap();
        let restored = read(&db).unwrap();

        let source = &machine.app.mvcc;
        assert_eq!(restored.mvcc.revision(), source.revision());
        assert_eq!(restored.mvcc.compacted_revision(), source.compacted_revision());
        assert_eq!(restored.mvcc.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
        assert_eq!(restored.mvcc.lease(0x42), source.lease(0x42));
        assert_eq!(restored.auth, machine.app.auth);
    }
}
