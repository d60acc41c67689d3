//! Nemeses: the faults a run injects while clients work, one kind per run, each fault held for a
//! while and then undone, with quiet spells between them so the cluster recovers and is hit again.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::cluster::{Cluster, ClusterError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Nemesis {
    /// No faults: the baseline.
    None,
    /// SIGKILL of a random member, restarted after a while.
    Kill,
    /// SIGKILL of the leader.
    KillLeader,
    /// SIGSTOP of a random member, SIGCONT after a while.
    Pause,
    /// The leader cut off from every other member.
    IsolateLeader,
    /// A random member cut off from every other member (a minority against the majority).
    Isolate,
    /// Two members cut from each other while both still reach a third (which bridges them).
    Bridge,
}

impl Nemesis {
    pub const ALL: [Nemesis; 7] = [
        Nemesis::None,
        Nemesis::Kill,
        Nemesis::KillLeader,
        Nemesis::Pause,
        Nemesis::IsolateLeader,
        Nemesis::Isolate,
        Nemesis::Bridge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Nemesis::None => "none",
            Nemesis::Kill => "kill",
            Nemesis::KillLeader => "kill-leader",
            Nemesis::Pause => "pause",
            Nemesis::IsolateLeader => "isolate-leader",
            Nemesis::Isolate => "isolate",
            Nemesis::Bridge => "bridge",
        }
    }
}

/// Injects `nemesis` until `until`, returning how many faults it injected. Every fault is undone
/// before it returns.
pub async fn run(
    nemesis: Nemesis,
    cluster: &Mutex<Cluster>,
    seed: u64,
    until: Instant,
) -> Result<usize, ClusterError> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0x5eed));
    let mut faults = 0;
    if nemesis == Nemesis::None {
        tokio::time::sleep_until(until.into()).await;
        return Ok(0);
    }
    loop {
        // A quiet spell, so the cluster has a leader and clients make progress before the next hit.
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2_000))).await;
        let hold = Duration::from_millis(rng.random_range(500..2_500));
        if Instant::now() + hold >= until {
            return Ok(faults);
        }
        let size = cluster.lock().await.size();
        let random = rng.random_range(0..size);
        let target = match nemesis {
            Nemesis::KillLeader | Nemesis::IsolateLeader => match cluster.lock().await.leader().await {
                Some(leader) => leader,
                None => continue,
            },
            _ => random,
        };
        {
            let mut cluster = cluster.lock().await;
            match nemesis {
                Nemesis::None => {}
                Nemesis::Kill | Nemesis::KillLeader => cluster.kill(target),
                Nemesis::Pause => cluster.pause(target),
                Nemesis::Isolate | Nemesis::IsolateLeader => {
                    for other in (0..size).filter(|&other| other != target) {
                        cluster.cut(target, other)?;
                    }
                }
                Nemesis::Bridge if size >= 3 => cluster.cut(target, (target + 1) % size)?,
                Nemesis::Bridge => {}
            }
        }
        faults += 1;
        tracing::info!(nemesis = nemesis.name(), member = target, ?hold, "fault injected");
        tokio::time::sleep(hold).await;
        cluster.lock().await.recover()?;
    }
}
