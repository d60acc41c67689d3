//! One watcher: the keys it watches, its options, and where it is in history; turns stretches of
//! history into the responses its client receives.

use prost::Message;

use super::Batch;
use crate::mvcc::{Event, KeyRange};
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchResponse, watch_create_request::FilterType};

/// Why a watcher could not be created; the texts are etcd's cancel reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    NegativeRevision,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
}

#[derive(Debug, Clone)]
pub struct Watcher {
    pub id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    pub fragment: bool,
    pub progress_notify: bool,
    /// The oldest revision this watcher has yet to see.
    pub next: i64,
    /// Whether events went out since the last progress notification was due.
    pub sent_events: bool,
}

impl Watcher {
    /// A watcher for `request`; `current` is the store's revision now.
    pub fn new(id: i64, request: &WatchCreateRequest, current: i64) -> Result<Watcher, CreateError> {
        // As etcd reads a create request: no key is the smallest key, "\0" as the end means "and
        // every key after it".
        let key = if request.key.is_empty() {
            vec![0]
        } else {
            request.key.clone()
        };
        let range_end = request.range_end.clone();
        let from_key = range_end == [0];
        if !range_end.is_empty() && !from_key && key >= range_end {
            return Err(CreateError::EmptyRange);
        }
        if request.start_revision < 0 {
            return Err(CreateError::NegativeRevision);
        }
        let filters = |f: FilterType| request.filters.contains(&(f as i32));
        Ok(Watcher {
            id,
            key,
            range_end,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            prev_kv: request.prev_kv,
            fragment: request.fragment,
            progress_notify: request.progress_notify,
            next: if request.start_revision == 0 {
                current + 1
            } else {
                request.start_revision
            },
            sent_events: false,
        })
    }

    /// Whether the watcher has seen everything up to `current`.
    pub fn synced(&self, current: i64) -> bool {
        self.next > current
    }

    fn wants(&self, event: &Event) -> bool {
        let filtered = if event.is_delete() {
            self.no_delete
        } else {
            self.no_put
        };
        !filtered && KeyRange::new(&self.key, &self.range_end).contains(&event.key)
    }

    /// Takes the part of `batch` this watcher has not seen: the response carrying its events (none
    /// when nothing in it concerns the watcher), and moves the watcher past the batch.
    pub fn take(&mut self, batch: &Batch) -> Option<WatchResponse> {
        let events: Vec<_> = batch
            .revisions
            .iter()
            .filter(|r| r.revision >= self.next)
            .flat_map(|r| r.events.iter())
            .filter(|e| self.wants(e))
            .map(|e| e.to_pb(self.prev_kv))
            .collect();
        self.next = self.next.max(batch.through + 1);
        if events.is_empty() {
            return None;
        }
        self.sent_events = true;
        Some(WatchResponse {
            watch_id: self.id,
            events,
            ..Default::default()
        })
    }
}

