//! The operator in the sandbox (its controller in this process, members as real `cairn` pods):
//! a Static and a DnsSrv KVCluster, both named `kv` in two namespaces, become Available with a
//! leader and three healthy members; `kubectl get kvc` shows it; data written through the client
//! Service is readable on every member; the two clusters have distinct tokens and cluster IDs, and
//! a member with the one's token pointed at the other's members is refused by them. With
//! NetworkPolicies on (as the chart's `networkPolicy.enabled`), each cluster gets its policy.
//! An invalid spec gets a condition naming the field, and nothing is created for it. A cluster
//! on certificates the user keeps (made here as cert-manager would, from a CA of the test's own)
//! says in status which Secret is missing or does not fit and why, and runs on them once they
//! fit: peers and clients over TLS, a client with a certificate from that CA let in. The
//! certificates the operator issues are renewed before they expire, and members serve the new
//! ones without a restart while a client connected before keeps working.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_e2e::testkit::{TestNamespace, TestSandbox, http_get, poll_until, wait_for};
use cairn_operator::build::network_policy::ClientNamespaces;
use cairn_operator::crd::{KVCluster, KVClusterStatus};
use common::{
    IssuedCertificate, OperatorSandbox, client_options, member_endpoint, wait_settled, with_operator,
};
use etcd_client::{Certificate, Client, Identity, TlsOptions};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kvclusters_become_available_with_their_own_identity() {
    let sandbox_binary = Path::new(env!("CARGO_BIN_EXE_sandbox"));
    let cairn = sandbox_binary.with_file_name("cairn");
    assert!(
        cairn.exists(),
        "{} is missing: the cairn image runs it (cargo build --workspace)",
        cairn.display()
    );
    let OperatorSandbox {
        env,
        context,
        dir: _dir,
    } = OperatorSandbox::start(18143, 25490, 18).await;
    // As the chart's networkPolicy.enabled asks.
    let context = context.with_network_policies(ClientNamespaces {
        operator: "cairn-system".into(),
        listed: vec!["monitoring".into()],
    });
    let metrics = context.metrics.clone();
    let listener = cairn_operator::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let metrics_address = listener.local_addr().unwrap();
    let endpoints = tokio::spawn(cairn_operator::http::serve(listener, metrics));
    let scenarios = async {
        // Each scenario on the heap: together, their states outgrow a test thread's stack.
        let ((_, statics), (srv_ns, srv), (), (), ()) = tokio::join!(
            Box::pin(available_cluster(&env, "static", "Static", "")),
            // Plaintext peers, so that the stranger below gets as far as the token check.
            Box::pin(available_cluster(
                &env,
                "srv",
                "DnsSrv",
                ", tls: {peer: {enabled: false}}"
            )),
            Box::pin(invalid_spec_changes_nothing(&env)),
            Box::pin(supplied_certificates_are_checked_then_used(&env)),
            Box::pin(issued_certificates_are_renewed_before_they_expire(&env)),
        );
        assert_ne!(
            statics.cluster_token, srv.cluster_token,
            "tokens are unique per resource"
        );
        assert_ne!(statics.cluster_id, srv.cluster_id, "two clusters, two IDs");
        let token = statics.cluster_token.as_deref().expect("a latched token");
        a_member_of_one_is_refused_by_the_other(&cairn, token, &srv_ns, &srv).await;

        // What the operator did is in its metrics, and it says it is alive.
        assert_eq!(http_get(metrics_address, "/healthz").as_deref(), Some("ok\n"));
        let text = http_get(metrics_address, "/metrics").expect("the operator's metrics");
        let reconciles: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("cairn_operator_reconciles_total "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_default();
        assert!(reconciles >= 3, "{text}");
        assert!(
            text.contains("cairn_operator_reconcile_duration_seconds_count"),
            "{text}"
        );
    };
    with_operator(&env, context, scenarios).await;
    endpoints.abort();
}

/// The body of a plain HTTP GET.
/// The image tag the clusters ask for; the sandbox runs the workspace's cairn whatever the tag.
const SPEC_VERSION: &str = "9.9.9-any-tag";

/// A 3-member cluster of `mode` (and `more` spec), Available; with peer TLS unless `more` turns
/// it off, as the default is.
async fn available_cluster(
    env: &TestSandbox,
    prefix: &str,
    mode: &str,
    more: &str,
) -> (TestNamespace, KVClusterStatus) {
    let ns = env.namespace(prefix).await;
    ns.apply(&format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv}}\n\
         spec: {{replicas: 3, version: {SPEC_VERSION}, bootstrap: {{mode: {mode}}}, storage: {{size: 64Mi}}{more}}}\n"
    ))
    .await;
    let status = wait_settled(&ns, 3, Duration::from_secs(120)).await;
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let peer_tls = !more.contains("enabled: false");
    assert_eq!(status.peer_tls, Some(peer_tls));
    let scheme = if peer_tls { "https://" } else { "http://" };
    assert!(
        status.members.iter().all(|m| m.peer_url.starts_with(scheme)),
        "{:?}",
        status.members
    );
    assert!(status.members.iter().all(|m| m.name.starts_with("kv-")));
    // The version is what the members report running (the sandbox runs the workspace's cairn for
    // any tag of the cairn image), not what the spec asked for.
    let running = env!("CARGO_PKG_VERSION");
    assert_eq!(status.version.as_deref(), Some(running));
    assert!(
        status
            .members
            .iter()
            .all(|m| m.version.as_deref() == Some(running)),
        "{:?}",
        status.members
    );

    let listed = env
        .kubectl()
        .args(["get", "kvc", "-n", &ns.name, "--no-headers"])
        .output()
        .unwrap();
    let columns: Vec<String> = text(&listed.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        columns[..5],
        ["kv", "3", "3", status.leader.as_deref().unwrap(), "True"],
        "{columns:?}"
    );

    // The cluster is fenced by its NetworkPolicy, as the API server took it.
    let policy = env
        .kubectl()
        .args(["get", "networkpolicy", "kv", "-n", &ns.name, "-o", "json"])
        .output()
        .unwrap();
    let policy: serde_json::Value =
        serde_json::from_slice(&policy.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&policy.stderr)));
    let spec = &policy["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "kv"
    );
    assert_eq!(spec["ingress"][0]["ports"][0]["port"], 2380, "{spec}");
    assert_eq!(
        spec["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "kv"
    );
    assert_eq!(spec["ingress"][1]["ports"][0]["port"], 2379, "{spec}");
    let client_namespaces: Vec<&str> = spec["ingress"][1]["from"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|peer| peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str())
        .collect();
    assert_eq!(client_namespaces, ["cairn-system", "monitoring"]);

    // Written through the client Service, read back from every member's own copy.
    let put = ns.exec(
        "kv-0",
        None,
        &["etcdctl", "--endpoints=http://kv:2379", "put", "greeting", mode],
    );
    assert_eq!(text(&put.stdout), "OK\n", "{}", text(&put.stderr));
    for i in 0..3 {
        read_on_member(&ns, i, mode).await;
    }
    (ns, status)
}

