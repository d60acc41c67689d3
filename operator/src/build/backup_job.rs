//! The Job that takes one backup: `cairnctl backup save` in the cluster's own image, streaming a
//! snapshot from one member to the destination, verifying it and pruning by retention. Its pod
//! leaves the result (or the tail of its log) as its termination message, which the operator reads.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};

use super::names::{CLIENT_PORT, Names};
use super::tls::{CA_CERT, CERT, KEY};
use crate::access::{PASSWORD_KEY, USERNAME_KEY};
use crate::validate::{BackupDestination, BackupPlan, ValidSpec};

/// The label every backup Job and its pod carry with the cluster's name (beside the instance
/// label; the name label differs from the members' so their selector never matches).
pub const BACKUP_APP: &str = "cairn-backup";
/// The label a backup pod carries with its Job's name.
pub const JOB_LABEL: &str = "cairn.dev/backup-job";
/// Where the destination claim is mounted.
const BACKUPS_DIR: &str = "/backups";
/// Where the operator's client certificate is mounted when members want one.
const CLIENT_TLS_DIR: &str = "/etc/cairn/operator-tls";
/// A backup that takes longer than this is stopped and counts as failed.
const DEADLINE_SECONDS: i64 = 6 * 3600;

/// The labels of a cluster's backup Jobs and their pods.
pub fn backup_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), BACKUP_APP.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), names.cluster.clone()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "cairn-operator".to_owned(),
        ),
    ])
}

/// The selector of a cluster's backup Jobs, as a label query.
pub fn backup_selector(names: &Names) -> String {
    format!(
        "app.kubernetes.io/name={BACKUP_APP},app.kubernetes.io/instance={}",
        names.cluster
    )
}

