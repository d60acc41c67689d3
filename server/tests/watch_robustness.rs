//! Watch under load and failure, checked the way etcd's robustness validators check it: random
//! concurrent puts, deletes, transactions and expiring leases on a three-member cluster; watchers on
//! overlapping ranges started at past revisions; one member killed and restarted mid-run, its
//! watchers resuming from their last revision + 1 on another member; a compaction, and a watcher
//! started behind it. The checker then asserts that every watch was ordered, unique, atomic,
//! reliable (no gaps), resumable and carried the right previous values, and that every committed
//! write appears in every watch whose range holds it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::lease_client::LeaseClient;
use cairn::pb::etcdserverpb::watch_client::WatchClient;
use cairn::pb::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, request_op, watch_request,
};
use cairn::pb::mvccpb::event::EventType;
use futures::StreamExt;
use support::Cluster;

/// A small deterministic generator; the seed is printed so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One event as a watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    revision: i64,
    key: String,
    /// The value put, `None` for a deletion.
    value: Option<String>,
    previous: Option<String>,
}

/// What writers know of the writes they made: revision → (key → value or deletion). Writes whose
/// outcome is unknown (the member failed mid-call) are kept apart.
#[derive(Default)]
struct WriteLog {
    committed: BTreeMap<i64, BTreeMap<String, Option<String>>>,
    uncertain: usize,
}

struct WatchSpec {
    name: &'static str,
    key: &'static str,
    range_end: &'static str,
    start: i64,
}

impl WatchSpec {
    fn holds(&self, key: &str) -> bool {
        let key = key.as_bytes();
        if self.range_end.is_empty() {
            key == self.key.as_bytes()
        } else {
            key >= self.key.as_bytes() && key < self.range_end.as_bytes()
        }
    }
}

/// What one watcher received: its responses, each a list of events.
#[derive(Default)]
struct Received {
    responses: Vec<Vec<Seen>>,
    /// The revision the watcher resumes from when its stream breaks.
    next: i64,
    last: i64,
    resumed: usize,
    progress: i64,
    compact_revision: i64,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs one watcher until told the final revision and a progress response confirms it is there;
/// reconnects to the next member whenever its stream fails, from its last revision + 1.
async fn watch(
    spec: Arc<WatchSpec>,
    urls: Vec<String>,
    first: usize,
    received: Arc<Mutex<Received>>,
    target: Arc<Mutex<Option<i64>>>,
) {
    let mut member = first;
    let mut next = spec.start;
    received.lock().unwrap().next = next;
    let deadline = Instant::now() + Duration::from_secs(120);
    'connect: while Instant::now() < deadline {
        let url = urls[member % urls.len()].clone();
        member += 1;
        let Ok(mut client) = WatchClient::connect(url).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver);
        sender
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                    key: spec.key.into(),
                    range_end: spec.range_end.into(),
                    start_revision: next,
                    prev_kv: true,
                    ..Default::default()
                })),
            })
            .unwrap();
        let Ok(responses) = client.watch(requests).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut responses = responses.into_inner();
        loop {
            let wanted = *target.lock().unwrap();
            if let Some(wanted) = wanted {
                if received.lock().unwrap().progress >= wanted {
                    return;
                }
                let _ = sender.send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::ProgressRequest(
                        WatchProgressRequest {},
                    )),
                });
            }
            let response = match tokio::time::timeout(Duration::from_millis(300), responses.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(response))) => response,
                Ok(_) => {
                    received.lock().unwrap().resumed += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'connect;
                }
            };
            let mut received = received.lock().unwrap();
            if response.compact_revision != 0 {
                received.compact_revision = response.compact_revision;
                return;
            }
            if response.watch_id == -1 {
                let revision = response.header.map_or(0, |h| h.revision);
                received.progress = received.progress.max(revision);
                continue;
            }
            if response.events.is_empty() {
                continue;
            }
            let events: Vec<Seen> = response
                .events
                .iter()
                .map(|e| {
                    let kv = e.kv.clone().unwrap_or_default();
                    Seen {
                        revision: kv.mod_revision,
                        key: text(&kv.key),
                        value: (e.r#type == EventType::Put as i32).then(|| text(&kv.value)),
                        previous: e.prev_kv.as_ref().map(|p| text(&p.value)),
                    }
                })
                .collect();
            received.last = events.last().map_or(received.last, |e| e.revision);
            next = received.last + 1;
            received.next = next;
            received.responses.push(events);
        }
    }
    panic!("watcher {} never finished", spec.name);
}