/// etcd's fragmenting: a response of `limit` bytes or more with several events goes out in parts of
/// under `limit` bytes (at least one event each); every part but the last says `fragment`.
pub fn fragments(response: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < limit || response.events.len() < 2 {
        return vec![response];
    }
    let mut parts = Vec::new();
    let mut events = response.events.into_iter().peekable();
    let empty = WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..response
    };
    while events.peek().is_some() {
        let mut part = empty.clone();
        while let Some(event) = events.peek() {
            let grown = part.encoded_len() + event.encoded_len() + 2;
            if !part.events.is_empty() && grown >= limit {
                break;
            }
            part.events.extend(events.next());
        }
        part.fragment = events.peek().is_some();
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::mvcc::{RevisionEvents, Stored};
    use crate::pb::mvccpb::event::EventType;

    fn create((key, range_end, start_revision): (&str, &str, i64)) -> WatchCreateRequest {
        WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            start_revision,
            ..Default::default()
        }
    }

    fn event(key: &str, revision: i64, deleted: bool) -> Event {
        let stored = Stored {
            create_revision: 2,
            mod_revision: revision,
            version: 1,
            value: Bytes::from_static(b"v"),
            lease: 0,
        };
        Event {
            key: Bytes::copy_from_slice(key.as_bytes()),
            revision,
            current: (!deleted).then(|| stored.clone()),
            previous: Some(Stored {
                mod_revision: revision - 1,
                ..stored
            }),
        }
    }

    fn batch(revisions: &[(i64, Vec<Event>)], through: i64) -> Batch {
        Batch {
            revisions: revisions
                .iter()
                .map(|(revision, events)| {
                    Arc::new(RevisionEvents {
                        revision: *revision,
                        events: events.clone(),
                    })
                })
                .collect(),
            through,
        }
    }

    #[test]
    fn create_requests_are_read_as_etcd_reads_them() {
        assert_eq!(
            Watcher::new(0, &create(("b", "a", 0)), 5).unwrap_err(),
            CreateError::EmptyRange
        );
        assert_eq!(
            Watcher::new(0, &create(("a", "", -1)), 5).unwrap_err(),
            CreateError::NegativeRevision
        );
        let from_now = Watcher::new(0, &create(("a", "", 0)), 5).unwrap();
        assert_eq!(from_now.next, 6);
        assert!(from_now.synced(5));
        let everything = Watcher::new(0, &create(("", "\0", 3)), 5).unwrap();
        assert_eq!(everything.next, 3);
        assert!(everything.wants(&event("\0", 4, false)));
        assert!(everything.wants(&event("zzz", 4, false)));
    }

    #[test]
    fn takes_matching_events_of_unseen_revisions_and_moves_past_the_batch() {
        let mut watcher = Watcher::new(
            7,
            &WatchCreateRequest {
                key: "a".into(),
                range_end: "b".into(),
                start_revision: 3,
                filters: vec![FilterType::Nodelete as i32],
                prev_kv: true,
                ..Default::default()
            },
            2,
        )
        .unwrap();
        let history = batch(
            &[
                (2, vec![event("a1", 2, false)]),
                (3, vec![event("a2", 3, false), event("b", 3, false)]),
                (4, vec![event("a2", 4, true)]),
                (5, vec![event("a3", 5, false)]),
            ],
            6,
        );
        let response = watcher.take(&history).unwrap();
        assert_eq!(response.watch_id, 7);
        let seen: Vec<(Vec<u8>, i64, i32)> = response
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (kv.key.clone(), kv.mod_revision, e.r#type)
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (b"a2".to_vec(), 3, EventType::Put as i32),
                (b"a3".to_vec(), 5, EventType::Put as i32)
            ]
        );
        assert!(response.events.iter().all(|e| e.prev_kv.is_some()));
        assert_eq!(watcher.next, 7);
        assert!(watcher.take(&history).is_none(), "nothing twice");
    }

    #[test]
    fn deletions_carry_only_key_and_revision() {
        let mut watcher = Watcher::new(1, &create(("k", "", 1)), 1).unwrap();
        let response = watcher
            .take(&batch(&[(4, vec![event("k", 4, true)])], 4))
            .unwrap();
        let kv = response.events[0].kv.clone().unwrap();
        assert_eq!(response.events[0].r#type, EventType::Delete as i32);
        assert_eq!(
            (kv.key, kv.mod_revision, kv.version, kv.value),
            (b"k".to_vec(), 4, 0, vec![])
        );
        assert!(response.events[0].prev_kv.is_none(), "prev_kv only when asked");
    }

    #[test]
    fn fragments_split_large_responses_and_keep_every_event_in_order() {
        let mut watcher = Watcher::new(1, &create(("", "\0", 1)), 1).unwrap();
        let events: Vec<Event> = (0..50).map(|i| event(&format!("key-{i:03}"), 9, false)).collect();
        let whole = watcher.take(&batch(&[(9, events)], 9)).unwrap();
        let size = whole.encoded_len();
        let parts = fragments(whole.clone(), size / 4);
        assert!(parts.len() >= 4, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.encoded_len() < size / 4));
        let flags: Vec<bool> = parts.iter().map(|p| p.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|f| *f) && !flags[flags.len() - 1]);
        let rejoined: Vec<_> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, whole.events);
        assert_eq!(fragments(whole.clone(), size + 1), vec![whole]);
    }
}