/// A member started with the first cluster's token but the second cluster's peers (as a member
/// whose old data meets a re-created cluster's pods would be) gets nowhere: the second cluster's
/// members refuse its traffic, and their member list stays as it was.
async fn a_member_of_one_is_refused_by_the_other(
    cairn: &Path,
    token: &str,
    ns: &TestNamespace,
    status: &KVClusterStatus,
) {
    let pods: Api<Pod> = ns.api();
    let mut peers = Vec::new();
    for member in ["kv-1", "kv-2"] {
        let pod = pods.get(member).await.unwrap();
        let ip = pod.status.and_then(|s| s.pod_ip).expect("a member pod has an IP");
        peers.push(format!("{member}=http://{ip}:2380"));
    }
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (client, peer) = (
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stranger.log");
    let mut stranger = std::process::Command::new(cairn)
        .args(["--name=kv-0", &format!("--initial-cluster-token={token}")])
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .args([
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
        ])
        .args([
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
        ])
        .arg(format!("--initial-cluster=kv-0={peer},{}", peers.join(",")))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the stranger");
    let refused = poll_until(Duration::from_secs(20), || async {
        let said = ns.logs("kv-1", None, false) + &ns.logs("kv-2", None, false);
        said.contains("cluster ID mismatch").then_some(())
    })
    .await;
    let _ = stranger.kill();
    let _ = stranger.wait();
    let stranger_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        refused.is_some(),
        "the other cluster's members did not refuse the stranger\n{stranger_log}\n{}",
        ns.report().await
    );
    assert!(
        !stranger_log.contains("leader changed leader=Some"),
        "the stranger found a leader:\n{stranger_log}"
    );
    let clusters: Api<KVCluster> = ns.api();
    let now = clusters.get("kv").await.unwrap().status.unwrap();
    let ids = |s: &KVClusterStatus| s.members.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&now), ids(status), "the member list is unchanged");
}

