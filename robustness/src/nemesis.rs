//! Nemeses: the faults a run injects while clients work, one kind per run, each fault held for a
//! while and then undone, with quiet spells between them so the cluster recovers and is hit again.
//! Faults whose right answer is the member's own (a damaged log, a failing disk) also check that
//! answer, and report what was wrong with it.

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
    /// A random member removed, its data wiped, and added back: as a voter, or as a learner that
    /// is then promoted (in turns).
    MemberChange,
    /// A random member killed in the middle of a write, its log ending in part of a record: it
    /// must drop the partial record and rejoin.
    TornWal,
    /// A random member's machine loses power: killed, everything its log had not synced lost, and
    /// back at once.
    PowerLoss,
    /// The leader's machine loses power.
    PowerLossLeader,
    /// A random member killed and a bit of its log's last KiB flipped: it must repair a damaged
    /// final record or refuse to start naming the corruption (it is then replaced).
    CorruptWal,
    /// A random member's log syncs fail: it must stop, not go on as if its writes were durable.
    FsyncFailure,
}

impl Nemesis {
    pub const ALL: [Nemesis; 13] = [
        Nemesis::None,
        Nemesis::Kill,
        Nemesis::KillLeader,
        Nemesis::Pause,
        Nemesis::IsolateLeader,
        Nemesis::Isolate,
        Nemesis::Bridge,
        Nemesis::MemberChange,
        Nemesis::TornWal,
        Nemesis::PowerLoss,
        Nemesis::PowerLossLeader,
        Nemesis::CorruptWal,
        Nemesis::FsyncFailure,
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
            Nemesis::MemberChange => "member-change",
            Nemesis::TornWal => "torn-wal",
            Nemesis::PowerLoss => "power-loss",
            Nemesis::PowerLossLeader => "power-loss-leader",
            Nemesis::CorruptWal => "corrupt-wal",
            Nemesis::FsyncFailure => "fsync-failure",
        }
    }
}

/// What a nemesis did: faults injected, and what members did wrong in answer to them.
#[derive(Debug, Default)]
pub struct Outcome {
    pub faults: usize,
    /// Members that stopped or refused to start because of a fault, as they must (a failing
    /// fsync, a damaged log), and were then started again or replaced.
    pub stopped: usize,
    pub problems: Vec<String>,
}

/// How long a member has to notice a failing disk and stop.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Injects `nemesis` until `until`. Every fault is undone before it returns.
pub async fn run(
    nemesis: Nemesis,
    cluster: &Mutex<Cluster>,
    seed: u64,
    until: Instant,
) -> Result<Outcome, ClusterError> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0x5eed));
    let mut outcome = Outcome::default();
    if nemesis == Nemesis::None {
        tokio::time::sleep_until(until.into()).await;
        return Ok(outcome);
    }
    loop {
        // A quiet spell, so the cluster has a leader and clients make progress before the next hit.
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2_000))).await;
        // Sometimes shorter than an election timeout (500 ms here): a member killed and back
        // before the others notice is a case of its own.
        let hold = Duration::from_millis(rng.random_range(0..2_500));
        if Instant::now() + hold >= until {
            return Ok(outcome);
        }
        let size = cluster.lock().await.size();
        let random = rng.random_range(0..size);
        let target = match nemesis {
            Nemesis::KillLeader | Nemesis::IsolateLeader | Nemesis::PowerLossLeader => {
                match cluster.lock().await.leader().await {
                    Some(leader) => leader,
                    None => continue,
                }
            }
            _ => random,
        };
        tracing::info!(nemesis = nemesis.name(), member = target, ?hold, "fault injected");
        outcome.faults += 1;
        let mut guard = cluster.lock().await;
        match nemesis {
            Nemesis::None => {}
            Nemesis::Kill | Nemesis::KillLeader => guard.kill(target),
            Nemesis::Pause => guard.pause(target),
            Nemesis::Isolate | Nemesis::IsolateLeader => {
                for other in (0..size).filter(|&other| other != target) {
                    guard.cut(target, other)?;
                }
            }
            Nemesis::Bridge if size >= 3 => guard.cut(target, (target + 1) % size)?,
            Nemesis::Bridge => {}
            Nemesis::MemberChange => {
                // One change at a time: the previous one must have settled (every member answering
                // a linearizable read), or this one would take a second member out of a quorum.
                let learner = outcome.faults % 2 == 0;
                let settled = guard.wait_healthy(Duration::from_secs(10)).await;
                if let Err(error) = settled {
                    outcome
                        .problems
                        .push(format!("before a membership change: {error}"));
                } else if let Err(problem) = replace(&mut guard, target, learner).await {
                    outcome.problems.push(problem);
                }
            }
            Nemesis::TornWal | Nemesis::PowerLoss | Nemesis::PowerLossLeader | Nemesis::CorruptWal => {
                guard.kill(target);
                let wal = guard.members[target].wal_dir();
                let damage = match nemesis {
                    Nemesis::TornWal => crate::disk::append_partial_record(&wal, &mut rng),
                    Nemesis::PowerLoss | Nemesis::PowerLossLeader => {
                        crate::disk::lose_unsynced(&wal, &mut rng)
                    }
                    _ => crate::disk::flip_byte_near_end(&wal, &mut rng),
                }
                .map_err(|source| ClusterError::Io {
                    what: format!("cannot damage {}", wal.display()),
                    source,
                })?;
                tracing::info!(member = target, %damage, "log damaged");
                guard.restart(target)?;
                match check_restart(&mut guard, target, nemesis, &damage).await {
                    Ok(refused) => outcome.stopped += usize::from(refused),
                    Err(problem) => outcome.problems.push(problem),
                }
            }
            Nemesis::FsyncFailure => {
                let flag = guard.members[target].wal_dir().join(cairn::planted::FAIL_FSYNC);
                let io = |source| ClusterError::Io {
                    what: format!("cannot write {}", flag.display()),
                    source,
                };
                std::fs::write(&flag, b"").map_err(io)?;
                let exit = guard.wait_exit(target, STOP_WITHIN).await;
                std::fs::remove_file(&flag).map_err(io)?;
                match exit {
                    Some(status) if !status.success() => outcome.stopped += 1,
                    Some(status) => outcome.problems.push(format!(
                        "{} stopped with {status} after its log's fsync failed, as if nothing were wrong",
                        guard.members[target].name
                    )),
                    None => outcome.problems.push(format!(
                        "{} kept running for {STOP_WITHIN:?} after its log's fsync failed:\n{}",
                        guard.members[target].name,
                        guard.log_tail(target, 10)
                    )),
                }
            }
        }
        drop(guard);
        tokio::time::sleep(hold).await;
        cluster.lock().await.recover()?;
    }
}

