//! The replicated lease table: which leases exist, their granted TTL and the keys attached to them.
//! When a lease runs out is decided by the leader's clock, outside this table (see `lessor`).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// etcd's ceiling on a lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub granted_ttl: i64,
    pub keys: BTreeSet<Bytes>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
}

impl LeaseTable {
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn grant(&mut self, id: i64, ttl: i64) {
        self.leases.insert(
            id,
            Lease {
                granted_ttl: ttl,
                keys: BTreeSet::new(),
            },
        );
    }

    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    pub fn attach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.insert(Bytes::copy_from_slice(key));
        }
    }

    pub fn detach(&mut self, id: i64, key: &[u8]) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// Every lease with its granted TTL, in ID order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &Lease)> + '_ {
        self.leases.iter().map(|(id, lease)| (*id, lease))
    }
}
