//! The permission check every log entry passes when it is applied, against the auth store of that
//! moment and on behalf of the caller it carries (etcd's authApplierV3): a change to users or
//! roles committed before the entry always counts.

use crate::auth::{Access, AuthError, AuthStore};
use crate::mvcc::Mvcc;
use crate::pb::cairnpb::{Caller, raft_request::Request};
use crate::pb::etcdserverpb::{TxnRequest, alarm_request::AlarmAction, request_op};

/// Whether `caller` may have `request` applied.
pub fn authorize(auth: &AuthStore, mvcc: &Mvcc, caller: &Caller, request: &Request) -> Result<(), AuthError> {
    match request {
        Request::Put(put) => {
            auth.check(caller, &put.key, b"", Access::Write)?;
            if put.prev_kv {
                auth.check(caller, &put.key, b"", Access::Read)?;
            }
            // A key put under a lease the caller could not revoke would outlive its rights.
            lease_keys_writable(auth, mvcc, caller, put.lease)
        }
        Request::DeleteRange(delete) => {
            auth.check(caller, &delete.key, &delete.range_end, Access::Write)?;
            if delete.prev_kv {
                auth.check(caller, &delete.key, &delete.range_end, Access::Read)?;
            }
            Ok(())
        }
        Request::Txn(txn) => txn_permitted(auth, caller, txn),
        Request::LeaseRevoke(revoke) => lease_keys_writable(auth, mvcc, caller, revoke.id),
        Request::Alarm(alarm) => match AlarmAction::try_from(alarm.action) {
            Ok(AlarmAction::Get) => Ok(()),
            _ => auth.check_admin(caller),
        },
        Request::Authenticate(authenticate) => {
            // The password was checked against the store of `auth_revision`; a change since (a
            // new password, a deleted user) voids that check.
            if auth.revision > caller.auth_revision {
                return Err(AuthError::AuthOldRevision);
            }
            auth.can_authenticate(&authenticate.name)
        }
        Request::AuthEnable(_)
        | Request::AuthDisable(_)
        | Request::UserAdd(_)
        | Request::UserDelete(_)
        | Request::UserChangePassword(_)
        | Request::UserGrantRole(_)
        | Request::UserRevokeRole(_)
        | Request::RoleAdd(_)
        | Request::RoleDelete(_)
        | Request::RoleGrantPermission(_)
        | Request::RoleRevokePermission(_) => auth.check_admin(caller),
        Request::Compaction(_)
        | Request::LeaseGrant(_)
        | Request::MemberAttributes(_)
        | Request::MemberPeerUrls(_)
        | Request::MemberRemoved(_) => Ok(()),
    }
}

fn lease_keys_writable(auth: &AuthStore, mvcc: &Mvcc, caller: &Caller, lease: i64) -> Result<(), AuthError> {
    let Some(lease) = mvcc.lease(lease) else {
        return Ok(());
    };
    auth.check_keys(caller, lease.keys.iter().map(|k| &k[..]), Access::Write)
}

/// etcd's CheckTxnAuth: compares read, and every operation of both branches is checked, taken or
/// not, so a transaction's outcome never tells what a caller may not read.
pub fn txn_permitted(auth: &AuthStore, caller: &Caller, txn: &TxnRequest) -> Result<(), AuthError> {
    for compare in &txn.compare {
        auth.check(caller, &compare.key, &compare.range_end, Access::Read)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(range)) => {
                auth.check(caller, &range.key, &range.range_end, Access::Read)?;
            }
            Some(request_op::Request::RequestPut(put)) => {
                auth.check(caller, &put.key, b"", Access::Write)?;
                if put.prev_kv {
                    auth.check(caller, &put.key, b"", Access::Read)?;
                }
            }
            Some(request_op::Request::RequestDeleteRange(delete)) => {
                auth.check(caller, &delete.key, &delete.range_end, Access::Write)?;
                if delete.prev_kv {
                    auth.check(caller, &delete.key, &delete.range_end, Access::Read)?;
                }
            }
            Some(request_op::Request::RequestTxn(nested)) => txn_permitted(auth, caller, nested)?,
            None => {}
        }
    }
    Ok(())
}
