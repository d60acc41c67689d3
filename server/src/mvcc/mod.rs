//! The MVCC store: etcd's revisioned key-value model (ranges, puts, deletes, transactions, compaction,
//! leases). Deterministic: every member applying the same requests in the same order reaches the same
//! state, so it can sit behind the Raft log.

mod error;
mod history;
mod image;
mod keyspace;
mod lease;
mod txn;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use error::MvccError;
pub use history::{ChangeIndex, Event, HistoryRead, RevisionEvents};
pub use image::{ImageBuilder, ImageError};
pub use keyspace::Record;
pub use keyspace::{KeyRange, Stored, prefix_end};
pub use lease::{Lease, MAX_LEASE_TTL};
pub use txn::{TxnCheckError, check_txn};

use crate::pb::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, range_request::SortOrder, range_request::SortTarget,
};
use crate::pb::mvccpb::KeyValue;
use keyspace::KeySpace;
use lease::LeaseTable;

/// The store: the key space plus the revision counters and the lease table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mvcc {
    keys: KeySpace,
    leases: LeaseTable,
    /// Revision of the last change; an empty store is at revision 1, as in etcd.
    revision: i64,
    /// Reads below this revision are refused; -1 until the first compaction.
    compacted: i64,
}

impl Default for Mvcc {
    fn default() -> Self {
        Mvcc {
            keys: KeySpace::default(),
            leases: LeaseTable::default(),
            revision: 1,
            compacted: -1,
        }
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl Mvcc {
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    /// Approximate bytes the store holds, history included (etcd's db size).
    pub fn footprint(&self) -> u64 {
        self.keys.footprint()
    }

    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(id)
    }

    pub fn leases(&self) -> impl Iterator<Item = (i64, &Lease)> + '_ {
        self.leases.iter()
    }

    /// Resolves the revision a read asks for: `<= 0` is the latest.
    fn read_revision(&self, requested: i64) -> Result<i64, MvccError> {
        if requested <= 0 {
            return Ok(self.revision);
        }
        if requested > self.revision {
            return Err(MvccError::FutureRevision);
        }
        if requested < self.compacted {
            return Err(MvccError::Compacted);
        }
        Ok(requested)
    }

