//! The feed of applied revisions: the newest revisions' changes, computed once and shared by every
//! watcher, and a signal that wakes watchers when the store's revision moves.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::Batch;
use crate::mvcc::{Mvcc, RevisionEvents};

/// How much of the newest history the feed keeps; older revisions are read from the store.
const RECENT_REVISIONS: usize = 4096;
const RECENT_BYTES: usize = 32 << 20;

pub struct Feed {
    recent: RwLock<Recent>,
    revision: watch::Sender<i64>,
    counts: Counts,
}

/// How many streams and watchers the member serves, and how often a watcher caught up from the
/// store's history because the feed no longer held what it needed (for the metrics).
#[derive(Default)]
pub struct Counts {
    pub streams: AtomicI64,
    pub watchers: AtomicI64,
    pub history_reads: AtomicU64,
}

struct Recent {
    /// The revision of `revisions[0]`, or the next revision to come when it is empty.
    first: i64,
    revisions: VecDeque<Arc<RevisionEvents>>,
    bytes: usize,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            recent: RwLock::new(Recent {
                first: 2,
                revisions: VecDeque::new(),
                bytes: 0,
            }),
            revision: watch::channel(1).0,
            counts: Counts::default(),
        }
    }
}

impl Recent {
    /// Forgets every revision held; the feed starts again at `next`.
    fn restart(&mut self, next: i64) {
        self.revisions.clear();
        self.bytes = 0;
        self.first = next;
    }
}

impl Feed {
    /// Revisions `(before, mvcc.revision()]` were applied. Called under the store's write lock, so
    /// revisions arrive whole and in order.
    pub fn advanced(&self, mvcc: &Mvcc, before: i64) {
        {
            let mut recent = self.recent.write().expect("watch feed lock poisoned");
            // With no stream open nobody reads the feed: writes skip computing events. A stream
            // opened meanwhile finds the feed starting after its watchers and reads the history.
            if self.counts.streams.load(Ordering::Relaxed) == 0 {
                recent.restart(mvcc.revision() + 1);
                drop(recent);
                self.revision.send_replace(mvcc.revision());
                return;
            }
            if recent.revisions.is_empty() {
                recent.first = before + 1;
            }
            for revision in before + 1..=mvcc.revision() {
                let events = Arc::new(mvcc.events_at(revision));
                recent.bytes += events.size();
                recent.revisions.push_back(events);
            }
            while recent.revisions.len() > RECENT_REVISIONS || recent.bytes > RECENT_BYTES {
                let Some(oldest) = recent.revisions.pop_front() else {
                    break;
                };
                recent.bytes -= oldest.size();
                recent.first = oldest.revision + 1;
            }
        }
        self.revision.send_replace(mvcc.revision());
    }

    /// The whole store was replaced (at start, or by a snapshot from the leader): what the feed held
    /// may not be history any more.
    pub fn replaced(&self, mvcc: &Mvcc) {
        self.recent
            .write()
            .expect("watch feed lock poisoned")
            .restart(mvcc.revision() + 1);
        self.revision.send_replace(mvcc.revision());
    }

    /// The store's revision as of the last apply.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Revisions from `from` on, about `budget` bytes at most (always at least one revision), or
    /// `None` when `from` is older than what the feed holds.
    pub fn read(&self, from: i64, budget: usize) -> Option<Batch> {
        let recent = self.recent.read().expect("watch feed lock poisoned");
        if from < recent.first {
            return None;
        }
        let skip = (from - recent.first) as usize;
        let mut batch = Batch {
            revisions: Vec::new(),
            through: from - 1,
        };
        let mut gathered = 0;
        for revision in recent.revisions.iter().skip(skip) {
            if gathered >= budget {
                break;
            }
            gathered += revision.size();
            batch.through = revision.revision;
            batch.revisions.push(revision.clone());
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::PutRequest;

    fn put(store: &mut Mvcc, key: &str) {
        store
            .put(&PutRequest {
                key: key.into(),
                value: vec![0; 100],
                ..Default::default()
            })
            .unwrap();
    }

    #[test]
    fn keeps_the_newest_revisions_in_order_and_forgets_the_oldest() {
        let mut store = Mvcc::default();
        let feed = Feed::default();
        feed.counts().streams.store(1, Ordering::Relaxed);
        feed.replaced(&store);
        for i in 0..RECENT_REVISIONS + 10 {
            let before = store.revision();
            put(&mut store, &format!("k{}", i % 7));
            feed.advanced(&store, before);
        }
        assert_eq!(feed.revision(), store.revision());
        assert!(
            feed.read(2, usize::MAX).is_none(),
            "the oldest revisions left the feed"
        );
        let from = store.revision() - 5;
        let batch = feed.read(from, usize::MAX).unwrap();
        let revisions: Vec<i64> = batch.revisions.iter().map(|r| r.revision).collect();
        assert_eq!(revisions, (from..=store.revision()).collect::<Vec<_>>());
        assert_eq!(batch.through, store.revision());
        let small = feed.read(from, 1).unwrap();
        assert_eq!(
            small.revisions.len(),
            1,
            "a budget still yields one whole revision"
        );
        assert_eq!(small.through, from);
        let caught_up = feed.read(store.revision() + 1, usize::MAX).unwrap();
        assert!(caught_up.revisions.is_empty());
        assert_eq!(caught_up.through, store.revision());
    }

    #[test]
    fn a_replaced_store_empties_the_feed() {
        let mut store = Mvcc::default();
        let feed = Feed::default();
        feed.counts().streams.store(1, Ordering::Relaxed);
        let before = store.revision();
        put(&mut store, "a");
        feed.advanced(&store, before);
        assert_eq!(feed.read(2, usize::MAX).unwrap().revisions.len(), 1);
        put(&mut store, "b");
        feed.replaced(&store);
        assert!(feed.read(2, usize::MAX).is_none());
        assert_eq!(feed.revision(), 3);
    }

    #[test]
    fn without_streams_writes_compute_no_events_and_a_later_stream_reads_the_history() {
        let mut store = Mvcc::default();
        let feed = Feed::default();
        feed.replaced(&store);
        let before = store.revision();
        put(&mut store, "a");
        feed.advanced(&store, before);
        assert_eq!(feed.revision(), 2);
        assert!(
            feed.read(2, usize::MAX).is_none(),
            "revision 2 is left to the history"
        );
        feed.counts().streams.store(1, Ordering::Relaxed);
        put(&mut store, "b");
        feed.advanced(&store, 2);
        let batch = feed.read(3, usize::MAX).unwrap();
        assert_eq!(
            batch.revisions.iter().map(|r| r.revision).collect::<Vec<_>>(),
            [3]
        );
    }
}
