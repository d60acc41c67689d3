//! The PodDisruptionBudget that keeps voluntary evictions (node drains) from taking a quorum of
//! members away: minAvailable = quorum. `policy/v1` where the server has it, `policy/v1beta1` on
//! servers older than Kubernetes 1.21.

use serde_json::{Value, json};

use super::metadata;
use super::names::Names;
use crate::validate::ValidSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdbApi {
    V1,
    V1Beta1,
}

impl PdbApi {
    /// policy/v1 PodDisruptionBudget arrived in Kubernetes 1.21.
    pub fn for_server(major: u32, minor: u32) -> PdbApi {
        if (major, minor) >= (1, 21) {
            PdbApi::V1
        } else {
            PdbApi::V1Beta1
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            PdbApi::V1 => "policy/v1",
            PdbApi::V1Beta1 => "policy/v1beta1",
        }
    }
}

pub fn quorum(members: i32) -> i32 {
    members / 2 + 1
}

/// The object as JSON, since its type depends on the server's version.
pub fn pod_disruption_budget(spec: &ValidSpec, owner: &OwnerReference, api: PdbApi) -> Value {
    let names = Names::of(spec);
    json!({
        "apiVersion": api.api_version(),
        "kind": "PodDisruptionBudget",
        "metadata": metadata(&names, names.pdb(), owner),
        "spec": {
            "minAvailable": quorum(spec.replicas),
            "selector": {"matchLabels": names.selector_labels()},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::testing::{LABELS_YAML, OWNER_YAML, assert_yaml, owner, valid};

    #[test]
    fn quorum_of_members_stays_available() {
        assert_eq!([1, 2, 3, 4, 5, 7].map(quorum), [1, 2, 2, 3, 3, 4]);
        for (api, version) in [(PdbApi::V1, "policy/v1"), (PdbApi::V1Beta1, "policy/v1beta1")] {
            assert_yaml(
                &pod_disruption_budget(&valid("spec: {replicas: 5}"), &owner(), api),
                &format!(
                    r#"
apiVersion: {version}
kind: PodDisruptionBudget
metadata: {{name: kv, namespace: prod, labels: {LABELS_YAML}, ownerReferences: {OWNER_YAML}}}
spec:
  minAvailable: 3
  selector: {{matchLabels: {{app.kubernetes.io/name: cairn, app.kubernetes.io/instance: kv}}}}
"#
                ),
            );
        }
    }

    #[test]
    fn the_api_follows_the_server_version() {
        assert_eq!(PdbApi::for_server(1, 20), PdbApi::V1Beta1);
        assert_eq!(PdbApi::for_server(1, 21), PdbApi::V1);
        assert_eq!(PdbApi::for_server(1, 33), PdbApi::V1);
    }
}
