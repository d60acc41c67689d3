//! One client's watch stream: its watchers, the requests that create and cancel them, and the one
//! loop that sends their responses. Responses are made only when the client can take them, so a
//! client that stops reading holds back its own watchers and nothing is buffered for it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::watcher::{CreateError, Watcher, fragments};
use super::{Backend, Batch};
use crate::pb::etcdserverpb::{WatchRequest, WatchResponse, watch_request::RequestUnion};

/// About how many bytes of events one response carries (a revision is never split across
/// responses, except by `fragment`).
const RESPONSE_BUDGET: usize = 512 * 1024;

/// The watch ID etcd uses for responses that concern no single watcher.
const NO_WATCH_ID: i64 = -1;

/// Responses sent in one turn of a stream's loop before it looks at its requests again.
const SENDS_PER_TURN: usize = 64;

/// Election timeouts without a leader after which streams that require one are ended (etcd's
/// `maxNoLeaderCnt`).
const NO_LEADER_LIMIT: u32 = 3;

/// Why a stream ended from the member's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client asked for a leader (`hasleader`) and the member has been without one too long.
    NoLeader,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Fragments are cut below this size (etcd: the request limit plus gRPC overhead).
    pub fragment_limit: usize,
    /// How often watchers that asked for it hear the revision they are synced to.
    pub progress_interval: Duration,
    /// End the stream when the member loses its leader (the client sent `hasleader`).
    pub require_leader: bool,
    pub election_timeout: Duration,
}

/// Whether the stream's client may read a key range (`key`, `range_end` as the create request
/// names them); watchers on anything else are refused.
pub type ReadCheck = Arc<dyn Fn(&[u8], &[u8]) -> bool + Send + Sync>;

/// Serves one watch stream: reads `requests` and yields the answers until the client goes away
/// (drops the answers).
pub fn open<R>(
    backend: Arc<dyn Backend>,
    requests: R,
    settings: Settings,
    may_read: ReadCheck,
) -> ReceiverStream<Result<WatchResponse, Ended>>
where
    R: Stream<Item = WatchRequest> + Send + Unpin + 'static,
{
    let (out, responses) = mpsc::channel(4);
    tokio::spawn(run(backend, requests, settings, may_read, out));
    ReceiverStream::new(responses)
}

struct WatchStream {
    backend: Arc<dyn Backend>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Responses due before any further events: created/canceled answers, fragments in flight,
    /// progress notifications.
    outbox: VecDeque<WatchResponse>,
    /// The client asked where the stream stands; answered once every watcher is synced.
    progress_requested: bool,
    /// Watchers with revisions to see, in the order they take turns; every watcher behind the
    /// current revision is in it once.
    behind: VecDeque<i64>,
    queued: HashSet<i64>,
    fragment_limit: usize,
    may_read: ReadCheck,
}

async fn run<R>(
    backend: Arc<dyn Backend>,
    mut requests: R,
    settings: Settings,
    may_read: ReadCheck,
    out: mpsc::Sender<Result<WatchResponse, Ended>>,
) where
    R: Stream<Item = WatchRequest> + Send + Unpin + 'static,
{
    let mut revision = backend.feed().subscribe();
    let mut current = *revision.borrow_and_update();
    let counts = backend.clone();
    counts.feed().counts().streams.fetch_add(1, Ordering::Relaxed);
    let _gone = Gone(counts);
    let mut stream = WatchStream {
        backend,
        watchers: BTreeMap::new(),
        next_id: 0,
        outbox: VecDeque::new(),
        progress_requested: false,
        behind: VecDeque::new(),
        queued: HashSet::new(),
        fragment_limit: settings.fragment_limit,
        may_read,
    };
    let start = tokio::time::Instant::now();
    let mut progress =
        tokio::time::interval_at(start + settings.progress_interval, settings.progress_interval);
    let mut leader_check =
        tokio::time::interval_at(start + settings.election_timeout, settings.election_timeout);
    let mut leaderless = 0;
    let mut reading = true;
    loop {
        let busy = stream.has_work(current);
        tokio::select! {
            biased;
            _ = out.closed() => return,
            request = requests.next(), if reading => match request {
                Some(request) => stream.handle(request, current),
                // A client that closes its side keeps receiving, as with etcd.
                None => reading = false,
            },
            permit = out.reserve(), if busy => {
                let Ok(mut permit) = permit else { return };
                // While the client keeps up, send what is due without going round the loop.
                for _ in 0..SENDS_PER_TURN {
                    let Some(response) = stream.next_response(current) else { break };
                    permit.send(Ok(response));
                    match out.try_reserve() {
                        Ok(next) => permit = next,
                        Err(_) => break,
                    }
                }
            }
            changed = revision.changed() => {
                if changed.is_err() {
                    return;
                }
                current = *revision.borrow_and_update();
                stream.revision_moved(current);
            }
            _ = progress.tick() => stream.progress_due(current),
            _ = leader_check.tick(), if settings.require_leader => {
                leaderless = if stream.backend.has_leader() { 0 } else { leaderless + 1 };
                if leaderless >= NO_LEADER_LIMIT {
                    let _ = out.send(Err(Ended::NoLeader)).await;
                    return;
                }
            }
        }
    }
}

/// Takes a closed stream and its watchers off the counts.
struct Gone(Arc<dyn Backend>);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.feed().counts().streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let watchers = self.watchers.len() as i64;
        self.backend
            .feed()
            .counts()
            .watchers
            .fetch_sub(watchers, Ordering::Relaxed);
    }
}

impl WatchStream {
    /// Adds a watcher, counting it.
    fn insert(&mut self, watcher: Watcher) {
        self.backend
            .feed()
            .counts()
            .watchers
            .fetch_add(1, Ordering::Relaxed);
        self.watchers.insert(watcher.id, watcher);
    }

