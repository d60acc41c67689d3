//! Each member's bootstrap file, in one ConfigMap mounted into every member pod: the pod reads
//! `<pod name>.yaml` (`--config-file`). A StatefulSet gives all pods one template, but members
//! bootstrap differently: the initial ones form the cluster (`new`), later ones join the running
//! cluster (`existing`) with the member list the cluster returned when they were added.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::metadata;
use super::names::Names;
use crate::validate::ValidSpec;

/// How one member starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberBootstrap {
    /// One of the members that form a new cluster from a static list of all of them.
    StaticNew { initial_cluster: String },
    /// One of the members that form a new cluster, finding the others through DNS SRV records;
    /// it waits until the records list all `size` of them (pods get addresses one by one).
    DnsSrvNew { domain: String, size: i32 },
    /// A member added to a running cluster; `initial_cluster` is what MemberAdd returned.
    Join { initial_cluster: String },
}

impl MemberBootstrap {
    /// The file's YAML; keys are cairn's flag names.
    pub fn file(&self) -> String {
        match self {
            MemberBootstrap::StaticNew { initial_cluster } => {
                format!("initial-cluster: {initial_cluster}\ninitial-cluster-state: new\n")
            }
            MemberBootstrap::DnsSrvNew { domain, size } => {
                format!("discovery-srv: {domain}\ninitial-cluster-size: {size}\ninitial-cluster-state: new\n")
            }
            MemberBootstrap::Join { initial_cluster } => {
                format!("initial-cluster: {initial_cluster}\ninitial-cluster-state: existing\n")
            }
        }
    }
}

/// Whether a bootstrap file forms a new cluster (rather than joining the one that exists).
pub fn is_new(file: &str) -> bool {
    file.lines()
        .any(|line| line.trim() == "initial-cluster-state: new")
}

/// The plan for the members that form the cluster: all `spec.replicas` of them, by the mode.
pub fn initial_members(spec: &ValidSpec) -> BTreeMap<String, MemberBootstrap> {
    let names = Names::of(spec);
    let members: Vec<String> = (0..spec.replicas).map(|i| names.member(i)).collect();
    let plan = match spec.bootstrap {
        crate::crd::BootstrapMode::Static => MemberBootstrap::StaticNew {
            initial_cluster: names.initial_cluster(members.clone()),
        },
        crate::crd::BootstrapMode::DnsSrv => MemberBootstrap::DnsSrvNew {
            domain: names.peer_domain(),
            size: spec.replicas,
        },
    };
    members.into_iter().map(|m| (m, plan.clone())).collect()
}

pub fn bootstrap_config_map(
    spec: &ValidSpec,
    owner: &OwnerReference,
    members: &BTreeMap<String, MemberBootstrap>,
) -> ConfigMap {
    let files = members
        .iter()
        .map(|(member, plan)| (format!("{member}.yaml"), plan.file()))
        .collect();
    bootstrap_files(spec, owner, files)
}

/// The ConfigMap with exactly these files (`<member>.yaml` → its YAML).
pub fn bootstrap_files(
    spec: &ValidSpec,
    owner: &OwnerReference,
    files: BTreeMap<String, String>,
) -> ConfigMap {
    let names = Names::of(spec);
    ConfigMap {
        metadata: metadata(&names, names.bootstrap_config_map(), owner),
        data: Some(files),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::testing::{LABELS_YAML, OWNER_YAML, assert_yaml, owner, valid};

    #[test]
    fn static_members_each_get_the_full_list() {
        let spec = valid("spec: {replicas: 2}");
        let map = bootstrap_config_map(&spec, &owner(), &initial_members(&spec));
        let cluster = "kv-0=https://kv-0.kv-peer.prod.svc.cluster.local:2380,kv-1=https://kv-1.kv-peer.prod.svc.cluster.local:2380";
        assert_yaml(
            &map,
            &format!(
                r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: kv-bootstrap, namespace: prod, labels: {LABELS_YAML}, ownerReferences: {OWNER_YAML}}}
data:
  kv-0.yaml: "initial-cluster: {cluster}\ninitial-cluster-state: new\n"
  kv-1.yaml: "initial-cluster: {cluster}\ninitial-cluster-state: new\n"
"#
            ),
        );
    }

    #[test]
    fn dns_srv_members_look_up_the_peer_domain_and_joiners_use_what_memberadd_returned() {
        let spec = valid("spec: {replicas: 3, bootstrap: {mode: DnsSrv}}");
        let mut members = initial_members(&spec);
        members.insert(
            "kv-3".into(),
            MemberBootstrap::Join {
                initial_cluster: "kv-0=http://a:2380,kv-3=http://b:2380".into(),
            },
        );
        let map = bootstrap_config_map(&spec, &owner(), &members);
        let data = map.data.unwrap();
        assert_eq!(
            data["kv-0.yaml"],
            "discovery-srv: kv-peer.prod.svc.cluster.local\ninitial-cluster-size: 3\ninitial-cluster-state: new\n"
        );
        assert_eq!(
            data["kv-3.yaml"],
            "initial-cluster: kv-0=http://a:2380,kv-3=http://b:2380\ninitial-cluster-state: existing\n"
        );
    }
}
