//! The test library's fault mode: a sandbox in a private network namespace, where each pod's
//! connections carry the pod's own address, and the link between two pods is cut (silent drops,
//! both ways) and healed with nftables while every other path keeps working. Outside a private
//! namespace both the sandbox and the fault controls refuse to touch nftables.

use std::net::Ipv4Addr;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cairn_e2e::faults::Links;
use cairn_e2e::netns;
use cairn_e2e::sandbox::Sandbox;
use cairn_e2e::testkit::{TestNamespace, TestSandbox};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

fn podtool() -> &'static str {
    env!("CARGO_BIN_EXE_podtool")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sandbox(dir: &Path, private_network: bool) -> Sandbox {
    Sandbox {
        private_network,
        ..Sandbox::for_test(dir, 17643, 24990, 13)
    }
}

/// `podtool fetch` from inside `pod`: the body, or the error it printed.
fn fetch(ns: &TestNamespace, pod: &str, address: &str, path: &str) -> Result<String, String> {
    let output: Output = ns.exec(
        pod,
        None,
        &[podtool(), "fetch", address, path, "--timeout-ms=1500"],
    );
    if output.status.success() {
        Ok(text(&output.stdout).trim().to_owned())
    } else {
        Err(text(&output.stderr))
    }
}

#[test]
fn links_between_pods_are_cut_and_healed() {
    // The namespace belongs to this thread: enter it before the runtime starts its threads, so
    // they, the sandbox and every pod live in it.
    netns::enter_private().expect("a private network namespace");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let env = TestSandbox::start(
            sandbox(dir.path(), true),
            Path::new(env!("CARGO_BIN_EXE_sandbox")),
        )
        .await;
        let outcome = AssertUnwindSafe(cut_and_heal(&env)).catch_unwind().await;
        env.down();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    });
}

async fn cut_and_heal(env: &TestSandbox) {
    let ns = env.namespace("faults").await;
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: web}
  ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: podtool
        args: [serve, --listen, "$(POD_IP):8080"]
        env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
"#,
    )
    .await;
    ns.wait_statefulset_ready("web", 3, Duration::from_secs(90)).await;
    let pods: Api<Pod> = ns.api();
    let mut ips: Vec<Ipv4Addr> = Vec::new();
    for i in 0..3 {
        let pod = pods.get(&format!("web-{i}")).await.unwrap();
        ips.push(pod.status.unwrap().pod_ip.unwrap().parse().unwrap());
    }
    let web = |i: usize| format!("web-{i}.web:8080");

    // Peers see a pod's connections coming from the pod's own address.
    assert_eq!(fetch(&ns, "web-0", &web(1), "/peer"), Ok(ips[0].to_string()));
    assert_eq!(fetch(&ns, "web-2", &web(1), "/peer"), Ok(ips[2].to_string()));

    let links = Links::new().expect("fault controls in the private namespace");
    links.cut(ips[0], ips[1]).unwrap();
    let cut = fetch(&ns, "web-0", &web(1), "/peer").expect_err("web-0 -> web-1 is cut");
    assert!(cut.contains("no answer within"), "a cut drops silently: {cut}");
    let cut = fetch(&ns, "web-1", &web(0), "/peer").expect_err("web-1 -> web-0 is cut");
    assert!(cut.contains("no answer within"), "{cut}");
    // Every other path still works: the third pod both ways, and cluster DNS (names resolved above).
    assert_eq!(fetch(&ns, "web-0", &web(2), "/peer"), Ok(ips[0].to_string()));
    assert_eq!(fetch(&ns, "web-2", &web(1), "/peer"), Ok(ips[2].to_string()));
    // The kubelet's probes come from the node, not a pod: the cut pods stay Ready.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sets: Api<StatefulSet> = ns.api();
    let set = sets.get("web").await.unwrap();
    assert_eq!(set.status.unwrap().ready_replicas, Some(3));

    links.heal(ips[1], ips[0]).unwrap();
    assert_eq!(fetch(&ns, "web-0", &web(1), "/peer"), Ok(ips[0].to_string()));
    links.cut(ips[1], ips[2]).unwrap();
    assert!(fetch(&ns, "web-2", &web(1), "/peer").is_err());
    links.heal_all().unwrap();
    assert_eq!(fetch(&ns, "web-2", &web(1), "/peer"), Ok(ips[2].to_string()));
    ns.delete().await;
}

#[test]
fn outside_a_private_namespace_nothing_touches_nftables() {
    let refused = Links::new()
        .err()
        .expect("fault controls refuse the host namespace");
    assert!(
        refused
            .to_string()
            .contains("looks like the host's network namespace"),
        "{refused}"
    );
    let dir = tempfile::tempdir().unwrap();
    let error = sandbox(dir.path(), true)
        .up(Path::new(env!("CARGO_BIN_EXE_sandbox")), &|_| {})
        .expect_err("a private-network sandbox refuses the host namespace");
    assert!(error.to_string().contains("unshare -n"), "{error}");
    let rules = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(
        !text(&rules.stdout).contains("cairn_sandbox"),
        "the host's ruleset: {}",
        text(&rules.stdout)
    );
}
