//! Client traffic, as etcd's robustness suite drives it: each client sends one request at a time
//! to its member, picked by a profile's weights from a small key space (so operations collide),
//! writes unique values, and records every call.
//!
//! Profiles: `Kv` (etcd's put/delete/lease mix), `Kubernetes` (kube-apiserver's optimistic
//! concurrency: creates, updates and deletes guarded by mod_revision, gets and lists) and `Leases`
//! (grants, puts under leases, revocations).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::history::{Compare, History, Operation, Request, Response, TxnOp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Profile {
    Kv,
    Kubernetes,
    Leases,
}

/// Keys per profile: few enough that clients keep writing over each other.
const KEYS: usize = 8;

/// Every call clients make, timed from one origin.
pub struct Recorder {
    origin: Instant,
    operations: Mutex<Vec<Operation>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            origin: Instant::now(),
            operations: Mutex::new(Vec::new()),
        })
    }

    /// Nanoseconds since the recorder was made.
    pub fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    pub fn record(&self, operation: Operation) {
        self.operations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(operation);
    }

    pub fn history(&self) -> History {
        History {
            operations: self.operations.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// What one client remembers between its calls.
struct ClientState {
    id: usize,
    written: u64,
    /// Its lease, once granted (and until revoked).
    lease: i64,
    /// The mod_revision it last saw per key, for guarded updates (0: absent).
    seen: Vec<i64>,
}

impl ClientState {
    fn value(&mut self) -> String {
        self.written += 1;
        format!("c{}-{}", self.id, self.written)
    }

    fn learn(&mut self, request: &Request, response: &Response) {
        match (request, response) {
            (Request::LeaseGrant { .. }, Response::LeaseGrant { id }) => self.lease = *id,
            (Request::LeaseRevoke { .. }, _) | (_, Response::LeaseNotFound) => self.lease = 0,
            (Request::Get { key, .. }, Response::Get { kv, .. }) => {
                self.seen[key_index(key)] = kv.as_ref().map_or(0, |kv| kv.mod_revision);
            }
            (Request::List { .. }, Response::List { kvs, .. }) => {
                self.seen.iter_mut().for_each(|r| *r = 0);
                for kv in kvs {
                    self.seen[key_index(&kv.key)] = kv.mod_revision;
                }
            }
            (Request::Put { key, .. }, Response::Put { revision }) => {
                self.seen[key_index(key)] = *revision;
            }
            (
                Request::Txn { success, .. },
                Response::Txn {
                    succeeded: true,
                    revision,
                    ..
                },
            ) => {
                for op in success {
                    match op {
                        TxnOp::Put { key, .. } => self.seen[key_index(key)] = *revision,
                        TxnOp::Delete { key } => self.seen[key_index(key)] = 0,
                        TxnOp::Get { .. } => {}
                    }
                }
            }
            (Request::Txn { compares, .. }, Response::Txn { gets, .. }) => {
                if let (Some(compare), Some(got)) = (compares.first(), gets.first()) {
                    self.seen[key_index(&compare.key)] = got.as_ref().map_or(0, |kv| kv.mod_revision);
                }
            }
            _ => {}
        }
    }
}

fn key(index: usize) -> String {
    format!("k{index}")
}

fn key_index(key: &str) -> usize {
    key[1..].parse::<usize>().unwrap_or(0) % KEYS
}

/// Picks the next request by `profile`'s weights.
fn next_request(profile: Profile, rng: &mut StdRng, state: &mut ClientState) -> Request {
    let k = rng.random_range(0..KEYS);
    let guarded = |state: &mut ClientState, k: usize, success: Vec<TxnOp>| Request::Txn {
        compares: vec![Compare {
            key: key(k),
            mod_revision: state.seen[k],
        }],
        success,
        failure: vec![TxnOp::Get { key: key(k) }],
    };
    let roll = rng.random_range(0..100);
    match profile {
        // etcd's EtcdPutDeleteLease weights, stale lists left to stale gets.
        Profile::Kv => match roll {
            0..15 => Request::Get {
                key: key(k),
                serializable: false,
            },
            15..25 => Request::Get {
                key: key(k),
                serializable: true,
            },
            25..33 => Request::List { prefix: "k".into() },
            33..38 => Request::Delete { key: key(k) },
            38..48 => {
                let other = (k + 1 + rng.random_range(0..KEYS - 1)) % KEYS;
                let (a, b) = (state.value(), state.value());
                Request::Txn {
                    compares: vec![Compare {
                        key: key(k),
                        mod_revision: state.seen[k],
                    }],
                    success: vec![
                        TxnOp::Put {
                            key: key(k),
                            value: a,
                        },
                        TxnOp::Put {
                            key: key(other),
                            value: b,
                        },
                    ],
                    failure: vec![TxnOp::Get { key: key(k) }],
                }
            }
            48..53 if state.lease != 0 => Request::Put {
                key: key(k),
                value: state.value(),
                lease: state.lease,
            },
            48..53 => Request::LeaseGrant { ttl: 600 },
            53..58 if state.lease != 0 => Request::LeaseRevoke { id: state.lease },
            53..58 => Request::LeaseGrant { ttl: 600 },
            58..63 => {
                let value = state.value();
                guarded(state, k, vec![TxnOp::Put { key: key(k), value }])
            }
            _ => Request::Put {
                key: key(k),
                value: state.value(),
                lease: 0,
            },
        },
        // kube-apiserver: most writes are updates guarded by the mod_revision it read.
        Profile::Kubernetes => match roll {
            0..5 => Request::Get {
                key: key(k),
                serializable: false,
            },
            5..7 => Request::Get {
                key: key(k),
                serializable: true,
            },
            7..25 => Request::List { prefix: "k".into() },
            25..30 => guarded(state, k, vec![TxnOp::Delete { key: key(k) }]),
            30..35 => {
                let value = state.value();
                let mut create = guarded(state, k, vec![TxnOp::Put { key: key(k), value }]);
                if let Request::Txn { compares, .. } = &mut create {
                    compares[0].mod_revision = 0;
                }
                create
            }
            _ => {
                let value = state.value();
                guarded(state, k, vec![TxnOp::Put { key: key(k), value }])
            }
        },
        Profile::Leases => match roll {
            0..15 if state.lease == 0 => Request::LeaseGrant { ttl: 600 },
            0..15 => Request::LeaseRevoke { id: state.lease },
            15..55 if state.lease != 0 => Request::Put {
                key: key(k),
                value: state.value(),
                lease: state.lease,
            },
            15..55 => Request::LeaseGrant { ttl: 600 },
            55..65 => Request::Put {
                key: key(k),
                value: state.value(),
                lease: 0,
            },
            65..85 => Request::Get {
                key: key(k),
                serializable: false,
            },
            _ => Request::List { prefix: "k".into() },
        },
    }
}

/// One client: sends requests to the member at `url` until `until`, one at a time, recording
/// each. After a failure it waits a little and connects again, as etcd clients do.
pub async fn client(
    id: usize,
    member: usize,
    url: String,
    profile: Profile,
    seed: u64,
    until: Instant,
    recorder: Arc<Recorder>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut state = ClientState {
        id,
        written: 0,
        lease: 0,
        seen: vec![0; KEYS],
    };
    let mut connection = None;
    while Instant::now() < until {
        if connection.is_none() {
            match crate::client::connect(&url).await {
                Ok(client) => connection = Some(client),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let client = connection.as_mut().expect("connected above");
        let request = next_request(profile, &mut rng, &mut state);
        let invoked = recorder.now();
        let outcome = crate::client::call(client, &request).await;
        let returned = recorder.now();
        let (response, returned) = match outcome {
            Ok(response) => (response, Some(returned)),
            Err(_) => (Response::Unknown, None),
        };
        state.learn(&request, &response);
        let failed = response == Response::Unknown;
        recorder.record(Operation {
            client: id,
            member,
            invoked,
            returned,
            request,
            response,
        });
        if failed {
            connection = None;
            tokio::time::sleep(Duration::from_millis(50 + rng.random_range(0..100))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_writes_unique_values_and_uses_only_its_own_lease() {
        for profile in [Profile::Kv, Profile::Kubernetes, Profile::Leases] {
            let mut rng = StdRng::seed_from_u64(7);
            let mut state = ClientState {
                id: 3,
                written: 0,
                lease: 0,
                seen: vec![0; KEYS],
            };
            let mut values = std::collections::HashSet::new();
            for _ in 0..2_000 {
                let request = next_request(profile, &mut rng, &mut state);
                let mut puts = Vec::new();
                match &request {
                    Request::Put { value, lease, .. } => {
                        puts.push(value.clone());
                        assert!(*lease == 0 || *lease == state.lease);
                    }
                    Request::Txn { success, .. } => {
                        for op in success {
                            if let TxnOp::Put { value, .. } = op {
                                puts.push(value.clone());
                            }
                        }
                    }
                    _ => {}
                }
                for value in puts {
                    assert!(values.insert(value), "{profile:?} wrote a value twice");
                }
                let response = match request {
                    Request::LeaseGrant { .. } => Response::LeaseGrant { id: 42 },
                    _ => Response::Unknown,
                };
                state.learn(&request, &response);
            }
        }
    }
}
