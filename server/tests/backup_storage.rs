//! `cairnctl backup save | list | fetch` against real storage: an S3 server (s3s-fs, a real S3
//! implementation over a local directory, with its own credentials, on loopback) and a directory.
//! Backups are verified, pruned by retention, and restore into a member with every key.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, Member, cairnctl, ok, start_as_one_cluster, wait_until};
use tempfile::TempDir;

const ACCESS_KEY: &str = "cairn-backup";
const SECRET_KEY: &str = "backup-secret-key";

/// An S3 server on loopback, serving the buckets (directories) under its root.
struct S3Server {
    endpoint: String,
    root: TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl S3Server {
    fn start(buckets: &[&str]) -> S3Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder;
        use s3s::auth::SimpleAuth;
        use s3s::service::S3ServiceBuilder;

        let root = TempDir::new().unwrap();
        for bucket in buckets {
            std::fs::create_dir(root.path().join(bucket)).unwrap();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let mut service = S3ServiceBuilder::new(s3s_fs::FileSystem::new(root.path()).unwrap());
        service.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = service.build();
        runtime.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        S3Server {
            endpoint,
            root,
            _runtime: runtime,
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// cairnctl with S3 credentials in its environment, as a backup Job's pod has them.
fn cairnctl_with(endpoint: &str, secret: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=30s")
        .args(args)
        .output()
        .expect("run cairnctl")
}

fn backup_ok(endpoint: &str, args: &[&str]) -> String {
    let out = cairnctl_with(endpoint, SECRET_KEY, args);
    assert!(
        out.status.success(),
        "cairnctl {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn listed(location: &str, s3: &[&str]) -> Vec<Value> {
    let mut args = vec!["backup", "list", "--from", location, "-w", "json"];
    args.extend_from_slice(s3);
    let out = backup_ok("127.0.0.1:1", &args);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Takes three backups (with writes between them) into `location` with a retention of two, and
/// returns the revision of the last.
fn three_backups_keep_two(endpoint: &str, location: &str, s3: &[&str], result_file: &Path) -> i64 {
    let mut last = 0;
    for round in 0..3 {
        for i in 0..50 {
            ok(endpoint, &["put", &format!("app/{round}/{i}"), &"v".repeat(300)]);
        }
        let result_arg = format!("--result-file={}", result_file.display());
        let mut args = vec![
            "backup",
            "save",
            "--to",
            location,
            "--retain-count=2",
            "-w",
            "json",
            &result_arg,
        ];
        args.extend_from_slice(s3);
        let out: Value = serde_json::from_str(&backup_ok(endpoint, &args)).unwrap();
        let written: Value = serde_json::from_str(&std::fs::read_to_string(result_file).unwrap()).unwrap();
        assert_eq!(out, written, "the result file holds what was printed");
        let revision = out["revision"].as_i64().unwrap();
        assert!(revision > last, "{out}");
        last = revision;
        assert_eq!(out["pruned"], if round == 2 { 1 } else { 0 }, "{out}");
        assert!(out["location"].as_str().unwrap().starts_with(location), "{out}");
    }
    let backups = listed(location, s3);
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert_eq!(backups[1]["revision"].as_i64(), Some(last), "{backups:?}");
    assert!(backups[0]["revision"].as_i64() < Some(last));
    last
}

/// The flags that make `member` the only member of a new cluster.
fn member_flags(member: &Member) -> Vec<String> {
    vec![
        format!("--name={}", member.name),
        format!("--data-dir={}", member.data_dir.display()),
        format!("--initial-cluster={}={}", member.name, member.peer_url),
        format!("--initial-cluster-token={}", member.token),
        format!("--initial-advertise-peer-urls={}", member.peer_url),
    ]
}

/// Restores the latest backup in `location` into a new member (with `backup restore` in one step,
/// or `backup fetch` then `snapshot restore`) and checks every key.
fn restore_latest(source: &str, location: &str, s3: &[&str], revision: i64, one_step: bool) {
    let root = TempDir::new().unwrap();
    let mut members = vec![Member::new(root.path(), "restored", "from-backup")];
    let flags = member_flags(&members[0]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    if one_step {
        let mut args = vec!["backup", "restore", "--from", location, "latest"];
        args.extend_from_slice(s3);
        args.extend_from_slice(&flags);
        let out = cairnctl_with("127.0.0.1:1", SECRET_KEY, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(&format!("at revision {revision}")),
            "{}",
            text(&out.stderr)
        );
        // A pod's restore step runs again when it restarts: with --skip-if-initialized it leaves
        // the member alone; without, it refuses to overwrite it.
        let again = cairnctl_with("127.0.0.1:1", SECRET_KEY, &args);
        assert!(
            text(&again.stderr).contains("exists and is not empty"),
            "{}",
            text(&again.stderr)
        );
        args.push("--skip-if-initialized");
        let skipped = cairnctl_with("127.0.0.1:1", SECRET_KEY, &args);
        assert!(skipped.status.success(), "{}", text(&skipped.stderr));
        assert!(
            text(&skipped.stderr).contains("nothing restored"),
            "{}",
            text(&skipped.stderr)
        );
        let leftovers: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("download"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    } else {
        let file = root.path().join("latest.db");
        let file_arg = file.to_str().unwrap();
        let mut args = vec!["backup", "fetch", "--from", location, "latest", file_arg];
        args.extend_from_slice(s3);
        assert!(backup_ok("127.0.0.1:1", &args).starts_with("Fetched "));
        let status = cairnctl("127.0.0.1:1", &["snapshot", "status", file_arg, "-w", "json"]);
        let status: Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(status["revision"].as_i64(), Some(revision));
        let mut args = vec!["snapshot", "restore", file_arg];
        args.extend_from_slice(&flags);
        let restore = cairnctl("127.0.0.1:1", &args);
        assert!(restore.status.success(), "{}", text(&restore.stderr));
    }
    start_as_one_cluster(&mut members);
    let restored = members[0].endpoint();
    wait_until("the restored member to serve", Duration::from_secs(30), || {
        support::etcdctl(&restored, &["get", "probe"]).status.success()
    });
    let keys = |endpoint: &str| {
        ok(
            endpoint,
            &["get", "app/", "--prefix", &format!("--rev={revision}")],
        )
    };
    assert_eq!(keys(&restored), keys(source));
}

#[test]
fn backups_go_to_s3_verified_pruned_and_restore() {
    let s3 = S3Server::start(&["backups"]);
    let cluster = Cluster::start(3, "backup-s3");
    let endpoint = cluster.members[2].endpoint();
    let flags = [
        "--s3-endpoint",
        s3.endpoint.as_str(),
        "--s3-path-style",
        "--s3-region=us-east-1",
    ];
    let location = "s3://backups/prod/kv";
    let result_file = cluster.root.path().join("result.json");
    let revision = three_backups_keep_two(&endpoint, location, &flags, &result_file);
    // Stored where the user said, under the prefix, as whole snapshot files.
    let stored = s3.root.path().join("backups/prod/kv");
    let files: Vec<_> = std::fs::read_dir(&stored)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    restore_latest(&endpoint, location, &flags, revision, true);

    // Wrong credentials: the backup fails with the storage's reason, and nothing is added.
    let mut args = vec!["backup", "save", "--to", location];
    args.extend_from_slice(&flags);
    let refused = cairnctl_with(&endpoint, "not-the-secret", &args);
    assert!(!refused.status.success());
    let reason = text(&refused.stderr);
    assert!(
        reason.contains("backup storage s3://backups/prod/kv") && reason.contains("403"),
        "{reason}"
    );
    assert_eq!(listed(location, &flags).len(), 2);
}

#[test]
fn backups_go_to_a_directory_verified_pruned_and_restore() {
    let cluster = Cluster::start(1, "backup-dir");
    let endpoint = cluster.members[0].endpoint();
    let dir = cluster.root.path().join("volume/backups");
    let location = dir.to_str().unwrap().to_owned();
    let result_file = cluster.root.path().join("result.json");
    let revision = three_backups_keep_two(&endpoint, &location, &[], &result_file);
    // Only whole backups are left: no partial upload files.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("snapshot-") && n.ends_with(".db")),
        "{names:?}"
    );
    restore_latest(&endpoint, &location, &[], revision, false);
    pod_restore_steps(cluster.root.path(), &location);
    // More than one endpoint is refused before anything is written.
    let two = format!("{endpoint},{endpoint}");
    let refused = cairnctl(&two, &["backup", "save", "--to", &location]);
    assert!(text(&refused.stderr).contains("from one selected endpoint"));
    assert_eq!(listed(&location, &[]).len(), 2);
}

/// What a member pod's restore step does: it names the newest backup once (`list --result-file`)
/// and each member restores it only when its bootstrap file forms a new cluster.
fn pod_restore_steps(root: &Path, location: &str) {
    let newest_file = root.join("newest.json");
    let newest_arg = newest_file.to_str().unwrap();
    backup_ok(
        "127.0.0.1:1",
        &["backup", "list", "--from", location, "--result-file", newest_arg],
    );
    let newest: Value = serde_json::from_slice(&std::fs::read(&newest_file).unwrap()).unwrap();
    let all = listed(location, &[]);
    assert_eq!(newest["name"], all.last().unwrap()["name"], "{newest}");
    assert_eq!(newest["count"].as_u64(), Some(2));
    let empty = root.join("no-backups-here");
    std::fs::create_dir_all(&empty).unwrap();
    let none = cairnctl(
        "127.0.0.1:1",
        &[
            "backup",
            "list",
            "--from",
            empty.to_str().unwrap(),
            "--result-file",
            newest_arg,
        ],
    );
    assert!(
        text(&none.stderr).contains("no backups in"),
        "{}",
        text(&none.stderr)
    );
    let oldest = all[0]["name"].as_str().unwrap();
    let args = ["backup", "list", "--from", location, "--result-file", newest_arg];
    backup_ok("127.0.0.1:1", &[&args[..], &["--backup", oldest]].concat());
    let named: Value = serde_json::from_slice(&std::fs::read(&newest_file).unwrap()).unwrap();
    assert_eq!(named["name"].as_str(), Some(oldest));
    let missing = cairnctl(
        "127.0.0.1:1",
        &[&args[..], &["--backup", "snapshot-x.db"]].concat(),
    );
    assert!(
        text(&missing.stderr).contains("no backup snapshot-x.db in"),
        "{}",
        text(&missing.stderr)
    );
    std::fs::write(&newest_file, newest.to_string()).unwrap();

    let name = newest["name"].as_str().unwrap();
    let restore = |member: &str, bootstrap: &str| {
        let file = root.join(format!("{member}.yaml"));
        std::fs::write(&file, bootstrap).unwrap();
        let data_dir = root.join(format!("pods/{member}/data"));
        let out = cairnctl(
            "127.0.0.1:1",
            &[
                "backup",
                "restore",
                "--from",
                location,
                name,
                "--name",
                member,
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--bootstrap-file",
                file.to_str().unwrap(),
                "--initial-cluster-token=restored",
                "--skip-if-initialized",
            ],
        );
        (out, data_dir)
    };
    let initial = "initial-cluster: kv-0=http://127.0.0.1:1,kv-1=http://127.0.0.1:2\n";
    let (formed, data_dir) = restore("kv-1", &format!("{initial}initial-cluster-state: new\n"));
    assert!(formed.status.success(), "{}", text(&formed.stderr));
    assert!(
        text(&formed.stderr).contains("member "),
        "{}",
        text(&formed.stderr)
    );
    assert!(data_dir.exists());
    let (joins, data_dir) = restore("kv-2", &format!("{initial}initial-cluster-state: existing\n"));
    assert!(joins.status.success(), "{}", text(&joins.stderr));
    assert!(
        text(&joins.stderr).contains("joins a running cluster"),
        "{}",
        text(&joins.stderr)
    );
    assert!(!data_dir.exists());
    let (unnamed, _) = restore("kv-5", &format!("{initial}initial-cluster-state: new\n"));
    assert!(
        text(&unnamed.stderr).contains("has no entry for kv-5"),
        "{}",
        text(&unnamed.stderr)
    );
    let (srv, _) = restore("kv-0", "discovery-srv: kv-peer\ninitial-cluster-state: new\n");
    assert!(
        text(&srv.stderr).contains("DNS SRV cannot be restored into"),
        "{}",
        text(&srv.stderr)
    );
}