    /// Removes a watcher, counting it; whether it was there.
    fn remove(&mut self, id: i64) -> bool {
        let removed = self.watchers.remove(&id).is_some();
        if removed {
            self.backend
                .feed()
                .counts()
                .watchers
                .fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    fn has_work(&self, current: i64) -> bool {
        !self.outbox.is_empty()
            || !self.behind.is_empty()
            || (self.progress_requested && self.all_synced(current))
    }

    /// Queues a watcher for its turn unless it is synced or queued already.
    fn enqueue(&mut self, id: i64, current: i64) {
        let behind = self.watchers.get(&id).is_some_and(|w| !w.synced(current));
        if behind && self.queued.insert(id) {
            self.behind.push_back(id);
        }
    }

    /// The store moved on: every watcher that has not seen `current` takes a turn.
    fn revision_moved(&mut self, current: i64) {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.enqueue(id, current);
        }
    }

    fn all_synced(&self, current: i64) -> bool {
        self.watchers.values().all(|w| w.synced(current))
    }

    fn respond(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.backend.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    fn handle(&mut self, request: WatchRequest, current: i64) {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                let id = if create.watch_id != 0 {
                    create.watch_id
                } else {
                    while self.watchers.contains_key(&self.next_id) {
                        self.next_id += 1;
                    }
                    self.next_id
                };
                let created = if self.watchers.contains_key(&id) {
                    Err(CreateError::DuplicateId)
                } else if !(self.may_read)(&create.key, &create.range_end) {
                    Err(CreateError::PermissionDenied)
                } else {
                    Watcher::new(id, &create, current)
                };
                let mut response = self.respond(id, current);
                response.created = true;
                match created {
                    Ok(watcher) => {
                        if create.watch_id == 0 {
                            self.next_id += 1;
                        }
                        // History older than the last compaction is gone: the watcher is created,
                        // then canceled with the compaction revision, as etcd does.
                        let compacted = self.backend.compacted();
                        if watcher.next < compacted {
                            self.outbox.push_back(response);
                            let mut canceled = self.respond(id, current);
                            canceled.canceled = true;
                            canceled.compact_revision = compacted;
                            self.outbox.push_back(canceled);
                            return;
                        }
                        let id = watcher.id;
                        self.insert(watcher);
                        self.enqueue(id, current);
                    }
                    Err(error) => {
                        response.watch_id = NO_WATCH_ID;
                        response.canceled = true;
                        response.cancel_reason = error.to_string();
                    }
                }
                self.outbox.push_back(response);
            }
            // Canceling a watcher the stream does not have is not answered (as in etcd).
            Some(RequestUnion::CancelRequest(cancel)) if self.remove(cancel.watch_id) => {
                let mut response = self.respond(cancel.watch_id, current);
                response.canceled = true;
                self.outbox.push_back(response);
            }
            Some(RequestUnion::ProgressRequest(_)) => self.progress_requested = true,
            Some(RequestUnion::CancelRequest(_)) | None => {}
        }
    }

    /// A progress tick: watchers that asked for notifications, are synced and had no events since
    /// the last tick hear the current revision (as etcd does).
    fn progress_due(&mut self, current: i64) {
        let mut due = Vec::new();
        for watcher in self.watchers.values_mut().filter(|w| w.progress_notify) {
            if !watcher.sent_events && watcher.synced(current) {
                due.push(watcher.id);
            }
            watcher.sent_events = false;
        }
        for id in due {
            let response = self.respond(id, current);
            self.outbox.push_back(response);
        }
    }

    /// The next response to send, if there is one to send now.
    fn next_response(&mut self, current: i64) -> Option<WatchResponse> {
        if let Some(response) = self.outbox.pop_front() {
            return Some(response);
        }
        while let Some(id) = self.next_behind(current) {
            let response = self.catch_up(id, current);
            // A watcher that one batch did not bring up to date goes to the back of the queue.
            self.enqueue(id, current);
            if response.is_some() {
                return response;
            }
        }
        if self.progress_requested && self.all_synced(current) {
            self.progress_requested = false;
            return Some(self.respond(NO_WATCH_ID, current));
        }
        None
    }

    /// The next watcher whose turn it is and that still has revisions to see.
    fn next_behind(&mut self, current: i64) -> Option<i64> {
        while let Some(id) = self.behind.pop_front() {
            self.queued.remove(&id);
            if self.watchers.get(&id).is_some_and(|w| !w.synced(current)) {
                return Some(id);
            }
        }
        None
    }

    /// Moves one watcher forward by one batch of history: its events, if any concern it, or its
    /// cancellation when compaction has overtaken it.
    fn catch_up(&mut self, id: i64, current: i64) -> Option<WatchResponse> {
        let next = self.watchers.get(&id)?.next;
        let batch: Result<Batch, i64> = match self.backend.feed().read(next, RESPONSE_BUDGET) {
            Some(batch) => Ok(batch),
            None => {
                let counts = self.backend.feed().counts();
                counts.history_reads.fetch_add(1, Ordering::Relaxed);
                self.backend.history(next, RESPONSE_BUDGET)
            }
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(compacted) => {
                self.remove(id);
                let mut response = self.respond(id, current);
                response.canceled = true;
                response.compact_revision = compacted;
                return Some(response);
            }
        };
        let watcher = self.watchers.get_mut(&id)?;
        let fragment = watcher.fragment;
        let mut response = watcher.take(&batch)?;
        response.header = Some(self.backend.header(batch.through));
        if !fragment {
            return Some(response);
        }
        let mut parts = fragments(response, self.fragment_limit).into_iter();
        let first = parts.next();
        for (at, part) in parts.enumerate() {
            self.outbox.insert(at, part);
        }
        first
    }
}
