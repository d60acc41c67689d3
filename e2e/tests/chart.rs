//! The Helm chart as users install it, into the sandbox (RBAC on): `helm install` runs the
//! operator as pods of a Deployment that act with the chart's ServiceAccount, so the chart's RBAC
//! is exactly what is tested; the chart installs the CRD; a KVCluster from `examples/` becomes
//! Available and scales down (removing a member, deleting its claim, recording Events) — all with
//! those permissions. `helm upgrade` with a changed value rolls the operator, and the new pods
//! carry on; `helm uninstall` removes the operator and keeps the CRD and the cluster.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_e2e::sandbox::Sandbox;
use cairn_e2e::testkit::{TestNamespace, TestSandbox, is_ready, succeed, wait_for};
use common::{then_down, wait_settled};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

const RELEASE: &str = "cairn-operator";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_installs_upgrades_and_uninstalls_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    // No CRDs: the chart brings its own.
    let sandbox = Sandbox::for_test(dir.path(), 18943, 26290, 22);
    let env = TestSandbox::start(sandbox, Path::new(env!("CARGO_BIN_EXE_sandbox"))).await;
    then_down(&env, scenario(&env)).await;
}

async fn operator_pods(ns: &TestNamespace) -> Vec<Pod> {
    let pods: Api<Pod> = ns.api();
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Waits until the operator Deployment has rolled out `replicas` ready pods of its current
/// template; returns their names.
async fn rolled_out(ns: &TestNamespace, replicas: usize) -> BTreeSet<String> {
    let deployments: Api<Deployment> = ns.api();
    wait_for(
        "the operator Deployment to roll out",
        Duration::from_secs(120),
        || async {
            let deployment = deployments.get(RELEASE).await.ok()?;
            let status = deployment.status?;
            let current = status.observed_generation == deployment.metadata.generation
                && status.updated_replicas == Some(replicas as i32)
                && status.ready_replicas == Some(replicas as i32)
                && status.replicas == Some(replicas as i32);
            let pods = operator_pods(ns).await;
            let ready = pods.len() == replicas && pods.iter().all(is_ready);
            (current && ready).then(|| pods.iter().map(ResourceExt::name_any).collect())
        },
    )
    .await
}

async fn scenario(env: &TestSandbox) {
    let chart = root().join("charts/cairn-operator");
    let system = env.namespace("cairn-system").await;
    succeed(env.helm().args(["install", RELEASE]).arg(&chart).args([
        "--namespace",
        &system.name,
        "--wait",
        "--timeout=3m",
    ]));
    let first = rolled_out(&system, 2).await;
    for pod in operator_pods(&system).await {
        let spec = pod.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some(RELEASE));
    }
    // One of the two leads.
    let leases: Api<Lease> = system.api();
    let holder = wait_for("an operator replica to lead", Duration::from_secs(60), || async {
        leases.get_opt(RELEASE).await.ok()??.spec?.holder_identity
    })
    .await;
    assert!(first.contains(&holder), "{holder} is not one of {first:?}");

    // A cluster from the examples, reconciled with the chart's permissions only.
    let ns = env.namespace("chart").await;
    succeed(
        env.kubectl()
            .args(["apply", "-n", &ns.name, "-f"])
            .arg(root().join("examples/minimal.yaml")),
    );
    wait_settled(&ns, 3, Duration::from_secs(180)).await;
    succeed(
        env.kubectl()
            .args(["scale", "kvc/kv", "-n", &ns.name, "--replicas=2"]),
    );
    wait_settled(&ns, 2, Duration::from_secs(180)).await;
    let claims: Api<PersistentVolumeClaim> = ns.api();
    wait_for(
        "the removed member's claim to go",
        Duration::from_secs(60),
        || async { claims.get_opt("data-kv-2").await.ok()?.is_none().then_some(()) },
    )
    .await;
    let events = succeed(env.kubectl().args([
        "get",
        "events.v1.events.k8s.io",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.items[*].reason}",
    ]));
    assert!(events.contains("MemberRemoved"), "events: {events}");
    for pod in &first {
        let log = system.logs(pod, None, false);
        assert!(
            !log.contains("forbidden"),
            "{pod} was refused something by RBAC:\n{log}"
        );
    }

    // An upgrade with a changed value rolls the operator; the new pods carry on.
    succeed(env.helm().args(["upgrade", RELEASE]).arg(&chart).args([
        "--namespace",
        &system.name,
        "--reuse-values",
        "--set",
        "logFormat=text",
        "--wait",
        "--timeout=3m",
    ]));
    let second = rolled_out(&system, 2).await;
    assert!(first.is_disjoint(&second), "{first:?} → {second:?}");
    for pod in operator_pods(&system).await {
        let args = pod.spec.unwrap().containers[0].args.clone().unwrap_or_default();
        assert!(args.contains(&"--log-format=text".to_owned()), "{args:?}");
    }
    succeed(
        env.kubectl()
            .args(["scale", "kvc/kv", "-n", &ns.name, "--replicas=3"]),
    );
    wait_settled(&ns, 3, Duration::from_secs(180)).await;

    // Uninstalled: the operator goes, the CRD and the cluster stay.
    succeed(env.helm().args([
        "uninstall",
        RELEASE,
        "--namespace",
        &system.name,
        "--wait",
        "--timeout=2m",
    ]));
    let deployments: Api<Deployment> = system.api();
    assert!(deployments.get_opt(RELEASE).await.unwrap().is_none());
    let roles: Api<ClusterRole> = Api::all(env.client.clone());
    assert!(roles.get_opt(RELEASE).await.unwrap().is_none());
    wait_for("the operator pods to go", Duration::from_secs(60), || async {
        operator_pods(&system).await.is_empty().then_some(())
    })
    .await;
    succeed(env.kubectl().args(["get", "crd", "kvclusters.cairn.dev"]));
    let kept = succeed(
        env.kubectl()
            .args(["get", "kvc", "kv", "-n", &ns.name, "-o", "name"]),
    );
    assert_eq!(kept, "kvcluster.cairn.dev/kv\n");
}
