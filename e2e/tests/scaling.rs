//! Runtime scaling through the operator in the sandbox (controller in this process, members as
//! real `cairn` pods), the way users scale: `kubectl scale kvc`. A Static cluster with auth on
//! (`spec.auth`) goes 3 → 5 → 3 and a DnsSrv one 1 → 3, each with writes running the whole time.
//! No acknowledged write is lost; the member list never changes by more than one member between
//! two looks and never holds two learners; in the end the member list is the pods and the claims
//! of removed members are gone. With auth on, the operator scales as its own user, etcdctl
//! works with root's password from the Secret the operator made, and an anonymous client is
//! refused by every member, old and new.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_e2e::testkit::{TestNamespace, TestSandbox, succeed, wait_for};
use cairn_operator::crd::KVCluster;
use common::{
    OperatorSandbox, client_options, keys_on, logged_in, member_endpoint, wait_settled, with_operator,
};
use etcd_client::Client;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clusters_grow_and_shrink_one_member_at_a_time_under_writes() {
    let OperatorSandbox {
        env,
        context,
        dir: _dir,
    } = OperatorSandbox::start(18343, 25690, 19).await;
    with_operator(&env, context, async {
        tokio::join!(
            scale_under_writes(&env, "grow-shrink", "Static", 3, &[5, 3], Secured::Auth),
            scale_under_writes(&env, "one-to-three", "DnsSrv", 1, &[3], Secured::PeerTls),
        )
    })
    .await;
}

const SETTLE: Duration = Duration::from_secs(240);

/// What a scaled cluster runs with besides the defaults.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Secured {
    /// `spec.auth.enabled`.
    Auth,
    /// `spec.tls.peer.enabled`.
    PeerTls,
}

async fn scale_under_writes(
    env: &TestSandbox,
    prefix: &str,
    mode: &str,
    initial: usize,
    steps: &[usize],
    secured: Secured,
) {
    let ns = env.namespace(prefix).await;
    let (auth, peer_tls) = (secured == Secured::Auth, secured == Secured::PeerTls);
    ns.apply(&format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv}}\n\
         spec: {{replicas: {initial}, bootstrap: {{mode: {mode}}}, storage: {{size: 64Mi}}, \
         auth: {{enabled: {auth}}}, tls: {{peer: {{enabled: {peer_tls}}}}}}}\n"
    ))
    .await;
    wait_settled(&ns, initial, Duration::from_secs(120)).await;
    // kv-0 stays through every step, so writer and watcher talk to it.
    let first = member_endpoint(&ns, "kv-0").await;
    let root = if auth {
        Some(auth_turned_on(&ns, &first).await)
    } else {
        None
    };

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(first.clone(), root.clone(), stop.clone()));
    let watcher = tokio::spawn(watch_membership(first.clone(), stop.clone()));
    for &size in steps {
        succeed(
            env.kubectl()
                .args(["scale", "kvc/kv", "-n", &ns.name, &format!("--replicas={size}")]),
        );
        let status = wait_settled(&ns, size, SETTLE).await;
        let expected: BTreeSet<String> = (0..size).map(|i| format!("kv-{i}")).collect();
        let names: BTreeSet<String> = status.members.iter().map(|m| m.name.clone()).collect();
        assert_eq!(names, expected, "members after scaling to {size}");
        assert_eq!(
            status.auth_enabled,
            root.as_ref().map(|_| true),
            "status after scaling to {size}"
        );
        assert_eq!(status.peer_tls, Some(peer_tls), "status after scaling to {size}");
        let scheme = if peer_tls { "https://" } else { "http://" };
        assert!(
            status.members.iter().all(|m| m.peer_url.starts_with(scheme)),
            "peer URLs after scaling to {size}: {:?}",
            status.members
        );
    }
    if peer_tls {
        // Members found each other through `_cairn-server-ssl._tcp`, and hold the cluster CA's
        // certificate; a plaintext client gets nothing from the peer port.
        let secrets: Api<Secret> = ns.api();
        let peer = secrets.get("kv-peer-tls").await.expect("the peer TLS Secret");
        let keys: Vec<&String> = peer.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        let peer_port = first.replace(":2379", ":2380");
        let plaintext = plaintext_get(&peer_port).await;
        assert!(
            plaintext.is_none(),
            "the peer port answered plaintext: {plaintext:?}"
        );
    }
    // Keep writing a little after the last change, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, failed) = writer.await.unwrap();
    let history = watcher.await.unwrap();
    let last = *steps.last().unwrap();
    eprintln!(
        "{prefix}: {} writes acknowledged, {failed} failed, {} looks at the member list",
        acknowledged.len(),
        history.len()
    );
    assert!(
        acknowledged.len() >= 20,
        "writes must run while scaling: {} acknowledged, {failed} failed",
        acknowledged.len()
    );

    // Never two changes at once: consecutive looks differ by at most one member, at most one learner.
    assert!(
        history.len() >= 20,
        "too few looks at the member list: {}",
        history.len()
    );
    for pair in history.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let changed = before.members.symmetric_difference(&after.members).count();
        assert!(
            changed <= 1,
            "two membership changes at once: {before:?} → {after:?}"
        );
    }
    assert!(
        history.iter().all(|look| look.learners <= 1),
        "two learners at once: {history:?}"
    );
    let sizes: BTreeSet<usize> = history.iter().map(|look| look.members.len()).collect();
    assert!(
        steps.iter().all(|s| sizes.contains(s)),
        "the watcher saw sizes {sizes:?}"
    );

    // Every acknowledged write is on every member that remains.
    let pods: Api<Pod> = ns.api();
    let pod_names: BTreeSet<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=kv"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .collect();
    let expected: BTreeSet<String> = (0..last).map(|i| format!("kv-{i}")).collect();
    assert_eq!(pod_names, expected, "the pods are the members");
    for pod in &pod_names {
        let endpoint = member_endpoint(&ns, pod).await;
        let missing = wait_for(
            &format!("{pod} to have every acknowledged write"),
            Duration::from_secs(30),
            || async {
                let keys = keys_on(&endpoint, root.as_ref()).await?;
                let missing: Vec<&String> = acknowledged.iter().filter(|k| !keys.contains(*k)).collect();
                Some(missing.len()).filter(|n| *n == 0)
            },
        )
        .await;
        assert_eq!(missing, 0);
    }

    // Claims of removed members are gone: a later member of that ordinal starts empty.
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claim_names = wait_for(
        "the claims of removed members to go",
        Duration::from_secs(60),
        || async {
            let names: BTreeSet<String> = claims
                .list(&ListParams::default().labels("app.kubernetes.io/instance=kv"))
                .await
                .ok()?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            (names.len() == last).then_some(names)
        },
    )
    .await;
    let expected: BTreeSet<String> = (0..last).map(|i| format!("data-kv-{i}")).collect();
    assert_eq!(claim_names, expected);

    // Members added after auth was turned on hold it too (it came to them through the log).
    if root.is_some() {
        for pod in &pod_names {
            let endpoint = member_endpoint(&ns, pod).await;
            assert_anonymous_refused(&endpoint).await;
        }
    }
}

