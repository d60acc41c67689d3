//! etcd's key-value semantics as a sequential model: the store's revision, every key's value,
//! create and mod revisions, version and lease, and the leases that exist. `step` applies one
//! operation and says whether the response a client got is the one etcd would have given.
//!
//! The rules are etcd's (mvcc/kvstore_txn.go): a write that changes something moves the store to
//! the next revision and every key it touches gets that revision; a delete of an absent key, a
//! transaction whose branch changes nothing and a lease grant leave the revision alone; revoking a
//! lease deletes its keys in one revision; a put with a lease that does not exist fails.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Compare, KeyValue, Request, Response, TxnOp};
use crate::linearizability::Model;

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Store {
    revision: i64,
    keys: BTreeMap<String, KeyValue>,
    leases: BTreeSet<i64>,
}

impl Store {
    /// A store that has seen `revision` revisions and holds nothing (a cluster starts at 1).
    pub fn at(revision: i64) -> Store {
        Store {
            revision,
            ..Store::default()
        }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Applies `request`; returns the next state and the response etcd would give.
    pub fn apply(&self, request: &Request) -> (Store, Response) {
        let mut next = self.clone();
        let response = next.apply_in_place(request);
        (next, response)
    }

    fn apply_in_place(&mut self, request: &Request) -> Response {
        match request {
            Request::Get { key, .. } => Response::Get {
                revision: self.revision,
                kv: self.keys.get(key).cloned(),
            },
            Request::List { prefix } => Response::List {
                revision: self.revision,
                kvs: self
                    .keys
                    .range(prefix.clone()..)
                    .take_while(|(key, _)| key.starts_with(prefix.as_str()))
                    .map(|(_, kv)| kv.clone())
                    .collect(),
            },
            Request::Put { key, value, lease } => {
                if *lease != 0 && !self.leases.contains(lease) {
                    return Response::LeaseNotFound;
                }
                self.revision += 1;
                self.put(key, value, *lease);
                Response::Put {
                    revision: self.revision,
                }
            }
            Request::Delete { key } => {
                let deleted = self.keys.contains_key(key);
                if deleted {
                    self.revision += 1;
                    self.keys.remove(key);
                }
                Response::Delete {
                    revision: self.revision,
                    deleted: i64::from(deleted),
                }
            }
            Request::Txn {
                compares,
                success,
                failure,
            } => {
                let succeeded = compares.iter().all(|c| self.holds(c));
                let branch = if succeeded { success } else { failure };
                let changes = branch.iter().any(|op| match op {
                    TxnOp::Put { .. } => true,
                    TxnOp::Delete { key } => self.keys.contains_key(key),
                    TxnOp::Get { .. } => false,
                });
                if changes {
                    self.revision += 1;
                }
                let mut gets = Vec::new();
                for op in branch {
                    match op {
                        TxnOp::Put { key, value } => self.put(key, value, 0),
                        TxnOp::Delete { key } => {
                            self.keys.remove(key);
                        }
                        TxnOp::Get { key } => gets.push(self.keys.get(key).cloned()),
                    }
                }
                Response::Txn {
                    revision: self.revision,
                    succeeded,
                    gets,
                }
            }
            Request::LeaseGrant { .. } => Response::Unknown,
            Request::LeaseRevoke { id } => {
                if !self.leases.remove(id) {
                    return Response::LeaseNotFound;
                }
                let before = self.keys.len();
                self.keys.retain(|_, kv| kv.lease != *id);
                if self.keys.len() != before {
                    self.revision += 1;
                }
                Response::LeaseRevoke {
                    revision: self.revision,
                }
            }
        }
    }

    /// Writes `key` at the current revision (the caller moved it already).
    fn put(&mut self, key: &str, value: &str, lease: i64) {
        let revision = self.revision;
        let kv = self.keys.entry(key.to_owned()).or_insert_with(|| KeyValue {
            key: key.to_owned(),
            value: String::new(),
            create_revision: revision,
            mod_revision: revision,
            version: 0,
            lease: 0,
        });
        kv.value = value.to_owned();
        kv.mod_revision = revision;
        kv.version += 1;
        kv.lease = lease;
    }

    fn holds(&self, compare: &Compare) -> bool {
        self.keys.get(&compare.key).map_or(0, |kv| kv.mod_revision) == compare.mod_revision
    }
}

/// An operation as the checker sees it: what was asked and what came back.
#[derive(Debug, Clone)]
pub struct Call {
    pub request: Request,
    pub response: Response,
}

impl Model for Store {
    type Op = Call;

