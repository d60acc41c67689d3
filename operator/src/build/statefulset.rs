//! The StatefulSet of members: one pod template for all of them, configured through the
//! environment (cairn reads `CAIRN_<FLAG>`), each member's bootstrap file picked by pod name.
//! Pods start in parallel (members of a new cluster must find each other before any is ready);
//! liveness asks only whether the process answers, readiness whether the member is healthy.
//! Pods change template only when the operator restarts them (`OnDelete`, see `upgrade`).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};

use super::backup_job::restore_init_container;
use super::metadata;
use super::names::{
    BOOTSTRAP_DIR, CLIENT_PORT, CLIENT_PORT_NAME, CLIENT_TLS_DIR, DATA_DIR, METRICS_PORT, METRICS_PORT_NAME,
    Names, PEER_PORT, PEER_PORT_NAME, PEER_TLS_DIR, PeerScheme,
};
use super::tls::{CA_CERT, CERT, KEY};
use crate::crd::PullPolicy;
use crate::validate::{StoragePlan, ValidSpec};

/// The variable that carries a member's client URLs, which also tells the operator whether a
/// running pod serves clients over TLS.
pub const LISTEN_CLIENT_URLS_ENV: &str = "CAIRN_LISTEN_CLIENT_URLS";
/// The variable that carries a member's peer listen URLs, which tells the operator whether a
/// running pod serves its peers over TLS.
pub const LISTEN_PEER_URLS_ENV: &str = "CAIRN_LISTEN_PEER_URLS";

