//! What the operator tests share: a sandbox with the CRDs and an operator context, running
//! scenarios with the operator and taking everything down after, waiting for a KVCluster to
//! settle with the pods and their logs in the failure message, and reaching members by pod IP
//! (over TLS with a client certificate the operator issued).

// Every test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use cairn_e2e::sandbox::Sandbox;
use cairn_e2e::testkit::{TestNamespace, TestSandbox, poll_until};
use cairn_operator::controller::{Context, run};
use cairn_operator::crd::{KVCluster, KVClusterStatus};
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use futures::FutureExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

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