    fn step(&self, call: &Call) -> Option<Store> {
        // A lease grant's ID is the server's choice: the model learns it from the response.
        if let Request::LeaseGrant { .. } = call.request {
            let mut next = self.clone();
            return match call.response {
                Response::LeaseGrant { id } if next.leases.insert(id) => Some(next),
                // An unknown grant makes a lease nobody was told about, which no later call can
                // use: the same as no grant.
                Response::Unknown => Some(next),
                _ => None,
            };
        }
        let (next, expected) = self.apply(&call.request);
        if call.response == Response::Unknown || call.response == expected {
            Some(next)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    #[test]
    fn writes_move_the_revision_and_reads_see_etcds_fields() {
        let store = Store::at(1);
        let (store, response) = store.apply(&put("a", "1"));
        assert_eq!(response, Response::Put { revision: 2 });
        let (store, _) = store.apply(&put("a", "2"));
        let (_, read) = store.apply(&Request::Get {
            key: "a".into(),
            serializable: false,
        });
        let Response::Get {
            revision: 3,
            kv: Some(kv),
        } = read
        else {
            panic!("{read:?}");
        };
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(kv.value, "2");
    }

    #[test]
    fn nothing_changed_means_no_new_revision() {
        let store = Store::at(1);
        let (store, response) = store.apply(&Request::Delete { key: "a".into() });
        assert_eq!(
            response,
            Response::Delete {
                revision: 1,
                deleted: 0
            }
        );
        let failed_guard = Request::Txn {
            compares: vec![Compare {
                key: "a".into(),
                mod_revision: 5,
            }],
            success: vec![TxnOp::Put {
                key: "a".into(),
                value: "x".into(),
            }],
            failure: vec![TxnOp::Get { key: "a".into() }],
        };
        let (store, response) = store.apply(&failed_guard);
        assert_eq!(
            response,
            Response::Txn {
                revision: 1,
                succeeded: false,
                gets: vec![None]
            }
        );
        assert_eq!(store.revision(), 1);
    }

    #[test]
    fn a_transaction_writes_every_key_at_one_revision() {
        let create_both = Request::Txn {
            compares: vec![Compare {
                key: "a".into(),
                mod_revision: 0,
            }],
            success: vec![
                TxnOp::Put {
                    key: "a".into(),
                    value: "1".into(),
                },
                TxnOp::Put {
                    key: "b".into(),
                    value: "1".into(),
                },
            ],
            failure: vec![],
        };
        let (store, response) = Store::at(1).apply(&create_both);
        assert_eq!(
            response,
            Response::Txn {
                revision: 2,
                succeeded: true,
                gets: vec![]
            }
        );
        let (_, list) = store.apply(&Request::List {
            prefix: String::new(),
        });
        let Response::List { kvs, .. } = list else {
            panic!()
        };
        assert!(kvs.iter().all(|kv| kv.mod_revision == 2), "{kvs:?}");
    }

    #[test]
    fn leases_are_learned_from_grants_and_revoking_deletes_their_keys_in_one_revision() {
        let grant = Call {
            request: Request::LeaseGrant { ttl: 60 },
            response: Response::LeaseGrant { id: 7 },
        };
        let store = Store::at(1).step(&grant).unwrap();
        assert!(store.step(&grant).is_none(), "the same lease granted twice");
        let with_lease = |key: &str| Request::Put {
            key: key.into(),
            value: "v".into(),
            lease: 7,
        };
        let (store, _) = store.apply(&with_lease("a"));
        let (store, _) = store.apply(&with_lease("b"));
        let (store, response) = store.apply(&Request::LeaseRevoke { id: 7 });
        assert_eq!(response, Response::LeaseRevoke { revision: 4 });
        assert!(store.keys.is_empty());
        let (_, response) = store.apply(&with_lease("c"));
        assert_eq!(response, Response::LeaseNotFound);
    }

    /// Requests over three keys and one lease, each picked by a number.
    fn request(pick: u8, key: u8, value: u32) -> Request {
        let key = format!("k{}", key % 3);
        match pick % 7 {
            0 => Request::Get {
                key,
                serializable: false,
            },
            1 => Request::List { prefix: "k".into() },
            2 => Request::Delete { key },
            3 => Request::Txn {
                compares: vec![Compare {
                    key: key.clone(),
                    mod_revision: i64::from(value % 4),
                }],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value: format!("t{value}"),
                }],
                failure: vec![TxnOp::Get { key }],
            },
            4 => Request::Put {
                key,
                value: format!("l{value}"),
                lease: 5,
            },
            5 => Request::LeaseRevoke { id: 5 },
            _ => Request::Put {
                key,
                value: format!("v{value}"),
                lease: 0,
            },
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 512,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(13),
            ..Default::default()
        })]

