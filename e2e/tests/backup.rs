//! Backups of KVClusters in the sandbox, to a real S3 server (s3s-fs, on loopback, with its own
//! credentials) and to a claim: a one-minute schedule and on-demand requests take verified
//! backups from a follower, retention prunes the bucket, status, Events and metrics report each
//! one; a destination that refuses the credentials makes `BackupFailing` say why while the
//! cluster stays Available. A new cluster restored from the latest backup has every key; one
//! whose source cannot be read says so and starts nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_e2e::testkit::{TestNamespace, TestSandbox, poll_until};
use cairn_operator::crd::{BackupStatus, KVCluster, KVClusterStatus, SuccessfulBackup};
use common::{
    OperatorSandbox, client_options, member_endpoint, operator_events, wait_settled, with_operator,
};
use etcd_client::Client;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

const ACCESS_KEY: &str = "cairn-e2e";
const SECRET_KEY: &str = "s3-secret-for-backups";
const BUCKET: &str = "backups";

/// An S3 server on loopback storing objects as files under `root`.
struct S3Server {
    endpoint: String,
    root: tempfile::TempDir,
}

impl S3Server {
    async fn start() -> S3Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder;
        use s3s::auth::SimpleAuth;
        use s3s::service::S3ServiceBuilder;

        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let mut service = S3ServiceBuilder::new(s3s_fs::FileSystem::new(root.path()).unwrap());
        service.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = service.build();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        S3Server { endpoint, root }
    }

    /// The backups stored under `prefix`, by name.
    fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        let dir = self.root.path().join(BUCKET).join(prefix);
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_and_requested_backups_are_verified_pruned_and_reported() {
    let s3 = S3Server::start().await;
    let OperatorSandbox {
        env,
        context,
        dir: _dir,
    } = OperatorSandbox::start(20743, 27890, 31).await;
    let metrics = context.metrics.clone();
    with_operator(&env, context, async {
        tokio::join!(
            async {
                let (source, newest) = to_s3(&env, &s3).await;
                from_backup(&env, &s3, &source, &newest).await;
            },
            to_volume(&env),
            refused(&env, &s3),
            unreadable(&env, &s3),
        );
    })
    .await;
    let text = metrics.render();
    for line in [
        "cairn_operator_backups_total{cluster=\"kv\",namespace=",
        "cairn_operator_backup_last_size_bytes{cluster=\"kv\"",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("cairn_operator_backups_total") && l.contains("result=\"failed\"")),
        "{text}"
    );
}

fn credentials(secret_key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: s3-credentials}}\n\
         stringData: {{accessKeyID: {ACCESS_KEY}, secretAccessKey: {secret_key}}}\n"
    )
}

fn s3_cluster(replicas: u32, endpoint: &str) -> String {
    format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv}}\n\
         spec:\n  replicas: {replicas}\n  storage: {{size: 64Mi}}\n  backup:\n    schedule: '* * * * *'\n    \
         retention: {{count: 2}}\n    s3: {{endpoint: '{endpoint}', bucket: {BUCKET}, pathStyle: true, \
         credentialsSecret: s3-credentials}}\n"
    )
}

/// Three members backed up to S3 every minute and on request, two backups kept. Returns the
/// namespace and the newest backup.
async fn to_s3(env: &TestSandbox, s3: &S3Server) -> (String, SuccessfulBackup) {
    let ns = env.namespace("backup-s3").await;
    ns.apply(&credentials(SECRET_KEY)).await;
    ns.apply(&s3_cluster(3, &s3.endpoint)).await;
    let settled = wait_settled(&ns, 3, Duration::from_secs(180)).await;
    let leader = settled.leader.clone().unwrap();

    let endpoint = member_endpoint(&ns, &leader).await;
    let mut client = Client::connect([endpoint.as_str()], Some(client_options()))
        .await
        .unwrap();
    for i in 0..100 {
        client
            .put(format!("backed/{i:03}"), vec![b'v'; 1000], None)
            .await
            .unwrap();
    }
    let written = client.get("backed/099", None).await.unwrap();
    let revision = written.header().unwrap().revision();

    // The schedule takes the first one within a minute or so; then two on request.
    let first = next_success(&ns, None, Duration::from_secs(150)).await;
    let mut last = first.clone();
    for request in ["one", "two"] {
        annotate(&ns, request).await;
        last = next_success(&ns, Some(&last), Duration::from_secs(90)).await;
        assert_eq!(last.last_request.as_deref(), Some(request), "{last:#?}");
    }
    let newest = last.last_successful.clone().unwrap();
    assert!(
        newest.revision >= revision,
        "{newest:#?} holds revision {revision}"
    );
    assert!(newest.size_bytes > 100_000, "{newest:#?}");
    let prefix = format!("{}/kv", ns.name);
    assert_eq!(newest.location, format!("s3://{BUCKET}/{prefix}/{}", newest.name));
    assert_ne!(
        newest.job.rsplit_once("-backup-").map(|_| ()),
        None,
        "{newest:#?}"
    );

    // Taken from a follower, never the leader.
    let jobs: Api<Job> = ns.api();
    let job = jobs.get(&newest.job).await.unwrap();
    let command = job.spec.unwrap().template.spec.unwrap().containers[0]
        .command
        .clone()
        .unwrap();
    let source = &command[command.iter().position(|a| a == "--endpoints").unwrap() + 1];
    assert!(
        source.starts_with("http://kv-") && !source.contains(&format!("{leader}.")),
        "backup from {source}, leader {leader}"
    );

    // Retention: with the schedule suspended and nothing running, two are kept, the newest
    // among them, and it is a snapshot of the cluster's data with every key.
    suspend(&ns).await;
    let objects = s3.objects(&prefix);
    assert_eq!(objects.len(), 2, "{objects:?}");
    let newest_file = objects
        .iter()
        .find(|p| p.file_name().unwrap() == newest.name.as_str())
        .unwrap_or_else(|| panic!("{} not among {objects:?}", newest.name));
    let status = snapshot_status(newest_file);
    assert_eq!(status["revision"].as_i64(), Some(newest.revision), "{status}");
    assert!(status["totalKey"].as_i64().unwrap() >= 100, "{status}");

    // Finished Jobs beyond the newest three are deleted.
    let finished = jobs.list(&ListParams::default()).await.unwrap().items.len();
    assert!(finished <= 3, "{finished} backup Jobs kept");

    let events = operator_events(&ns, &["BackupSucceeded"]).await;
    assert!(events.len() >= 3, "{events:?}");
    assert!(
        events
            .iter()
            .any(|(_, note, _)| note.contains(&newest.name) && note.contains("verified")),
        "{events:?}"
    );
    (ns.name.clone(), newest)
}

