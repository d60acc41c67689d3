//! Pure functions from a `ValidSpec` (and what the operator has latched in status) to the
//! Kubernetes objects a cluster consists of. Nothing here talks to the API; every builder is
//! unit-tested against the YAML it must produce.

pub mod backup_job;
pub mod bootstrap;
pub mod names;
pub mod network_policy;
pub mod pdb;
pub mod services;
pub mod statefulset;
pub mod tls;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use self::names::Names;

/// Everything the operator applies, it applies under this one field manager.
pub const FIELD_MANAGER: &str = "cairn-operator";

/// The owner reference every object carries, so that deleting the KVCluster deletes them.
pub fn owner_reference(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "cairn.dev/v1alpha1".to_owned(),
        kind: "KVCluster".to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of an object of the cluster: name, namespace, the cluster's labels, the owner.
fn metadata(names: &Names, name: String, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// A Secret's `data` from text values.
pub fn secret_data(data: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    data.iter()
        .map(|(key, value)| ((*key).to_owned(), ByteString(value.as_bytes().to_vec())))
        .collect()
}

#[cfg(test)]
pub(crate) mod testing {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use crate::crd::KVCluster;
    use crate::validate::{ValidSpec, validate};

    pub fn valid(spec_yaml: &str) -> ValidSpec {
        let object: KVCluster = serde_yaml::from_str(&format!(
            "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv, namespace: prod}}\n{spec_yaml}"
        ))
        .expect("a KVCluster");
        validate("kv", "prod", &object.spec).expect("a valid spec")
    }

    pub fn owner() -> OwnerReference {
        super::owner_reference("kv", "u-1")
    }

    /// Compares an object with the YAML it must serialize to, showing both on a mismatch.
    pub fn assert_yaml<T: serde::Serialize>(built: &T, expected: &str) {
        let built = serde_json::to_value(built).unwrap();
        let expected: serde_json::Value = serde_yaml::from_str(expected).unwrap();
        assert_eq!(
            built,
            expected,
            "built:\n{}\nexpected:\n{}",
            serde_yaml::to_string(&built).unwrap(),
            serde_yaml::to_string(&expected).unwrap()
        );
    }

    pub const OWNER_YAML: &str = "[{apiVersion: cairn.dev/v1alpha1, kind: KVCluster, name: kv, uid: u-1, controller: true, blockOwnerDeletion: true}]";
    pub const LABELS_YAML: &str = "{app.kubernetes.io/name: cairn, app.kubernetes.io/instance: kv, app.kubernetes.io/managed-by: cairn-operator}";
}