async fn read_on_member(ns: &TestNamespace, member: usize, expected: &str) {
    let endpoint = format!("--endpoints=http://kv-{member}.kv-peer:2379");
    wait_for(
        &format!("kv-{member} to have the write"),
        Duration::from_secs(10),
        || async {
            let got = ns.exec(
                "kv-1",
                None,
                &[
                    "etcdctl",
                    &endpoint,
                    "get",
                    "greeting",
                    "--print-value-only",
                    "--consistency=s",
                ],
            );
            (text(&got.stdout).trim() == expected).then_some(())
        },
    )
    .await;
}

async fn invalid_spec_changes_nothing(env: &TestSandbox) {
    let ns = env.namespace("invalid").await;
    // The schema takes any quantity-shaped value; the operator's validation refuses this one.
    ns.apply("apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\nspec: {storage: {size: 1.5.3Gi}}\n")
        .await;
    let clusters: Api<KVCluster> = ns.api();
    let condition = wait_for("the InvalidSpec condition", Duration::from_secs(30), || async {
        let status = clusters.get("kv").await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.reason == "InvalidSpec")
    })
    .await;
    assert_eq!(condition.status, "True");
    assert!(
        condition.message.contains("spec.storage.size \"1.5.3Gi\""),
        "{}",
        condition.message
    );
    let sets: Api<StatefulSet> = ns.api();
    let configs: Api<ConfigMap> = ns.api();
    assert!(
        sets.get_opt("kv").await.unwrap().is_none(),
        "a StatefulSet for an invalid spec"
    );
    assert!(configs.get_opt("kv-bootstrap").await.unwrap().is_none());
}