/// Random writes against random members until `stop`, logging what committed.
async fn write(urls: Vec<String>, seed: u64, log: Arc<Mutex<WriteLog>>, stop: Instant) {
    let mut rng = Rng(seed);
    let mut lease_keys = 0;
    while Instant::now() < stop {
        let url = urls[rng.below(urls.len() as u64) as usize].clone();
        let Ok(mut kv) = KvClient::connect(url.clone()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for _ in 0..20 {
            let key = |rng: &mut Rng| format!("r/{:02}", rng.below(20));
            let value = format!("v{}", rng.next() % 1_000_000);
            let outcome: Result<(i64, BTreeMap<String, Option<String>>), ()> = match rng.below(10) {
                0..=4 => {
                    let key = key(&mut rng);
                    kv.put(PutRequest {
                        key: key.clone().into(),
                        value: value.clone().into(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| {
                        (
                            r.into_inner().header.unwrap().revision,
                            BTreeMap::from([(key, Some(value))]),
                        )
                    })
                    .map_err(|_| ())
                }
                5 | 6 => {
                    let (a, b) = (key(&mut rng), key(&mut rng));
                    let (start, end) = if a <= b { (a, b) } else { (b, a) };
                    kv.delete_range(DeleteRangeRequest {
                        key: start.into(),
                        range_end: end.into(),
                        prev_kv: true,
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        let deleted = r.prev_kvs.iter().map(|kv| (text(&kv.key), None)).collect();
                        (
                            if r.deleted > 0 {
                                r.header.unwrap().revision
                            } else {
                                0
                            },
                            deleted,
                        )
                    })
                    .map_err(|_| ())
                }
                7 | 8 => {
                    let keys: BTreeSet<String> = (0..3).map(|_| key(&mut rng)).collect();
                    let success = keys
                        .iter()
                        .map(|k| RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: k.clone().into(),
                                value: value.clone().into(),
                                ..Default::default()
                            })),
                        })
                        .collect();
                    kv.txn(TxnRequest {
                        success,
                        ..Default::default()
                    })
                    .await
                    .map(|r| {
                        let revision = r.into_inner().header.unwrap().revision;
                        (
                            revision,
                            keys.into_iter().map(|k| (k, Some(value.clone()))).collect(),
                        )
                    })
                    .map_err(|_| ())
                }
                _ => {
                    // A key on a short lease, never touched again: its deletion comes from expiry.
                    lease_keys += 1;
                    let key = format!("r/lease/{seed}-{lease_keys}");
                    let Ok(mut leases) = LeaseClient::connect(url.clone()).await else {
                        continue;
                    };
                    let granted = leases.lease_grant(LeaseGrantRequest { ttl: 1, id: 0 }).await;
                    match granted {
                        Ok(granted) => kv
                            .put(PutRequest {
                                key: key.clone().into(),
                                value: value.clone().into(),
                                lease: granted.into_inner().id,
                                ..Default::default()
                            })
                            .await
                            .map(|r| {
                                (
                                    r.into_inner().header.unwrap().revision,
                                    BTreeMap::from([(key, Some(value))]),
                                )
                            })
                            .map_err(|_| ()),
                        Err(_) => Err(()),
                    }
                }
            };
            let mut log = log.lock().unwrap();
            match outcome {
                Ok((0, _)) => {}
                Ok((revision, changes)) => {
                    let previous = log.committed.insert(revision, changes);
                    assert!(previous.is_none(), "two writes answered with revision {revision}");
                }
                Err(()) => {
                    log.uncertain += 1;
                    break;
                }
            }
        }
    }
}

