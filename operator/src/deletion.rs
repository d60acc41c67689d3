//! What happens to a cluster's data when its KVCluster is deleted. The operator's finalizer
//! holds the KVCluster until the members' claims have been dealt with by `spec.deletionPolicy`:
//! kept (`Retain`), or deleted with the cluster (`Delete`). Everything else the cluster owns
//! (StatefulSet, Services, ConfigMap) goes by garbage collection once the KVCluster is gone; the
//! auth Secrets the operator made follow the claims.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::build::names::Names;
use crate::crd::{DeletionPolicy, KVCluster};

pub const FINALIZER: &str = "cairn.dev/member-claims";

/// The finalizers `cluster` should have, when they differ from what it has.
pub fn finalizers_to_write(cluster: &KVCluster) -> Option<Vec<String>> {
    let present = cluster.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = cluster.meta().deletion_timestamp.is_some();
    match (present, deleting) {
        (false, false) => {
            let mut finalizers = cluster.finalizers().to_vec();
            finalizers.push(FINALIZER.to_owned());
            Some(finalizers)
        }
        (true, true) => Some(
            cluster
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect(),
        ),
        _ => None,
    }
}

/// Writes `finalizers`, only if the KVCluster is still the version read (a merge patch that
/// carries the resourceVersion is refused when it changed in between).
pub async fn write_finalizers(
    api: &Api<KVCluster>,
    cluster: &KVCluster,
    finalizers: Vec<String>,
) -> Result<(), kube::Error> {
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": cluster.resource_version(),
        }
    });
    api.patch(
        &cluster.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
}

/// Carries out the deletion policy on the members' claims; returns what was done, for an Event.
pub async fn release_claims(
    claims: &Api<PersistentVolumeClaim>,
    cluster: &KVCluster,
) -> Result<String, kube::Error> {
    let names = Names::new(&cluster.name_any(), &cluster.namespace().unwrap_or_default());
    let listed = claims
        .list(&ListParams::default().labels(&names.selector()))
        .await?;
    let mut names: Vec<String> = listed.items.iter().map(ResourceExt::name_any).collect();
    names.sort();
    if cluster.spec.deletion_policy == DeletionPolicy::Retain || names.is_empty() {
        return Ok(format!("claims kept: {}", shown(&names)));
    }
    for claim in listed
        .items
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
    {
        match claims.delete(&claim.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(format!("claims deleted: {}", shown(&names)))
}

/// The Secrets the operator made for auth, which outlive a KVCluster whose claims are kept
/// (the data needs its passwords) and go with the claims otherwise. A Secret the spec names is
/// the user's, and stays. Returns what was deleted, for the Event.
pub async fn release_secrets(secrets: &Api<Secret>, cluster: &KVCluster) -> Result<String, kube::Error> {
    if cluster.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(String::new());
    }
    let names = Names::new(&cluster.name_any(), &cluster.namespace().unwrap_or_default());
    let mut made = vec![names.operator_credentials_secret()];
    if cluster.spec.auth.root_password_secret.is_none() {
        made.push(names.root_password_secret());
    }
    let mut deleted = Vec::new();
    for name in made {
        match secrets.delete(&name, &Default::default()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(if deleted.is_empty() {
        String::new()
    } else {
        format!("; secrets deleted: {}", deleted.join(", "))
    })
}

fn shown(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml_metadata: &str) -> KVCluster {
        serde_yaml::from_str(&format!(
            "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {yaml_metadata}\nspec: {{}}\n"
        ))
        .expect("a KVCluster")
    }

    #[test]
    fn the_finalizer_is_added_once_and_released_on_deletion() {
        let fresh = cluster("{name: kv, finalizers: [other.dev/x]}");
        assert_eq!(
            finalizers_to_write(&fresh),
            Some(vec!["other.dev/x".to_owned(), FINALIZER.to_owned()])
        );
        let held = cluster(&format!("{{name: kv, finalizers: [{FINALIZER}, other.dev/x]}}"));
        assert_eq!(finalizers_to_write(&held), None);
        let deleting = cluster(&format!(
            "{{name: kv, finalizers: [{FINALIZER}, other.dev/x], deletionTimestamp: '2026-01-01T00:00:00Z'}}"
        ));
        assert_eq!(
            finalizers_to_write(&deleting),
            Some(vec!["other.dev/x".to_owned()])
        );
        let released = cluster("{name: kv, deletionTimestamp: '2026-01-01T00:00:00Z'}");
        assert_eq!(finalizers_to_write(&released), None);
        assert_eq!(cluster("{name: kv}").spec.deletion_policy, DeletionPolicy::Retain);
    }
}
