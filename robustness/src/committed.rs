//! The committed history: every change the cluster made, revision by revision, read back at the
//! end of a run with one watch from revision 1 (the run never compacts). It settles what clients
//! could not know, and checks what linearizability alone does not name:
//! - a write whose outcome was unknown either appears in it (so it happened, at that revision)
//!   or does not (so it never happened) — every value a client writes is unique, which is what
//!   makes this possible (etcd's robustness suite settles them from the WAL for the same reason);
//! - every acknowledged write is in it, at the revision its response gave (no lost writes);
//! - every serializable read returned the key as it was at the read's revision (a member serves
//!   some prefix of the committed history).
//!
//! If the history read back were itself wrong, the linearizability check would fail on it: a
//! write dropped or invented here leaves the revisions that clients saw unexplained.

use std::collections::{BTreeMap, HashMap};

use etcd_client::{EventType, WatchOptions};
use serde::{Deserialize, Serialize};

use crate::history::{History, KeyValue, Request, Response, TxnOp};

/// One change: at `revision`, `key` became `kv` (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: i64,
    pub key: String,
    pub kv: Option<KeyValue>,
}

impl Change {
    /// The change a watch event reports (`None` for an event without a key-value).
    pub fn of_event(event: &etcd_client::Event) -> Option<Change> {
        let kv = crate::client::key_value(event.kv()?);
        Some(Change {
            revision: kv.mod_revision,
            key: kv.key.clone(),
            kv: (event.event_type() == EventType::Put).then_some(kv),
        })
    }
}

#[derive(Debug, Default)]
pub struct Committed {
    pub revision: i64,
    pub changes: Vec<Change>,
    /// Key → its changes in revision order.
    by_key: BTreeMap<String, Vec<(i64, Option<KeyValue>)>>,
    /// (key, value) → the revision it was put at.
    puts: HashMap<(String, String), i64>,
}

impl Committed {
    pub fn new(revision: i64, changes: Vec<Change>) -> Committed {
        let mut by_key: BTreeMap<String, Vec<(i64, Option<KeyValue>)>> = BTreeMap::new();
        let mut puts = HashMap::new();
        for change in &changes {
            by_key
                .entry(change.key.clone())
                .or_default()
                .push((change.revision, change.kv.clone()));
            if let Some(kv) = &change.kv {
                puts.insert((kv.key.clone(), kv.value.clone()), change.revision);
            }
        }
        Committed {
            revision,
            changes,
            by_key,
            puts,
        }
    }

    /// Reads the whole history of the cluster at `url`, up to its current revision.
    pub async fn read(url: &str) -> Result<Committed, String> {
        let mut client = crate::client::connect(url).await.map_err(|e| e.to_string())?;
        let now = client.get("health", None).await.map_err(|e| e.to_string())?;
        let revision = now.header().map_or(0, |h| h.revision());
        let mut changes = Vec::new();
        if revision > 1 {
            let options = WatchOptions::new().with_all_keys().with_start_revision(1);
            let mut stream = client.watch("", Some(options)).await.map_err(|e| e.to_string())?;
            while changes.last().is_none_or(|c: &Change| c.revision < revision) {
                let reply = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
                    .await
                    .map_err(|_| format!("the history stopped before revision {revision}"))?
                    .map_err(|e| e.to_string())?
                    .ok_or("the watch of the history ended early")?;
                if reply.canceled() {
                    return Err(format!(
                        "the watch of the history was canceled: {}",
                        reply.cancel_reason()
                    ));
                }
                changes.extend(reply.events().iter().filter_map(Change::of_event));
            }
        }
        Ok(Committed::new(revision, changes))
    }

    /// The revision `value` was put at under `key`, if it ever was.
    pub fn put_at(&self, key: &str, value: &str) -> Option<i64> {
        self.puts.get(&(key.to_owned(), value.to_owned())).copied()
    }

    /// `key` as it was at `revision`.
    pub fn at(&self, key: &str, revision: i64) -> Option<&KeyValue> {
        let changes = self.by_key.get(key)?;
        let upto = changes.partition_point(|(r, _)| *r <= revision);
        changes[..upto].last().and_then(|(_, kv)| kv.as_ref())
    }
}

/// What settling unknown outcomes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Found in the history: they happened, at a known revision.
    pub happened: usize,
    /// Not in it: they never happened, and are left out.
    pub never: usize,
    /// Could not be told from the history (deletes, lease calls): left unknown.
    pub open: usize,
}