        /// A history made by running requests one after another through the model, then given
        /// random overlapping call intervals around those points (some never returning), is always
        /// linearizable; the same history with one read answered with a value never written is not.
        #[test]
        fn histories_the_model_produced_are_linearizable_and_a_forged_read_is_not(
            steps in proptest::collection::vec((0u8..7, 0u8..3, 0u32..1000, 0u64..40, 0u64..40, 0u8..10), 1..40),
        ) {
            use crate::linearizability::{Timed, Verdict, check};
            let grant = Call {
                request: Request::LeaseGrant { ttl: 60 },
                response: Response::LeaseGrant { id: 5 },
            };
            let mut state = Store::at(1);
            let mut history = Vec::new();
            for (position, &(pick, key, value, before, after, unknown)) in steps.iter().enumerate() {
                // The lease is granted first, and again whenever it was revoked.
                let granting = !state.leases.contains(&5) && (pick % 7 == 5 || position == 0);
                let request = if granting { grant.request.clone() } else { request(pick, key, value) };
                let call = if request == grant.request {
                    state = state.step(&grant).expect("granted only when absent");
                    Call { request, response: Response::LeaseGrant { id: 5 } }
                } else {
                    let (next, response) = state.apply(&request);
                    state = next;
                    Call { request, response }
                };
                // The operation took effect at 100 * position: its call came before that, its
                // return after (unless it never returned, and then nothing of it was seen).
                let at = 100 * position as u64 + 50;
                let never = unknown == 0 && call.request.writes() && call.response != Response::LeaseGrant { id: 5 };
                history.push(Timed {
                    invoked: at - before,
                    returned: (!never).then_some(at + after),
                    op: Call { response: if never { Response::Unknown } else { call.response.clone() }, ..call },
                });
            }
            let verdict = check(Store::at(1), &history, 1_000_000);
            proptest::prop_assert!(matches!(verdict, Verdict::Linearizable { .. }), "{verdict:?}");

            let read = history.iter().position(|t| matches!(t.op.response, Response::Get { .. }));
            if let Some(read) = read {
                let Response::Get { revision, .. } = history[read].op.response else { unreachable!() };
                let key = match &history[read].op.request { Request::Get { key, .. } => key.clone(), _ => unreachable!() };
                history[read].op.response = Response::Get {
                    revision,
                    kv: Some(KeyValue { key, value: "never written".into(), create_revision: 1, mod_revision: 1, version: 1, lease: 0 }),
                };
                let verdict = check(Store::at(1), &history, 1_000_000);
                proptest::prop_assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{verdict:?}");
            }
        }
    }

    #[test]
    fn a_response_other_than_etcds_is_refused_and_an_unknown_one_is_not() {
        let store = Store::at(1);
        let wrong = Call {
            request: put("a", "1"),
            response: Response::Put { revision: 3 },
        };
        assert!(store.step(&wrong).is_none());
        let unknown = Call {
            request: put("a", "1"),
            response: Response::Unknown,
        };
        assert_eq!(store.step(&unknown).unwrap().revision(), 2);
    }
}
