//! What the operator tests share: a sandbox with the CRDs and an operator context, running
//! scenarios with the operator and taking everything down after, waiting for a KVCluster to
//! settle with the pods and their logs in the failure message, reaching members by pod IP
//! (over TLS with a client certificate the operator issued), and writing and looking at a
//! cluster while it changes.

// Every test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_e2e::sandbox::Sandbox;
use cairn_e2e::testkit::{TestNamespace, TestSandbox, is_ready, poll_until, wait_for};
use cairn_operator::controller::{Context, run};
use cairn_operator::crd::{KVCluster, KVClusterStatus};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

/// A sandbox of the test's own (apiserver port, etcd client port and the next one, pod octet),
/// with the KVCluster CRD installed; the operator's context is ready to run.
pub struct OperatorSandbox {
    pub env: TestSandbox,
    pub context: Context,
    /// Where the sandbox keeps its state; removed when dropped.
    pub dir: tempfile::TempDir,
}

impl OperatorSandbox {
    pub async fn start(apiserver: u16, etcd_client: u16, pod_octet: u8) -> OperatorSandbox {
        let binary = Path::new(env!("CARGO_BIN_EXE_sandbox"));
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox {
            crds: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")),
            ..Sandbox::for_test(dir.path(), apiserver, etcd_client, pod_octet)
        };
        let env = TestSandbox::start(sandbox, binary).await;
        let context = Context::new(env.client.clone(), "e2e")
            .await
            .expect("the operator's context");
        OperatorSandbox { env, context, dir }
    }
}

/// Runs `scenarios` while the operator reconciles; then stops the operator and the sandbox, and
/// only then passes on a failure, so that nothing outlives the test.
pub async fn with_operator<F: Future>(env: &TestSandbox, context: Context, scenarios: F) -> F::Output {
    then_down(env, async {
        let _operator = Aborting(tokio::spawn(run(context)));
        scenarios.await
    })
    .await
}

