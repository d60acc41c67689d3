//! The two Services of a cluster: the headless peer Service that gives members stable DNS names
//! and SRV records (published before members are ready, so they can find each other), and the
//! client Service in front of the ready members.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::metadata;
use super::names::{CLIENT_PORT, CLIENT_PORT_NAME, Names, PEER_PORT, PEER_PORT_NAME};
use crate::crd::ServiceType;
use crate::validate::ValidSpec;

fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(number),
        target_port: Some(IntOrString::Int(i32::from(number))),
        // Server-side apply merges ports by port and protocol; 1.20 servers need it spelled out.
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

pub fn peer_service(spec: &ValidSpec, owner: &OwnerReference) -> Service {
    let names = Names::of(spec);
    Service {
        metadata: metadata(&names, names.peer_service(), owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector_labels()),
            ports: Some(vec![
                port(PEER_PORT_NAME, PEER_PORT),
                port(CLIENT_PORT_NAME, CLIENT_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn client_service(spec: &ValidSpec, owner: &OwnerReference) -> Service {
    let names = Names::of(spec);
    let mut metadata = metadata(&names, names.client_service(), owner);
    if !spec.client_service.annotations.is_empty() {
        metadata.annotations = Some(spec.client_service.annotations.clone());
    }
    let type_ = match spec.client_service.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(names.selector_labels()),
            ports: Some(vec![port(CLIENT_PORT_NAME, CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::testing::{LABELS_YAML, OWNER_YAML, assert_yaml, owner, valid};

    #[test]
    fn the_peer_service_is_headless_and_publishes_members_before_they_are_ready() {
        let service = peer_service(&valid("spec: {}"), &owner());
        assert_yaml(
            &service,
            &format!(
                r#"
apiVersion: v1
kind: Service
metadata: {{name: kv-peer, namespace: prod, labels: {LABELS_YAML}, ownerReferences: {OWNER_YAML}}}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app.kubernetes.io/name: cairn, app.kubernetes.io/instance: kv}}
  ports:
  - {{name: cairn-server, port: 2380, targetPort: 2380, protocol: TCP}}
  - {{name: cairn-client, port: 2379, targetPort: 2379, protocol: TCP}}
"#
            ),
        );
    }

    #[test]
    fn the_client_service_takes_type_and_annotations_from_the_spec() {
        let service = client_service(
            &valid("spec: {clientService: {type: LoadBalancer, annotations: {lb/scheme: internal}}}"),
            &owner(),
        );
        assert_yaml(
            &service,
            &format!(
                r#"
apiVersion: v1
kind: Service
metadata:
  name: kv
  namespace: prod
  labels: {LABELS_YAML}
  annotations: {{lb/scheme: internal}}
  ownerReferences: {OWNER_YAML}
spec:
  type: LoadBalancer
  selector: {{app.kubernetes.io/name: cairn, app.kubernetes.io/instance: kv}}
  ports: [{{name: cairn-client, port: 2379, targetPort: 2379, protocol: TCP}}]
"#
            ),
        );
    }
}
