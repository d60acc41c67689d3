//! Runtime scaling through the operator in the sandbox (controller in this process, members as
//! real `cairn` pods), the way users scale: `kubectl scale kvc`. A Static cluster with auth and
//! client TLS on (`spec.auth`, `spec.tls.client`) goes 3 → 5 → 3 and a DnsSrv one with peer TLS
//! 1 → 3, each with writes running the whole time. No acknowledged write is lost; the member list
//! never changes by more than one member between two looks and never holds two learners; in the
//! end the member list is the pods and the claims of removed members are gone. With auth and
//! client TLS on, the operator observes and scales with its own certificate and user; etcdctl
//! works with the client certificate the operator issued into the Secret the spec names, and
//! with root's password from the Secret the operator made; a client without a certificate and
//! an anonymous one are refused by every member, old and new.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_e2e::testkit::{TestNamespace, TestSandbox, succeed, wait_for};
use cairn_operator::crd::KVCluster;
use common::{
    IssuedCertificate, OperatorSandbox, client_options, keys_on, logged_in, member_endpoint, wait_settled,
    with_operator,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use etcd_client::{Client, ConnectOptions};
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
            scale_under_writes(
                &env,
                "grow-shrink",
                "Static",
                3,
                &[5, 3],
                Secured::AuthAndClientTls
            ),
            scale_under_writes(&env, "one-to-three", "DnsSrv", 1, &[3], Secured::PeerTls),
        )
    })
    .await;
}

const SETTLE: Duration = Duration::from_secs(240);