    /// etcd's Range: `count` is the number of keys in the range at that revision, regardless of
    /// `limit` and of the min/max filters; sorting happens before truncation.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.range_at(request, self.revision)
    }

    /// Range where "latest" means `latest` (inside a transaction, the revision being written).
    fn range_at(&self, request: &RangeRequest, latest: i64) -> Result<RangeResponse, MvccError> {
        let revision = if request.revision <= 0 {
            latest
        } else {
            self.read_revision(request.revision)?
        };
        let range = KeyRange::new(&request.key, &request.range_end);
        let sort_order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
        let sort_target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
        let filtered = request.min_mod_revision > 0
            || request.max_mod_revision > 0
            || request.min_create_revision > 0
            || request.max_create_revision > 0;
        let key_order =
            sort_target == SortTarget::Key && matches!(sort_order, SortOrder::None | SortOrder::Ascend);
        // With the natural order and no filters only limit+1 entries are needed to know `more`.
        let needed = if request.limit > 0 && key_order && !filtered {
            request.limit as usize + 1
        } else {
            usize::MAX
        };

        let mut count = 0i64;
        let mut selected: Vec<(&Bytes, &Stored)> = Vec::new();
        for (key, stored) in self.keys.range(range, revision) {
            count += 1;
            if request.count_only || selected.len() >= needed || !passes_filters(request, stored) {
                continue;
            }
            selected.push((key, stored));
        }
        if request.count_only {
            return Ok(RangeResponse {
                header: header(revision),
                kvs: vec![],
                more: false,
                count,
            });
        }
        sort_entries(&mut selected, sort_order, sort_target);
        let mut more = false;
        if request.limit > 0 && selected.len() > request.limit as usize {
            selected.truncate(request.limit as usize);
            more = true;
        }
        let kvs = selected
            .into_iter()
            .map(|(key, stored)| {
                let mut kv = stored.to_key_value(key);
                if request.keys_only {
                    kv.value.clear();
                }
                kv
            })
            .collect();
        Ok(RangeResponse {
            header: header(revision),
            kvs,
            more,
            count,
        })
    }

    /// Checks that a put could be applied now, without changing anything.
    fn check_put(&self, request: &PutRequest) -> Result<(), MvccError> {
        if request.lease != 0 && !self.leases.contains(request.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        if (request.ignore_value || request.ignore_lease)
            && self.keys.get(&request.key, self.revision).is_none()
        {
            return Err(MvccError::KeyNotFound);
        }
        Ok(())
    }

    /// Writes a put at `revision` (already checked).
    fn write_put(&mut self, request: &PutRequest, revision: i64) -> PutResponse {
        let previous = self.keys.get(&request.key, revision).cloned();
        let value = match (&previous, request.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => Bytes::copy_from_slice(&request.value),
        };
        let lease = match (&previous, request.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => request.lease,
        };
        if let Some(prev) = &previous
            && prev.lease != lease
        {
            self.leases.detach(prev.lease, &request.key);
        }
        if lease != 0 {
            self.leases.attach(lease, &request.key);
        }
        let stored = Stored {
            create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        self.keys.put(&request.key, stored);
        PutResponse {
            header: header(revision),
            prev_kv: if request.prev_kv {
                previous.map(|p| p.to_key_value(&request.key))
            } else {
                None
            },
        }
    }

    pub fn put(&mut self, request: &PutRequest) -> Result<PutResponse, MvccError> {
        self.check_put(request)?;
        self.revision += 1;
        Ok(self.write_put(request, self.revision))
    }

    /// Deletes at `revision`; returns the response and whether anything was deleted.
    fn write_delete(&mut self, request: &DeleteRangeRequest, revision: i64) -> DeleteRangeResponse {
        let doomed: Vec<(Bytes, Stored)> = self
            .keys
            .range(KeyRange::new(&request.key, &request.range_end), revision)
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, stored) in &doomed {
            self.keys.delete(key, revision);
            if stored.lease != 0 {
                self.leases.detach(stored.lease, key);
            }
            if request.prev_kv {
                prev_kvs.push(stored.to_key_value(key));
            }
        }
        DeleteRangeResponse {
            header: header(revision),
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    pub fn delete_range(&mut self, request: &DeleteRangeRequest) -> DeleteRangeResponse {
        let next = self.revision + 1;
        let response = self.write_delete(request, next);
        if response.deleted > 0 {
            self.revision = next;
        }
        DeleteRangeResponse {
            header: header(self.revision),
            ..response
        }
    }

    /// Compacts history below `revision`, cluster-wide (this runs on every member through the log).
    pub fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if revision > self.revision {
            return Err(MvccError::FutureRevision);
        }
        self.keys.compact(revision);
        self.compacted = revision;
        Ok(())
    }

    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        if self.leases.contains(id) {
            return Err(MvccError::LeaseExists);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        self.leases.grant(id, ttl);
        Ok(())
    }

    /// Revokes a lease and deletes all its keys at one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<(), MvccError> {
        let lease = self.leases.remove(id).ok_or(MvccError::LeaseNotFound)?;
        if lease.keys.is_empty() {
            return Ok(());
        }
        let next = self.revision + 1;
        let mut deleted = false;
        for key in &lease.keys {
            if self.keys.get(key, next).is_some() {
                self.keys.delete(key, next);
                deleted = true;
            }
        }
        if deleted {
            self.revision = next;
        }
        Ok(())
    }

    /// A CRC32 over every key revision up to `revision` (0 = latest) in a fixed order; equal on every
    /// member that has applied the same log.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), MvccError> {
        let at = self.read_revision(revision)?;
        let mut hasher = crc32fast::Hasher::new();
        for (key, record) in self.keys.records_up_to(at) {
            keyspace::hash_record(&mut hasher, key, record);
        }
        Ok((hasher.finalize(), at))
    }
}

fn passes_filters(request: &RangeRequest, stored: &Stored) -> bool {
    (request.min_mod_revision <= 0 || stored.mod_revision >= request.min_mod_revision)
        && (request.max_mod_revision <= 0 || stored.mod_revision <= request.max_mod_revision)
        && (request.min_create_revision <= 0 || stored.create_revision >= request.min_create_revision)
        && (request.max_create_revision <= 0 || stored.create_revision <= request.max_create_revision)
}

fn sort_entries(entries: &mut [(&Bytes, &Stored)], order: SortOrder, target: SortTarget) {
    // etcd treats a non-key target with no order as ascending.
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    entries.sort_by(|(ka, a), (kb, b)| match target {
        SortTarget::Key => ka.cmp(kb),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    });
    if order == SortOrder::Descend {
        entries.reverse();
    }
}

/// A zero KeyValue stands for a missing key in compares, as in etcd.
fn missing_key() -> KeyValue {
    KeyValue::default()
}

#[cfg(test)]
mod tests;