/// `replicas` is not always the spec's: members are added and removed one at a time.
pub fn statefulset(spec: &ValidSpec, owner: &OwnerReference, token: &str, replicas: i32) -> StatefulSet {
    let names = Names::of(spec);
    let peer_address = format!("://$(POD_IP):{PEER_PORT}");
    // Moving to TLS, one port serves both schemes (told apart by a client's first byte) while
    // the member list still names members by http:// URLs.
    let (peer_listen, peer_scheme) = match names.peer_scheme {
        PeerScheme::Plain => (format!("http{peer_address}"), "http"),
        PeerScheme::Moving => (format!("http{peer_address},https{peer_address}"), "http"),
        PeerScheme::Tls => (format!("https{peer_address}"), "https"),
    };
    let client_tls = spec.client_tls.enabled;
    let client_scheme = if client_tls { "https" } else { "http" };
    // Probes cannot show a client certificate: with client TLS they use the plain port that
    // serves only health, version and metrics.
    let probe_port = if client_tls {
        METRICS_PORT_NAME
    } else {
        CLIENT_PORT_NAME
    };
    let mut pod_labels = spec.pod_labels.clone();
    pod_labels.extend(names.selector_labels());
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_IP", "status.podIP"),
        env("CAIRN_NAME", "$(POD_NAME)"),
        env("CAIRN_DATA_DIR", &format!("{DATA_DIR}/data")),
        env(
            LISTEN_CLIENT_URLS_ENV,
            &format!("{client_scheme}://$(POD_IP):{CLIENT_PORT}"),
        ),
        env(
            "CAIRN_ADVERTISE_CLIENT_URLS",
            &format!(
                "{client_scheme}://$(POD_NAME).{}:{CLIENT_PORT}",
                names.peer_domain()
            ),
        ),
        env(LISTEN_PEER_URLS_ENV, &peer_listen),
        env(
            "CAIRN_INITIAL_ADVERTISE_PEER_URLS",
            &format!("{peer_scheme}://$(POD_NAME).{}:{PEER_PORT}", names.peer_domain()),
        ),
        env("CAIRN_INITIAL_CLUSTER_TOKEN", token),
        env("CAIRN_CONFIG_FILE", &format!("{BOOTSTRAP_DIR}/$(POD_NAME).yaml")),
    ];
    let server = &spec.server;
    for (name, value) in [
        (
            "CAIRN_HEARTBEAT_INTERVAL",
            server.heartbeat_interval_ms.map(u64::from),
        ),
        (
            "CAIRN_ELECTION_TIMEOUT",
            server.election_timeout_ms.map(u64::from),
        ),
        ("CAIRN_SNAPSHOT_COUNT", server.snapshot_count),
        ("CAIRN_QUOTA_BACKEND_BYTES", server.quota_backend_bytes),
    ] {
        if let Some(value) = value {
            env.push(self::env(name, &value.to_string()));
        }
    }
    if let Some((mode, retention)) = &server.auto_compaction {
        env.push(self::env("CAIRN_AUTO_COMPACTION_MODE", mode));
        env.push(self::env("CAIRN_AUTO_COMPACTION_RETENTION", retention));
    }
    if names.peer_certificates() {
        // A peer must show a certificate from the cluster's CA before a byte of Raft is read
        // (on a port serving both schemes, a peer that speaks TLS).
        env.extend([
            self::env("CAIRN_PEER_CERT_FILE", &format!("{PEER_TLS_DIR}/{CERT}")),
            self::env("CAIRN_PEER_KEY_FILE", &format!("{PEER_TLS_DIR}/{KEY}")),
            self::env("CAIRN_PEER_TRUSTED_CA_FILE", &format!("{PEER_TLS_DIR}/{CA_CERT}")),
            self::env("CAIRN_PEER_CLIENT_CERT_AUTH", "true"),
        ]);
    }
    if client_tls {
        // A client must show a certificate from the cluster's CA; its common name is its user.
        env.extend([
            self::env("CAIRN_CERT_FILE", &format!("{CLIENT_TLS_DIR}/{CERT}")),
            self::env("CAIRN_KEY_FILE", &format!("{CLIENT_TLS_DIR}/{KEY}")),
            self::env("CAIRN_TRUSTED_CA_FILE", &format!("{CLIENT_TLS_DIR}/{CA_CERT}")),
            self::env("CAIRN_CLIENT_CERT_AUTH", "true"),
            self::env(
                "CAIRN_LISTEN_METRICS_URLS",
                &format!("http://$(POD_IP):{METRICS_PORT}"),
            ),
        ]);
    }
    let mut ports = vec![
        json!({"name": CLIENT_PORT_NAME, "containerPort": CLIENT_PORT, "protocol": "TCP"}),
        json!({"name": PEER_PORT_NAME, "containerPort": PEER_PORT, "protocol": "TCP"}),
    ];
    if client_tls {
        ports.push(json!({"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}));
    }

    let mut container = json!({
        "name": "cairn",
        "image": spec.image,
        "env": env,
        "ports": ports,
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": probe_port},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        // /readyz, not /health: a NOSPACE alarm (which any client could raise) must not take
        // every member out of the client Service while reads and deletes still work.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": probe_port},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        // Why a member refused to start (e.g. its data was lost) reaches the pod's status, where
        // the operator reads it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": true},
        ],
    });
    if let Some(policy) = spec.pull_policy {
        container["imagePullPolicy"] = json!(match policy {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        });
    }
    if let Some(resources) = &spec.resources {
        container["resources"] = json!(resources);
    }

    let mut volumes = vec![json!({
        "name": "bootstrap",
        "configMap": {"name": names.bootstrap_config_map()},
    })];
    if names.peer_certificates() {
        // Kubernetes refreshes a Secret volume in place, and members re-read the files.
        volumes.push(json!({"name": "peer-tls", "secret": {"secretName": spec.peer_tls_secret()}}));
        container["volumeMounts"]
            .as_array_mut()
            .expect("the mounts are a list")
            .push(json!({"name": "peer-tls", "mountPath": PEER_TLS_DIR, "readOnly": true}));
    }
    if client_tls {
        volumes.push(json!({"name": "client-tls", "secret": {"secretName": spec.server_tls_secret()}}));
        container["volumeMounts"]
            .as_array_mut()
            .expect("the mounts are a list")
            .push(json!({"name": "client-tls", "mountPath": CLIENT_TLS_DIR, "readOnly": true}));
    }
    let mut claims = Vec::new();
    match &spec.storage {
        StoragePlan::Ephemeral => volumes.push(json!({"name": "data", "emptyDir": {}})),
        StoragePlan::Claim { bytes, class } => {
            let mut claim_spec = json!({
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": bytes.to_string()}},
            });
            if let Some(class) = class {
                claim_spec["storageClassName"] = json!(class);
            }
            claims.push(json!({
                "metadata": {"name": "data", "labels": names.selector_labels()},
                "spec": claim_spec,
            }));
        }
    }

    // A cluster restored from a backup: its initial members restore it before they first start.
    let mut init_containers = Vec::new();
    if let Some(plan) = &spec.restore
        && let Some(chosen) = &plan.chosen
    {
        let step = restore_init_container(spec, plan, chosen, token);
        init_containers.push(step.container);
        volumes.extend(step.volumes);
    }
    let mut pod_spec = json!({
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
        "securityContext": pod_security(),
    });
    insert_nonempty(&mut pod_spec, "initContainers", json!(init_containers));
    insert_nonempty(&mut pod_spec, "affinity", json!(spec.affinity));
    insert_nonempty(&mut pod_spec, "tolerations", json!(spec.tolerations));
    insert_nonempty(&mut pod_spec, "nodeSelector", json!(spec.node_selector));
    insert_nonempty(
        &mut pod_spec,
        "priorityClassName",
        json!(spec.priority_class_name),
    );
    let mut template_metadata = json!({"labels": pod_labels});
    insert_nonempty(&mut template_metadata, "annotations", json!(spec.pod_annotations));

    let mut set_spec = json!({
        "replicas": replicas,
        "serviceName": names.peer_service(),
        "podManagementPolicy": "Parallel",
        // A new template (version, image, settings) reaches the pods only as the operator
        // restarts them: one at a time, each member healthy first, the leader last.
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": names.selector_labels()},
        "template": {"metadata": template_metadata, "spec": pod_spec},
    });
    if !claims.is_empty() {
        set_spec["volumeClaimTemplates"] = json!(claims);
    }
    let object = json!({
        "metadata": metadata(&names, names.statefulset(), owner),
        "spec": set_spec,
    });
    serde_json::from_value(object).expect("the builder makes a well-formed StatefulSet")
}

/// The user the cairn image runs as (distroless' `nonroot`).
const MEMBER_USER: i64 = 65532;

fn env(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// Sets `key` unless `value` is null or empty, so the object carries no empty fields that
/// server-side apply would then own.
/// The security settings of every pod of a cluster's (members, backups): claims are made
/// writable for the image's user (65532) through fsGroup.
pub(super) fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": MEMBER_USER,
        "runAsGroup": MEMBER_USER,
        "fsGroup": MEMBER_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The security settings of every container of a cluster's: cairn and cairnctl write only to
/// volumes, as the image's non-root user.
pub(super) fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

pub(super) fn insert_nonempty(object: &mut Value, key: &str, value: Value) {
    let empty = match &value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    };
    if !empty {
        object[key] = value;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::build::testing::{LABELS_YAML, OWNER_YAML, assert_yaml, owner, valid};

    /// The plain-valued environment of the member container, by name.
    fn member_env(set: &StatefulSet) -> BTreeMap<String, String> {
        set.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.env.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn a_default_cluster_runs_members_with_claims_probes_peer_tls_and_their_bootstrap_file() {
        let set = statefulset(&valid("spec: {}"), &owner(), "prod-kv-u-1", 3);
        assert_yaml(
            &set,
            &format!(
                r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: kv, namespace: prod, labels: {LABELS_YAML}, ownerReferences: {OWNER_YAML}}}
spec:
  replicas: 3
  serviceName: kv-peer
  podManagementPolicy: Parallel
  updateStrategy: {{type: OnDelete}}
  selector: {{matchLabels: {{app.kubernetes.io/name: cairn, app.kubernetes.io/instance: kv}}}}
  template:
    metadata: {{labels: {{app.kubernetes.io/name: cairn, app.kubernetes.io/instance: kv}}}}
    spec:
      terminationGracePeriodSeconds: 30
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        fsGroup: 65532
        seccompProfile: {{type: RuntimeDefault}}
      containers:
      - name: cairn
        image: ghcr.io/cairn-dev/cairn:{version}
        env:
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        - {{name: CAIRN_NAME, value: $(POD_NAME)}}
        - {{name: CAIRN_DATA_DIR, value: /var/lib/cairn/data}}
        - {{name: CAIRN_LISTEN_CLIENT_URLS, value: "http://$(POD_IP):2379"}}
        - {{name: CAIRN_ADVERTISE_CLIENT_URLS, value: "http://$(POD_NAME).kv-peer.prod.svc.cluster.local:2379"}}
        - {{name: CAIRN_LISTEN_PEER_URLS, value: "https://$(POD_IP):2380"}}
        - {{name: CAIRN_INITIAL_ADVERTISE_PEER_URLS, value: "https://$(POD_NAME).kv-peer.prod.svc.cluster.local:2380"}}
        - {{name: CAIRN_INITIAL_CLUSTER_TOKEN, value: prod-kv-u-1}}
        - {{name: CAIRN_CONFIG_FILE, value: /etc/cairn/bootstrap/$(POD_NAME).yaml}}
        - {{name: CAIRN_PEER_CERT_FILE, value: /etc/cairn/peer-tls/tls.crt}}
        - {{name: CAIRN_PEER_KEY_FILE, value: /etc/cairn/peer-tls/tls.key}}
        - {{name: CAIRN_PEER_TRUSTED_CA_FILE, value: /etc/cairn/peer-tls/ca.crt}}
        - {{name: CAIRN_PEER_CLIENT_CERT_AUTH, value: "true"}}
        ports:
        - {{name: cairn-client, containerPort: 2379, protocol: TCP}}
        - {{name: cairn-server, containerPort: 2380, protocol: TCP}}
        livenessProbe: {{httpGet: {{path: /livez, port: cairn-client}}, periodSeconds: 10, failureThreshold: 3}}
        readinessProbe: {{httpGet: {{path: /readyz, port: cairn-client}}, periodSeconds: 2, failureThreshold: 3}}
        terminationMessagePolicy: FallbackToLogsOnError
        securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
        volumeMounts:
        - {{name: data, mountPath: /var/lib/cairn}}
        - {{name: bootstrap, mountPath: /etc/cairn/bootstrap, readOnly: true}}
        - {{name: peer-tls, mountPath: /etc/cairn/peer-tls, readOnly: true}}
      volumes:
      - {{name: bootstrap, configMap: {{name: kv-bootstrap}}}}
      - {{name: peer-tls, secret: {{secretName: kv-peer-tls}}}}
  volumeClaimTemplates:
  - apiVersion: v1
    kind: PersistentVolumeClaim
    metadata: {{name: data, labels: {{app.kubernetes.io/name: cairn, app.kubernetes.io/instance: kv}}}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: "1073741824"}}}}
"#,
                version = crate::validate::DEFAULT_VERSION
            ),
        );
    }

    #[test]
    fn overrides_options_and_ephemeral_storage_reach_the_pods() {
        let spec = valid(
            r#"
spec:
  image: registry.local/cairn:dev
  imagePullPolicy: Never
  storage: {ephemeral: true}
  tls: {peer: {enabled: false}}
  resources: {limits: {memory: 1Gi}, requests: {cpu: 100m}}
  server: {heartbeatIntervalMs: 50, electionTimeoutMs: 500, snapshotCount: 1000, quotaBackendBytes: 1Gi, autoCompaction: {mode: Revision, retention: "10000"}}
  pod:
    labels: {team: storage, app.kubernetes.io/name: mine}
    annotations: {scrape: "true"}
    nodeSelector: {disk: ssd}
    tolerations: [{key: dedicated, operator: Exists, effect: NoSchedule}]
    priorityClassName: critical
    affinity: {podAntiAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 100, podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app.kubernetes.io/instance: kv}}}}]}}