/// Runs `scenarios`, then stops the sandbox, and only then passes on a failure.
pub async fn then_down<F: Future>(env: &TestSandbox, scenarios: F) -> F::Output {
    let outcome = AssertUnwindSafe(scenarios).catch_unwind().await;
    env.down();
    match outcome {
        Ok(output) => output,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A task that stops when this is dropped, also when a scenario panics.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until KVCluster `kv` is Available and Running with exactly `members` healthy voters, a
/// leader and no change under way.
pub async fn wait_settled(ns: &TestNamespace, members: usize, within: Duration) -> KVClusterStatus {
    let clusters: Api<KVCluster> = ns.api();
    let settled = poll_until(within, || async {
        let status = clusters.get("kv").await.ok()?.status?;
        let available = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True");
        let voters = status
            .members
            .iter()
            .filter(|m| m.healthy && !m.is_learner)
            .count();
        let done = available
            && voters == members
            && status.members.len() == members
            && status.leader.is_some()
            && status.membership_change.is_none()
            && status.phase.as_deref() == Some("Running");
        done.then_some(status)
    })
    .await;
    match settled {
        Some(status) => status,
        None => {
            let last = clusters.get("kv").await.ok().and_then(|c| c.status);
            panic!(
                "timed out after {within:?} waiting for KVCluster {}/kv to settle at {members} \
                 healthy members; status {last:#?}\n{}",
                ns.name,
                ns.report().await
            )
        }
    }
}

/// The client endpoint of a member pod, by its IP.
pub async fn member_endpoint(ns: &TestNamespace, pod: &str) -> String {
    let ready = ns.wait_pod_ready(pod, Duration::from_secs(60)).await;
    let ip = ready
        .status
        .and_then(|s| s.pod_ip)
        .expect("a ready pod has an IP");
    format!("http://{ip}:2379")
}

/// Client options for talking to members: short timeouts, so a look at a member that is coming
/// or going fails fast and is tried again.
pub fn client_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
}

/// `client_options`, logged in as `user` (name, password) when there is one.
pub fn logged_in(user: Option<&(String, String)>) -> ConnectOptions {
    match user {
        Some((name, password)) => client_options().with_user(name.clone(), password.clone()),
        None => client_options(),
    }
}

/// The keys under `w/` (what the writers of the operator tests put) as one member has them: its
/// own copy, a serializable read (with `options`: a login or a certificate where needed).
pub async fn keys_on(endpoint: &str, options: ConnectOptions) -> Option<BTreeSet<String>> {
    let mut client = Client::connect([endpoint], Some(options)).await.ok()?;
    let options = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_serializable();
    let got = client.get("w/", Some(options)).await.ok()?;
    Some(
        got.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect(),
    )
}

/// A client certificate and the CA, as the operator issued them into a Secret.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

impl IssuedCertificate {
    /// The certificate in the Secret `name`, once the operator has issued it, with exactly the
    /// keys of a TLS Secret.
    pub async fn read(ns: &TestNamespace, name: &str) -> IssuedCertificate {
        let secrets: Api<Secret> = ns.api();
        let secret = cairn_e2e::testkit::wait_for(
            &format!("the operator to issue the {name} certificate"),
            Duration::from_secs(60),
            || async { secrets.get_opt(name).await.ok()? },
        )
        .await;
        let data = secret.data.expect("the Secret has data");
        let keys: Vec<&String> = data.keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"], "the keys of {name}");
        let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
        IssuedCertificate {
            cert: text("tls.crt"),
            key: text("tls.key"),
            ca: text("ca.crt"),
        }
    }

    /// TLS to the member `pod` of the cluster `kv` in `namespace`, dialed by IP and checked under
    /// its host name; presenting this certificate when `present`.
    pub fn tls(&self, namespace: &str, pod: &str, present: bool) -> TlsOptions {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name(format!("{pod}.kv-peer.{namespace}.svc.cluster.local"));
        match present {
            true => tls.identity(Identity::from_pem(&self.cert, &self.key)),
            false => tls,
        }
    }
}

/// A client writing through the Ready members and a looker watching the pods and the leader,
/// while a cluster changes.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<(Vec<String>, usize)>,
    looker: tokio::task::JoinHandle<Vec<Look>>,
}

/// What the traffic saw: the acknowledged keys, the failed writes, the looks.
pub struct Seen {
    pub acknowledged: Vec<String>,
    pub failed: usize,
    pub looks: Vec<Look>,
}

impl Traffic {
    /// Starts writing and looking at the pods of `members`, and lets both get going.
    pub async fn start(pods: &Api<Pod>, members: &'static [&'static str]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_until(pods.clone(), stop.clone()));
        let looker = tokio::spawn(look_until(pods.clone(), members, stop.clone()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        Traffic { stop, writer, looker }
    }

    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let (acknowledged, failed) = self.writer.await.expect("the writer");
        let looks = self.looker.await.expect("the looker");
        Seen {
            acknowledged,
            failed,
            looks,
        }
    }
}

impl Seen {
    /// Never more than one member away (not Ready) at once.
    pub fn at_most_one_away(&self) {
        for (i, look) in self.looks.iter().enumerate() {
            let away = look.pods.values().filter(|uid| uid.is_none()).count();
            assert!(away <= 1, "{away} members away at once in look {i}");
        }
    }

    /// Every acknowledged write is on each of `members`, read through `endpoint_of(member)`
    /// with `options`.
    pub async fn on_every_member(
        &self,
        ns: &TestNamespace,
        members: &[&str],
        options: impl Fn(&str) -> ConnectOptions,
        secure: bool,
    ) {
        assert!(self.acknowledged.len() > 50, "the writer wrote throughout");
        for member in members {
            let mut endpoint = member_endpoint(ns, member).await;
            if secure {
                endpoint = endpoint.replacen("http://", "https://", 1);
            }
            let options = options(member);
            wait_for(
                &format!("{member} to have every acknowledged write"),
                Duration::from_secs(30),
                || async {
                    let keys = keys_on(&endpoint, options.clone()).await?;
                    self.acknowledged.iter().all(|k| keys.contains(k)).then_some(())
                },
            )
            .await;
        }
    }
}

