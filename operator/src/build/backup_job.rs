//! The pods that reach backups, all `cairnctl` in the cluster's own image: the Job that takes
//! one (`backup save`, streaming a snapshot from one member to the destination, verifying it and
//! pruning by retention), the Job that chooses the backup a new cluster restores (`backup list`),
//! and the members' init container that restores it (`backup restore`). Jobs leave their result
//! (or the tail of their log) as their pod's termination message, which the operator reads.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};

use super::names::{BOOTSTRAP_DIR, CLIENT_PORT, DATA_DIR, Names};
use super::statefulset::{container_security, insert_nonempty, pod_security};
use super::tls::{CA_CERT, CERT, KEY};
use crate::access::{PASSWORD_KEY, USERNAME_KEY};
use crate::validate::{BackupDestination, BackupPlan, RestorePlan, ValidSpec};

/// The label every backup Job and its pod carry with the cluster's name (beside the instance
/// label; the name label differs from the members' so their selector never matches).
pub const BACKUP_APP: &str = "cairn-backup";
/// The name label of the Job that chooses the backup a new cluster restores.
pub const RESTORE_APP: &str = "cairn-restore";
/// The volume of a claim backups are kept in.
const BACKUPS_VOLUME: &str = "backups";
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
    names.part_labels(BACKUP_APP)
}

/// The selector of a cluster's backup Jobs, as a label query.
pub fn backup_selector(names: &Names) -> String {
    names.part_selector(BACKUP_APP)
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
    let access = location_access(&plan.destination, false);
    command.extend(["--to".to_owned(), access.location.clone()]);
    command.extend(access.flags.iter().cloned());
    let (mut env, mut mounts, mut volumes) = (access.env, access.mounts, access.volumes);
    if let Some(count) = plan.retain_count {
        command.extend(["--retain-count".to_owned(), count.to_string()]);
    }
    if let Some(age) = plan.retain_age {
        command.extend(["--retain-age".to_owned(), format!("{}s", age.as_secs())]);
    }
    command.extend(["--result-file".to_owned(), "/dev/termination-log".to_owned()]);
    if spec.auth.is_some() {
        let secret = names.operator_credentials_secret();
        let secret_env = |name: &str, secret: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
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

    let container = cairnctl_container(spec, "backup", command, env, mounts);
    job_of(spec, owner, job, backup_labels(&names), container, volumes)
}

/// The Job that chooses the backup a new cluster restores (the newest, or the one named) and
/// proves its location readable, leaving the backup's name, revision and size as its result.
pub fn restore_source_job(spec: &ValidSpec, plan: &RestorePlan, owner: &OwnerReference) -> Job {
    let names = Names::of(spec);
    let access = location_access(&plan.source, true);
    let mut command: Vec<String> = ["cairnctl", "backup", "list", "--from", &access.location]
        .map(str::to_owned)
        .to_vec();
    command.extend(access.flags.iter().cloned());
    command.extend(["--result-file".to_owned(), "/dev/termination-log".to_owned()]);
    if plan.backup != "latest" {
        command.extend(["--backup".to_owned(), plan.backup.clone()]);
    }
    let container = cairnctl_container(spec, "restore-source", command, access.env, access.mounts);
    let name = restore_source_job_name(&names);
    job_of(
        spec,
        owner,
        &name,
        restore_labels(&names),
        container,
        access.volumes,
    )
}

/// The restore-source Job's name, within the 63 characters its pods carry in a label.
pub fn restore_source_job_name(names: &Names) -> String {
    let suffix = "-restore-source";
    let prefix: String = names.cluster.chars().take(63 - suffix.len()).collect();
    format!("{}{suffix}", prefix.trim_end_matches('-'))
}

/// The labels of a cluster's restore-source Job and its pod.
pub fn restore_labels(names: &Names) -> BTreeMap<String, String> {
    names.part_labels(RESTORE_APP)
}

/// The init container that restores the chosen backup into a member's data directory before it
/// first starts, when its bootstrap file forms the new cluster; members that join a running
/// cluster, and members that restart with data, skip it. Credentials are optional, so a pod
/// whose Secret is gone long after the restore still starts.
pub fn restore_init_container(
    spec: &ValidSpec,
    plan: &RestorePlan,
    chosen: &str,
    token: &str,
) -> RestoreStep {
    let access = location_access(&plan.source, true);
    let mut command: Vec<String> = ["cairnctl", "backup", "restore", "--from", &access.location]
        .map(str::to_owned)
        .to_vec();
    command.extend(access.flags.iter().cloned());
    command.extend(
        [
            chosen,
            "--name",
            "$(POD_NAME)",
            "--data-dir",
            &format!("{DATA_DIR}/data"),
            "--bootstrap-file",
            &format!("{BOOTSTRAP_DIR}/$(POD_NAME).yaml"),
            "--initial-cluster-token",
            token,
            "--skip-if-initialized",
        ]
        .map(str::to_owned),
    );
    let mut env =
        vec![json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})];
    env.extend(access.env.into_iter().map(|mut var| {
        var["valueFrom"]["secretKeyRef"]["optional"] = json!(true);
        var
    }));
    let mut mounts = vec![
        json!({"name": "data", "mountPath": DATA_DIR}),
        json!({"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": true}),
    ];
    mounts.extend(access.mounts);
    RestoreStep {
        container: cairnctl_container(spec, "restore", command, env, mounts),
        volumes: access.volumes,
    }
}

