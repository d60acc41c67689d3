//! One run: a fresh cluster in a private network namespace, clients and a watcher on every member,
//! one nemesis, then every fault undone and the history checked — unknown outcomes settled from the
//! committed history, acknowledged writes looked for, serializable reads matched to their revision,
//! every watcher's events compared with the committed history, and the rest checked for
//! linearizability against etcd's model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::cluster::Cluster;
use crate::committed::{self, Change, Committed, Settled};
use crate::history::{History, Operation, Request, Response};
use crate::linearizability::{self, Timed, Verdict};
use crate::model::{Call, Store};
use crate::nemesis::{self, Nemesis};
use crate::traffic::{self, Profile, Recorder};
use crate::watching::{self, Watched};

/// States the linearizability search may visit before it gives up (a few GB at most).
const SEARCH_BUDGET: usize = 2_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub nemesis: Nemesis,
    pub profile: Profile,
    pub seed: u64,
    pub duration: Duration,
    pub members: usize,
    pub clients_per_member: usize,
    /// A planted bug every member runs with (`cairn::planted`), for self-tests.
    pub planted: Option<String>,
    /// The member program (this package's `cairn-member`).
    pub member: PathBuf,
}

impl Plan {
    pub fn new(member: &Path, nemesis: Nemesis, profile: Profile, seed: u64, duration: Duration) -> Plan {
        Plan {
            nemesis,
            profile,
            seed,
            duration,
            members: 3,
            clients_per_member: 3,
            planted: None,
            member: member.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub plan: Plan,
    /// Operations recorded, and how many of them had unknown outcomes.
    pub operations: usize,
    pub unknown: usize,
    pub happened: usize,
    pub never: usize,
    pub open: usize,
    pub faults: usize,
    /// Members that stopped or refused to start naming the fault, as they must.
    #[serde(default)]
    pub stopped: usize,
    pub final_revision: i64,
    /// Operations the linearizability check ran over, and how long it took.
    pub checked: usize,
    pub checker_millis: u128,
    /// Events the watchers received (one watcher per member), and how often they resumed.
    #[serde(default)]
    pub watch_events: usize,
    #[serde(default)]
    pub watch_resumptions: usize,
    /// Everything found wrong; empty when the run passed.
    pub problems: Vec<String>,
    /// The history as recorded (unknown outcomes not yet settled) and the committed one, which
    /// is all `check` needs to check it again.
    pub history: History,
    pub committed: Vec<Change>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line for a run's log.
    pub fn summary(&self) -> String {
        format!(
            "{} nemesis={} profile={:?} seed={} members={}{} ops={} unknown={} (happened {}, never {}, open {}) faults={} stopped={} revision={} checked={} checker={}ms watched={} resumed={}{}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.plan.nemesis.name(),
            self.plan.profile,
            self.plan.seed,
            self.plan.members,
            self.plan
                .planted
                .as_ref()
                .map(|b| format!(" planted={b}"))
                .unwrap_or_default(),
            self.operations,
            self.unknown,
            self.happened,
            self.never,
            self.open,
            self.faults,
            self.stopped,
            self.final_revision,
            self.checked,
            self.checker_millis,
            self.watch_events,
            self.watch_resumptions,
            self.problems
                .first()
                .map(|p| format!(": {p}"))
                .unwrap_or_default(),
        )
    }

    /// Writes the report with its history to `dir`, named by nemesis and seed; returns the path.
    /// `cairn-robustness --check FILE` checks a saved history again.
    pub fn save(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "{}-{:?}-seed{}.json",
            self.plan.nemesis.name(),
            self.plan.profile,
            self.plan.seed
        ));
        std::fs::write(&path, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        Ok(path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot run in a private network namespace: {0}")]
    Netns(#[from] cairn_e2e::netns::NetnsError),
    #[error("cannot read the committed history: {0}")]
    Committed(String),
    #[error("cannot start the run's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the run's thread panicked")]
    Panicked,
}

/// Runs `plan` on a thread of its own, in a private network namespace (needs root).
pub fn run(plan: Plan) -> Result<Report, RunError> {
    std::thread::spawn(move || {
        cairn_e2e::netns::enter_private()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(RunError::Runtime)?;
        runtime.block_on(run_here(plan))
    })
    .join()
    .map_err(|_| RunError::Panicked)?
}

async fn run_here(plan: Plan) -> Result<Report, RunError> {
    let cluster = Cluster::start(&plan.member, plan.members, plan.planted.clone())?;
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    let urls = cluster.client_urls();
    let cluster = Mutex::new(cluster);

    let watchers: Vec<Arc<std::sync::Mutex<Watched>>> = urls.iter().map(|_| Arc::default()).collect();
    let watch_until: Arc<std::sync::Mutex<Option<i64>>> = Arc::default();
    let watch_tasks: Vec<_> = watchers
        .iter()
        .enumerate()
        .map(|(member, seen)| {
            tokio::spawn(watching::watch(
                urls.clone(),
                member,
                seen.clone(),
                watch_until.clone(),
            ))
        })
        .collect();

    let recorder = Recorder::new();
    let until = Instant::now() + plan.duration;
    let mut clients = Vec::new();
    for (member, url) in urls.iter().enumerate() {
        for n in 0..plan.clients_per_member {
            let id = member * plan.clients_per_member + n;
            clients.push(tokio::spawn(traffic::client(
                id,
                member,
                url.clone(),
                plan.profile,
                plan.seed,
                until,
                recorder.clone(),
            )));
        }
    }
    let faults = nemesis::run(plan.nemesis, &cluster, plan.seed, until).await;
    for client in clients {
        let _ = client.await;
    }
    let mut cluster = cluster.into_inner();
    let mut problems: Vec<String> = cluster.exited();
    let nemesis::Outcome {
        faults,
        stopped,
        problems: nemesis_problems,
    } = faults?;
    problems.extend(nemesis_problems);
    cluster.recover()?;
    if let Err(error) = cluster.wait_healthy(Duration::from_secs(30)).await {
        problems.push(error.to_string());
    }

    // A last read of everything, after every fault is over: it must see every write that stuck.
    let mut last = crate::client::connect(&urls[0])
        .await
        .map_err(|e| RunError::Committed(e.to_string()))?;
    let request = Request::List { prefix: "k".into() };
    let invoked = recorder.now();
    let response = crate::client::call(&mut last, &request)
        .await
        .map_err(RunError::Committed)?;
    recorder.record(Operation {
        client: usize::MAX,
        member: 0,
        invoked,
        returned: Some(recorder.now()),
        request,
        response,
    });
    let history = recorder.history();
    let committed = Committed::read(&urls[0]).await.map_err(RunError::Committed)?;

    // Every watcher must arrive at the last revision, then show exactly the committed history.
    *watch_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(committed.revision);
    let caught_up = watching::wait_caught_up(&watchers, committed.revision, Duration::from_secs(30)).await;
    for task in watch_tasks {
        task.abort();
    }
    let mut watch_events = 0;
    let mut watch_resumptions = 0;
    for (member, seen) in watchers.iter().enumerate() {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        watch_events += seen.events.len();
        watch_resumptions += seen.resumptions;
        problems.extend(watching::check(&format!("w{member}"), &seen, &committed));
    }
    if !caught_up {
        problems.push(format!(
            "a watcher did not reach revision {} within 30 s of the end",
            committed.revision
        ));
    }

    let mut report = check(plan, history, &committed);
    report.faults = faults;
    report.stopped = stopped;
    report.watch_events = watch_events;
    report.watch_resumptions = watch_resumptions;
    report.problems.splice(0..0, problems);
    if !report.passed() {
        report.problems.push(format!(
            "members' data and logs kept in {}; the logs end:\n{}",
            cluster.keep_files().display(),
            cluster.logs(15)
        ));
    }
    Ok(report)
}

/// Checks a recorded history against the committed one.
pub fn check(plan: Plan, recorded: History, committed: &Committed) -> Report {
    let mut history = recorded.clone();
    let operations = history.operations.len();
    let unknown = history.unknown();
    let Settled {
        happened,
        never,
        open,
    } = committed::settle(&mut history, committed);
    let mut problems = committed::lost_writes(&history, committed);
    problems.extend(committed::stale_reads_beyond_history(&history, committed));

    let timed: Vec<Timed<Call>> = history
        .operations
        .iter()
        .filter(|op| {
            !matches!(
                op.request,
                Request::Get {
                    serializable: true,
                    ..
                }
            )
        })
        .map(|op| Timed {
            invoked: op.invoked,
            returned: op.returned,
            op: Call {
                request: op.request.clone(),
                response: op.response.clone(),
            },
        })
        .collect();
    let started = Instant::now();
    let verdict = linearizability::check(Store::at(1), &timed, SEARCH_BUDGET);
    let checker_millis = started.elapsed().as_millis();
    match verdict {
        Verdict::Linearizable { .. } => {}
        Verdict::GaveUp { states } => problems.push(format!(
            "the linearizability search gave up after {states} states"
        )),
        Verdict::NotLinearizable { longest, stuck } => {
            problems.push(explain(&timed, &longest, &stuck));
        }
    }
    Report {
        plan,
        operations,
        unknown,
        happened,
        never,
        open,
        faults: 0,
        stopped: 0,
        final_revision: committed.revision,
        checked: timed.len(),
        checker_millis,
        watch_events: 0,
        watch_resumptions: 0,
        problems,
        history: recorded,
        committed: committed.changes.clone(),
    }
}

/// Why no order explains the history: the state after the longest explained prefix, and what
/// the operations that had to come next got instead of what etcd would have answered.
fn explain(timed: &[Timed<Call>], longest: &[usize], stuck: &[usize]) -> String {
    let mut state = Store::at(1);
    for &index in longest {
        if let Some(next) = linearizability::Model::step(&state, &timed[index].op) {
            state = next;
        }
    }
    let mut text = format!(
        "not linearizable: {} of {} operations explained, the store at revision {}; none of these could come next:",
        longest.len(),
        timed.len(),
        state.revision()
    );
    for &index in stuck.iter().take(8) {
        let op = &timed[index];
        let (_, expected) = state.apply(&op.op.request);
        text.push_str(&format!(
            "\n  [{:.3}s..{}] {:?} got {:?}, etcd would answer {:?} here",
            op.invoked as f64 / 1e9,
            op.returned
                .map_or("unknown".to_owned(), |r| format!("{:.3}s", r as f64 / 1e9)),
            op.op.request,
            op.op.response,
            match op.op.response {
                Response::Unknown => Response::Unknown,
                _ => expected,
            }
        ));
    }
    text
}
