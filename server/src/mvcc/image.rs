//! The store as a backup holds it: every record in revision order beside the lease table, and the
//! store rebuilt from such a sequence, each record checked as it is read (a backup is untrusted).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::Mvcc;
use super::keyspace::{KeySpace, Record};
use super::lease::{LeaseTable, MAX_LEASE_TTL};

/// Why records cannot form a store: what is wrong and with which key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?} at revision {revision}: {reason}")]
pub struct ImageError {
    pub key: String,
    pub revision: i64,
    pub reason: String,
}

impl Mvcc {
    /// Every record in revision order, key order within one revision: the order of etcd's key
    /// bucket, where a record's place within its revision is its sub-revision.
    pub fn records_by_revision(&self) -> Vec<(&Bytes, &Record)> {
        let mut records: Vec<(&Bytes, &Record)> = self.keys.records_up_to(i64::MAX).collect();
        records.sort_by_key(|(_, record)| record.mod_revision());
        records
    }
}

/// Builds a store from records given in revision order, then its leases and compaction point.
#[derive(Default)]
pub struct ImageBuilder {
    keys: BTreeMap<Bytes, Vec<Record>>,
    leases: BTreeMap<i64, i64>,
    last_revision: i64,
}

impl ImageBuilder {
    /// Adds one record; revisions never go back, and a key changes at most once per revision.
    pub fn record(&mut self, key: &[u8], record: Record) -> Result<(), ImageError> {
        let revision = record.mod_revision();
        let refuse = |reason: &str| ImageError {
            key: String::from_utf8_lossy(key).into_owned(),
            revision,
            reason: reason.to_owned(),
        };
        if key.is_empty() {
            return Err(refuse("empty key"));
        }
        if revision < 1 {
            return Err(refuse("revisions start at 1"));
        }
        if revision < self.last_revision {
            return Err(refuse("records are out of revision order"));
        }
        if let Record::Live(stored) = &record
            && (stored.create_revision < 1 || stored.create_revision > revision || stored.version < 1)
        {
            return Err(refuse("create revision or version out of range"));
        }
        let history = self.keys.entry(Bytes::copy_from_slice(key)).or_default();
        if history.last().is_some_and(|last| last.mod_revision() >= revision) {
            return Err(refuse("the key changes twice at one revision"));
        }
        history.push(record);
        self.last_revision = revision;
        Ok(())
    }

    /// Adds a lease with the TTL it was granted.
    pub fn lease(&mut self, id: i64, ttl: i64) -> Result<(), ImageError> {
        if id <= 0 || !(1..=MAX_LEASE_TTL).contains(&ttl) || self.leases.insert(id, ttl).is_some() {
            return Err(ImageError {
                key: format!("lease {id:x}"),
                revision: 0,
                reason: format!("bad or repeated lease (TTL {ttl})"),
            });
        }
        Ok(())
    }

    /// The store, with reads refused below `compacted` (`None`: never compacted). Its revision is
    /// the last record's, or the compaction point if that is later (a compacted delete leaves no
    /// record).
    pub fn finish(self, compacted: Option<i64>) -> Mvcc {
        let revision = self.last_revision.max(compacted.unwrap_or(0)).max(1);
        let mut leases = LeaseTable::default();
        for (id, ttl) in &self.leases {
            leases.grant(*id, *ttl);
        }
        for (key, history) in &self.keys {
            if let Some(Record::Live(stored)) = history.last()
                && stored.lease != 0
            {
                leases.attach(stored.lease, key);
            }
        }
        Mvcc {
            keys: KeySpace::from_histories(self.keys.into_iter().collect()),
            leases,
            revision,
            compacted: compacted.unwrap_or(-1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest};
    use proptest::prelude::*;

    fn put(key: &[u8], value: &[u8], lease: i64) -> PutRequest {
        PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        }
    }

    proptest! {
        #[test]
        fn a_store_rebuilt_from_its_records_hashes_and_reads_the_same(
            ops in proptest::collection::vec((0u8..3, 0u8..12, any::<bool>()), 1..120),
            compact_at in 0usize..120,
        ) {
            let mut store = Mvcc::default();
            store.lease_grant(7, 60).unwrap();
            for (index, (op, key, leased)) in ops.iter().enumerate() {
                let key = [b'k', *key];
                match op {
                    0 | 1 => { store.put(&put(&key, &[index as u8], if *leased { 7 } else { 0 })).unwrap(); }
                    _ => { store.delete_range(&DeleteRangeRequest { key: key.to_vec(), ..Default::default() }); }
                }
                if index == compact_at {
                    store.compact(store.revision()).unwrap();
                }
            }
            let mut builder = ImageBuilder::default();
            for (key, record) in store.records_by_revision() {
                builder.record(key, record.clone()).unwrap();
            }
            for (id, lease) in store.leases() {
                builder.lease(id, lease.granted_ttl).unwrap();
            }
            let compacted = (store.compacted_revision() > 0).then_some(store.compacted_revision());
            let rebuilt = builder.finish(compacted);
            prop_assert_eq!(rebuilt.revision(), store.revision());
            prop_assert_eq!(rebuilt.compacted_revision(), store.compacted_revision());
            prop_assert_eq!(rebuilt.hash_kv(0).unwrap(), store.hash_kv(0).unwrap());
            prop_assert_eq!(rebuilt.footprint(), store.footprint());
            prop_assert_eq!(rebuilt.lease(7), store.lease(7));
        }
    }

    #[test]
    fn records_that_cannot_be_a_history_are_refused_by_key() {
        let live = |create, revision| {
            Record::Live(crate::mvcc::Stored {
                create_revision: create,
                mod_revision: revision,
                version: 1,
                value: Bytes::new(),
                lease: 0,
            })
        };
        let mut builder = ImageBuilder::default();
        builder.record(b"a", live(2, 2)).unwrap();
        let twice = builder.record(b"a", live(2, 2)).unwrap_err();
        assert!(twice.reason.contains("twice"), "{twice}");
        let back = builder.record(b"b", live(1, 1)).unwrap_err();
        assert!(back.reason.contains("order"), "{back}");
        let future = builder.record(b"c", live(9, 3)).unwrap_err();
        assert_eq!(future.key, "c");
        assert!(builder.lease(0, 10).is_err());
    }
}