/// The restore init container and the volumes it needs beside the members'.
pub struct RestoreStep {
    pub container: Value,
    pub volumes: Vec<Value>,
}

/// How cairnctl reaches a location, and what its pod needs for it.
struct LocationAccess {
    /// `s3://bucket/prefix`, or the directory in the mounted claim.
    location: String,
    flags: Vec<String>,
    env: Vec<Value>,
    mounts: Vec<Value>,
    volumes: Vec<Value>,
}

fn location_access(destination: &BackupDestination, read_only: bool) -> LocationAccess {
    let secret_env = |name: &str, secret: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
    match destination {
        BackupDestination::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            path_style,
            credentials_secret,
        } => {
            let mut flags = Vec::new();
            if let Some(endpoint) = endpoint {
                flags.extend(["--s3-endpoint".to_owned(), endpoint.clone()]);
            }
            if let Some(region) = region {
                flags.extend(["--s3-region".to_owned(), region.clone()]);
            }
            if *path_style {
                flags.push("--s3-path-style".to_owned());
            }
            LocationAccess {
                location: format!("s3://{bucket}/{prefix}"),
                flags,
                env: vec![
                    secret_env("AWS_ACCESS_KEY_ID", credentials_secret, "accessKeyID"),
                    secret_env("AWS_SECRET_ACCESS_KEY", credentials_secret, "secretAccessKey"),
                ],
                mounts: Vec::new(),
                volumes: Vec::new(),
            }
        }
        BackupDestination::Volume { claim, path } => {
            let mut mount = json!({"name": BACKUPS_VOLUME, "mountPath": BACKUPS_DIR});
            let mut source = json!({"claimName": claim});
            if read_only {
                mount["readOnly"] = json!(true);
                source["readOnly"] = json!(true);
            }
            LocationAccess {
                location: format!("{BACKUPS_DIR}/{path}"),
                flags: Vec::new(),
                env: Vec::new(),
                mounts: vec![mount],
                volumes: vec![json!({"name": BACKUPS_VOLUME, "persistentVolumeClaim": source})],
            }
        }
    }
}

/// A container that runs `command` (cairnctl) in the cluster's image, with the members'
/// security settings; what it says when it fails is the tail of its log.
fn cairnctl_container(
    spec: &ValidSpec,
    name: &str,
    command: Vec<String>,
    env: Vec<Value>,
    mounts: Vec<Value>,
) -> Value {
    let mut container = json!({
        "name": name,
        "image": spec.image,
        "command": command,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(),
    });
    if let Some(policy) = spec.pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    insert_nonempty(&mut container, "env", json!(env));
    insert_nonempty(&mut container, "volumeMounts", json!(mounts));
    container
}

/// A Job of one pod that runs `container` once and leaves its result in its termination
/// message, with the members' security settings.
fn job_of(
    spec: &ValidSpec,
    owner: &OwnerReference,
    job: &str,
    labels: BTreeMap<String, String>,
    mut container: Value,
    volumes: Vec<Value>,
) -> Job {
    container["terminationMessagePath"] = json!("/dev/termination-log");
    let mut pod_labels = labels.clone();
    pod_labels.insert(JOB_LABEL.to_owned(), job.to_owned());
    let mut pod = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "securityContext": pod_security(),
    });
    insert_nonempty(&mut pod, "volumes", json!(volumes));
    insert_nonempty(&mut pod, "tolerations", json!(spec.tolerations));
    insert_nonempty(&mut pod, "nodeSelector", json!(spec.node_selector));
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
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: {{type: RuntimeDefault}}}}
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
        securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
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
securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
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
  securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