/// Settles unknown writes from the committed history. Reads that failed are dropped (they change
/// nothing), and so are lease grants that failed (a lease nobody was told about is never used).
/// A deletion that failed is kept only if the history has a deletion no known operation explains
/// and this one could have made; otherwise it deleted nothing, which changes nothing.
pub fn settle(history: &mut History, committed: &Committed) -> Settled {
    let mut settled = Settled::default();
    history.operations.retain_mut(|op| {
        if op.response != Response::Unknown {
            return true;
        }
        if !op.request.writes() || matches!(op.request, Request::LeaseGrant { .. }) {
            return false;
        }
        let Some(puts) = put_values(&op.request) else {
            return true;
        };
        match puts.first().and_then(|(k, v)| committed.put_at(k, v)) {
            Some(revision) => {
                settled.happened += 1;
                op.response = match op.request {
                    Request::Put { .. } => Response::Put { revision },
                    _ => Response::Txn {
                        revision,
                        succeeded: true,
                        gets: Vec::new(),
                    },
                };
                true
            }
            None => {
                settled.never += 1;
                false
            }
        }
    });
    let unexplained = unexplained_deletions(history, committed);
    history.operations.retain(|op| {
        if op.response != Response::Unknown {
            return true;
        }
        let could = unexplained.iter().any(|(key, lease)| match &op.request {
            Request::Delete { key: deleted } => deleted == key,
            Request::Txn { success, .. } => success
                .iter()
                .any(|o| matches!(o, TxnOp::Delete { key: deleted } if deleted == key)),
            Request::LeaseRevoke { id } => id == lease,
            _ => true,
        });
        if could {
            settled.open += 1;
        } else {
            settled.never += 1;
        }
        could
    });
    settled
}

/// Deletions in the committed history that no operation with a known outcome made: (key, the
/// lease the key was under when it went).
fn unexplained_deletions(history: &History, committed: &Committed) -> Vec<(String, i64)> {
    let mut explained_keys = std::collections::HashSet::new();
    let mut revoked_at = std::collections::HashSet::new();
    for op in &history.operations {
        match (&op.request, &op.response) {
            (Request::Delete { key }, Response::Delete { revision, deleted }) if *deleted > 0 => {
                explained_keys.insert((*revision, key.clone()));
            }
            (
                Request::Txn { success, .. },
                Response::Txn {
                    revision,
                    succeeded: true,
                    ..
                },
            ) => {
                for o in success {
                    if let TxnOp::Delete { key } = o {
                        explained_keys.insert((*revision, key.clone()));
                    }
                }
            }
            (Request::LeaseRevoke { id }, Response::LeaseRevoke { revision }) => {
                revoked_at.insert((*revision, *id));
            }
            _ => {}
        }
    }
    // A revocation explains only the deletions of its own lease's keys: a lease with no keys left
    // deletes nothing, and its response still carries the revision of the moment.
    committed
        .changes
        .iter()
        .filter(|c| c.kv.is_none())
        .map(|c| {
            let lease = committed.at(&c.key, c.revision - 1).map_or(0, |kv| kv.lease);
            (c, lease)
        })
        .filter(|(c, lease)| {
            !revoked_at.contains(&(c.revision, *lease))
                && !explained_keys.contains(&(c.revision, c.key.clone()))
        })
        .map(|(c, lease)| (c.key.clone(), lease))
        .collect()
}

/// The unique values a write puts, when seeing one of them in the history is proof it happened
/// and not seeing them proof that it changed nothing: a put, or a transaction whose success
/// branch only puts and whose failure branch only reads.
fn put_values(request: &Request) -> Option<Vec<(String, String)>> {
    match request {
        Request::Put { key, value, .. } => Some(vec![(key.clone(), value.clone())]),
        Request::Txn { success, failure, .. }
            if !success.is_empty() && failure.iter().all(|op| matches!(op, TxnOp::Get { .. })) =>
        {
            success
                .iter()
                .map(|op| match op {
                    TxnOp::Put { key, value } => Some((key.clone(), value.clone())),
                    _ => None,
                })
                .collect()
        }
        _ => None,
    }
}

/// Acknowledged writes missing from the committed history, or found at another revision.
pub fn lost_writes(history: &History, committed: &Committed) -> Vec<String> {
    let mut lost = Vec::new();
    for op in &history.operations {
        let revision = match (&op.request, &op.response) {
            (Request::Put { .. }, Response::Put { revision }) => *revision,
            (
                Request::Txn { .. },
                Response::Txn {
                    revision,
                    succeeded: true,
                    ..
                },
            ) => *revision,
            _ => continue,
        };
        if op.returned.is_none() {
            continue;
        }
        for (key, value) in put_values(&op.request).unwrap_or_default() {
            match committed.put_at(&key, &value) {
                Some(at) if at == revision => {}
                found => lost.push(format!(
                    "client {} put {key}={value}, acknowledged at revision {revision}; the \
                     committed history has it {}",
                    op.client,
                    found.map_or("nowhere".to_owned(), |at| format!("at revision {at}")),
                )),
            }
        }
    }
    lost
}

