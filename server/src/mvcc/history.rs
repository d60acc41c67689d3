//! The store's history as watchers read it: an index of which keys changed at each revision, kept
//! beside the key space, and the events those changes were.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::keyspace::{Record, Stored};
use super::{Mvcc, MvccError};
use crate::pb::mvccpb::{self, event::EventType};

/// Keys changed at each revision since the last compaction. A persistent map like the key space, so
/// a snapshot's copy costs O(1).
#[derive(Debug, Clone, Default)]
pub struct ChangeIndex {
    by_revision: imbl::OrdMap<i64, Vec<Bytes>>,
}

impl ChangeIndex {
    pub(super) fn record(&mut self, revision: i64, key: Bytes) {
        self.by_revision.entry(revision).or_default().push(key);
    }

    /// Forgets revisions older than `revision`. A watcher may start at the compaction revision
    /// itself (as in etcd), so its changes stay.
    pub(super) fn compact(&mut self, revision: i64) {
        let (_, at, mut newer) = self.by_revision.split_lookup(&revision);
        if let Some(keys) = at {
            newer.insert(revision, keys);
        }
        self.by_revision = newer;
    }

    /// The index of a key space read from a snapshot.
    pub(super) fn rebuild(keys: &imbl::OrdMap<Bytes, Vec<Record>>) -> ChangeIndex {
        let mut by_revision: BTreeMap<i64, Vec<Bytes>> = BTreeMap::new();
        for (key, history) in keys.iter() {
            for record in history {
                by_revision
                    .entry(record.mod_revision())
                    .or_default()
                    .push(key.clone());
            }
        }
        ChangeIndex {
            by_revision: by_revision.into_iter().collect(),
        }
    }

    /// Number of revisions indexed.
    pub fn len(&self) -> usize {
        self.by_revision.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_revision.is_empty()
    }
}

/// One key's change at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub key: Bytes,
    pub revision: i64,
    /// The new version; `None` when the key was deleted.
    pub current: Option<Stored>,
    /// The version the change replaced, when the key was live before it.
    pub previous: Option<Stored>,
}

impl Event {
    pub fn is_delete(&self) -> bool {
        self.current.is_none()
    }

    /// Roughly the bytes this event takes on the wire, previous version included.
    pub fn size(&self) -> usize {
        let value = |s: &Option<Stored>| s.as_ref().map_or(0, |s| s.value.len() + self.key.len() + 40);
        self.key.len() + 40 + value(&self.current) + value(&self.previous)
    }

    /// etcd's wire form: a deletion carries only the key and the revision it happened at.
    pub fn to_pb(&self, with_previous: bool) -> mvccpb::Event {
        let (kind, kv) = match &self.current {
            Some(stored) => (EventType::Put, stored.to_key_value(&self.key)),
            None => (
                EventType::Delete,
                mvccpb::KeyValue {
                    key: self.key.to_vec(),
                    mod_revision: self.revision,
                    ..Default::default()
                },
            ),
        };
        mvccpb::Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv: if with_previous {
                self.previous.as_ref().map(|p| p.to_key_value(&self.key))
            } else {
                None
            },
        }
    }
}

/// Every change of one revision, in key order (the same on every member, whether it applied the
/// revision or loaded it from a snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionEvents {
    pub revision: i64,
    pub events: Vec<Event>,
}

impl RevisionEvents {
    pub fn size(&self) -> usize {
        self.events.iter().map(Event::size).sum()
    }
}

/// A stretch of history: the changes of every revision from where the read began through
/// `through` (revisions whose changes were compacted away are absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRead {
    pub revisions: Vec<RevisionEvents>,
    pub through: i64,
}

impl Mvcc {
    /// The changes made at `revision`.
    pub fn events_at(&self, revision: i64) -> RevisionEvents {
        let mut keys: Vec<&Bytes> = self
            .keys
            .changes()
            .by_revision
            .get(&revision)
            .map(|keys| keys.iter().collect())
            .unwrap_or_default();
        keys.sort();
        keys.dedup();
        let events = keys
            .into_iter()
            .filter_map(|key| {
                let (record, previous) = self.keys.change_at(key, revision)?;
                Some(Event {
                    key: key.clone(),
                    revision,
                    current: match record {
                        Record::Live(stored) => Some(stored.clone()),
                        Record::Tombstone { .. } => None,
                    },
                    previous: previous.cloned(),
                })
            })
            .collect();
        RevisionEvents { revision, events }
    }

