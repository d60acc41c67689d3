//! A majority of members lost for good, under the operator in the sandbox: two of three members'
//! data is wiped. With `quorumLoss: Automatic` the cluster recovers by itself after the grace
//! period, from the member that survived, with every key it had; with `Manual` status says what
//! recovery would do and nothing happens until the KVCluster is annotated.

mod common;

use std::time::{Duration, Instant};

use cairn_e2e::testkit::{TestNamespace, TestSandbox, poll_until};
use cairn_operator::crd::{KVCluster, KVClusterStatus};
use common::{OperatorSandbox, wait_settled, with_operator};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_quorum_is_recovered_from_the_survivor() {
    let OperatorSandbox {
        env,
        context,
        dir: _dir,
    } = OperatorSandbox::start(20143, 27290, 28).await;
    with_operator(&env, context, async {
        tokio::join!(recover(&env, "Automatic"), recover(&env, "Manual"))
    })
    .await;
}

fn etcdctl(ns: &TestNamespace, pod: &str, host: &str, args: &[&str]) -> String {
    let endpoint = format!("--endpoints=http://{host}:2379");
    let mut command = vec!["etcdctl", endpoint.as_str()];
    command.extend_from_slice(args);
    String::from_utf8_lossy(&ns.exec(pod, None, &command).stdout).into_owned()
}

fn id_of(status: &KVClusterStatus, member: &str) -> String {
    status
        .members
        .iter()
        .find(|m| m.name == member)
        .map(|m| m.id.clone())
        .unwrap_or_default()
}

async fn recover(env: &TestSandbox, policy: &str) {
    let ns = env.namespace(&policy.to_lowercase()).await;
    ns.apply(&format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv}}\n\
         spec: {{replicas: 3, storage: {{size: 64Mi}}, recovery: {{quorumLoss: {policy}, \
         quorumLossSeconds: 10, memberTimeoutSeconds: 10}}}}\n"
    ))
    .await;
    let before = wait_settled(&ns, 3, Duration::from_secs(120)).await;
    for i in 0..20 {
        let key = format!("before-{i}");
        assert_eq!(etcdctl(&ns, "kv-0", "kv-0.kv-peer", &["put", &key, "v"]), "OK\n");
    }

    // kv-1 and kv-2 lose their data: two of three voters are gone for good.
    for member in ["kv-1", "kv-2"] {
        let wiped = ns.exec(member, None, &["rm", "-rf", "/var/lib/cairn/data"]);
        assert!(wiped.status.success());
        ns.delete_pod(member).await;
    }
    let lost = Instant::now();
    let clusters: Api<KVCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let survivor_pod = pods.get("kv-0").await.unwrap().metadata.uid;

    if policy == "Manual" {
        // Status says what recovery would do, and nothing happens without the annotation.
        let proposal = poll_until(Duration::from_secs(60), || async {
            let change = clusters.get("kv").await.ok()?.status?.membership_change?;
            change.contains("Annotate the KVCluster").then_some(change)
        })
        .await;
        let Some(proposal) = proposal else {
            let status = clusters.get("kv").await.ok().and_then(|c| c.status);
            panic!("no recovery proposal; status {status:#?}\n{}", ns.report().await);
        };
        // 1 of 3, or 1 of 2 when kv-1's data loss was seen (and it was removed) before kv-2's.
        assert!(
            proposal.starts_with("quorum lost: 1 of ")
                && proposal.contains("voters answer. Recovery keeps kv-0 (applied index "),
            "{proposal}"
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(
            pods.get("kv-0").await.unwrap().metadata.uid,
            survivor_pod,
            "kv-0 untouched"
        );
        let approve = serde_json::json!({"metadata": {"annotations": {"cairn.dev/recover-quorum": "true"}}});
        clusters
            .patch("kv", &PatchParams::default(), &Patch::Merge(&approve))
            .await
            .unwrap();
    }

    let after = wait_settled(&ns, 3, Duration::from_secs(240)).await;
    eprintln!(
        "{policy}: three healthy members again {:.1}s after losing two (grace 10s)",
        lost.elapsed().as_secs_f64()
    );
    assert_eq!(id_of(&after, "kv-0"), id_of(&before, "kv-0"), "kv-0 carried on");
    assert_ne!(id_of(&after, "kv-1"), id_of(&before, "kv-1"));
    assert_ne!(id_of(&after, "kv-2"), id_of(&before, "kv-2"));
    assert_eq!(after.cluster_id, before.cluster_id, "the same cluster");
    for member in ["kv-0", "kv-1", "kv-2"] {
        let peer = format!("{member}.kv-peer");
        let count = poll_until(Duration::from_secs(30), || async {
            let out = etcdctl(
                &ns,
                member,
                &peer,
                &["get", "before-", "--prefix", "--keys-only", "--consistency=s"],
            );
            let count = out.lines().filter(|l| l.starts_with("before-")).count();
            (count == 20).then_some(count)
        })
        .await;
        assert_eq!(count, Some(20), "{member} has every key");
    }
    let cluster = clusters.get("kv").await.unwrap();
    assert!(
        !cluster
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("cairn.dev/recover-quorum"),
        "the approval goes with the recovery"
    );
}