/// What one look at the cluster saw: each member pod's UID (None while it is away or not
/// Ready) and the leader's name.
pub struct Look {
    pub pods: BTreeMap<String, Option<String>>,
    pub leader: Option<String>,
}

/// The client endpoints of the member pods that are Ready now.
pub async fn ready_endpoints(pods: &Api<Pod>) -> Vec<String> {
    let listed = pods.list(&ListParams::default()).await.map(|l| l.items);
    listed
        .unwrap_or_default()
        .iter()
        .filter(|pod| is_ready(pod) && pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| Some(format!("http://{}:2379", pod.status.as_ref()?.pod_ip.as_ref()?)))
        .collect()
}

/// Puts `w/<n>` until told to stop, through the members that are Ready (found again after a
/// failure, as a client behind a Service would); returns the acknowledged keys and the number of
/// failures.
pub async fn write_until(pods: Api<Pod>, stop: Arc<AtomicBool>) -> (Vec<String>, usize) {
    let (mut acknowledged, mut failed) = (Vec::new(), 0);
    let mut client: Option<Client> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(writer) = client.as_mut() else {
            let endpoints = ready_endpoints(&pods).await;
            client = Client::connect(endpoints, Some(client_options())).await.ok();
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let key = format!("w/{n:06}");
        n += 1;
        match writer.put(key.as_str(), "value", None).await {
            Ok(_) => acknowledged.push(key),
            Err(_) => {
                failed += 1;
                client = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (acknowledged, failed)
}

/// Looks at the pods of `members` and asks a Ready one for the leader, every 100 ms until told
/// to stop.
pub async fn look_until(
    pods: Api<Pod>,
    members: &'static [&'static str],
    stop: Arc<AtomicBool>,
) -> Vec<Look> {
    let mut looks = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(listed) = pods.list(&ListParams::default()).await else {
            continue;
        };
        let mut seen: BTreeMap<String, Option<String>> =
            members.iter().map(|m| (m.to_string(), None)).collect();
        for pod in &listed.items {
            if is_ready(pod) && pod.metadata.deletion_timestamp.is_none() {
                seen.insert(pod.name_any(), pod.uid());
            }
        }
        looks.push(Look {
            pods: seen,
            leader: leader(&ready_endpoints(&pods).await).await,
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    looks
}

/// The leader's name, as the first member that answers tells it.
pub async fn leader(endpoints: &[String]) -> Option<String> {
    for endpoint in endpoints {
        let Ok(mut client) = Client::connect([endpoint], Some(client_options())).await else {
            continue;
        };
        let Ok(status) = client.status().await else {
            continue;
        };
        let leader = status.leader();
        if leader == 0 {
            continue;
        }
        let members = client.member_list().await.ok()?;
        return members
            .members()
            .iter()
            .find(|m| m.id() == leader)
            .map(|m| m.name().to_owned());
    }
    None
}

/// The operator's Events with one of `reasons` in `ns` (reason, note, second), in the order
/// they happened.
pub async fn operator_events(ns: &TestNamespace, reasons: &[&str]) -> Vec<(String, String, i64)> {
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let mut listed: Vec<_> = events
        .list(&ListParams::default())
        .await
        .expect("list the events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| reasons.contains(&r)))
        .collect();
    listed.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    listed
        .into_iter()
        .map(|e| {
            let at = e.event_time.as_ref().map_or(0, |t| t.0.as_second());
            (e.reason.unwrap_or_default(), e.note.unwrap_or_default(), at)
        })
        .collect()
}