"#,
        );
        let set = statefulset(&spec, &owner(), "t", 1);
        let json = serde_json::to_value(&set).unwrap();
        let template = &json["spec"]["template"];
        // The operator's selector labels win over the user's.
        assert_eq!(
            template["metadata"]["labels"],
            json!({"team": "storage", "app.kubernetes.io/name": "cairn", "app.kubernetes.io/instance": "kv"})
        );
        assert_eq!(template["metadata"]["annotations"], json!({"scrape": "true"}));
        let pod = &template["spec"];
        assert_eq!(pod["nodeSelector"], json!({"disk": "ssd"}));
        assert_eq!(pod["priorityClassName"], "critical");
        assert_eq!(pod["tolerations"][0]["key"], "dedicated");
        assert_eq!(
            pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"],
            100
        );
        assert_eq!(pod["volumes"][1], json!({"name": "data", "emptyDir": {}}));
        assert!(json["spec"].get("volumeClaimTemplates").is_none());
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "registry.local/cairn:dev");
        assert_eq!(container["imagePullPolicy"], "Never");
        assert_eq!(
            container["resources"],
            json!({"limits": {"memory": "1Gi"}, "requests": {"cpu": "100m"}})
        );
        let env = member_env(&set);
        assert_eq!(env["CAIRN_HEARTBEAT_INTERVAL"], "50");
        assert_eq!(env["CAIRN_ELECTION_TIMEOUT"], "500");
        assert_eq!(env["CAIRN_SNAPSHOT_COUNT"], "1000");
        assert_eq!(env["CAIRN_AUTO_COMPACTION_MODE"], "revision");
        assert_eq!(env["CAIRN_AUTO_COMPACTION_RETENTION"], "10000");
        assert_eq!(env["CAIRN_QUOTA_BACKEND_BYTES"], "1073741824");
    }

    #[test]
    fn members_listen_on_https_with_the_cluster_certificates_unless_peer_tls_is_off() {
        let set = statefulset(&valid("spec: {}"), &owner(), "t", 3);
        let json = serde_json::to_value(&set).unwrap();
        let pod = &json["spec"]["template"]["spec"];
        let env: std::collections::BTreeMap<&str, &str> = pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
            .collect();
        assert_eq!(env["CAIRN_LISTEN_PEER_URLS"], "https://$(POD_IP):2380");
        assert_eq!(
            env["CAIRN_INITIAL_ADVERTISE_PEER_URLS"],
            "https://$(POD_NAME).kv-peer.prod.svc.cluster.local:2380"
        );
        assert_eq!(env["CAIRN_PEER_CERT_FILE"], "/etc/cairn/peer-tls/tls.crt");
        assert_eq!(env["CAIRN_PEER_KEY_FILE"], "/etc/cairn/peer-tls/tls.key");
        assert_eq!(env["CAIRN_PEER_TRUSTED_CA_FILE"], "/etc/cairn/peer-tls/ca.crt");
        assert_eq!(env["CAIRN_PEER_CLIENT_CERT_AUTH"], "true");
        // Clients still speak plaintext: client TLS is its own setting.
        assert_eq!(env["CAIRN_LISTEN_CLIENT_URLS"], "http://$(POD_IP):2379");
        assert_eq!(
            pod["volumes"][1],
            json!({"name": "peer-tls", "secret": {"secretName": "kv-peer-tls"}})
        );
        assert_eq!(
            pod["containers"][0]["volumeMounts"][2],
            json!({"name": "peer-tls", "mountPath": "/etc/cairn/peer-tls", "readOnly": true})
        );

        let plain = valid("spec: {tls: {peer: {enabled: false}}}");
        let plain = serde_json::to_value(statefulset(&plain, &owner(), "t", 3)).unwrap();
        let env = plain["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
        assert!(!env.contains("PEER_CERT") && !env.contains("https"), "{env}");
    }

    #[test]
    fn members_moving_to_peer_tls_listen_under_both_schemes_with_their_certificates() {
        let moving = valid("spec: {tls: {peer: {enabled: true}}}").with_latched_peer_tls(false, false);
        let set = statefulset(&moving, &owner(), "t", 3);
        let env = member_env(&set);
        assert_eq!(
            env["CAIRN_LISTEN_PEER_URLS"],
            "http://$(POD_IP):2380,https://$(POD_IP):2380"
        );
        // Members are still known, and new ones added, under http:// until the list changes.
        assert_eq!(
            env["CAIRN_INITIAL_ADVERTISE_PEER_URLS"],
            "http://$(POD_NAME).kv-peer.prod.svc.cluster.local:2380"
        );
        assert_eq!(env["CAIRN_PEER_CERT_FILE"], "/etc/cairn/peer-tls/tls.crt");
        assert_eq!(env["CAIRN_PEER_CLIENT_CERT_AUTH"], "true");
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(
            json["spec"]["template"]["spec"]["volumes"][1],
            json!({"name": "peer-tls", "secret": {"secretName": "kv-peer-tls"}})
        );
    }

    #[test]
    fn with_client_tls_members_want_client_certificates_and_probes_use_the_plain_metrics_port() {
        let spec = valid("spec: {tls: {client: {enabled: true}}}");
        let set = statefulset(&spec, &owner(), "t", 3);
        let env = member_env(&set);
        assert_eq!(env["CAIRN_LISTEN_CLIENT_URLS"], "https://$(POD_IP):2379");
        assert_eq!(
            env["CAIRN_ADVERTISE_CLIENT_URLS"],
            "https://$(POD_NAME).kv-peer.prod.svc.cluster.local:2379"
        );
        assert_eq!(env["CAIRN_CERT_FILE"], "/etc/cairn/client-tls/tls.crt");
        assert_eq!(env["CAIRN_KEY_FILE"], "/etc/cairn/client-tls/tls.key");
        assert_eq!(env["CAIRN_TRUSTED_CA_FILE"], "/etc/cairn/client-tls/ca.crt");
        assert_eq!(env["CAIRN_CLIENT_CERT_AUTH"], "true");
        assert_eq!(env["CAIRN_LISTEN_METRICS_URLS"], "http://$(POD_IP):2381");
        let json = serde_json::to_value(&set).unwrap();
        let pod = &json["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            container["ports"][2],
            json!({"name": "cairn-metrics", "containerPort": 2381, "protocol": "TCP"})
        );
        assert_eq!(container["livenessProbe"]["httpGet"]["port"], "cairn-metrics");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], "cairn-metrics");
        assert!(pod["volumes"].as_array().unwrap().contains(&json!(
            {"name": "client-tls", "secret": {"secretName": "kv-server-tls"}}
        )));
        assert!(container["volumeMounts"].as_array().unwrap().contains(&json!(
            {"name": "client-tls", "mountPath": "/etc/cairn/client-tls", "readOnly": true}
        )));

        // Certificates the user keeps are mounted from the Secrets the spec names.
        let supplied = valid(
            "spec: {tls: {peer: {secretName: mine-peer}, client: {enabled: true, \
             secretName: mine-server, operatorSecretName: mine-operator}}}",
        );
        let supplied = serde_json::to_value(statefulset(&supplied, &owner(), "t", 3)).unwrap();
        let volumes = &supplied["spec"]["template"]["spec"]["volumes"];
        assert!(volumes.as_array().unwrap().contains(&json!(
            {"name": "peer-tls", "secret": {"secretName": "mine-peer"}}
        )));
        assert!(volumes.as_array().unwrap().contains(&json!(
            {"name": "client-tls", "secret": {"secretName": "mine-server"}}
        )));

        // Without it nothing of this is there.
        let plain = serde_json::to_value(statefulset(&valid("spec: {}"), &owner(), "t", 3)).unwrap();
        let text = plain.to_string();
        assert!(
            !text.contains("2381") && !text.contains("CAIRN_CERT_FILE"),
            "{text}"
        );
    }

    #[test]
    fn claims_use_the_requested_class() {
        let set = statefulset(
            &valid("spec: {storage: {size: 5Gi, storageClassName: fast}}"),
            &owner(),
            "t",
            3,
        );
        let json = serde_json::to_value(&set).unwrap();
        assert_eq!(
            json["spec"]["volumeClaimTemplates"][0]["spec"],
            json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "5368709120"}}})
        );
    }
}