/// Waits for the operator to turn auth on, then checks it from a client's side: etcdctl in a
/// member pod, through the client Service, with root's password from the Secret the operator
/// made; and an anonymous client refused with etcd's words. Returns root's credentials.
async fn auth_turned_on(ns: &TestNamespace, endpoint: &str) -> (String, String) {
    let clusters: Api<KVCluster> = ns.api();
    wait_for(
        "the operator to turn auth on",
        Duration::from_secs(60),
        || async {
            let status = clusters.get("kv").await.ok()?.status?;
            (status.auth_enabled == Some(true)).then_some(())
        },
    )
    .await;
    let secrets: Api<Secret> = ns.api();
    let secret = secrets
        .get("kv-root-password")
        .await
        .expect("the root password Secret");
    let password = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
    assert_eq!(password.len(), 32, "a random password");
    // The operator's own credentials are its, not root's.
    let own = secrets
        .get("kv-operator-credentials")
        .await
        .expect("the operator's Secret");
    assert_eq!(own.data.unwrap()["username"].0, b"cairn-operator");

    let user = format!("--user=root:{password}");
    let put = ns.exec(
        "kv-0",
        None,
        &[
            "etcdctl",
            "--endpoints=http://kv:2379",
            &user,
            "put",
            "greeting",
            "hello",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&put.stdout),
        "OK\n",
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let anonymous = ns.exec(
        "kv-0",
        None,
        &["etcdctl", "--endpoints=http://kv:2379", "get", "greeting"],
    );
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("etcdserver: user name is empty"),
        "an anonymous etcdctl get: {anonymous:?}"
    );
    assert_anonymous_refused(endpoint).await;
    ("root".to_owned(), password)
}

/// What a server says to a plaintext HTTP/1.1 GET, if it answers one.
async fn plaintext_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.strip_prefix("http://")?.to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
    let request = format!("GET /members HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.starts_with("HTTP/").then_some(text)
}

async fn assert_anonymous_refused(endpoint: &str) {
    let mut client = Client::connect([endpoint], Some(client_options()))
        .await
        .expect("connect without credentials");
    let refused = client
        .put("w/anonymous", "x", None)
        .await
        .expect_err("an anonymous put");
    assert!(
        refused.to_string().contains("etcdserver: user name is empty"),
        "{endpoint}: {refused}"
    );
}

/// Puts `w/<n>` until told to stop; returns the acknowledged keys and the number of failures.
async fn write_until(
    endpoint: String,
    root: Option<(String, String)>,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, usize) {
    let mut client = Client::connect([endpoint.as_str()], Some(logged_in(root.as_ref())))
        .await
        .expect("connect the writer");
    let (mut acknowledged, mut failed) = (Vec::new(), 0);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("w/{n:06}");
        n += 1;
        match client.put(key.as_str(), "value", None).await {
            Ok(_) => acknowledged.push(key),
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (acknowledged, failed)
}

/// One look at the member list.
#[derive(Debug)]
struct Look {
    members: BTreeSet<u64>,
    learners: usize,
}

/// Looks at the member list every 100 ms until told to stop.
async fn watch_membership(endpoint: String, stop: Arc<AtomicBool>) -> Vec<Look> {
    let mut client = Client::connect([endpoint.as_str()], Some(client_options()))
        .await
        .expect("connect the watcher");
    let mut history = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(list) = client.member_list().await {
            history.push(Look {
                members: list.members().iter().map(|m| m.id()).collect(),
                learners: list.members().iter().filter(|m| m.is_learner()).count(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    history
}