fn restoring_cluster(endpoint: &str, prefix: &str) -> String {
    format!(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv}}\n\
         spec:\n  replicas: 3\n  storage: {{size: 64Mi}}\n  bootstrap:\n    restore:\n      \
         s3: {{endpoint: '{endpoint}', bucket: {BUCKET}, prefix: {prefix}, pathStyle: true, \
         credentialsSecret: s3-credentials}}\n"
    )
}

/// A new three-member cluster from the newest backup of `source`'s cluster: every key.
async fn from_backup(env: &TestSandbox, s3: &S3Server, source: &str, newest: &SuccessfulBackup) {
    let ns = env.namespace("restored").await;
    ns.apply(&credentials(SECRET_KEY)).await;
    ns.apply(&restoring_cluster(&s3.endpoint, &format!("{source}/kv")))
        .await;
    let status = wait_settled(&ns, 3, Duration::from_secs(240)).await;
    let from = status
        .restored_from
        .clone()
        .expect("status says what it was restored from");
    assert_eq!(
        (from.backup.as_str(), from.revision, from.size_bytes),
        (newest.name.as_str(), newest.revision, newest.size_bytes)
    );
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "RestoreSource")
        .unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "Chosen")
    );

    // Every member serves the backup's data.
    for member in ["kv-0", "kv-1", "kv-2"] {
        let endpoint = member_endpoint(&ns, member).await;
        let mut client = Client::connect([endpoint.as_str()], Some(client_options()))
            .await
            .unwrap();
        let options = etcd_client::GetOptions::new().with_prefix().with_serializable();
        let keys = client.get("backed/", Some(options)).await.unwrap();
        assert_eq!(keys.kvs().len(), 100, "{member}");
        assert!(
            keys.kvs()
                .iter()
                .all(|kv| kv.value() == vec![b'v'; 1000].as_slice())
        );
    }
    // A cluster of its own: another ID than the source's.
    let source_id = {
        let clusters: Api<KVCluster> = Api::namespaced(ns.client.clone(), source);
        clusters.get("kv").await.unwrap().status.unwrap().cluster_id
    };
    assert_ne!(status.cluster_id, source_id);
}

/// A restore from a location without backups: the condition says so, and nothing starts.
async fn unreadable(env: &TestSandbox, s3: &S3Server) {
    let ns = env.namespace("unreadable").await;
    ns.apply(&credentials(SECRET_KEY)).await;
    ns.apply(&restoring_cluster(&s3.endpoint, "nothing/here")).await;
    let said = poll_until(Duration::from_secs(120), || async {
        let status = cluster_status(&ns).await;
        let condition = status.conditions.iter().find(|c| c.type_ == "RestoreSource")?;
        (condition.status == "False").then(|| condition.clone())
    })
    .await;
    let Some(condition) = said else {
        panic!(
            "no RestoreSource=False; status {:#?}\n{}",
            cluster_status(&ns).await,
            ns.report().await
        );
    };
    assert_eq!(condition.reason, "SourceUnreadable");
    assert!(
        condition
            .message
            .contains(&format!("no backups in s3://{BUCKET}/nothing/here")),
        "{condition:#?}"
    );
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = ns.api();
    assert!(sets.get_opt("kv").await.unwrap().is_none(), "nothing starts");
    assert!(
        !operator_events(&ns, &["RestoreSourceUnreadable"])
            .await
            .is_empty()
    );
}

