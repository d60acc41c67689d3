//! Auto-compaction (`--auto-compaction-mode/-retention`): the leader alone decides, as etcd's
//! compactor does, and proposes an ordinary Compaction through the log, so every member drops the
//! same history. Periodic mode samples the revision every tenth of the compaction interval and
//! compacts to the newest sample at least `retention` old, so history of at least that long is
//! always kept; revision mode keeps the last N revisions, checked every 5 minutes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::config::AutoCompaction;
use crate::pb::cairnpb::{Caller, RaftRequest, raft_request};
use crate::pb::etcdserverpb::CompactionRequest;

/// Periodic compaction runs at least hourly, whatever the retention.
const LONGEST_INTERVAL: Duration = Duration::from_secs(3600);
/// How often revision mode looks (etcd's).
const REVISION_CHECK: Duration = Duration::from_secs(300);

/// The leader's record of what it saw and when it last compacted.
pub struct Compactor {
    policy: AutoCompaction,
    /// (when, revision) samples, oldest first.
    samples: VecDeque<(Instant, i64)>,
    /// When the current stretch of leadership began, or the last compaction attempt.
    last: Instant,
}

impl Compactor {
    pub fn new(policy: AutoCompaction, now: Instant) -> Compactor {
        Compactor {
            policy,
            samples: VecDeque::new(),
            last: now,
        }
    }

    /// Time between compactions.
    pub fn interval(&self) -> Duration {
        match self.policy {
            AutoCompaction::Periodic(retention) => retention.min(LONGEST_INTERVAL),
            AutoCompaction::Revisions(_) => REVISION_CHECK,
        }
    }

    /// Time between looks at the revision.
    pub fn tick(&self) -> Duration {
        match self.policy {
            AutoCompaction::Periodic(_) => self.interval() / 10,
            AutoCompaction::Revisions(_) => REVISION_CHECK,
        }
    }

    /// Another member leads: what this one saw says nothing about the new term's history.
    pub fn follow(&mut self, now: Instant) {
        self.samples.clear();
        self.last = now;
    }

    /// Looks at the revision as leader; returns the revision to compact to, when it is time and
    /// there is history beyond what must be kept.
    pub fn look(&mut self, now: Instant, revision: i64, compacted: i64) -> Option<i64> {
        let target = match self.policy {
            AutoCompaction::Periodic(retention) => {
                self.samples.push_back((now, revision));
                if now.duration_since(self.last) < self.interval() {
                    return None;
                }
                // The newest sample old enough; older ones are of no use any more.
                let old_enough = self
                    .samples
                    .iter()
                    .rposition(|(at, _)| now.duration_since(*at) >= retention)?;
                self.samples.drain(..old_enough);
                self.samples.front().map(|(_, revision)| *revision)
            }
            AutoCompaction::Revisions(keep) => Some(revision - keep),
        };
        self.last = now;
        target.filter(|t| *t > compacted && *t > 0)
    }
}

/// Runs for as long as the member does.
pub async fn run(node: Arc<Node>, policy: AutoCompaction) {
    let mut compactor = Compactor::new(policy, Instant::now());
    let mut tick = tokio::time::interval(compactor.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(?policy, every = ?compactor.interval(), "auto-compaction on");
    loop {
        tick.tick().await;
        let now = Instant::now();
        if !node.raft.is_leader() {
            compactor.follow(now);
            continue;
        }
        let (revision, compacted) = node
            .raft
            .read(|m| (m.app.mvcc.revision(), m.app.mvcc.compacted_revision()));
        let Some(target) = compactor.look(now, revision, compacted) else {
            continue;
        };
        let request = RaftRequest {
            request: Some(raft_request::Request::Compaction(CompactionRequest {
                revision: target,
                physical: false,
            })),
            caller: Some(Caller::internal()),
        };
        match node.raft.propose(request).await {
            Ok(_) => tracing::info!(revision = target, "auto-compacted history"),
            Err(error) => tracing::warn!(revision = target, %error, "auto-compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn periodic_keeps_at_least_the_retention_of_history() {
        let start = Instant::now();
        let mut compactor = Compactor::new(AutoCompaction::Periodic(secs(10)), start);
        assert_eq!((compactor.interval(), compactor.tick()), (secs(10), secs(1)));
        // Revision r + 100 at second r; nothing compacts before a sample is 10 s old.
        let mut compacted = 0;
        let mut targets = Vec::new();
        for second in 1..=25 {
            let at = start + secs(second);
            if let Some(target) = compactor.look(at, 100 + second as i64, compacted) {
                targets.push((second, target));
                compacted = target;
            }
        }
        // At 10 s the oldest sample (1 s) is only 9 s old; at 11 s it is 10 s old.
        assert_eq!(targets, vec![(11, 101), (21, 111)]);
    }

    #[test]
    fn long_retention_still_compacts_hourly() {
        let start = Instant::now();
        let compactor = Compactor::new(AutoCompaction::Periodic(secs(5 * 3600)), start);
        assert_eq!((compactor.interval(), compactor.tick()), (secs(3600), secs(360)));
    }

    #[test]
    fn revision_mode_keeps_the_last_revisions_and_never_goes_back() {
        let start = Instant::now();
        let mut compactor = Compactor::new(AutoCompaction::Revisions(100), start);
        assert_eq!(compactor.look(start + secs(300), 50, 0), None);
        assert_eq!(compactor.look(start + secs(600), 450, 0), Some(350));
        assert_eq!(compactor.look(start + secs(900), 450, 350), None);
    }

    #[test]
    fn a_new_leadership_starts_sampling_over() {
        let start = Instant::now();
        let mut compactor = Compactor::new(AutoCompaction::Periodic(secs(10)), start);
        for second in 1..=9 {
            compactor.look(start + secs(second), second as i64, 0);
        }
        compactor.follow(start + secs(9));
        // What the member saw before it followed does not count.
        assert_eq!(compactor.look(start + secs(20), 20, 0), None);
        assert_eq!(compactor.look(start + secs(30), 30, 0), Some(20));
    }
}
