//! Storage edits on running clusters in the sandbox. A larger `storage.size` grows the members'
//! claims in place while the StatefulSet keeps the claim template it was made with (which the
//! API would refuse to change), and status keeps flowing; an edit no claim can follow (another
//! storage class, a smaller size) is refused in the `StorageChange` condition by field name, and
//! nothing else stops. A deleted KVCluster's claims follow its `deletionPolicy`.

mod common;

use std::time::Duration;

use cairn_e2e::testkit::{TestNamespace, TestSandbox, poll_until, wait_for};
use cairn_operator::crd::{KVCluster, KVClusterStatus};
use common::{OperatorSandbox, wait_settled, with_operator};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{Patch, PatchParams};

const MI: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_edits_grow_claims_or_are_refused_by_name() {
    let OperatorSandbox {
        env,
        context,
        dir: _dir,
    } = OperatorSandbox::start(19943, 27090, 27).await;
    with_operator(&env, context, async {
        tokio::join!(
            expandable(&env),
            fixed(&env),
            deleted(&env, true),
            deleted(&env, false)
        )
    })
    .await;
}

/// Claims of a class that can expand grow; edits they cannot follow are refused by name.
async fn expandable(env: &TestSandbox) {
    let ns = env.namespace("storage").await;
    ns.apply(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: expandable}\n\
             provisioner: cairn.dev/sandbox\nallowVolumeExpansion: true\n",
    )
    .await;
    ns.apply(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\n\
             spec: {replicas: 3, storage: {size: 64Mi, storageClassName: expandable}}\n",
    )
    .await;
    wait_settled(&ns, 3, Duration::from_secs(120)).await;

    // Growing: every claim asks for the new size; the template stays; status follows the edit.
    let generation = edit(&ns, serde_json::json!({"size": "128Mi"})).await;
    let status = wait_condition(&ns, generation, "Growing").await;
    assert!(
        available(&status),
        "still Available while claims grow: {status:#?}"
    );
    for ordinal in 0..3 {
        assert_eq!(
            requested(&ns, ordinal).await,
            Some(128 * MI),
            "claim of kv-{ordinal}"
        );
    }
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = ns.api();
    let set = sets.get("kv").await.unwrap();
    let template = &set.spec.unwrap().volume_claim_templates.unwrap()[0];
    let template_size = template.spec.as_ref().unwrap().resources.as_ref().unwrap();
    assert_eq!(
        template_size.requests.as_ref().unwrap()["storage"].0,
        (64 * MI).to_string(),
        "the claim template is what the members were made with"
    );

    // Another storage class: refused by name; nothing fails, members stay as they are.
    let generation = edit(&ns, serde_json::json!({"storageClassName": "other"})).await;
    let status = wait_condition(&ns, generation, "Refused").await;
    let refused = condition(&status, "StorageChange").unwrap();
    assert_eq!(
        refused.message,
        "spec.storage.storageClassName is other, but the members' claims were made with \
             expandable; a claim's storage class cannot change"
    );
    assert!(available(&status));
    assert_ne!(condition(&status, "Degraded").unwrap().reason, "ReconcileFailed");

    // Smaller than the claims are now: refused too.
    let shrink = serde_json::json!({"storageClassName": "expandable", "size": "64Mi"});
    let generation = edit(&ns, shrink).await;
    let status = wait_condition(&ns, generation, "Refused").await;
    assert!(
        condition(&status, "StorageChange")
            .unwrap()
            .message
            .ends_with("claims cannot shrink"),
        "{status:#?}"
    );

    // Back to the size the claims ask for: the refusal goes, and the growth is what is left
    // (the sandbox has no volume resizer to provision it).
    let generation = edit(&ns, serde_json::json!({"size": "128Mi"})).await;
    wait_condition(&ns, generation, "Growing").await;
}

/// Claims without a class that can expand: the API's refusal is in status, in its words.
async fn fixed(env: &TestSandbox) {
    let ns = env.namespace("fixed").await;
    ns.apply(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\n\
         spec: {replicas: 1, storage: {size: 64Mi}}\n",
    )
    .await;
    wait_settled(&ns, 1, Duration::from_secs(120)).await;
    let generation = edit(&ns, serde_json::json!({"size": "128Mi"})).await;
    let status = wait_condition(&ns, generation, "GrowthRefused").await;
    let refused = condition(&status, "StorageChange").unwrap();
    assert!(
        refused
            .message
            .starts_with("data-kv-0 cannot grow to 134217728 bytes: "),
        "{refused:#?}"
    );
    assert!(available(&status));
    assert_eq!(requested(&ns, 0).await, Some(64 * MI));
}

