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
