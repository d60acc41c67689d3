//! Transactions: etcd's request checks (operation count, duplicate keys), compare evaluation, and
//! atomic execution of the chosen branch at a single revision.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use super::{KeyRange, Mvcc, MvccError, header, missing_key};
use crate::pb::etcdserverpb::{
    Compare, ResponseOp, TxnRequest, TxnResponse, compare::CompareResult, compare::CompareTarget,
    compare::TargetUnion, request_op::Request, response_op::Response,
};
use crate::pb::mvccpb::KeyValue;

/// Why a transaction is refused before it reaches the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxnCheckError {
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
}

/// Keys a branch writes: single keys put, and ranges deleted.
#[derive(Default)]
struct Writes {
    puts: BTreeSet<Vec<u8>>,
    deletes: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Writes {
    fn deletes_cover(&self, key: &[u8]) -> bool {
        self.deletes
            .iter()
            .any(|(start, end)| KeyRange::new(start, end).contains(key))
    }
}

/// etcd's `checkTxnRequest` + `checkIntervals`: at most `max_ops` operations per list, no empty keys,
/// and no key written twice on one execution path (the two branches of a nested txn are exclusive).
pub fn check_txn(request: &TxnRequest, max_ops: usize) -> Result<(), TxnCheckError> {
    check_counts(request, max_ops)?;
    branch_writes(&request.success)?;
    branch_writes(&request.failure)?;
    Ok(())
}

fn check_counts(request: &TxnRequest, max_ops: usize) -> Result<(), TxnCheckError> {
    if request.compare.len() > max_ops || request.success.len() > max_ops || request.failure.len() > max_ops {
        return Err(TxnCheckError::TooManyOps);
    }
    for compare in &request.compare {
        if compare.key.is_empty() {
            return Err(TxnCheckError::EmptyKey);
        }
    }
    for op in request.success.iter().chain(&request.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) if r.key.is_empty() => return Err(TxnCheckError::EmptyKey),
            Some(Request::RequestPut(r)) if r.key.is_empty() => return Err(TxnCheckError::EmptyKey),
            Some(Request::RequestDeleteRange(r)) if r.key.is_empty() => return Err(TxnCheckError::EmptyKey),
            Some(Request::RequestTxn(nested)) => check_counts(nested, max_ops)?,
            _ => {}
        }
    }
    Ok(())
}

fn branch_writes(ops: &[crate::pb::etcdserverpb::RequestOp]) -> Result<Writes, TxnCheckError> {
    let mut writes = Writes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            writes.deletes.push((d.key.clone(), d.range_end.clone()));
        }
    }
    for op in ops {
        match &op.request {
            Some(Request::RequestPut(put))
                if (writes.deletes_cover(&put.key) || !writes.puts.insert(put.key.clone())) =>
            {
                return Err(TxnCheckError::DuplicateKey);
            }
            Some(Request::RequestTxn(nested)) => {
                let then = branch_writes(&nested.success)?;
                let otherwise = branch_writes(&nested.failure)?;
                let before = writes.puts.clone();
                for key in then.puts.iter().chain(otherwise.puts.iter()) {
                    if before.contains(key) || writes.deletes_cover(key) {
                        return Err(TxnCheckError::DuplicateKey);
                    }
                    writes.puts.insert(key.clone());
                }
                writes.deletes.extend(then.deletes);
                writes.deletes.extend(otherwise.deletes);
            }
            _ => {}
        }
    }
    Ok(writes)
}

fn compare_holds(compare: &Compare, kv: &KeyValue) -> bool {
    let target = CompareTarget::try_from(compare.target).unwrap_or(CompareTarget::Version);
    let int_target =
        |wanted: fn(&TargetUnion) -> Option<i64>| compare.target_union.as_ref().and_then(wanted).unwrap_or(0);
    let ordering = match target {
        CompareTarget::Value => {
            let wanted = match &compare.target_union {
                Some(TargetUnion::Value(v)) => v.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        CompareTarget::Version => kv.version.cmp(&int_target(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Create => kv.create_revision.cmp(&int_target(|t| match t {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Mod => kv.mod_revision.cmp(&int_target(|t| match t {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Lease => kv.lease.cmp(&int_target(|t| match t {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
    };
    match CompareResult::try_from(compare.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

impl Mvcc {
    /// A compare over a range holds only if it holds for every key in it; a missing key compares as
    /// a zero KeyValue, except that a value compare on a missing key always fails.
    fn compare(&self, compare: &Compare) -> bool {
        let kvs: Vec<KeyValue> = self
            .keys
            .range(KeyRange::new(&compare.key, &compare.range_end), self.revision)
            .map(|(key, stored)| stored.to_key_value(key))
            .collect();
        if kvs.is_empty() {
            return compare.target != CompareTarget::Value as i32 && compare_holds(compare, &missing_key());
        }
        kvs.iter().all(|kv| compare_holds(compare, kv))
    }

    /// Decides every branch up front, against the state before the transaction (as etcd does).
    fn choose_path(&self, request: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = request.compare.iter().all(|c| self.compare(c));
        path.push(succeeded);
        let ops = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        for op in ops {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                self.choose_path(nested, path);
            }
        }
    }

    /// Refuses the whole transaction before any write if one chosen operation would fail.
    fn check_path(
        &self,
        request: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> Result<(), MvccError> {
        let ops = if *path.next().unwrap_or(&false) {
            &request.success
        } else {
            &request.failure
        };
        for op in ops {
            match &op.request {
                Some(Request::RequestPut(put)) => self.check_put(put)?,
                Some(Request::RequestRange(range)) if range.revision > 0 => {
                    self.read_revision(range.revision)?;
                }
                Some(Request::RequestTxn(nested)) => self.check_path(nested, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn execute_path(
        &mut self,
        request: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
        revision: i64,
        wrote: &mut bool,
    ) -> TxnResponse {
        let succeeded = *path.next().unwrap_or(&false);
        let ops = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(range)) => {
                    // Checked in check_path; reads see this transaction's earlier writes.
                    let latest = if *wrote { revision } else { self.revision };
                    let read = self.range_at(range, latest).unwrap_or_default();
                    Some(Response::ResponseRange(read))
                }
                Some(Request::RequestPut(put)) => {
                    *wrote = true;
                    Some(Response::ResponsePut(self.write_put(put, revision)))
                }
                Some(Request::RequestDeleteRange(delete)) => {
                    let response = self.write_delete(delete, revision);
                    *wrote |= response.deleted > 0;
                    Some(Response::ResponseDeleteRange(response))
                }
                Some(Request::RequestTxn(nested)) => Some(Response::ResponseTxn(
                    self.execute_path(nested, path, revision, wrote),
                )),
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        TxnResponse {
            header: header(revision),
            succeeded,
            responses,
        }
    }

    /// Applies a transaction atomically: all its writes share one new revision, and a read-only or
    /// no-op transaction does not advance the revision.
    pub fn txn(&mut self, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let mut path = Vec::new();
        self.choose_path(request, &mut path);
        self.check_path(request, &mut path.iter())?;
        let next = self.revision + 1;
        let mut wrote = false;
        let mut response = self.execute_path(request, &mut path.iter(), next, &mut wrote);
        if wrote {
            self.revision = next;
        }
        response.header = header(self.revision);
        Ok(response)
    }
}