    /// The changes from revision `from` on, whole revisions at a time, stopping once about `budget`
    /// bytes are gathered. Refused when `from` is older than the last compaction.
    pub fn history(&self, from: i64, budget: usize) -> Result<HistoryRead, MvccError> {
        if from < self.compacted {
            return Err(MvccError::Compacted);
        }
        let mut revisions = Vec::new();
        let mut gathered = 0;
        let mut through = self.revision;
        for (&revision, _) in self.keys.changes().by_revision.range(from..) {
            if revision > self.revision {
                break;
            }
            let events = self.events_at(revision);
            gathered += events.size();
            revisions.push(events);
            if gathered >= budget {
                through = revision;
                break;
            }
        }
        Ok(HistoryRead {
            revisions,
            through: through.max(from - 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::pb::etcdserverpb::{
        DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
    };

    /// A change as (key, new value or none for a deletion, previous value).
    type Change = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);

    /// One write against a store of a handful of keys.
    #[derive(Debug, Clone)]
    enum Write {
        Put { key: u8, value: u8, lease: bool },
        Delete { from: u8, to: u8 },
        Txn { keys: Vec<u8>, value: u8 },
        Revoke,
        Compact { back: u8 },
    }

    fn key(k: u8) -> Vec<u8> {
        format!("k{k}").into_bytes()
    }

    fn write() -> impl Strategy<Value = Write> {
        prop_oneof![
            4 => (0..6u8, any::<u8>(), any::<bool>()).prop_map(|(key, value, lease)| Write::Put { key, value, lease }),
            1 => (0..6u8, 0..7u8).prop_map(|(from, to)| Write::Delete { from, to }),
            1 => (proptest::collection::btree_set(0..6u8, 1..4), any::<u8>())
                .prop_map(|(keys, value)| Write::Txn { keys: keys.into_iter().collect(), value }),
            1 => Just(Write::Revoke),
            1 => (0..5u8).prop_map(|back| Write::Compact { back }),
        ]
    }

    fn apply(store: &mut Mvcc, write: &Write) {
        let put = |k: u8, value: u8, lease: i64| PutRequest {
            key: key(k),
            value: vec![value],
            lease,
            ..Default::default()
        };
        match write {
            Write::Put { key, value, lease } => {
                let lease = if *lease && store.lease(7).is_some() { 7 } else { 0 };
                store.put(&put(*key, *value, lease)).unwrap();
            }
            Write::Delete { from, to } => {
                store.delete_range(&DeleteRangeRequest {
                    key: key(*from),
                    range_end: key(*to),
                    ..Default::default()
                });
            }
            Write::Txn { keys, value } => {
                let success = keys
                    .iter()
                    .map(|k| RequestOp {
                        request: Some(request_op::Request::RequestPut(put(*k, *value, 0))),
                    })
                    .collect();
                store
                    .txn(&TxnRequest {
                        success,
                        ..Default::default()
                    })
                    .unwrap();
            }
            Write::Revoke => {
                let _ = store.lease_revoke(7);
                store.lease_grant(7, 60).unwrap();
            }
            Write::Compact { back } => {
                let _ = store.compact(store.revision() - i64::from(*back));
            }
        }
    }

    /// What changed at `revision`, worked out from plain reads at `revision - 1` and `revision`
    /// (independent of the change index).
    fn expected_at(store: &Mvcc, revision: i64) -> Vec<Change> {
        let all = |at: i64| {
            store
                .range(&RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    revision: at,
                    ..Default::default()
                })
                .map(|r| r.kvs)
        };
        let (Ok(before), Ok(after)) = (all(revision - 1), all(revision)) else {
            return vec![];
        };
        let mut changes = Vec::new();
        for kv in &after {
            if kv.mod_revision == revision {
                let previous = before.iter().find(|p| p.key == kv.key).map(|p| p.value.clone());
                changes.push((kv.key.clone(), Some(kv.value.clone()), previous));
            }
        }
        for kv in &before {
            if !after.iter().any(|a| a.key == kv.key) {
                changes.push((kv.key.clone(), None, Some(kv.value.clone())));
            }
        }
        changes.sort();
        changes
    }

    fn observed(events: &RevisionEvents) -> Vec<Change> {
        let mut changes: Vec<_> = events
            .events
            .iter()
            .map(|e| {
                (
                    e.key.to_vec(),
                    e.current.as_ref().map(|s| s.value.to_vec()),
                    e.previous.as_ref().map(|s| s.value.to_vec()),
                )
            })
            .collect();
        changes.sort();
        changes
    }

    proptest! {
        #[test]
        fn history_holds_every_change_since_compaction(writes in proptest::collection::vec(write(), 1..60)) {
            let mut store = Mvcc::default();
            store.lease_grant(7, 60).unwrap();
            for w in &writes {
                apply(&mut store, w);
            }
            // Reads at the compaction revision itself still work, so changes there can be checked
            // only from the next revision on.
            let first = store.compacted_revision().max(1) + 1;
            let reloaded: Mvcc = postcard::from_bytes(&postcard::to_stdvec(&store).unwrap()).unwrap();
            for revision in first..=store.revision() {
                let expected = expected_at(&store, revision);
                prop_assert!(!expected.is_empty(), "revision {} changed nothing", revision);
                prop_assert_eq!(observed(&store.events_at(revision)), expected.clone());
                prop_assert_eq!(observed(&reloaded.events_at(revision)), expected);
            }
            // Reading in small pieces yields every revision once, in order, each whole.
            let mut from = first;
            let mut seen = Vec::new();
            while from <= store.revision() {
                let read = store.history(from, 1).unwrap();
                prop_assert!(read.through >= from);
                seen.extend(read.revisions.iter().map(|r| r.revision));
                from = read.through + 1;
            }
            let all: Vec<i64> = (first..=store.revision()).collect();
            prop_assert_eq!(seen, all);
            if store.compacted_revision() > 1 {
                prop_assert_eq!(store.history(store.compacted_revision() - 1, 1), Err(MvccError::Compacted));
            }
        }
    }
}