/// Serializable reads that returned something other than their key at their revision.
pub fn stale_reads_beyond_history(history: &History, committed: &Committed) -> Vec<String> {
    let mut wrong = Vec::new();
    for op in &history.operations {
        let (
            Request::Get {
                key,
                serializable: true,
            },
            Response::Get { revision, kv },
        ) = (&op.request, &op.response)
        else {
            continue;
        };
        let expected = committed.at(key, *revision);
        if *revision > committed.revision || expected != kv.as_ref() {
            wrong.push(format!(
                "client {} read {key} from member {} at revision {revision} and got {kv:?}; the \
                 committed history has {expected:?} there (last revision {})",
                op.client, op.member, committed.revision
            ));
        }
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Operation;

    fn kv(key: &str, value: &str, revision: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: 0,
        }
    }

    fn op(request: Request, response: Response, returned: Option<u64>) -> Operation {
        Operation {
            client: 0,
            member: 0,
            invoked: 0,
            returned,
            request,
            response,
        }
    }

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    fn committed() -> Committed {
        Committed::new(
            3,
            vec![
                Change {
                    revision: 2,
                    key: "a".into(),
                    kv: Some(kv("a", "x", 2)),
                },
                Change {
                    revision: 3,
                    key: "a".into(),
                    kv: None,
                },
            ],
        )
    }

    #[test]
    fn unknown_writes_are_settled_by_what_was_committed() {
        let mut history = History {
            operations: vec![
                op(put("a", "x"), Response::Unknown, None),
                op(put("a", "never"), Response::Unknown, None),
                op(Request::Delete { key: "a".into() }, Response::Unknown, None),
                op(
                    Request::Get {
                        key: "a".into(),
                        serializable: false,
                    },
                    Response::Unknown,
                    None,
                ),
            ],
        };
        let settled = settle(&mut history, &committed());
        assert_eq!(
            settled,
            Settled {
                happened: 1,
                never: 1,
                open: 1
            }
        );
        assert_eq!(history.operations.len(), 2);
        assert_eq!(history.operations[0].response, Response::Put { revision: 2 });
    }

    #[test]
    fn an_unknown_deletion_is_kept_only_if_a_deletion_is_left_to_explain() {
        let unknown = |request| op(request, Response::Unknown, None);
        let mut history = History {
            operations: vec![
                unknown(Request::Delete { key: "b".into() }),
                unknown(Request::LeaseRevoke { id: 9 }),
                unknown(Request::LeaseGrant { ttl: 60 }),
                unknown(Request::Delete { key: "a".into() }),
            ],
        };
        // "a" went at revision 3 and nothing known explains it: only the delete of "a" could have.
        let settled = settle(&mut history, &committed());
        assert_eq!(
            settled,
            Settled {
                happened: 0,
                never: 2,
                open: 1
            }
        );
        assert_eq!(history.operations.len(), 1);
        assert_eq!(history.operations[0].request, Request::Delete { key: "a".into() });

        // Once a known delete explains it, the unknown one deleted nothing.
        history.operations.push(op(
            Request::Delete { key: "a".into() },
            Response::Delete {
                revision: 3,
                deleted: 1,
            },
            Some(1),
        ));
        let settled = settle(&mut history, &committed());
        assert_eq!(
            settled,
            Settled {
                happened: 0,
                never: 1,
                open: 0
            }
        );
        assert_eq!(history.operations.len(), 1);
    }

    #[test]
    fn a_revocation_explains_only_deletions_of_its_own_keys() {
        // "a" went at revision 3; a revocation of some other lease answered at that revision too
        // (its lease had no keys). The unknown delete of "a" is still the only explanation.
        let mut history = History {
            operations: vec![
                op(
                    Request::LeaseRevoke { id: 4 },
                    Response::LeaseRevoke { revision: 3 },
                    Some(1),
                ),
                op(Request::Delete { key: "a".into() }, Response::Unknown, None),
            ],
        };
        let settled = settle(&mut history, &committed());
        assert_eq!(
            settled,
            Settled {
                happened: 0,
                never: 0,
                open: 1
            }
        );
    }

    #[test]
    fn an_acknowledged_write_missing_or_moved_is_lost() {
        let history = History {
            operations: vec![
                op(put("a", "x"), Response::Put { revision: 2 }, Some(1)),
                op(put("a", "gone"), Response::Put { revision: 4 }, Some(1)),
                op(put("a", "x"), Response::Put { revision: 5 }, Some(1)),
            ],
        };
        let lost = lost_writes(&history, &committed());
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(
            lost[0].contains("nowhere") && lost[1].contains("at revision 2"),
            "{lost:?}"
        );
    }

    #[test]
    fn a_serializable_read_must_match_the_history_at_its_revision() {
        let read = |revision, kv| {
            op(
                Request::Get {
                    key: "a".into(),
                    serializable: true,
                },
                Response::Get { revision, kv },
                Some(1),
            )
        };
        let history = History {
            operations: vec![
                read(1, None),
                read(2, Some(kv("a", "x", 2))),
                read(3, None),
                read(3, Some(kv("a", "x", 2))),
                read(9, None),
            ],
        };
        let wrong = stale_reads_beyond_history(&history, &committed());
        assert_eq!(wrong.len(), 2, "{wrong:?}");
    }
}