async fn current_revision(urls: &[String]) -> i64 {
    for _ in 0..100 {
        for url in urls {
            if let Ok(mut kv) = KvClient::connect(url.clone()).await
                && let Ok(r) = kv
                    .range(RangeRequest {
                        key: b"r/".to_vec(),
                        range_end: b"r0".to_vec(),
                        count_only: true,
                        ..Default::default()
                    })
                    .await
            {
                return r.into_inner().header.unwrap().revision;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no member answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_stay_ordered_unique_atomic_and_complete_through_failures() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("watch robustness seed {seed}");
    let mut cluster = Cluster::start(3, "watch-robustness");
    let urls: Vec<String> = cluster.members.iter().map(|m| m.client_url.clone()).collect();
    let log = Arc::new(Mutex::new(WriteLog::default()));
    let target = Arc::new(Mutex::new(None));

    let specs = [
        WatchSpec {
            name: "everything",
            key: "r/",
            range_end: "r0",
            start: 1,
        },
        WatchSpec {
            name: "prefix r/1",
            key: "r/1",
            range_end: "r/2",
            start: 1,
        },
        WatchSpec {
            name: "r/05..r/15 from 5",
            key: "r/05",
            range_end: "r/15",
            start: 5,
        },
        WatchSpec {
            name: "one key",
            key: "r/07",
            range_end: "",
            start: 2,
        },
        WatchSpec {
            name: "leases",
            key: "r/lease/",
            range_end: "r/lease0",
            start: 1,
        },
    ];
    let mut watchers = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let spec = Arc::new(spec);
        let received = Arc::new(Mutex::new(Received::default()));
        let task = tokio::spawn(watch(
            spec.clone(),
            urls.clone(),
            i,
            received.clone(),
            target.clone(),
        ));
        watchers.push((spec, received, task));
    }

    let run = Duration::from_secs(9);
    let stop = Instant::now() + run;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(write(
                urls.clone(),
                seed.wrapping_add(w * 7919) | 1,
                log.clone(),
                stop,
            ))
        })
        .collect();

    // A third of the way in, a member dies; two thirds in, it comes back.
    tokio::time::sleep(run / 3).await;
    let victim = (seed % 3) as usize;
    cluster.members[victim].kill9();
    tokio::time::sleep(run / 3).await;
    cluster.members[victim].start();

    // A compaction below what every running watcher has seen, then a watcher behind it.
    let floor = watchers
        .iter()
        .map(|(_, r, _)| r.lock().unwrap().next)
        .min()
        .unwrap_or(1);
    let compacted = floor.min(current_revision(&urls).await) - 1;
    let survivor = (victim + 1) % urls.len();
    if compacted > 1 {
        let mut kv = KvClient::connect(urls[survivor].clone()).await.unwrap();
        kv.compact(CompactionRequest {
            revision: compacted,
            physical: false,
        })
        .await
        .unwrap();
    }
    // A linearizable read there first: the member has applied the compaction when the watch starts.
    current_revision(&urls[survivor..=survivor]).await;
    let late = Arc::new(WatchSpec {
        name: "late",
        key: "r/",
        range_end: "r0",
        start: 1,
    });
    let late_received = Arc::new(Mutex::new(Received::default()));
    let late_task = tokio::spawn(watch(
        late.clone(),
        urls.clone(),
        survivor,
        late_received.clone(),
        target.clone(),
    ));

    for writer in writers {
        writer.await.unwrap();
    }
    // Every leased key expires before the end.
    let mut final_revision = current_revision(&urls).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut kv = KvClient::connect(urls[(victim + 1) % 3].clone()).await.unwrap();
        let left = kv
            .range(RangeRequest {
                key: b"r/lease/".to_vec(),
                range_end: b"r/lease0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if left.count == 0 {
            final_revision = final_revision.max(left.header.unwrap().revision);
            break;
        }
        assert!(Instant::now() < deadline, "leased keys never expired");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    *target.lock().unwrap() = Some(final_revision);
    for (_, _, task) in &mut watchers {
        task.await.unwrap();
    }
    late_task.await.unwrap();

    // The reference: the watcher of everything from revision 1, checked against the write log.
    let log = log.lock().unwrap();
    let reference: Vec<Seen> = watchers[0].1.lock().unwrap().responses.concat();
    let mut by_revision: BTreeMap<i64, Vec<&Seen>> = BTreeMap::new();
    for event in &reference {
        by_revision.entry(event.revision).or_default().push(event);
    }
    for (revision, changes) in &log.committed {
        let seen: BTreeMap<String, Option<String>> = by_revision
            .get(revision)
            .unwrap_or_else(|| panic!("committed revision {revision} missing from the watch"))
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        assert_eq!(
            &seen, changes,
            "revision {revision}: the watch differs from the write"
        );
    }
    // A revision no writer was told of is a lease expiring, or one of the writes whose answer was
    // lost (each of those at most once).
    let unexplained: Vec<_> = by_revision
        .iter()
        .filter(|(revision, events)| {
            !log.committed.contains_key(revision)
                && !events
                    .iter()
                    .all(|e| e.key.starts_with("r/lease/") && e.value.is_none())
        })
        .collect();
    assert!(
        unexplained.len() <= log.uncertain,
        "{} revisions match no write, but only {} writes went unanswered: {unexplained:?}",
        unexplained.len(),
        log.uncertain
    );
    let revisions: Vec<i64> = by_revision.keys().copied().collect();
    assert_eq!(
        revisions.first(),
        Some(&2),
        "the history starts at the first write"
    );
    assert_eq!(
        revisions,
        (2..=final_revision).collect::<Vec<_>>(),
        "every revision once, in order, none missing"
    );
    // Previous values follow from the history itself.
    let mut values: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for event in &reference {
        let expected = values.get(event.key.as_str()).copied().flatten();
        assert_eq!(event.previous.as_deref(), expected, "prev_kv of {event:?}");
        values.insert(&event.key, event.value.as_deref());
    }

    // Every watcher saw exactly the reference restricted to its range, from its start, each
    // revision inside one response.
    for (spec, received, _) in &watchers {
        let received = received.lock().unwrap();
        let expected: Vec<&Seen> = reference
            .iter()
            .filter(|e| spec.holds(&e.key) && e.revision >= spec.start)
            .collect();
        let seen: Vec<&Seen> = received.responses.iter().flatten().collect();
        assert_eq!(
            seen, expected,
            "watcher {} (resumed {} times)",
            spec.name, received.resumed
        );
        let mut response_of = BTreeMap::new();
        for (i, response) in received.responses.iter().enumerate() {
            for event in response {
                let first = *response_of.entry(event.revision).or_insert(i);
                assert_eq!(
                    first, i,
                    "watcher {}: revision {} split across responses",
                    spec.name, event.revision
                );
            }
        }
        assert!(received.progress >= final_revision);
    }
    let resumed: usize = watchers.iter().map(|(_, r, _)| r.lock().unwrap().resumed).sum();
    assert!(
        resumed > 0,
        "the member's death cut no watch stream: the run proved nothing about resuming"
    );
    if compacted > 1 {
        assert_eq!(late_received.lock().unwrap().compact_revision, compacted);
    }
    eprintln!(
        "watch robustness: {} revisions, {} committed writes, {} uncertain, {} resumptions, compacted at {}",
        revisions.len(),
        log.committed.len(),
        log.uncertain,
        resumed,
        compacted
    );
}
