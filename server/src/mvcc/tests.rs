//! Behaviour of the MVCC store against etcd's documented semantics.

use super::*;
use crate::pb::etcdserverpb::{
    CompactionRequest, Compare, RequestOp, TxnRequest, compare, range_request, request_op::Request,
    response_op::Response,
};

fn put(store: &mut Mvcc, key: &str, value: &str) -> PutResponse {
    store
        .put(&PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap()
}

fn get(store: &Mvcc, key: &str) -> Option<KeyValue> {
    store
        .range(&RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .unwrap()
        .kvs
        .pop()
}

fn keys_of(response: &RangeResponse) -> Vec<String> {
    response
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn op_get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

fn op_delete(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

fn compare_create(key: &str, revision: i64) -> Compare {
    Compare {
        key: key.into(),
        target: compare::CompareTarget::Create as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
        range_end: vec![],
    }
}

fn compare_value(key: &str, value: &str, result: compare::CompareResult) -> Compare {
    Compare {
        key: key.into(),
        target: compare::CompareTarget::Value as i32,
        result: result as i32,
        target_union: Some(compare::TargetUnion::Value(value.into())),
        range_end: vec![],
    }
}

#[test]
fn revision_starts_at_one_and_moves_by_one_per_write() {
    let mut store = Mvcc::default();
    assert_eq!(store.revision(), 1);
    assert_eq!(put(&mut store, "a", "1").header.unwrap().revision, 2);
    assert_eq!(
        put(&mut store, "a", "1").header.unwrap().revision,
        3,
        "same value still bumps"
    );
    let deleted = store.delete_range(&DeleteRangeRequest {
        key: b"nothing".to_vec(),
        ..Default::default()
    });
    assert_eq!(deleted.deleted, 0);
    assert_eq!(store.revision(), 3, "deleting nothing does not bump");
}

#[test]
fn versions_track_creation_modification_and_deletion() {
    let mut store = Mvcc::default();
    put(&mut store, "k", "v1");
    let second = put(&mut store, "k", "v2");
    assert_eq!(second.prev_kv.unwrap().value, b"v1");
    let kv = get(&store, "k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    store.delete_range(&DeleteRangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    });
    assert_eq!(get(&store, "k"), None);
    put(&mut store, "k", "v3");
    let kv = get(&store, "k").unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (5, 5, 1),
        "recreated from version 1"
    );
}

#[test]
fn range_count_ignores_limit_and_more_reports_truncation() {
    let mut store = Mvcc::default();
    for key in ["a", "b", "c", "d"] {
        put(&mut store, key, key);
    }
    let response = store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys_of(&response), vec!["a", "b"]);
    assert_eq!((response.count, response.more), (4, true));
    let exact = store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            limit: 4,
            ..Default::default()
        })
        .unwrap();
    assert!(!exact.more);
    let counted = store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((counted.count, counted.kvs.len()), (2, 0));
}

#[test]
fn range_sorts_before_truncating_and_filters_without_changing_count() {
    let mut store = Mvcc::default();
    put(&mut store, "a", "z"); // rev 2
    put(&mut store, "b", "y"); // rev 3
    put(&mut store, "c", "x"); // rev 4
    let by_value = store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            sort_target: range_request::SortTarget::Value as i32,
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        keys_of(&by_value),
        vec!["c", "b"],
        "no order with a value target means ascending"
    );
    let descending = store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            sort_order: range_request::SortOrder::Descend as i32,
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys_of(&descending), vec!["c"]);
    let filtered = store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            min_mod_revision: 3,
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys_of(&filtered), vec!["b", "c"]);
    assert_eq!(filtered.count, 3);
    assert!(filtered.kvs.iter().all(|kv| kv.value.is_empty()));
}