/// The Job `job` that backs the cluster up from `member`.
pub fn backup_job(
    spec: &ValidSpec,
    plan: &BackupPlan,
    owner: &OwnerReference,
    job: &str,
    member: &str,
) -> Job {
    let names = Names::of(spec);
    let scheme = if spec.client_tls.enabled { "https" } else { "http" };
    let endpoint = format!("{scheme}://{}:{CLIENT_PORT}", names.member_host(member));
    let mut command: Vec<String> = ["cairnctl", "backup", "save", "--endpoints", &endpoint]
        .map(str::to_owned)
        .to_vec();
    let mut env: Vec<Value> = Vec::new();
    let mut mounts: Vec<Value> = Vec::new();
    let mut volumes: Vec<Value> = Vec::new();
    let secret_env = |name: &str, secret: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
    match &plan.destination {
        BackupDestination::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            path_style,
            credentials_secret,
        } => {
            command.extend(["--to".to_owned(), format!("s3://{bucket}/{prefix}")]);
            if let Some(endpoint) = endpoint {
                command.extend(["--s3-endpoint".to_owned(), endpoint.clone()]);
            }
            if let Some(region) = region {
                command.extend(["--s3-region".to_owned(), region.clone()]);
            }
            if *path_style {
                command.push("--s3-path-style".to_owned());
            }
            env.push(secret_env("AWS_ACCESS_KEY_ID", credentials_secret, "accessKeyID"));
            env.push(secret_env(
                "AWS_SECRET_ACCESS_KEY",
                credentials_secret,
                "secretAccessKey",
            ));
        }
        BackupDestination::Volume { claim, path } => {
            command.extend(["--to".to_owned(), format!("{BACKUPS_DIR}/{path}")]);
            mounts.push(json!({"name": "backups", "mountPath": BACKUPS_DIR}));
            volumes.push(json!({"name": "backups", "persistentVolumeClaim": {"claimName": claim}}));
        }
    }
    if let Some(count) = plan.retain_count {
        command.extend(["--retain-count".to_owned(), count.to_string()]);
    }
    if let Some(age) = plan.retain_age {
        command.extend(["--retain-age".to_owned(), format!("{}s", age.as_secs())]);
    }
    command.extend(["--result-file".to_owned(), "/dev/termination-log".to_owned()]);
    if spec.auth.is_some() {
        let secret = names.operator_credentials_secret();
        env.push(secret_env("CAIRNCTL_USER", &secret, USERNAME_KEY));
        env.push(secret_env("CAIRNCTL_PASSWORD", &secret, PASSWORD_KEY));
    }
    if spec.client_tls.enabled {
        let secret = match &spec.client_tls.supplied {
            Some(supplied) => supplied.operator.clone(),
            None => names.operator_tls_secret(),
        };
        for (name, file) in [
            ("CAIRNCTL_CACERT", CA_CERT),
            ("CAIRNCTL_CERT", CERT),
            ("CAIRNCTL_KEY", KEY),
        ] {
            env.push(json!({"name": name, "value": format!("{CLIENT_TLS_DIR}/{file}")}));
        }
        mounts.push(json!({"name": "client-tls", "mountPath": CLIENT_TLS_DIR, "readOnly": true}));
        volumes.push(json!({"name": "client-tls", "secret": {"secretName": secret}}));
    }

    let labels = backup_labels(&names);
    let mut pod_labels = labels.clone();
    pod_labels.insert(JOB_LABEL.to_owned(), job.to_owned());
    let mut container = json!({
        "name": "backup",
        "image": spec.image,
        "command": command,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let Some(policy) = spec.pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    let mut pod = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
    });
    // Empty lists and maps stay out, as the API would leave them.
    let set = |object: &mut Value, key: &str, value: Value| {
        let empty = value.as_array().is_some_and(Vec::is_empty)
            || value.as_object().is_some_and(serde_json::Map::is_empty);
        if !empty {
            object[key] = value;
        }
    };
    set(&mut container, "env", json!(env));
    set(&mut container, "volumeMounts", json!(mounts));
    set(&mut pod, "volumes", json!(volumes));
    set(&mut pod, "tolerations", json!(spec.tolerations));
    set(&mut pod, "nodeSelector", json!(spec.node_selector));
    pod["containers"] = json!([container]);
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job,
            "namespace": spec.namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": pod,
            },
        },
    });
    serde_json::from_value(job).expect("a Job built from valid parts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::testing::{LABELS_YAML, OWNER_YAML, assert_yaml, owner, valid};

    fn job_of(spec_yaml: &str) -> Job {
        let spec = valid(spec_yaml);
        let plan = spec.backup.clone().expect("a backup plan");
        backup_job(&spec, &plan, &owner(), "kv-backup-1765000000", "kv-1")
    }

    #[test]
    fn an_s3_backup_streams_from_the_member_with_the_buckets_credentials() {
        let job = job_of(
            "spec:\n  image: cairn:dev\n  backup:\n    schedule: '*/5 * * * *'\n    retention: {count: 2, maxAge: 24h}\n    s3:\n      endpoint: http://minio.storage:9000\n      bucket: backups\n      region: eu-1\n      pathStyle: true\n      credentialsSecret: s3-creds\n",
        );
        let _ = LABELS_YAML;
        assert_yaml(
            &job,
            &format!(
                r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: kv-backup-1765000000
  namespace: prod
  labels: {{app.kubernetes.io/name: cairn-backup, app.kubernetes.io/instance: kv, app.kubernetes.io/managed-by: cairn-operator}}
  ownerReferences: {OWNER_YAML}
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 21600
  template:
    metadata:
      labels: {{app.kubernetes.io/name: cairn-backup, app.kubernetes.io/instance: kv, app.kubernetes.io/managed-by: cairn-operator, cairn.dev/backup-job: kv-backup-1765000000}}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      containers:
      - name: backup
        image: cairn:dev
        command: [cairnctl, backup, save, --endpoints, "http://kv-1.kv-peer.prod.svc.cluster.local:2379",
                  --to, s3://backups/prod/kv, --s3-endpoint, "http://minio.storage:9000", --s3-region, eu-1,
                  --s3-path-style, --retain-count, "2", --retain-age, 86400s, --result-file, /dev/termination-log]
        env:
        - {{name: AWS_ACCESS_KEY_ID, valueFrom: {{secretKeyRef: {{name: s3-creds, key: accessKeyID}}}}}}
        - {{name: AWS_SECRET_ACCESS_KEY, valueFrom: {{secretKeyRef: {{name: s3-creds, key: secretAccessKey}}}}}}
        terminationMessagePath: /dev/termination-log
        terminationMessagePolicy: FallbackToLogsOnError
"#
            ),
        );
    }

    #[test]
    fn a_volume_backup_mounts_the_claim_and_logs_in_and_presents_the_operators_certificate() {
        let job = job_of(
            "spec:\n  image: cairn:dev\n  auth: {enabled: true}\n  tls: {client: {enabled: true}}\n  backup:\n    schedule: '@daily'\n    volume: {claimName: kv-backups}\n",
        );
        assert_yaml(
            &job.spec.unwrap().template.spec.unwrap(),
            r#"
restartPolicy: Never
automountServiceAccountToken: false
containers:
- name: backup
  image: cairn:dev
  command: [cairnctl, backup, save, --endpoints, "https://kv-1.kv-peer.prod.svc.cluster.local:2379",
            --to, /backups/kv, --retain-count, "7", --result-file, /dev/termination-log]
  env:
  - {name: CAIRNCTL_USER, valueFrom: {secretKeyRef: {name: kv-operator-credentials, key: username}}}
  - {name: CAIRNCTL_PASSWORD, valueFrom: {secretKeyRef: {name: kv-operator-credentials, key: password}}}
  - {name: CAIRNCTL_CACERT, value: /etc/cairn/operator-tls/ca.crt}
  - {name: CAIRNCTL_CERT, value: /etc/cairn/operator-tls/tls.crt}
  - {name: CAIRNCTL_KEY, value: /etc/cairn/operator-tls/tls.key}
  volumeMounts:
  - {name: backups, mountPath: /backups}
  - {name: client-tls, mountPath: /etc/cairn/operator-tls, readOnly: true}
  terminationMessagePath: /dev/termination-log
  terminationMessagePolicy: FallbackToLogsOnError
volumes:
- {name: backups, persistentVolumeClaim: {claimName: kv-backups}}
- {name: client-tls, secret: {secretName: kv-operator-tls}}
"#,
        );
    }

    #[test]
    fn the_selector_matches_the_jobs_labels_and_never_the_members() {
        let names = Names::new("kv", "prod");
        let labels = backup_labels(&names);
        for pair in backup_selector(&names).split(',') {
            let (key, value) = pair.split_once('=').unwrap();
            assert_eq!(labels.get(key).map(String::as_str), Some(value));
        }
        assert_ne!(labels, names.labels());
        assert_ne!(
            labels.get("app.kubernetes.io/name"),
            names.labels().get("app.kubernetes.io/name")
        );
    }
}
