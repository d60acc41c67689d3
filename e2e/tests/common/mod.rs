//! What the operator tests share: waiting for a KVCluster to settle, with the pods and their logs
//! in the failure message.

use std::time::Duration;

use cairn_e2e::testkit::{TestNamespace, poll_until};
use cairn_operator::crd::{KVCluster, KVClusterStatus};
use kube::Api;

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