/// A CA of the user's, as cert-manager's CA issuer keeps one.
struct UserCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl UserCa {
    fn new() -> UserCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "example platform CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.clone().self_signed(&key).unwrap().pem();
        UserCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `common_name` and `hosts` with the extended key `uses`, as a TLS
    /// Secret's data (`tls.crt`, `tls.key`, `ca.crt`).
    fn issue(
        &self,
        common_name: &str,
        hosts: Vec<String>,
        uses: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(hosts).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = uses;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn secret(&self, name: &str, (cert, key): (String, String)) -> Secret {
        let data = [("tls.crt", cert), ("tls.key", key), ("ca.crt", self.pem.clone())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.into_bytes())))
            .collect();
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

async fn degraded_saying(clusters: &Api<KVCluster>, words: &str) -> String {
    wait_for(
        &format!("status to say {words:?}"),
        Duration::from_secs(30),
        || async {
            let status = clusters.get("kv").await.ok()?.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Degraded" && c.status == "True" && c.message.contains(words))
                .map(|c| c.message)
        },
    )
    .await
}

async fn supplied_certificates_are_checked_then_used(env: &TestSandbox) {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let ns = env.namespace("supplied").await;
    let domain = format!("kv-peer.{}.svc.cluster.local", ns.name);
    ns.apply(&format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv}}\n\
         spec: {{replicas: 3, version: {SPEC_VERSION}, storage: {{size: 64Mi}}, tls: {{\
         peer: {{secretName: kv-peer-certs}}, client: {{enabled: true, secretName: kv-server-certs, \
         operatorSecretName: kv-operator-certs}}}}}}\n"
    ))
    .await;
    let clusters: Api<KVCluster> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let made = PostParams::default();
    degraded_saying(
        &clusters,
        "the Secret \"kv-peer-certs\" that spec.tls names does not exist (yet)",
    )
    .await;
    let sets: Api<StatefulSet> = ns.api();
    assert!(
        sets.get_opt("kv").await.unwrap().is_none(),
        "members start only once their certificates are there"
    );

    // Each member's name, one by one, as a cert-manager Certificate lists dnsNames.
    let ca = UserCa::new();
    let members: Vec<String> = (0..3).map(|i| format!("kv-{i}.{domain}")).collect();
    // A peer certificate without client authentication: peers dial each other with it.
    let server_only = ca.issue("kv-peer", members.clone(), vec![ServerAuth]);
    secrets
        .create(&made, &ca.secret("kv-peer-certs", server_only))
        .await
        .unwrap();
    let words = degraded_saying(&clusters, "does not pass as a client").await;
    assert!(words.contains("\"kv-peer-certs\""), "{words}");

    secrets
        .delete("kv-peer-certs", &Default::default())
        .await
        .unwrap();
    let peer = ca.issue("kv-peer", members.clone(), vec![ServerAuth, ClientAuth]);
    secrets
        .create(&made, &ca.secret("kv-peer-certs", peer))
        .await
        .unwrap();
    let mut server_names = members.clone();
    server_names.push(format!("kv.{}.svc", ns.name));
    let server = ca.issue("kv-server", server_names, vec![ServerAuth]);
    secrets
        .create(&made, &ca.secret("kv-server-certs", server))
        .await
        .unwrap();
    let operator = ca.issue("cairn-operator", vec![], vec![ClientAuth]);
    secrets
        .create(&made, &ca.secret("kv-operator-certs", operator))
        .await
        .unwrap();

    let status = wait_settled(&ns, 3, Duration::from_secs(120)).await;
    assert!(
        status.members.iter().all(|m| m.healthy
            && m.peer_url.starts_with("https://")
            && m.client_url.as_deref().is_some_and(|u| u.starts_with("https://"))),
        "{:?}",
        status.members
    );
    // A client of the user's, with a certificate from the same CA.
    let (cert, key) = ca.issue("app", vec![], vec![ClientAuth]);
    let endpoint = member_endpoint(&ns, "kv-1")
        .await
        .replacen("http://", "https://", 1);
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .identity(Identity::from_pem(&cert, &key))
        .domain_name(format!("kv-1.{domain}"));
    let mut client = Client::connect([endpoint.as_str()], Some(client_options().with_tls(tls)))
        .await
        .expect("connect with the user's certificate");
    client
        .put("greeting", "hello", None)
        .await
        .expect("a put over TLS");
    let got = client.get("greeting", None).await.expect("a get over TLS");
    assert_eq!(got.kvs()[0].value(), b"hello");
    // The operator issued nothing of its own.
    for own in ["kv-ca", "kv-peer-tls", "kv-server-tls", "kv-operator-tls"] {
        assert!(secrets.get_opt(own).await.unwrap().is_none(), "{own} was made");
    }
}

/// The certificate in `secret`'s `tls.crt`, if it is there.
async fn certificate_in(secrets: &Api<Secret>, secret: &str) -> Option<Vec<u8>> {
    let found = secrets.get_opt(secret).await.ok()??;
    Some(found.data?.get("tls.crt")?.0.clone())
}

