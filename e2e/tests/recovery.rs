//! Failures of members under the operator in the sandbox (controller in this process, members as
//! real `cairn` pods). The leader's pod is deleted: status says so, and the pod comes back with its
//! data and rejoins under the same member ID. A member's data directory is wiped: the member
//! refuses to start (it never forms a cluster of its own), and the operator replaces it with a new
//! member of the same name that catches up with everything written before. A member's log is
//! corrupted: it crash-loops, and after `spec.recovery.memberTimeoutSeconds` the operator replaces
//! it with an empty member on a new claim. A member's volume is on a node that is gone: its pod
//! stays Pending, and it is replaced the same way. A member of another cluster answering at a
//! member's address makes the cluster Degraded, by name.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_e2e::testkit::{TestNamespace, TestSandbox, wait_for};
use cairn_operator::crd::{KVCluster, KVClusterStatus};
use common::{OperatorSandbox, wait_settled, with_operator};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_come_back_after_pod_deletion_and_data_loss() {
    let OperatorSandbox {
        env,
        context,
        dir: _dir,
    } = OperatorSandbox::start(18543, 25890, 20).await;
    with_operator(&env, context, async {
        tokio::join!(
            leader_pod_deleted(&env),
            data_lost(&env),
            log_corrupted(&env),
            node_lost(&env),
            another_cluster_answers(&env)
        )
    })
    .await;
}

async fn three_members(env: &TestSandbox, prefix: &str) -> (TestNamespace, KVClusterStatus) {
    let ns = env.namespace(prefix).await;
    ns.apply(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\n\
         spec: {replicas: 3, storage: {size: 64Mi}, recovery: {memberTimeoutSeconds: 10}}\n",
    )
    .await;
    let status = wait_settled(&ns, 3, Duration::from_secs(120)).await;
    (ns, status)
}

/// etcdctl run in `pod` against `host` (the client Service `kv`, or one member by name).
fn etcdctl(ns: &TestNamespace, pod: &str, host: &str, args: &[&str]) -> String {
    let host = match host {
        "kv" => "kv".to_owned(),
        member => format!("{member}.kv-peer"),
    };
    let endpoint = format!("--endpoints=http://{host}:2379");
    let mut command = vec!["etcdctl", endpoint.as_str()];
    command.extend_from_slice(args);
    let out = ns.exec(pod, None, &command);
    text(&out.stdout)
}

/// The message with `words` that the member in `pod` refused to start with (its pod's
/// termination message, now or last time).
async fn refusal(ns: &TestNamespace, pod: &str, words: &str) -> String {
    let pods: Api<Pod> = ns.api();
    let what = format!("{pod} to refuse to start with {words:?}");
    wait_for(&what, Duration::from_secs(60), || async {
        let pod = pods.get(pod).await.ok()?;
        pod.status?
            .container_statuses?
            .into_iter()
            .flat_map(|c| [c.state, c.last_state])
            .flatten()
            .filter_map(|s| s.terminated?.message)
            .find(|m| m.contains(words))
    })
    .await
}

/// Twenty keys written through the client Service before a failure.
fn write_before(ns: &TestNamespace) {
    for i in 0..20 {
        let key = format!("before-{i}");
        assert_eq!(etcdctl(ns, "kv-0", "kv", &["put", &key, "v"]), "OK\n");
    }
}

/// `replaced` is a new member of the same cluster (the others are as they were), and it has
/// every key written before.
async fn replaced_with_every_key(
    ns: &TestNamespace,
    before: &KVClusterStatus,
    after: &KVClusterStatus,
    replaced: &str,
) {
    let (old, new) = (ids(before), ids(after));
    for member in ["kv-0", "kv-1", "kv-2"] {
        if member == replaced {
            assert_ne!(old[member], new[member], "{member} is a new member");
        } else {
            assert_eq!(old[member], new[member], "{member} stays");
        }
    }
    assert_eq!(after.cluster_id, before.cluster_id, "still the one cluster");
    ns.wait_pod_ready(replaced, Duration::from_secs(60)).await;
    let what = format!("{replaced} to catch up");
    wait_for(&what, Duration::from_secs(30), || async {
        let out = etcdctl(
            ns,
            replaced,
            replaced,
            &["get", "before-", "--prefix", "--keys-only", "--consistency=s"],
        );
        (out.lines().filter(|l| l.starts_with("before-")).count() == 20).then_some(())
    })
    .await;
}

/// Degraded or Progressing, or Available lost.
fn shows_trouble(status: &KVClusterStatus) -> bool {
    status.conditions.iter().any(|c| {
        let troubled = match c.type_.as_str() {
            "Degraded" | "Progressing" => "True",
            "Available" => "False",
            _ => return false,
        };
        c.status == troubled
    })
}