#[test]
fn historic_reads_and_compaction() {
    let mut store = Mvcc::default();
    put(&mut store, "k", "old"); // 2
    put(&mut store, "k", "new"); // 3
    let at = |store: &Mvcc, revision| {
        store.range(&RangeRequest {
            key: b"k".to_vec(),
            revision,
            ..Default::default()
        })
    };
    assert_eq!(at(&store, 2).unwrap().kvs[0].value, b"old");
    assert_eq!(at(&store, 4), Err(MvccError::FutureRevision));
    store.compact(3).unwrap();
    assert_eq!(at(&store, 2), Err(MvccError::Compacted));
    assert_eq!(at(&store, 3).unwrap().kvs[0].value, b"new");
    assert_eq!(store.compact(3), Err(MvccError::Compacted));
    assert_eq!(store.compact(9), Err(MvccError::FutureRevision));
    let _ = CompactionRequest::default();
}

#[test]
fn txn_compare_and_swap_on_absent_key() {
    let mut store = Mvcc::default();
    let create_once = TxnRequest {
        compare: vec![compare_create("lock", 0)],
        success: vec![op_put("lock", "me")],
        failure: vec![op_get("lock")],
    };
    let first = store.txn(&create_once).unwrap();
    assert!(first.succeeded);
    assert_eq!(first.header.unwrap().revision, 2);
    let second = store.txn(&create_once).unwrap();
    assert!(!second.succeeded);
    assert_eq!(
        second.header.unwrap().revision,
        2,
        "a read-only branch does not bump"
    );
    match &second.responses[0].response {
        Some(Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"me"),
        other => panic!("expected a range response, got {other:?}"),
    }
}

#[test]
fn value_compare_on_missing_key_fails_even_for_not_equal() {
    let mut store = Mvcc::default();
    let txn = TxnRequest {
        compare: vec![compare_value("missing", "x", compare::CompareResult::NotEqual)],
        success: vec![op_put("hit", "1")],
        failure: vec![],
    };
    assert!(!store.txn(&txn).unwrap().succeeded);
}

#[test]
fn range_compare_must_hold_for_every_key() {
    let mut store = Mvcc::default();
    put(&mut store, "p/a", "1");
    put(&mut store, "p/b", "2");
    let mut all_one = compare_value("p/", "1", compare::CompareResult::Equal);
    all_one.range_end = prefix_end(b"p/");
    let txn = TxnRequest {
        compare: vec![all_one],
        success: vec![],
        failure: vec![],
    };
    assert!(!store.txn(&txn).unwrap().succeeded);
}

#[test]
fn txn_writes_share_one_revision_and_later_reads_see_them() {
    let mut store = Mvcc::default();
    let txn = TxnRequest {
        compare: vec![],
        success: vec![op_put("x", "1"), op_put("y", "2"), op_get("x")],
        failure: vec![],
    };
    let response = store.txn(&txn).unwrap();
    assert_eq!(store.revision(), 2);
    assert_eq!(
        get(&store, "x").unwrap().mod_revision,
        get(&store, "y").unwrap().mod_revision
    );
    match &response.responses[2].response {
        Some(Response::ResponseRange(r)) => assert_eq!(r.kvs[0].value, b"1"),
        other => panic!("expected a range response, got {other:?}"),
    }
}

#[test]
fn nested_txn_compares_see_the_state_before_the_txn() {
    let mut store = Mvcc::default();
    let inner = TxnRequest {
        compare: vec![compare_create("a", 0)],
        success: vec![op_put("inner", "absent-before")],
        failure: vec![op_put("inner", "present-before")],
    };
    let outer = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("a", "1"),
            RequestOp {
                request: Some(Request::RequestTxn(inner)),
            },
        ],
        failure: vec![],
    };
    store.txn(&outer).unwrap();
    assert_eq!(get(&store, "inner").unwrap().value, b"absent-before");
}

#[test]
fn failing_operation_leaves_no_partial_write() {
    let mut store = Mvcc::default();
    let bad_lease = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: b"b".to_vec(),
            lease: 42,
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        compare: vec![],
        success: vec![op_put("a", "1"), bad_lease],
        failure: vec![],
    };
    assert_eq!(store.txn(&txn), Err(MvccError::LeaseNotFound));
    assert_eq!(get(&store, "a"), None);
    assert_eq!(store.revision(), 1);
}

