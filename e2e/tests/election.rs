//! Two operator replicas — the `cairn-operator` binary, run as users run it, with a kubeconfig —
//! against one sandbox. Exactly one holds the leader Lease and reconciles; the other stands by
//! and reconciles nothing. A paused KVCluster is left alone. A leader killed with SIGKILL loses
//! the lease once it expires and the standby carries on (it finishes the scale the paused spec
//! held back); a leader stopped with SIGTERM releases the lease, so a standby takes over without
//! waiting for it to expire. An operator killed in the middle of a scale-up — once right after it
//! added a learner, once after it grew the StatefulSet but before it promoted — finishes the
//! scale-up correctly once restarted: every member once, all voters, the data on the new ones.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use cairn_e2e::testkit::{TestNamespace, TestSandbox, http_get, poll_until, succeed, wait_for};
use cairn_operator::crd::KVCluster;
use common::{OperatorSandbox, client_options, member_endpoint, then_down, wait_settled};
use etcd_client::{Client, GetOptions};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LEASE: &str = "cairn-operator";

/// One `cairn-operator run` process.
struct Replica {
    identity: String,
    metrics: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(env: &TestSandbox, namespace: &str, identity: &str, dir: &Path) -> Replica {
        let binary = Path::new(env!("CARGO_BIN_EXE_sandbox")).with_file_name("cairn-operator");
        assert!(
            binary.exists(),
            "{} is missing (cargo build --workspace)",
            binary.display()
        );
        // A free port of the kernel's choosing, handed to the replica.
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let log = dir.join(format!("{identity}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(binary)
            .env("KUBECONFIG", env.sandbox.kubeconfig())
            .args(["run", "--instance", identity])
            .args(["--metrics-address", &metrics.to_string()])
            .args(["--leader-election-namespace", namespace])
            .args(["--lease-duration-seconds=6", "--renew-deadline-seconds=4"])
            .arg("--retry-period-seconds=1")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start cairn-operator");
        Replica {
            identity: identity.to_owned(),
            metrics,
            log,
            child: Some(child),
        }
    }

    /// One value from the replica's /metrics; None while it does not answer.
    fn metric(&self, name: &str) -> Option<u64> {
        let text = http_get(self.metrics, "/metrics")?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    fn leads(&self) -> Option<bool> {
        self.metric("cairn_operator_leader").map(|v| v == 1)
    }

    fn reconciles(&self) -> u64 {
        self.metric("cairn_operator_reconciles_total")
            .unwrap_or_else(|| panic!("{} does not serve metrics\n{}", self.identity, self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as Kubernetes stops a pod; the exit status once it has stopped.
    async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running replica");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let exited = poll_until(Duration::from_secs(30), || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await;
        exited.unwrap_or_else(|| {
            let _ = child.kill();
            panic!("{} did not stop after SIGTERM\n{}", self.identity, self.log())
        })
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn holder(ns: &TestNamespace) -> Option<String> {
    let leases: Api<Lease> = ns.api();
    leases.get_opt(LEASE).await.ok()??.spec?.holder_identity
}

async fn wait_leading(ns: &TestNamespace, replica: &Replica, within: Duration) {
    let done = poll_until(within, || async {
        let held = holder(ns).await.as_deref() == Some(replica.identity.as_str());
        (held && replica.leads() == Some(true)).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "{} did not take the lease within {within:?} (holder {:?})\n{}",
        replica.identity,
        holder(ns).await,
        replica.log()
    );
}

async fn wait_standing_by(replica: &Replica) {
    wait_for(
        &format!("{} to stand by", replica.identity),
        Duration::from_secs(30),
        || async { (replica.leads() == Some(false) && replica.log().contains("standing by")).then_some(()) },
    )
    .await;
}

async fn statefulset_replicas(ns: &TestNamespace) -> Option<i32> {
    let sets: Api<StatefulSet> = ns.api();
    sets.get("kv").await.unwrap().spec?.replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_leads_and_a_standby_takes_over() {
    let OperatorSandbox { env, dir, .. } = OperatorSandbox::start(18743, 26090, 21).await;
    then_down(&env, scenario(&env, dir.path())).await;
}

async fn scenario(env: &TestSandbox, dir: &Path) {
    let ns = env.namespace("election").await;
    let mut a = Replica::start(env, &ns.name, "op-a", dir);
    wait_leading(&ns, &a, Duration::from_secs(30)).await;
    let mut b = Replica::start(env, &ns.name, "op-b", dir);
    wait_standing_by(&b).await;

    ns.apply(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\n\
         spec: {replicas: 1, storage: {size: 64Mi}}\n",
    )
    .await;
    wait_settled(&ns, 1, Duration::from_secs(120)).await;
    assert!(a.reconciles() > 0, "the leader reconciled");
    assert_eq!(b.reconciles(), 0, "the standby reconciles nothing\n{}", b.log());
    assert_eq!(b.leads(), Some(false));

    // Paused: the spec asks for three members, and nothing is changed.
    succeed(
        env.kubectl()
            .args(["patch", "kvc/kv", "-n", &ns.name, "--type=merge"])
            .args(["-p", r#"{"spec": {"paused": true, "replicas": 3}}"#]),
    );
    let clusters: Api<KVCluster> = ns.api();
    wait_for("the KVCluster to be Paused", Duration::from_secs(30), || async {
        let cluster = clusters.get("kv").await.ok()?;
        let status = cluster.status?;
        let current = status.observed_generation == cluster.metadata.generation;
        (current && status.phase.as_deref() == Some("Paused")).then_some(status)
    })
    .await;
    assert_eq!(
        statefulset_replicas(&ns).await,
        Some(1),
        "paused: the StatefulSet stays"
    );

    // The leader dies without a word: the standby waits out the lease, then leads.
    a.kill();
    wait_leading(&ns, &b, Duration::from_secs(30)).await;
    // Still paused under the new leader.
    let paused = clusters.get("kv").await.unwrap();
    assert_eq!(paused.status.unwrap().phase.as_deref(), Some("Paused"));
    assert_eq!(statefulset_replicas(&ns).await, Some(1));

    // Unpaused, the new leader does what the spec asks.
    succeed(
        env.kubectl()
            .args(["patch", "kvc/kv", "-n", &ns.name, "--type=merge"])
            .args(["-p", r#"{"spec": {"paused": false}}"#]),
    );
    wait_settled(&ns, 3, Duration::from_secs(180)).await;
    assert_eq!(statefulset_replicas(&ns).await, Some(3));

    // The killed replica comes back under its name and stands by.
    let mut a = Replica::start(env, &ns.name, "op-a", dir);
    wait_standing_by(&a).await;
    assert_eq!(holder(&ns).await.as_deref(), Some("op-b"));

    // A leader asked to stop releases the lease on its way out.
    let stopped = b.terminate().await;
    assert!(stopped.success(), "{stopped}\n{}", b.log());
    assert!(b.log().contains("released the leader lease"), "{}", b.log());
    assert_ne!(holder(&ns).await.as_deref(), Some("op-b"));
    wait_leading(&ns, &a, Duration::from_secs(30)).await;
    wait_settled(&ns, 3, Duration::from_secs(60)).await;
    a.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_killed_in_the_middle_of_a_scale_up_completes_it_once_restarted() {
    let OperatorSandbox { env, dir, .. } = OperatorSandbox::start(19343, 26690, 24).await;
    then_down(&env, killed_mid_scale_up(&env, dir.path())).await;
}

/// A client of member pod `pod`, by its IP.
async fn member_client(ns: &TestNamespace, pod: &str) -> Client {
    Client::connect([member_endpoint(ns, pod).await], Some(client_options()))
        .await
        .expect("connect to a member")
}

/// The cluster's own member list as (peer host, is learner), as `kv-0` sees it.
async fn members(client: &mut Client) -> Option<Vec<(String, bool)>> {
    let list = client.member_list().await.ok()?;
    let mut members: Vec<(String, bool)> = list
        .members()
        .iter()
        .map(|m| {
            let peer = m.peer_urls().first().cloned().unwrap_or_default();
            let host = peer
                .split_once("://")
                .map_or(peer.as_str(), |(_, rest)| rest)
                .split('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            (host, m.is_learner())
        })
        .collect();
    members.sort();
    Some(members)
}

async fn killed_mid_scale_up(env: &TestSandbox, dir: &Path) {
    let ns = env.namespace("resume").await;
    let mut operator = Replica::start(env, &ns.name, "op", dir);
    wait_leading(&ns, &operator, Duration::from_secs(30)).await;
    ns.apply(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\n\
         spec: {replicas: 3, storage: {size: 64Mi}}\n",
    )
    .await;
    wait_settled(&ns, 3, Duration::from_secs(120)).await;
    let mut kv0 = member_client(&ns, "kv-0").await;
    for n in 0..20 {
        kv0.put(format!("before/{n:02}"), "value", None).await.unwrap();
    }

    succeed(
        env.kubectl()
            .args(["scale", "kvc/kv", "-n", &ns.name, "--replicas=5"]),
    );
    // First death: kv-3 has just been added as a learner.
    let added = wait_for(
        "kv-3 to be added as a learner",
        Duration::from_secs(120),
        || async {
            let members = members(&mut kv0.clone()).await?;
            members.contains(&("kv-3".to_owned(), true)).then_some(members)
        },
    )
    .await;
    operator.kill();
    let set_then = statefulset_replicas(&ns).await;
    eprintln!("killed with members {added:?}, StatefulSet at {set_then:?}");
    let mut operator = Replica::start(env, &ns.name, "op", dir);
    wait_leading(&ns, &operator, Duration::from_secs(30)).await;

    // Second death: kv-4 is a learner whose pod the StatefulSet already runs, not yet promoted.
    let grown = wait_for(
        "kv-4 to be a learner of a grown StatefulSet",
        Duration::from_secs(180),
        || async {
            let members = members(&mut kv0.clone()).await?;
            let learner = members.contains(&("kv-4".to_owned(), true));
            (learner && statefulset_replicas(&ns).await == Some(5)).then_some(members)
        },
    )
    .await;
    operator.kill();
    eprintln!("killed with members {grown:?}, StatefulSet at 5");
    let mut operator = Replica::start(env, &ns.name, "op", dir);
    wait_leading(&ns, &operator, Duration::from_secs(30)).await;

    // Finished as if never interrupted: each member once, all voters, the StatefulSet at five.
    let status = wait_settled(&ns, 5, Duration::from_secs(240)).await;
    let mut names: Vec<&str> = status.members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"], "{status:?}");
    let expected: Vec<(String, bool)> = (0..5).map(|i| (format!("kv-{i}"), false)).collect();
    assert_eq!(
        members(&mut kv0).await,
        Some(expected),
        "the cluster's own member list"
    );
    assert_eq!(statefulset_replicas(&ns).await, Some(5));
    for pod in ["kv-3", "kv-4"] {
        let client = member_client(&ns, pod).await;
        wait_for(
            &format!("{pod} to hold the earlier writes"),
            Duration::from_secs(30),
            || async {
                let got = client
                    .clone()
                    .get(
                        "before/",
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_count_only()
                                .with_serializable(),
                        ),
                    )
                    .await
                    .ok()?;
                (got.count() == 20).then_some(())
            },
        )
        .await;
    }
    operator.kill();
}
