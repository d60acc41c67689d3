//! Kubernetes on Cairn: the sandbox's kube-apiserver stores its objects in a Cairn member instead
//! of etcd, and Cairn's own operator runs on it as users run it (helm install, a KVCluster from
//! the examples, scale 3 → 5 → 3). The apiserver's uses of etcd behave as on etcd: paginated
//! lists, conflicts on update, watches from a resource version, CRDs, garbage collection,
//! namespace deletion, and a continue token that compaction has overtaken (410 Gone).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_e2e::controlplane::Store;
use cairn_e2e::sandbox::Sandbox;
use cairn_e2e::testkit::{TestSandbox, succeed, wait_for};
use common::{then_down, wait_settled};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt};

const API_PORT: u16 = 19543;
const STORE_PORT: u16 = 26890;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn config_map(name: &str, data: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "data": {"value": data},
    }))
    .unwrap()
}

/// The store's current revision and a compaction up to it, through etcdctl on the store's port.
fn compact_store() -> i64 {
    let endpoint = format!("--endpoints=127.0.0.1:{STORE_PORT}");
    let status = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([endpoint.as_str(), "endpoint", "status", "-w", "json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    succeed(Command::new("etcdctl").env("ETCDCTL_API", "3").args([
        endpoint.as_str(),
        "compact",
        &revision.to_string(),
    ]));
    revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubernetes_runs_on_cairn_and_cairns_operator_runs_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox {
        store: Store::Cairn,
        ..Sandbox::for_test(dir.path(), API_PORT, STORE_PORT, 25)
    };
    let env = TestSandbox::start(sandbox, Path::new(env!("CARGO_BIN_EXE_sandbox"))).await;
    then_down(&env, async {
        api_semantics(&env).await;
        operator(&env).await;
    })
    .await;
    let log = std::fs::read_to_string(dir.path().join("cairn.log")).unwrap_or_default();
    assert!(log.contains("member started"), "the store was Cairn:\n{log}");
}

async fn operator(env: &TestSandbox) {
    let system = env.namespace("cairn-system").await;
    succeed(
        env.helm()
            .args(["install", "cairn-operator"])
            .arg(root().join("charts/cairn-operator"))
            .args(["--namespace", &system.name, "--wait", "--timeout=3m"]),
    );
    let ns = env.namespace("on-cairn").await;
    succeed(
        env.kubectl()
            .args(["apply", "-n", &ns.name, "-f"])
            .arg(root().join("examples/minimal.yaml")),
    );
    wait_settled(&ns, 3, Duration::from_secs(240)).await;
    for replicas in [5, 3] {
        succeed(env.kubectl().args([
            "scale",
            "kvc/kv",
            "-n",
            &ns.name,
            &format!("--replicas={replicas}"),
        ]));
        wait_settled(&ns, replicas, Duration::from_secs(300)).await;
    }
}

async fn api_semantics(env: &TestSandbox) {
    let ns = env.namespace("semantics").await;
    let maps: Api<ConfigMap> = ns.api();
    for i in 0..25 {
        maps.create(&PostParams::default(), &config_map(&format!("cm-{i:02}"), "v"))
            .await
            .unwrap();
    }

    // A paginated list: pages of 4, each continuing where the last stopped, 25 maps in all.
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(4);
    let mut first_token = None;
    loop {
        let page = maps.list(&params).await.unwrap();
        names.extend(page.items.iter().map(ResourceExt::name_any));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => {
                first_token.get_or_insert(token.clone());
                params = params.continue_token(&token);
            }
            None => break,
        }
    }
    let made: Vec<String> = (0..25).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("cm-"))
            .cloned()
            .collect::<Vec<_>>(),
        made
    );

    // An update with a stale resource version is a conflict.
    let current = maps.get("cm-00").await.unwrap();
    let mut changed = current.clone();
    changed.data = Some(BTreeMap::from([("value".into(), "w".into())]));
    maps.replace("cm-00", &PostParams::default(), &changed)
        .await
        .unwrap();
    let stale = maps
        .replace("cm-00", &PostParams::default(), &changed)
        .await
        .unwrap_err();
    assert!(
        matches!(&stale, kube::Error::Api(e) if e.code == 409),
        "{stale:?}"
    );

    // A watch from a resource version sees what happened after it.
    let version = maps.get("cm-01").await.unwrap().resource_version().unwrap();
    maps.delete("cm-01", &DeleteParams::default()).await.unwrap();
    let mut events = maps
        .watch(&WatchParams::default().timeout(10), &version)
        .await
        .unwrap()
        .boxed();
    let deleted = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(event) = events.try_next().await.unwrap() {
            if let WatchEvent::Deleted(map) = event {
                return map.name_any();
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert_eq!(deleted, "cm-01");

    // Garbage collection: a dependent goes with its owner.
    let owner = maps.get("cm-02").await.unwrap();
    let mut dependent = config_map("dependent", "v");
    dependent.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: owner.name_any(),
            uid: owner.uid().unwrap(),
            ..Default::default()
        },
    ]);
    maps.create(&PostParams::default(), &dependent).await.unwrap();
    maps.delete("cm-02", &DeleteParams::default()).await.unwrap();
    wait_for(
        "the garbage collector to delete the dependent",
        Duration::from_secs(90),
        || async { maps.get_opt("dependent").await.ok()?.is_none().then_some(()) },
    )
    .await;

    // A continue token older than a compaction is refused with 410 Gone, as on etcd.
    let token = first_token.expect("the list had several pages");
    compact_store();
    let expired = maps
        .list(&ListParams::default().limit(4).continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(&expired, kube::Error::Api(e) if e.code == 410),
        "{expired:?}"
    );

    // Deleting the namespace deletes what is in it, then the namespace.
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .delete(&ns.name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the namespace to be deleted",
        Duration::from_secs(120),
        || async { namespaces.get_opt(&ns.name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}
