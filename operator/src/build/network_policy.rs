//! The NetworkPolicy that fences a cluster's pods in, when the operator is asked to make one
//! (`--network-policies`, the chart's `networkPolicy.enabled`): the peer port only from the
//! cluster's own members, the client port only from the cluster's namespace, the operator's,
//! and the namespaces the user lists (and from them, with client TLS, the plain port with
//! health, version and metrics, which the operator and scrapers read). Everything else reaching
//! the pods is dropped by the network plugin (one that enforces NetworkPolicies).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::metadata;
use super::names::{CLIENT_PORT, METRICS_PORT, Names, PEER_PORT};
use crate::validate::ValidSpec;

/// The label every namespace carries with its own name (Kubernetes 1.21 and later).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Who may reach a cluster's client port besides its own namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientNamespaces {
    /// The operator's namespace: it reads every member's status.
    pub operator: String,
    /// The namespaces the chart lists (`networkPolicy.clientNamespaces`).
    pub listed: Vec<String>,
}

fn tcp(ports: &[u16]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|port| NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(*port))),
            protocol: Some("TCP".to_owned()),
            ..NetworkPolicyPort::default()
        })
        .collect()
}

fn namespace(name: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_owned(),
                name.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

pub fn network_policy(spec: &ValidSpec, owner: &OwnerReference, clients: &ClientNamespaces) -> NetworkPolicy {
    let names = Names::of(spec);
    let members = LabelSelector {
        match_labels: Some(names.selector_labels()),
        ..LabelSelector::default()
    };
    // Any pod of the cluster's own namespace; an empty pod selector means every pod there.
    let mut client_peers = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    }];
    let mut others: Vec<&String> = std::iter::once(&clients.operator)
        .chain(&clients.listed)
        .filter(|n| **n != spec.namespace)
        .collect();
    others.sort();
    others.dedup();
    client_peers.extend(others.into_iter().map(|n| namespace(n)));
    let client_ports: &[u16] = match spec.client_tls.enabled {
        true => &[CLIENT_PORT, METRICS_PORT],
        false => &[CLIENT_PORT],
    };
    NetworkPolicy {
        metadata: metadata(&names, names.network_policy(), owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(members.clone()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(members),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(tcp(&[PEER_PORT])),
                },
                NetworkPolicyIngressRule {
                    from: Some(client_peers),
                    ports: Some(tcp(client_ports)),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::testing::{LABELS_YAML, OWNER_YAML, assert_yaml, owner, valid};

    #[test]
    fn peers_only_from_members_and_clients_from_the_listed_namespaces() {
        let clients = ClientNamespaces {
            operator: "cairn-system".into(),
            listed: vec!["web".into(), "prod".into(), "cairn-system".into()],
        };
        assert_yaml(
            &network_policy(&valid("spec: {replicas: 3}"), &owner(), &clients),
            &format!(
                r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: kv, namespace: prod, labels: {LABELS_YAML}, ownerReferences: {OWNER_YAML}}}
spec:
  podSelector: {{matchLabels: {{app.kubernetes.io/name: cairn, app.kubernetes.io/instance: kv}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app.kubernetes.io/name: cairn, app.kubernetes.io/instance: kv}}}}}}]
    ports: [{{port: 2380, protocol: TCP}}]
  - from:
    - {{podSelector: {{}}}}
    - {{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: cairn-system}}}}}}
    - {{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: web}}}}}}
    ports: [{{port: 2379, protocol: TCP}}]
"#
            ),
        );
        // With client TLS, the same namespaces reach the plain port the operator reads versions
        // from and scrapers read metrics from.
        let tls = network_policy(
            &valid("spec: {tls: {client: {enabled: true}}}"),
            &owner(),
            &clients,
        );
        let rules = tls.spec.unwrap().ingress.unwrap();
        let ports: Vec<_> = rules[1]
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone().unwrap())
            .collect();
        assert_eq!(ports, [IntOrString::Int(2379), IntOrString::Int(2381)]);
    }
}