/// A deleted KVCluster's claims follow its deletion policy: deleted with it, or kept; a new
/// KVCluster of the same name over kept claims says so and waits until they are gone.
async fn deleted(env: &TestSandbox, delete_claims: bool) {
    let policy = if delete_claims { "Delete" } else { "Retain" };
    let ns = env.namespace(&policy.to_lowercase()).await;
    let kvcluster = format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv}}\n\
         spec: {{replicas: 1, storage: {{size: 64Mi}}, deletionPolicy: {policy}}}\n"
    );
    ns.apply(&kvcluster).await;
    wait_settled(&ns, 1, Duration::from_secs(120)).await;
    let clusters: Api<KVCluster> = ns.api();
    let held = clusters.get("kv").await.unwrap();
    assert_eq!(
        held.metadata.finalizers,
        Some(vec!["cairn.dev/member-claims".to_owned()])
    );

    clusters.delete("kv", &Default::default()).await.unwrap();
    wait_for("the KVCluster to go", Duration::from_secs(60), || async {
        clusters.get_opt("kv").await.unwrap().is_none().then_some(())
    })
    .await;
    let claims: Api<PersistentVolumeClaim> = ns.api();
    if delete_claims {
        let gone = poll_until(Duration::from_secs(60), || async {
            claims.get_opt("data-kv-0").await.unwrap().is_none().then_some(())
        })
        .await;
        if gone.is_none() {
            let claim = claims.get_opt("data-kv-0").await.unwrap();
            panic!("the claim is still there: {claim:#?}\n{}", ns.report().await);
        }
        return;
    }
    let kept = claims.get("data-kv-0").await.expect("the claim is kept");
    assert!(kept.metadata.deletion_timestamp.is_none());

    // The same name again: the old data is not silently reused, and status says why.
    ns.apply(&kvcluster).await;
    let waiting = poll_until(Duration::from_secs(180), || async {
        let status = clusters.get("kv").await.ok()?.status?;
        let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing")?;
        progressing
            .message
            .contains("of an earlier cluster")
            .then(|| progressing.message.clone())
    })
    .await;
    let Some(waiting) = waiting else {
        panic!(
            "the new KVCluster never named the old claims; status {:#?}\n{}\n{}\n\
             garbage collection said:\n{}",
            clusters.get("kv").await.ok().and_then(|c| c.status),
            leftovers(&ns).await,
            ns.report().await,
            collector_log(env)
        );
    };
    assert_eq!(
        waiting,
        "forming a cluster of 1 members: claims [\"data-kv-0\"] of an earlier cluster of this name \
         exist; delete them to create this one"
    );
    claims.delete("data-kv-0", &Default::default()).await.unwrap();
    wait_settled(&ns, 1, Duration::from_secs(120)).await;
}

/// The controller manager's lines about garbage collection, the last 60.
fn collector_log(env: &TestSandbox) -> String {
    let log =
        std::fs::read_to_string(env.sandbox.dir.join("kube-controller-manager.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("garbage")).collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The namespace's ConfigMaps, StatefulSets, pods and claims with their owners and deletion
/// marks: what a new KVCluster of an old name may be waiting for.
async fn leftovers(ns: &TestNamespace) -> String {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    [
        lines::<ConfigMap>(ns, "ConfigMap").await,
        lines::<StatefulSet>(ns, "StatefulSet").await,
        lines::<Pod>(ns, "Pod").await,
        lines::<PersistentVolumeClaim>(ns, "PersistentVolumeClaim").await,
    ]
    .concat()
}

/// One line per object of a kind in the namespace: name, UID, owners, deletion and finalizers.
async fn lines<K>(ns: &TestNamespace, kind: &str) -> String
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let objects = ns.api::<K>().list(&Default::default()).await;
    let mut out = String::new();
    for object in objects.map(|l| l.items).unwrap_or_default() {
        let meta = object.meta();
        let owners: Vec<String> = meta
            .owner_references
            .iter()
            .flatten()
            .map(|o| format!("{}/{} {}", o.kind, o.name, o.uid))
            .collect();
        out.push_str(&format!(
            "{kind} {} uid {:?} owners {owners:?} deleting {:?} finalizers {:?}\n",
            meta.name.clone().unwrap_or_default(),
            meta.uid,
            meta.deletion_timestamp,
            meta.finalizers
        ));
    }
    out
}

/// Merges `storage` into the KVCluster's `spec.storage`; returns the new generation.
async fn edit(ns: &TestNamespace, storage: serde_json::Value) -> i64 {
    let clusters: Api<KVCluster> = ns.api();
    let patch = serde_json::json!({"spec": {"storage": storage}});
    let edited = clusters
        .patch("kv", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edit the KVCluster");
    edited.metadata.generation.expect("a generation")
}

/// The status once it describes `generation` and its `StorageChange` condition has `reason`.
async fn wait_condition(ns: &TestNamespace, generation: i64, reason: &str) -> KVClusterStatus {
    let clusters: Api<KVCluster> = ns.api();
    let seen = poll_until(Duration::from_secs(60), || async {
        let status = clusters.get("kv").await.ok()?.status?;
        let current = status.observed_generation == Some(generation);
        let matches = condition(&status, "StorageChange").is_some_and(|c| c.reason == reason);
        (current && matches).then_some(status)
    })
    .await;
    match seen {
        Some(status) => status,
        None => {
            let last = clusters.get("kv").await.ok().and_then(|c| c.status);
            panic!("no StorageChange {reason} for generation {generation}; status {last:#?}")
        }
    }
}

fn condition<'a>(status: &'a KVClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn available(status: &KVClusterStatus) -> bool {
    condition(status, "Available").is_some_and(|c| c.status == "True")
}

/// The size claim `data-kv-<ordinal>` asks for.
async fn requested(ns: &TestNamespace, ordinal: i32) -> Option<u64> {
    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claim = claims.get(&format!("data-kv-{ordinal}")).await.ok()?;
    let requests = claim.spec?.resources?.requests?;
    cairn_quantity::parse_bytes(&requests.get("storage")?.0).ok()
}
