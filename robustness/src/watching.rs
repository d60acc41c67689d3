//! Watchers under faults, checked as etcd's robustness suite checks them: one watcher per member
//! watches every key from revision 1 with previous values; when its member fails it resumes on the
//! next member from its last revision + 1. Afterwards each watcher's events must be the committed
//! history exactly: ordered, with no duplicate and no gap (reliable, also across resumptions),
//! every revision's events in one response (atomic), each previous value the key as it was.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::WatchOptions;

use crate::committed::{Change, Committed};
use crate::history::KeyValue;

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub change: Change,
    pub previous: Option<KeyValue>,
    /// Which response (counted per watcher) carried it.
    pub response: usize,
}

/// What one watcher received, and how often it had to resume elsewhere.
#[derive(Debug, Default)]
pub struct Watched {
    pub events: Vec<Seen>,
    pub resumptions: usize,
}

impl Watched {
    fn last_revision(&self) -> i64 {
        self.events.last().map_or(0, |e| e.change.revision)
    }
}

/// Watches from revision 1 on `urls[first]`, moving to the next member whenever the stream fails,
/// until `done` holds and everything up to `done`'s revision has arrived.
pub async fn watch(
    urls: Vec<String>,
    first: usize,
    seen: Arc<Mutex<Watched>>,
    until: Arc<Mutex<Option<i64>>>,
) {
    let mut member = first;
    let mut responses = 0usize;
    loop {
        let finished = |seen: &Arc<Mutex<Watched>>| {
            let target = *until.lock().unwrap_or_else(|e| e.into_inner());
            target.is_some_and(|t| lock(seen).last_revision() >= t)
        };
        if finished(&seen) {
            return;
        }
        let from = lock(&seen).last_revision() + 1;
        let stream = async {
            let mut client = crate::client::connect(&urls[member]).await.ok()?;
            let options = WatchOptions::new()
                .with_all_keys()
                .with_prev_key()
                .with_start_revision(from);
            client.watch("", Some(options)).await.ok()
        };
        if let Some(mut stream) = stream.await {
            loop {
                if finished(&seen) {
                    return;
                }
                let reply = match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                    // Quiet: look again whether we are done, then keep waiting.
                    Err(_) => continue,
                    Ok(Ok(Some(reply))) if !reply.canceled() => reply,
                    Ok(_) => break,
                };
                if reply.events().is_empty() {
                    continue;
                }
                responses += 1;
                let mut seen = lock(&seen);
                for event in reply.events() {
                    let Some(change) = Change::of_event(event) else {
                        continue;
                    };
                    seen.events.push(Seen {
                        change,
                        previous: event.prev_kv().map(crate::client::key_value),
                        response: responses,
                    });
                }
            }
        }
        lock(&seen).resumptions += 1;
        member = (member + 1) % urls.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lock(seen: &Arc<Mutex<Watched>>) -> std::sync::MutexGuard<'_, Watched> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits up to `within` for every watcher to reach `revision`.
pub async fn wait_caught_up(watchers: &[Arc<Mutex<Watched>>], revision: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if watchers.iter().all(|w| lock(w).last_revision() >= revision) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Everything wrong with what watcher `name` received, against the committed history.
pub fn check(name: &str, watched: &Watched, committed: &Committed) -> Vec<String> {
    let mut problems = Vec::new();
    let received: Vec<&Change> = watched.events.iter().map(|e| &e.change).collect();
    let expected: Vec<&Change> = committed.changes.iter().collect();
    if let Some(at) = (0..received.len().max(expected.len())).find(|&i| received.get(i) != expected.get(i)) {
        problems.push(format!(
            "watcher {name} (resumed {} times) differs from the committed history at event {at}: \
             received {:?}, committed {:?} (events around it: {:?})",
            watched.resumptions,
            received.get(at),
            expected.get(at),
            &received[at.saturating_sub(2)..(at + 2).min(received.len())],
        ));
    }
    for pair in watched.events.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.change.revision == b.change.revision && a.response != b.response {
            problems.push(format!(
                "watcher {name} received the events of revision {} in two responses",
                a.change.revision
            ));
            break;
        }
    }
    for seen in &watched.events {
        let before = committed.at(&seen.change.key, seen.change.revision - 1);
        if seen.previous.as_ref() != before {
            problems.push(format!(
                "watcher {name}: the previous value of {} at revision {} is {:?}, the committed \
                 history has {before:?}",
                seen.change.key, seen.change.revision, seen.previous
            ));
            break;
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str, value: &str, version: i64) -> Change {
        Change {
            revision,
            key: key.into(),
            kv: Some(KeyValue {
                key: key.into(),
                value: value.into(),
                create_revision: revision - version + 1,
                mod_revision: revision,
                version,
                lease: 0,
            }),
        }
    }

    fn committed() -> Committed {
        Committed::new(
            4,
            vec![
                put(2, "a", "1", 1),
                put(3, "a", "2", 2),
                put(4, "b", "1", 1),
                put(4, "c", "1", 1),
            ],
        )
    }

    fn seen(changes: &[Change], responses: &[usize], committed: &Committed) -> Watched {
        Watched {
            events: changes
                .iter()
                .zip(responses)
                .map(|(change, &response)| Seen {
                    change: change.clone(),
                    previous: committed.at(&change.key, change.revision - 1).cloned(),
                    response,
                })
                .collect(),
            resumptions: 0,
        }
    }

    #[test]
    fn the_committed_history_in_order_passes() {
        let committed = committed();
        let watched = seen(&committed.changes, &[1, 2, 3, 3], &committed);
        assert_eq!(check("w", &watched, &committed), Vec::<String>::new());
    }

    #[test]
    fn a_gap_a_duplicate_a_split_revision_and_a_wrong_previous_value_are_each_caught() {
        let committed = committed();
        let changes = &committed.changes;
        let gap = seen(
            &[changes[0].clone(), changes[2].clone(), changes[3].clone()],
            &[1, 2, 2],
            &committed,
        );
        assert_eq!(check("w", &gap, &committed).len(), 1);
        let twice = seen(
            &[
                changes[0].clone(),
                changes[0].clone(),
                changes[1].clone(),
                changes[2].clone(),
                changes[3].clone(),
            ],
            &[1, 1, 2, 3, 3],
            &committed,
        );
        assert_eq!(check("w", &twice, &committed).len(), 1);
        let split = seen(changes, &[1, 2, 3, 4], &committed);
        assert!(check("w", &split, &committed)[0].contains("two responses"));
        let mut wrong = seen(changes, &[1, 2, 3, 3], &committed);
        wrong.events[1].previous = None;
        assert!(check("w", &wrong, &committed)[0].contains("previous value"));
    }
}