#[test]
fn txn_checks_follow_etcd() {
    let many = TxnRequest {
        compare: vec![],
        success: vec![op_get("a"); 129],
        failure: vec![],
    };
    assert_eq!(check_txn(&many, 128), Err(TxnCheckError::TooManyOps));
    let twice = TxnRequest {
        compare: vec![],
        success: vec![op_put("a", "1"), op_put("a", "2")],
        failure: vec![],
    };
    assert_eq!(check_txn(&twice, 128), Err(TxnCheckError::DuplicateKey));
    let put_in_deleted = TxnRequest {
        compare: vec![],
        success: vec![op_delete("a", "c"), op_put("b", "1")],
        failure: vec![],
    };
    assert_eq!(check_txn(&put_in_deleted, 128), Err(TxnCheckError::DuplicateKey));
    let exclusive_branches = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![op_put("k", "1")],
                failure: vec![op_put("k", "2")],
            })),
        }],
        failure: vec![op_put("k", "3")],
    };
    assert_eq!(check_txn(&exclusive_branches, 128), Ok(()));
    let empty_key = TxnRequest {
        compare: vec![],
        success: vec![op_put("", "1")],
        failure: vec![],
    };
    assert_eq!(check_txn(&empty_key, 128), Err(TxnCheckError::EmptyKey));
}

#[test]
fn put_flags_follow_etcd() {
    let mut store = Mvcc::default();
    let ignore_value = PutRequest {
        key: b"k".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(store.put(&ignore_value), Err(MvccError::KeyNotFound));
    put(&mut store, "k", "kept");
    store.lease_grant(7, 60).unwrap();
    store
        .put(&PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            lease: 7,
            ..Default::default()
        })
        .unwrap();
    let kv = get(&store, "k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (b"kept".as_slice(), 7));
    assert!(store.lease(7).unwrap().keys.contains(&b"k"[..]));
    let unknown = PutRequest {
        key: b"k".to_vec(),
        lease: 99,
        ..Default::default()
    };
    assert_eq!(store.put(&unknown), Err(MvccError::LeaseNotFound));
}

#[test]
fn revoking_a_lease_deletes_its_keys_at_one_revision() {
    let mut store = Mvcc::default();
    store.lease_grant(5, 10).unwrap();
    assert_eq!(store.lease_grant(5, 10), Err(MvccError::LeaseExists));
    for key in ["l/1", "l/2"] {
        store
            .put(&PutRequest {
                key: key.into(),
                lease: 5,
                ..Default::default()
            })
            .unwrap();
    }
    put(&mut store, "other", "x");
    let before = store.revision();
    store.lease_revoke(5).unwrap();
    assert_eq!(store.revision(), before + 1);
    assert_eq!(get(&store, "l/1"), None);
    assert_eq!(get(&store, "l/2"), None);
    assert!(get(&store, "other").is_some());
    assert_eq!(store.lease_revoke(5), Err(MvccError::LeaseNotFound));
    assert_eq!(
        store.lease_grant(6, MAX_LEASE_TTL + 1),
        Err(MvccError::LeaseTtlTooLarge)
    );
}

#[test]
fn overwriting_a_key_moves_it_between_leases() {
    let mut store = Mvcc::default();
    store.lease_grant(1, 10).unwrap();
    store.lease_grant(2, 10).unwrap();
    store
        .put(&PutRequest {
            key: b"k".to_vec(),
            lease: 1,
            ..Default::default()
        })
        .unwrap();
    store
        .put(&PutRequest {
            key: b"k".to_vec(),
            lease: 2,
            ..Default::default()
        })
        .unwrap();
    store.lease_revoke(1).unwrap();
    assert!(get(&store, "k").is_some(), "the key now belongs to lease 2");
}

#[test]
fn hashes_agree_for_equal_histories_and_differ_otherwise() {
    let mut a = Mvcc::default();
    let mut b = Mvcc::default();
    for store in [&mut a, &mut b] {
        put(store, "x", "1");
        put(store, "y", "2");
    }
    assert_eq!(a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
    put(&mut b, "y", "3");
    assert_ne!(a.hash_kv(0).unwrap().0, b.hash_kv(0).unwrap().0);
    assert_eq!(
        a.hash_kv(3).unwrap(),
        b.hash_kv(3).unwrap(),
        "equal up to revision 3"
    );
}