fn ids(status: &KVClusterStatus) -> BTreeMap<String, String> {
    status
        .members
        .iter()
        .map(|m| (m.name.clone(), m.id.clone()))
        .collect()
}

async fn leader_pod_deleted(env: &TestSandbox) {
    let (ns, before) = three_members(env, "leader").await;
    let leader = before.leader.clone().expect("a leader");
    let other = ["kv-0", "kv-1", "kv-2"]
        .into_iter()
        .find(|m| *m != leader)
        .unwrap();
    assert_eq!(etcdctl(&ns, other, "kv", &["put", "kept", "yes"]), "OK\n");

    // The operator notices (Degraded or Progressing, or Available lost) while the pod is away.
    // The member is back within seconds, so status is watched, not polled: every write is seen.
    let clusters: Api<KVCluster> = ns.api();
    let config = watcher::Config::default().fields("metadata.name=kv");
    let mut changes = std::pin::pin!(watcher(clusters, config).applied_objects());
    changes
        .next()
        .await
        .expect("a first sight of kv")
        .expect("watch kv");
    let watch_status = async {
        let noticed = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(Ok(cluster)) = changes.next().await {
                if cluster.status.as_ref().is_some_and(shows_trouble) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(noticed, Ok(true), "status never showed the member away");
    };
    let ((), ()) = tokio::join!(watch_status, ns.delete_pod(&leader));

    // Back with its own data, under the same ID, and no longer leading alone.
    let after = wait_settled(&ns, 3, Duration::from_secs(120)).await;
    assert_eq!(ids(&after), ids(&before), "the same members, the same IDs");
    assert_eq!(after.cluster_id, before.cluster_id);
    ns.wait_pod_ready(&leader, Duration::from_secs(60)).await;
    let value = etcdctl(
        &ns,
        &leader,
        &leader,
        &["get", "kept", "--print-value-only", "--consistency=s"],
    );
    assert_eq!(value, "yes\n", "the returned member serves its own copy");
}

async fn data_lost(env: &TestSandbox) {
    let (ns, before) = three_members(env, "lost").await;
    write_before(&ns);

    // kv-2's disk is wiped and its pod deleted: it comes back with an empty data dir.
    let wiped = ns.exec("kv-2", None, &["rm", "-rf", "/var/lib/cairn/data"]);
    assert!(wiped.status.success(), "{}", text(&wiped.stderr));
    let wiped_at = std::time::Instant::now();
    ns.delete_pod("kv-2").await;

    // It refuses to start (its pod says why) instead of starting a cluster of its own...
    let message = refusal(&ns, "kv-2", "its data was lost").await;
    assert!(message.contains("Refusing to rejoin with no log"), "{message}");

    // ...and the operator replaces it: same name, new member ID, same cluster, all data.
    let after = wait_settled(&ns, 3, Duration::from_secs(180)).await;
    eprintln!(
        "a member whose data was lost was replaced {:.1}s after its restart",
        wiped_at.elapsed().as_secs_f64()
    );
    replaced_with_every_key(&ns, &before, &after, "kv-2").await;
}

async fn log_corrupted(env: &TestSandbox) {
    let (ns, before) = three_members(env, "corrupt").await;
    write_before(&ns);

    // Bytes inside kv-1's first log record are overwritten (later records stay valid, so this is
    // corruption, not a torn tail), and its pod restarted: it refuses to start, over and over.
    let corrupt = "for segment in /var/lib/cairn/data/member/wal/*.wal; do \
                   printf 'CORRUPTCORRUPTCORRUPT' | dd of=\"$segment\" bs=1 seek=24 conv=notrunc 2>/dev/null; \
                   done";
    let done = ns.exec("kv-1", None, &["sh", "-c", corrupt]);
    assert!(done.status.success(), "{}", text(&done.stderr));
    let broken = std::time::Instant::now();
    ns.delete_pod("kv-1").await;
    let message = refusal(&ns, "kv-1", "write-ahead log").await;
    assert!(
        message.contains("corrupt") || message.contains("cannot be decoded"),
        "{message}"
    );

    // After the timeout it is replaced: a new member under its name, on a new claim, with all data.
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = ns.api();
    let old_claim = claims.get("data-kv-1").await.unwrap().metadata.uid;
    let after = wait_settled(&ns, 3, Duration::from_secs(180)).await;
    eprintln!(
        "a member with a corrupt log was replaced {:.1}s after its restart (timeout 10s)",
        broken.elapsed().as_secs_f64()
    );
    let new_claim = claims.get("data-kv-1").await.unwrap().metadata.uid;
    assert_ne!(old_claim, new_claim, "kv-1 runs on a new claim");
    replaced_with_every_key(&ns, &before, &after, "kv-1").await;
}

async fn another_cluster_answers(env: &TestSandbox) {
    let (ns, before) = three_members(env, "forged").await;
    // Paused, the operator observes and reports but changes nothing: what answers at kv-2 stays.
    let clusters: Api<KVCluster> = ns.api();
    let pause = serde_json::json!({"spec": {"paused": true}});
    clusters
        .patch(
            "kv",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&pause),
        )
        .await
        .unwrap();
    wait_for("the KVCluster to be paused", Duration::from_secs(30), || async {
        let status = clusters.get("kv").await.ok()?.status?;
        (status.phase.as_deref() == Some("Paused")).then_some(())
    })
    .await;

    // kv-2 starts over, empty, as a cluster of its own (same token, so only the ID tells).
    let peer_url = before
        .members
        .iter()
        .find(|m| m.name == "kv-2")
        .map(|m| m.peer_url.clone())
        .expect("kv-2 listed");
    let forged = serde_json::json!({"data": {
        "kv-2.yaml": format!("initial-cluster: kv-2={peer_url}\ninitial-cluster-state: new\n")
    }});
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = ns.api();
    maps.patch(
        "kv-bootstrap",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&forged),
    )
    .await
    .unwrap();
    let wiped = ns.exec("kv-2", None, &["rm", "-rf", "/var/lib/cairn/data"]);
    assert!(wiped.status.success(), "{}", text(&wiped.stderr));
    let started = std::time::Instant::now();
    ns.delete_pod("kv-2").await;

    let degraded = wait_for(
        "Degraded with ClusterIDMismatch",
        Duration::from_secs(90),
        || async {
            let status = clusters.get("kv").await.ok()?.status?;
            let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded")?.clone();
            (degraded.reason == "ClusterIDMismatch").then_some((degraded, status))
        },
    )
    .await;
    eprintln!(
        "a member of another cluster at kv-2 was reported {:.1}s after its restart",
        started.elapsed().as_secs_f64()
    );
    let (condition, status) = degraded;
    assert_eq!(condition.status, "True");
    let kv2 = status
        .members
        .iter()
        .find(|m| m.name == "kv-2")
        .expect("kv-2 listed");
    let stranger = kv2.foreign_cluster_id.clone().expect("kv-2's foreign cluster ID");
    assert_ne!(Some(&stranger), before.cluster_id.as_ref());
    assert_eq!(
        condition.message,
        format!("kv-2 reports another cluster ({stranger})")
    );
    assert!(!kv2.healthy);
    assert_eq!(status.cluster_id, before.cluster_id, "the latched ID stays");
    let available = status.conditions.iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!(available.status, "True", "kv-0 and kv-1 keep the quorum");
}