async fn issued_certificates_are_renewed_before_they_expire(env: &TestSandbox) {
    let ns = env.namespace("renewal").await;
    // Valid for 75 s from a minute before issue: renewed 30 s after it, expired 75 s after it.
    ns.apply(&format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv}}\n\
         spec: {{replicas: 3, version: {SPEC_VERSION}, storage: {{size: 64Mi}}, tls: {{\
         certificateLifetime: 75s, client: {{enabled: true, \
         certificates: [{{secretName: kv-admin, user: root}}]}}}}}}\n"
    ))
    .await;
    wait_settled(&ns, 3, Duration::from_secs(120)).await;
    // Every certificate of the first issue ends before this moment.
    let expired_by = std::time::Instant::now() + Duration::from_secs(80);
    let secrets: Api<Secret> = ns.api();
    let issued = ["kv-peer-tls", "kv-server-tls", "kv-operator-tls", "kv-admin"];
    let mut first = Vec::new();
    for secret in issued {
        first.push(certificate_in(&secrets, secret).await.expect(secret));
    }
    let pods: Api<Pod> = ns.api();
    let uids =
        |listed: Vec<Pod>| -> Vec<Option<String>> { listed.iter().map(|p| p.metadata.uid.clone()).collect() };
    let members_before = uids(pods.list(&Default::default()).await.unwrap().items);

    let admin = IssuedCertificate::read(&ns, "kv-admin").await;
    let endpoint = member_endpoint(&ns, "kv-0")
        .await
        .replacen("http://", "https://", 1);
    let options = client_options().with_tls(admin.tls(&ns.name, "kv-0", true));
    let mut connected_before = Client::connect([endpoint.as_str()], Some(options))
        .await
        .expect("connect with the first certificate");
    connected_before.put("before", "1", None).await.expect("a put");
    // Renewal goes on while the operator is asked to leave the cluster alone.
    let clusters: Api<KVCluster> = ns.api();
    let pause = |paused: bool| serde_json::json!({"spec": {"paused": paused}});
    clusters
        .patch("kv", &PatchParams::default(), &Patch::Merge(&pause(true)))
        .await
        .unwrap();

    wait_for(
        "every issued certificate to be renewed, the cluster paused",
        Duration::from_secs(75),
        || async {
            for (secret, first) in issued.iter().zip(&first) {
                if certificate_in(&secrets, secret).await.as_ref() == Some(first) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    tokio::time::sleep_until(expired_by.into()).await;

    // Past the first certificates' end, members serve renewed ones: a new client checking them
    // gets in, with the renewed client certificate, on every member.
    let renewed = IssuedCertificate::read(&ns, "kv-admin").await;
    for member in ["kv-0", "kv-1", "kv-2"] {
        let endpoint = member_endpoint(&ns, member)
            .await
            .replacen("http://", "https://", 1);
        let options = client_options().with_tls(renewed.tls(&ns.name, member, true));
        let mut client = Client::connect([endpoint.as_str()], Some(options))
            .await
            .unwrap_or_else(|e| panic!("{member} after renewal: {e}"));
        let got = client
            .get("before", None)
            .await
            .unwrap_or_else(|e| panic!("{member}: {e}"));
        assert_eq!(got.kvs().len(), 1, "{member}");
    }
    connected_before
        .put("after", "1", None)
        .await
        .expect("the client connected before renewal keeps working");
    // The operator still sees every member through its renewed certificate, and no member was
    // restarted for it.
    clusters
        .patch("kv", &PatchParams::default(), &Patch::Merge(&pause(false)))
        .await
        .unwrap();
    let status = wait_settled(&ns, 3, Duration::from_secs(30)).await;
    assert!(status.members.iter().all(|m| m.healthy), "{:?}", status.members);
    assert_eq!(
        uids(pods.list(&Default::default()).await.unwrap().items),
        members_before,
        "members were restarted"
    );
}