volumes:
- {name: backups, persistentVolumeClaim: {claimName: kv-backups}}
- {name: client-tls, secret: {secretName: kv-operator-tls}}
"#,
        );
    }

    #[test]
    fn the_restore_source_job_lists_the_location_and_names_the_chosen_backup() {
        let spec = valid(
            "spec:\n  image: cairn:dev\n  bootstrap:\n    restore:\n      backup: snapshot-20261207T101500.000Z-r7.db\n      volume: {claimName: old-backups, path: prod/kv}\n",
        );
        let plan = spec.restore.clone().unwrap();
        let job = restore_source_job(&spec, &plan, &owner());
        assert_eq!(job.metadata.name.as_deref(), Some("kv-restore-source"));
        assert_eq!(
            job.metadata.labels.as_ref().unwrap()["app.kubernetes.io/name"],
            "cairn-restore"
        );
        assert_yaml(
            &job.spec.unwrap().template.spec.unwrap().containers[0],
            r#"
name: restore-source
image: cairn:dev
command: [cairnctl, backup, list, --from, /backups/prod/kv, --result-file, /dev/termination-log,
          --backup, snapshot-20261207T101500.000Z-r7.db]
volumeMounts:
- {name: backups, mountPath: /backups, readOnly: true}
terminationMessagePath: /dev/termination-log
terminationMessagePolicy: FallbackToLogsOnError
securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
"#,
        );
        let long = Names::new(&"k".repeat(crate::validate::MAX_NAME_LENGTH), "prod");
        assert!(restore_source_job_name(&long).len() <= 63);
    }

    #[test]
    fn members_restore_the_chosen_backup_only_when_they_form_the_cluster() {
        let spec = valid(
            "spec:\n  image: cairn:dev\n  bootstrap:\n    restore:\n      s3: {bucket: b-1, prefix: prod/old, endpoint: 'http://s3:9000', pathStyle: true, credentialsSecret: creds}\n",
        );
        let plan = spec.restore.clone().unwrap();
        let step = restore_init_container(&spec, &plan, "snapshot-x-r9.db", "kv-token");
        assert!(step.volumes.is_empty());
        assert_yaml(
            &step.container,
            r#"
name: restore
image: cairn:dev
command: [cairnctl, backup, restore, --from, s3://b-1/prod/old, --s3-endpoint, "http://s3:9000", --s3-path-style,
          snapshot-x-r9.db, --name, $(POD_NAME), --data-dir, /var/lib/cairn/data,
          --bootstrap-file, /etc/cairn/bootstrap/$(POD_NAME).yaml, --initial-cluster-token, kv-token,
          --skip-if-initialized]
env:
- {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
- {name: AWS_ACCESS_KEY_ID, valueFrom: {secretKeyRef: {name: creds, key: accessKeyID, optional: true}}}
- {name: AWS_SECRET_ACCESS_KEY, valueFrom: {secretKeyRef: {name: creds, key: secretAccessKey, optional: true}}}
volumeMounts:
- {name: data, mountPath: /var/lib/cairn}
- {name: bootstrap, mountPath: /etc/cairn/bootstrap, readOnly: true}
terminationMessagePolicy: FallbackToLogsOnError
securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
"#,
        );

        // In the StatefulSet once the backup is chosen; not before.
        let set = crate::build::statefulset::statefulset(&spec, &owner(), "kv-token", 3);
        let pod = set.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.init_containers, None);
        let chosen = spec.with_restore_chosen(Some("snapshot-x-r9.db"));
        let set = crate::build::statefulset::statefulset(&chosen, &owner(), "kv-token", 3);
        let pod = set.spec.unwrap().template.spec.unwrap();
        let init = &pod.init_containers.unwrap()[0];
        assert_eq!(init.name, "restore");
        assert_eq!(
            init.security_context, pod.containers[0].security_context,
            "the restore runs as the member does"
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