async fn node_lost(env: &TestSandbox) {
    let (ns, before) = three_members(env, "nodelost").await;
    write_before(&ns);

    // kv-2's volume turns out to live on a node that is gone; its pod cannot be scheduled.
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = ns.api();
    let pinned = serde_json::json!({
        "metadata": {"annotations": {"volume.kubernetes.io/selected-node": "node-that-is-gone"}}
    });
    let old_claim = claims
        .patch(
            "data-kv-2",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&pinned),
        )
        .await
        .unwrap()
        .metadata
        .uid;
    let lost = std::time::Instant::now();
    ns.delete_pod("kv-2").await;
    let pods: Api<Pod> = ns.api();
    wait_for("kv-2 to stay Pending", Duration::from_secs(30), || async {
        let pod = pods.get("kv-2").await.ok()?;
        let unbound = pod.spec?.node_name.is_none();
        (unbound && pod.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await;

    // Status sees it (a settled status from before the loss must not pass for the end)...
    let clusters: Api<KVCluster> = ns.api();
    wait_for("status to show kv-2 gone", Duration::from_secs(30), || async {
        shows_trouble(&clusters.get("kv").await.ok()?.status?).then_some(())
    })
    .await;
    // ...and after the timeout it is replaced on a new claim the scheduler can place.
    let after = wait_settled(&ns, 3, Duration::from_secs(180)).await;
    eprintln!(
        "a member whose node was lost was replaced {:.1}s after its pod went Pending (timeout 10s)",
        lost.elapsed().as_secs_f64()
    );
    let new_claim = claims.get("data-kv-2").await.unwrap().metadata.uid;
    assert_ne!(old_claim, new_claim, "kv-2 runs on a new claim");
    replaced_with_every_key(&ns, &before, &after, "kv-2").await;
}