/// After a damaged log: the member either runs (it repaired a write cut short) or refused to
/// start with an error naming the damage, and is then replaced (`Ok(true)`). Anything else is a
/// problem.
async fn check_restart(
    cluster: &mut Cluster,
    target: usize,
    nemesis: Nemesis,
    damage: &str,
) -> Result<bool, String> {
    let Some(status) = cluster.wait_exit(target, Duration::from_secs(3)).await else {
        return Ok(false);
    };
    let log = cluster.log_tail(target, 5);
    let name = &cluster.members[target].name;
    if nemesis != Nemesis::CorruptWal {
        return Err(format!(
            "{name} did not start after a crash ({damage}); exited {status}:\n{log}"
        ));
    }
    if status.success() || !(log.contains("corrupt") || log.contains("checksum")) {
        return Err(format!(
            "{name} exited {status} after its log was damaged ({damage}), without naming the damage:\n{log}"
        ));
    }
    tracing::info!(
        member = target,
        "refused its damaged log, as it must; replacing it"
    );
    replace(cluster, target, false).await.map(|()| true)
}

/// Removes member `target`, wipes its data and adds it back (as a learner, then promoted, or as a
/// voter), through the other members.
async fn replace(cluster: &mut Cluster, target: usize, learner: bool) -> Result<(), String> {
    let name = cluster.members[target].name.clone();
    let peer_url = cluster.members[target].peer_url();
    let others: Vec<String> = (0..cluster.size())
        .filter(|&i| i != target && cluster.members[i].is_running())
        .map(|i| cluster.members[i].client_url())
        .collect();
    let listed = retry(
        &others,
        |url| async move { crate::client::member_list(&url).await },
    )
    .await?;
    if let Some(old) = listed.iter().find(|m| m.peer_urls.contains(&peer_url)) {
        let id = old.id;
        // A removal whose answer was lost (the leader removing itself steps down) and is sent
        // again finds the member gone: that is done, too.
        retry(&others, |url| async move {
            match crate::client::member_remove(&url, id).await {
                Err(error) if error.to_string().contains("member not found") => Ok(()),
                done => done,
            }
        })
        .await?;
    }
    cluster.wipe(target).map_err(|e| e.to_string())?;
    let (id, members) = retry(&others, |url| {
        let peer_url = peer_url.clone();
        async move { crate::client::member_add(&url, &peer_url, learner).await }
    })
    .await?;
    let initial_cluster = members
        .iter()
        .map(|m| {
            let member_name = if m.id == id {
                name.as_str()
            } else {
                m.name.as_str()
            };
            format!(
                "{member_name}={}",
                m.peer_urls.first().cloned().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    cluster
        .rejoin(target, initial_cluster)
        .map_err(|e| e.to_string())?;
    if learner {
        // Promotion waits until the learner has caught up (etcd refuses it before).
        retry(&others, |url| async move {
            crate::client::member_promote(&url, id).await
        })
        .await?;
    }
    Ok(())
}

/// Tries `call` on each of `urls` in turn for up to 20 seconds.
async fn retry<T, F, Fut>(urls: &[String], call: F) -> Result<T, String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no member to ask");
    for attempt in 0.. {
        if Instant::now() > deadline || urls.is_empty() {
            break;
        }
        match call(urls[attempt % urls.len()].clone()).await {
            Ok(value) => return Ok(value),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("a membership change failed for 20 s: {last}"))
}
