//! The checks every request passes before it is proposed or served, wherever it entered (client
//! port, gateway, or forwarded by a peer): etcd's refusals with etcd's words.

use prost::Message;

use super::NodeError;
use super::leader::LeaderCall;
use crate::mvcc::{MAX_LEASE_TTL, MvccError, check_txn};
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, TxnRequest, range_request,
};

pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const INVALID_SORT_OPTION: &str = "etcdserver: invalid sort option";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";

/// The request limits of `--max-request-bytes` and `--max-txn-ops`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
}

impl Limits {
    /// Refuses requests over `--max-request-bytes` (etcd's ErrRequestTooLarge).
    pub fn size(&self, request: &impl Message) -> Result<(), NodeError> {
        if request.encoded_len() > self.max_request_bytes {
            return Err(NodeError::invalid(REQUEST_TOO_LARGE));
        }
        Ok(())
    }

    pub fn range(&self, request: &RangeRequest) -> Result<(), NodeError> {
        self.size(request)?;
        if request.key.is_empty() {
            return Err(NodeError::invalid(EMPTY_KEY));
        }
        if range_request::SortOrder::try_from(request.sort_order).is_err()
            || range_request::SortTarget::try_from(request.sort_target).is_err()
        {
            return Err(NodeError::invalid(INVALID_SORT_OPTION));
        }
        Ok(())
    }

    pub fn put(&self, request: &PutRequest) -> Result<(), NodeError> {
        self.size(request)?;
        if request.key.is_empty() {
            return Err(NodeError::invalid(EMPTY_KEY));
        }
        if request.ignore_value && !request.value.is_empty() {
            return Err(NodeError::invalid(VALUE_PROVIDED));
        }
        if request.ignore_lease && request.lease != 0 {
            return Err(NodeError::invalid(LEASE_PROVIDED));
        }
        Ok(())
    }

    pub fn delete_range(&self, request: &DeleteRangeRequest) -> Result<(), NodeError> {
        self.size(request)?;
        if request.key.is_empty() {
            return Err(NodeError::invalid(EMPTY_KEY));
        }
        Ok(())
    }

    pub fn txn(&self, request: &TxnRequest) -> Result<(), NodeError> {
        self.size(request)?;
        check_txn(request, self.max_txn_ops).map_err(|e| NodeError::InvalidRequest(e.to_string()))
    }

    /// The checks a request for the leader passes on every member it reaches.
    pub fn call(&self, call: &LeaderCall) -> Result<(), NodeError> {
        match call {
            LeaderCall::Put(put) => self.put(put),
            LeaderCall::DeleteRange(delete) => self.delete_range(delete),
            LeaderCall::Txn(txn) => self.txn(txn),
            LeaderCall::LeaseGrant(grant) => self.lease_grant(grant),
            LeaderCall::Compaction(_)
            | LeaderCall::LeaseRevoke(_)
            | LeaderCall::Alarm(_)
            | LeaderCall::ReadIndex(_)
            | LeaderCall::LeaseKeepAlive(_)
            | LeaderCall::LeaseTimeToLive(_)
            | LeaderCall::MemberAdd(_)
            | LeaderCall::MemberRemove(_)
            | LeaderCall::MemberPromote(_)
            | LeaderCall::MemberUpdate(_)
            | LeaderCall::PublishAttributes(_)
            | LeaderCall::AuthEnable(_)
            | LeaderCall::AuthDisable(_)
            | LeaderCall::Authenticate(_)
            | LeaderCall::UserAdd(_)
            | LeaderCall::UserDelete(_)
            | LeaderCall::UserChangePassword(_)
            | LeaderCall::UserGrantRole(_)
            | LeaderCall::UserRevokeRole(_)
            | LeaderCall::RoleAdd(_)
            | LeaderCall::RoleDelete(_)
            | LeaderCall::RoleGrantPermission(_)
            | LeaderCall::RoleRevokePermission(_) => Ok(()),
        }
    }

    pub fn lease_grant(&self, request: &LeaseGrantRequest) -> Result<(), NodeError> {
        if request.ttl > MAX_LEASE_TTL {
            return Err(NodeError::Mvcc(MvccError::LeaseTtlTooLarge));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_request_bytes: 100,
        max_txn_ops: 2,
    };

    #[test]
    fn refusals_carry_etcds_words() {
        let empty = PutRequest::default();
        assert_eq!(LIMITS.put(&empty), Err(NodeError::invalid(EMPTY_KEY)));
        let big = PutRequest {
            key: b"k".to_vec(),
            value: vec![0; 200],
            ..Default::default()
        };
        assert_eq!(LIMITS.put(&big), Err(NodeError::invalid(REQUEST_TOO_LARGE)));
        let both = PutRequest {
            key: b"k".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(LIMITS.put(&both), Err(NodeError::invalid(LEASE_PROVIDED)));
        let bad_sort = RangeRequest {
            key: b"k".to_vec(),
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(
            LIMITS.range(&bad_sort),
            Err(NodeError::invalid(INVALID_SORT_OPTION))
        );
        let long_lease = LeaseGrantRequest {
            ttl: MAX_LEASE_TTL + 1,
            id: 0,
        };
        assert_eq!(
            LIMITS.lease_grant(&long_lease),
            Err(NodeError::Mvcc(MvccError::LeaseTtlTooLarge))
        );
    }
}