/// One member backed up into a claim.
async fn to_volume(env: &TestSandbox) {
    let ns = env.namespace("backup-volume").await;
    ns.apply(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: kv-backups}\n\
         spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 256Mi}}}\n",
    )
    .await;
    ns.apply(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\n\
         spec:\n  replicas: 1\n  storage: {size: 64Mi}\n  backup:\n    schedule: '* * * * *'\n    \
         volume: {claimName: kv-backups, path: nightly}\n",
    )
    .await;
    wait_settled(&ns, 1, Duration::from_secs(180)).await;
    let status = next_success(&ns, None, Duration::from_secs(150)).await;
    let backup = status.last_successful.unwrap();
    assert_eq!(backup.location, format!("/backups/nightly/{}", backup.name));
    assert!(backup.size_bytes > 0 && backup.revision > 0, "{backup:#?}");
    let cluster = cluster_status(&ns).await;
    let failing = cluster
        .conditions
        .iter()
        .find(|c| c.type_ == "BackupFailing")
        .unwrap();
    assert_eq!(
        (failing.status.as_str(), failing.reason.as_str()),
        ("False", "BackupSucceeded")
    );
}

/// Credentials the bucket refuses: BackupFailing says why; the cluster stays Available.
async fn refused(env: &TestSandbox, s3: &S3Server) {
    let ns = env.namespace("backup-refused").await;
    ns.apply(&credentials("not-the-secret")).await;
    ns.apply(&s3_cluster(1, &s3.endpoint)).await;
    wait_settled(&ns, 1, Duration::from_secs(180)).await;
    let failing = poll_until(Duration::from_secs(150), || async {
        let status = cluster_status(&ns).await;
        let condition = status.conditions.iter().find(|c| c.type_ == "BackupFailing")?;
        (condition.status == "True").then(|| (status.clone(), condition.clone()))
    })
    .await;
    let Some((status, condition)) = failing else {
        panic!(
            "no BackupFailing; status {:#?}\n{}",
            cluster_status(&ns).await,
            ns.report().await
        );
    };
    assert_eq!(condition.reason, "BackupFailed");
    assert!(
        condition.message.contains("Error") && condition.message.contains(BUCKET),
        "{condition:#?}"
    );
    let available = status.conditions.iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!(available.status, "True", "{status:#?}");
    assert_ne!(status.phase.as_deref(), Some("Degraded"));
    let backup = status.backup.unwrap();
    assert_eq!(backup.last_successful, None);
    assert_eq!(backup.last_failed.unwrap().reason, condition.message);
    let events = operator_events(&ns, &["BackupFailed"]).await;
    assert!(!events.is_empty());
}

async fn cluster_status(ns: &TestNamespace) -> KVClusterStatus {
    let clusters: Api<KVCluster> = ns.api();
    clusters
        .get("kv")
        .await
        .ok()
        .and_then(|c| c.status)
        .unwrap_or_default()
}

/// Waits for a successful backup newer than `after`'s.
async fn next_success(ns: &TestNamespace, after: Option<&BackupStatus>, within: Duration) -> BackupStatus {
    let before = after
        .and_then(|s| s.last_successful.as_ref())
        .map(|b| b.job.clone());
    let done = poll_until(within, || async {
        let backup = cluster_status(ns).await.backup?;
        let job = backup.last_successful.as_ref()?.job.clone();
        (Some(job) != before).then_some(backup)
    })
    .await;
    match done {
        Some(backup) => backup,
        None => panic!(
            "no new successful backup within {within:?}; status {:#?}\n{}",
            cluster_status(ns).await,
            ns.report().await
        ),
    }
}

async fn annotate(ns: &TestNamespace, value: &str) {
    let clusters: Api<KVCluster> = ns.api();
    let patch = serde_json::json!({"metadata": {"annotations": {"cairn.dev/backup-now": value}}});
    clusters
        .patch("kv", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Suspends the schedule and waits until no backup runs.
async fn suspend(ns: &TestNamespace) {
    let clusters: Api<KVCluster> = ns.api();
    let patch = serde_json::json!({"spec": {"backup": {"suspend": true}}});
    clusters
        .patch("kv", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let idle = poll_until(Duration::from_secs(90), || async {
        let backup = cluster_status(ns).await.backup?;
        (backup.active.is_none() && backup.next_schedule_time.is_none()).then_some(())
    })
    .await;
    assert!(idle.is_some(), "{:#?}", cluster_status(ns).await);
}

/// `cairnctl snapshot status -w json` of a backup file.
fn snapshot_status(file: &Path) -> serde_json::Value {
    let cairnctl = Path::new(env!("CARGO_BIN_EXE_sandbox")).with_file_name("cairnctl");
    let output = Command::new(&cairnctl)
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}