/// What a scaled cluster runs with besides the defaults.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Secured {
    /// `spec.auth.enabled` and `spec.tls.client.enabled`, with a client certificate for root.
    AuthAndClientTls,
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
    let auth = secured == Secured::AuthAndClientTls;
    let peer_tls = secured == Secured::PeerTls;
    let client_tls = if auth {
        "client: {enabled: true, certificates: [{secretName: kv-admin, user: root}, \
         {secretName: kv-guest, user: guest}]}"
    } else {
        "client: {enabled: false}"
    };
    ns.apply(&format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv}}\n\
         spec: {{replicas: {initial}, bootstrap: {{mode: {mode}}}, storage: {{size: 64Mi}}, \
         auth: {{enabled: {auth}}}, tls: {{peer: {{enabled: {peer_tls}}}, {client_tls}}}}}\n"
    ))
    .await;
    wait_settled(&ns, initial, Duration::from_secs(120)).await;
    let mut reach = Reach {
        namespace: ns.name.clone(),
        certificate: None,
        guest: None,
        root: None,
    };
    if auth {
        let certificate = IssuedCertificate::read(&ns, "kv-admin").await;
        let files = certificate_files(&certificate);
        reach.certificate = Some(certificate);
        reach.guest = Some(IssuedCertificate::read(&ns, "kv-guest").await);
        reach.root = Some(auth_turned_on(&ns, &reach, files.path()).await);
    }
    // kv-0 stays through every step, so writer and watcher talk to it.
    let first = reach.endpoint(&ns, "kv-0").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        first.clone(),
        reach.options("kv-0", true),
        stop.clone(),
    ));
    let watcher = tokio::spawn(watch_membership(
        first.clone(),
        reach.options("kv-0", false),
        stop.clone(),
    ));
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
            auth.then_some(true),
            "status after scaling to {size}"
        );
        assert_eq!(status.peer_tls, Some(peer_tls), "status after scaling to {size}");
        let scheme = if peer_tls { "https://" } else { "http://" };
        assert!(
            status.members.iter().all(|m| m.peer_url.starts_with(scheme)),
            "peer URLs after scaling to {size}: {:?}",
            status.members
        );
        // The operator saw every member through its own certificate: all are healthy, one leads,
        // and each advertises the scheme it serves.
        let scheme = if auth { "https://" } else { "http://" };
        assert!(
            status.members.iter().all(|m| m.healthy
                && m.version.is_some()
                && m.client_url.as_deref().is_some_and(|url| url.starts_with(scheme))),
            "members after scaling to {size}: {:?}",
            status.members
        );
        assert_eq!(
            status.members.iter().filter(|m| m.is_leader).count(),
            1,
            "one leader after scaling to {size}"
        );
    }
    if peer_tls {
        // Members found each other through `_cairn-server-ssl._tcp`, and hold the cluster CA's
        // certificate; a plaintext client gets nothing from the peer port.
        let secrets: Api<Secret> = ns.api();
        let peer = secrets.get("kv-peer-tls").await.expect("the peer TLS Secret");
        let keys: Vec<&String> = peer.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        let peer_port = first.replace(":2379", ":2380").replace("https://", "http://");
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
        let endpoint = reach.endpoint(&ns, pod).await;
        let missing = wait_for(
            &format!("{pod} to have every acknowledged write"),
            Duration::from_secs(30),
            || async {
                let keys = keys_on(&endpoint, reach.options(pod, true)).await?;
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

    // Members added after auth was turned on hold it too (it came to them through the log), and
    // every member wants a client certificate.
    if auth {
        for pod in &pod_names {
            let endpoint = reach.endpoint(&ns, pod).await;
            assert_anonymous_refused(&endpoint, reach.anonymous(pod)).await;
            assert_refused_without_certificate(&endpoint, &reach, pod).await;
        }
    }
}

/// How the test reaches members: in plaintext, or over TLS with a client certificate (checking
/// each member's certificate under its host name, as members are dialed by IP); logged in as
/// root when auth is on.
struct Reach {
    namespace: String,
    certificate: Option<IssuedCertificate>,
    /// A certificate for a user that does not exist.
    guest: Option<IssuedCertificate>,
    root: Option<(String, String)>,
}

impl Reach {
    async fn endpoint(&self, ns: &TestNamespace, pod: &str) -> String {
        let plain = member_endpoint(ns, pod).await;
        match self.certificate {
            Some(_) => plain.replacen("http://", "https://", 1),
            None => plain,
        }
    }

    /// Options for `pod`: the client certificate, and root's login when `as_root`.
    fn options(&self, pod: &str, as_root: bool) -> ConnectOptions {
        let options = logged_in(self.root.as_ref().filter(|_| as_root));
        match &self.certificate {
            Some(certificate) => options.with_tls(certificate.tls(&self.namespace, pod, true)),
            None => options,
        }
    }

    /// Options for `pod` with neither a login nor a certificate that names a user.
    fn anonymous(&self, pod: &str) -> ConnectOptions {
        match &self.guest {
            Some(guest) => client_options().with_tls(guest.tls(&self.namespace, pod, true)),
            None => client_options(),
        }
    }
}

/// Writes `certificate` to files etcdctl in a pod can read.
fn certificate_files(certificate: &IssuedCertificate) -> tempfile::TempDir {
    let files = tempfile::tempdir().unwrap();
    // Members run as an unprivileged user, and so does etcdctl in their pods.
    std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in [
        ("ca.crt", &certificate.ca),
        ("tls.crt", &certificate.cert),
        ("tls.key", &certificate.key),
    ] {
        let path = files.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    files
}

/// Over TLS, a client that shows no certificate gets no answer from the member.
async fn assert_refused_without_certificate(endpoint: &str, reach: &Reach, pod: &str) {
    let certificate = reach.certificate.as_ref().expect("a TLS cluster");
    let options = client_options().with_tls(certificate.tls(&reach.namespace, pod, false));
    let answer = match Client::connect([endpoint], Some(options)).await {
        Ok(mut client) => client.get("w/", None).await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(
        answer.is_err(),
        "{endpoint} answered a client without a certificate"
    );
}

/// Waits for the operator to turn auth on, then checks it from a client's side with etcdctl in a
/// member pod, through the client Service over TLS: with the issued certificate (in `files`)
/// and root's password from the Secret the operator made; with the certificate alone (its
/// common name, root, is the user); never without a certificate. A client whose certificate
/// names no user is refused. Returns root's credentials.
async fn auth_turned_on(ns: &TestNamespace, reach: &Reach, files: &Path) -> (String, String) {
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

    let file = |flag: &str, key: &str| format!("--{flag}={}", files.join(key).display());
    let (cacert, cert, key) = (
        file("cacert", "ca.crt"),
        file("cert", "tls.crt"),
        file("key", "tls.key"),
    );
    let etcdctl = |args: &[&str]| {
        let mut command = vec!["etcdctl", "--endpoints=https://kv:2379"];
        command.extend(args);
        ns.exec("kv-0", None, &command)
    };
    let user = format!("--user=root:{password}");
    let put = etcdctl(&[&cacert, &cert, &key, &user, "put", "greeting", "hello"]);
    assert_eq!(
        String::from_utf8_lossy(&put.stdout),
        "OK\n",
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let by_certificate = etcdctl(&[&cacert, &cert, &key, "get", "greeting"]);
    assert_eq!(
        String::from_utf8_lossy(&by_certificate.stdout),
        "greeting\nhello\n",
        "{}",
        String::from_utf8_lossy(&by_certificate.stderr)
    );
    let without_certificate = etcdctl(&[
        "--dial-timeout=3s",
        "--command-timeout=5s",
        &cacert,
        "get",
        "greeting",
    ]);
    assert!(
        !without_certificate.status.success() && without_certificate.stdout.is_empty(),
        "etcdctl without a client certificate: {without_certificate:?}"
    );
    assert_anonymous_refused(&reach.endpoint(ns, "kv-0").await, reach.anonymous("kv-0")).await;
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

/// A put by a client that is no user (its certificate names none) is refused.
async fn assert_anonymous_refused(endpoint: &str, options: ConnectOptions) {
    let mut client = Client::connect([endpoint], Some(options))
        .await
        .expect("connect without credentials");
    let refused = client
        .put("w/anonymous", "x", None)
        .await
        .expect_err("an anonymous put");
    assert!(
        refused.to_string().contains("etcdserver: permission denied"),
        "{endpoint}: {refused}"
    );
}

/// Puts `w/<n>` until told to stop; returns the acknowledged keys and the number of failures.
async fn write_until(
    endpoint: String,
    options: ConnectOptions,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, usize) {
    let mut client = Client::connect([endpoint.as_str()], Some(options))
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
async fn watch_membership(endpoint: String, options: ConnectOptions, stop: Arc<AtomicBool>) -> Vec<Look> {
    let mut client = Client::connect([endpoint.as_str()], Some(options))
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
