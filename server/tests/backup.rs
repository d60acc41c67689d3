//! Backups through the tools users run: `cairnctl snapshot save | status | restore` against real
//! members, and etcd's own tools (Debian's etcdctl 3.4 and etcd) on the same files both ways.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{Cluster, Etcd, Member, cairnctl, ctl_ok, etcdctl, ok, start_as_one_cluster, wait_until};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(output: &str) -> Value {
    serde_json::from_str(output).unwrap_or_else(|e| panic!("{e}: {output}"))
}

/// Every key of the store at its latest revision (or at `revision`), with their revisions.
fn all_keys(endpoint: &str, revision: Option<i64>) -> Value {
    let mut args = vec![
        "get".to_owned(),
        "".into(),
        "--prefix".into(),
        "-w".into(),
        "json".into(),
    ];
    if let Some(revision) = revision {
        args.push(format!("--rev={revision}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    json(&ok(endpoint, &args))["kvs"].clone()
}

fn hash_kv(endpoint: &str, revision: i64) -> u64 {
    let out = ok(
        endpoint,
        &["endpoint", "hashkv", &format!("--rev={revision}"), "-w", "json"],
    );
    json(&out)[0]["HashKV"]["hash"].as_u64().unwrap()
}

fn cluster_id(endpoint: &str) -> u64 {
    json(&ok(endpoint, &["endpoint", "status", "-w", "json"]))[0]["Status"]["header"]["cluster_id"]
        .as_u64()
        .unwrap()
}

/// Writes a store with history, values larger than a page, deletes, a lease with a key, a
/// compaction and auth users.
fn write_history(endpoint: &str) {
    for i in 0..120 {
        ok(
            endpoint,
            &["put", &format!("app/{}", i % 40), &format!("value-{i}")],
        );
    }
    // Values larger than a page go to bbolt's overflow pages.
    ok(endpoint, &["put", "large/1", &"L".repeat(10_000)]);
    ok(endpoint, &["put", "large/2", &"M".repeat(50_000)]);
    ok(endpoint, &["del", "app/3"]);
    ok(endpoint, &["del", "app/1", "app/2"]);
    let lease = ok(endpoint, &["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_owned();
    ok(
        endpoint,
        &["put", "session/owner", "me", &format!("--lease={lease}")],
    );
    ok(endpoint, &["compaction", "60"]);
    ok(endpoint, &["user", "add", "reader:secret"]);
    ok(endpoint, &["role", "add", "readers"]);
    ok(
        endpoint,
        &["role", "grant-permission", "readers", "read", "app/", "--prefix"],
    );
    ok(endpoint, &["user", "grant-role", "reader", "readers"]);
}

fn snapshot_status(tool: fn(&str, &[&str]) -> std::process::Output, file: &Path, format: &str) -> String {
    let out = tool(
        "127.0.0.1:1",
        &["snapshot", "status", file.to_str().unwrap(), "-w", format],
    );
    assert!(out.status.success(), "snapshot status: {}", text(&out.stderr));
    text(&out.stdout)
}

/// `cairnctl snapshot restore` of `file` for each of `members`, as one new cluster.
fn restore_members(file: &Path, members: &[Member]) {
    let initial: Vec<String> = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect();
    for member in members {
        let out = cairnctl(
            "127.0.0.1:1",
            &[
                "snapshot",
                "restore",
                file.to_str().unwrap(),
                &format!("--name={}", member.name),
                &format!("--data-dir={}", member.data_dir.display()),
                &format!("--initial-cluster={}", initial.join(",")),
                &format!("--initial-cluster-token={}", member.token),
                &format!("--initial-advertise-peer-urls={}", member.peer_url),
            ],
        );
        assert!(
            out.status.success(),
            "restore {}: {}",
            member.name,
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("Restored snapshot"),
            "{}",
            text(&out.stderr)
        );
    }
}

fn wait_serving(members: &[Member]) {
    for member in members {
        wait_until(
            &format!("{} to serve", member.name),
            Duration::from_secs(30),
            || etcdctl(&member.endpoint(), &["get", "probe"]).status.success(),
        );
    }
}

#[test]
fn a_snapshot_restores_into_a_new_three_member_cluster_with_equal_hash_kv() {
    let source = Cluster::start(3, "backup-source");
    let member = source.members[1].endpoint();
    write_history(&source.endpoints());
    // A linearizable read through the member first, so its snapshot holds every write.
    let revision = json(&ok(&member, &["get", "probe", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .unwrap();
    let file = source.root.path().join("backup.db");
    ctl_ok(&member, &["snapshot", "save", file.to_str().unwrap()]);

    // Status: the snapshot's revision, and the very bytes etcdctl prints for it in every format.
    let status = json(&snapshot_status(cairnctl, &file, "json"));
    assert_eq!(status["revision"].as_i64(), Some(revision), "{status}");
    for format in ["simple", "json", "table"] {
        assert_eq!(
            snapshot_status(cairnctl, &file, format),
            snapshot_status(etcdctl, &file, format),
            "snapshot status -w {format}"
        );
    }

    let root = tempfile::TempDir::new().unwrap();
    let mut restored: Vec<Member> = (0..3)
        .map(|i| Member::new(root.path(), &format!("r{i}"), "backup-restored"))
        .collect();
    restore_members(&file, &restored);
    start_as_one_cluster(&mut restored);
    wait_serving(&restored);

    let expected = hash_kv(&member, revision);
    for member in &restored {
        let endpoint = member.endpoint();
        assert_eq!(
            hash_kv(&endpoint, revision),
            expected,
            "HashKV of {}",
            member.name
        );
        assert_eq!(
            all_keys(&endpoint, None),
            all_keys(&source.members[1].endpoint(), Some(revision))
        );
    }
    let first = restored[0].endpoint();
    assert_ne!(
        cluster_id(&first),
        cluster_id(&member),
        "a restored cluster is a new cluster"
    );
    // History kept, compaction kept, leases and users kept.
    assert_eq!(
        all_keys(&first, Some(80)),
        all_keys(&member, Some(80)),
        "history after the compaction point"
    );
    let compacted = etcdctl(&first, &["get", "app/0", "--rev=20"]);
    assert!(text(&compacted.stderr).contains("required revision has been compacted"));
    let leases = ok(&first, &["lease", "list"]);
    assert!(leases.contains("found 1 leases"), "{leases}");
    assert!(ok(&first, &["user", "get", "reader"]).contains("readers"));
    // The new cluster goes on from the snapshot's revision.
    let put = json(&ok(&first, &["put", "after", "restore", "-w", "json"]));
    assert_eq!(put["header"]["revision"].as_i64(), Some(revision + 1), "{put}");
    for member in &restored {
        wait_until("the write to reach every member", Duration::from_secs(10), || {
            ok(&member.endpoint(), &["get", "after", "--consistency=s"]).contains("restore")
        });
    }
}

#[test]
fn damaged_snapshots_and_bad_restores_are_refused_by_name_and_leave_nothing_behind() {
    let source = Cluster::start(1, "backup-damaged");
    let member = source.members[0].endpoint();
    for i in 0..300 {
        ok(&member, &["put", &format!("k{i}"), &"v".repeat(200)]);
    }
    let file = source.root.path().join("good.db");
    ctl_ok(&member, &["snapshot", "save", file.to_str().unwrap()]);
    let bytes = std::fs::read(&file).unwrap();
    let dir = source.root.path();
    let write = |name: &str, content: &[u8]| -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    let cases = [
        (write("flipped.db", &flipped), "SHA-256 trailer does not match"),
        (
            write("truncated.db", &bytes[..bytes.len() - 4096]),
            "SHA-256 trailer does not match",
        ),
        (write("garbage.db", &vec![7; 8192]), "not a bbolt database"),
        (dir.join("missing.db"), "No such file"),
    ];
    for (path, reason) in &cases {
        let status = cairnctl("127.0.0.1:1", &["snapshot", "status", path.to_str().unwrap()]);
        assert!(!status.status.success());
        assert!(
            text(&status.stderr).contains(reason),
            "status {}: {}",
            path.display(),
            text(&status.stderr)
        );
        let data_dir = dir.join(format!(
            "{}.restored",
            path.file_name().unwrap().to_string_lossy()
        ));
        let restore = cairnctl(
            "127.0.0.1:1",
            &[
                "snapshot",
                "restore",
                path.to_str().unwrap(),
                &format!("--data-dir={}", data_dir.display()),
            ],
        );
        assert!(!restore.status.success());
        assert!(
            text(&restore.stderr).contains(reason),
            "restore {}: {}",
            path.display(),
            text(&restore.stderr)
        );
        assert!(!data_dir.exists(), "a failed restore left {}", data_dir.display());
    }
    // A database copied without its trailer restores only when asked to skip the check.
    let unhashed = write("unhashed.db", &bytes[..bytes.len() - 32]);
    let data_dir = dir.join("unhashed.restored");
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "snapshot".to_owned(),
            "restore".into(),
            unhashed.display().to_string(),
            format!("--data-dir={}", data_dir.display()),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cairnctl("127.0.0.1:1", &args)
    };
    assert!(text(&restore(&[]).stderr).contains("--skip-hash-check"));
    assert!(restore(&["--skip-hash-check"]).status.success());
    // Restoring over a data dir that holds something is refused; so are flags that disagree.
    let again = restore(&["--skip-hash-check"]);
    assert!(
        text(&again.stderr).contains("exists and is not empty"),
        "{}",
        text(&again.stderr)
    );
    let other = restore(&["--name=elsewhere", "--skip-hash-check"]);
    assert!(
        text(&other.stderr).contains("is not in --initial-cluster"),
        "{}",
        text(&other.stderr)
    );
}

#[test]
fn etcd_restores_cairn_snapshots_and_cairn_restores_etcds() {
    // Cairn → etcd: etcdctl restores a Cairn snapshot and etcd serves the same keys and history.
    let cairn = Cluster::start(1, "backup-to-etcd");
    let member = cairn.members[0].endpoint();
    write_history(&member);
    let revision = json(&ok(&member, &["get", "probe", "-w", "json"]))["header"]["revision"]
        .as_i64()
        .unwrap();
    let file = cairn.root.path().join("cairn.db");
    ctl_ok(&member, &["snapshot", "save", file.to_str().unwrap()]);
    let etcd = Etcd::restored_from(&file);
    let from_cairn = etcd.endpoint();
    assert_eq!(all_keys(&from_cairn, None), all_keys(&member, None));
    assert_eq!(all_keys(&from_cairn, Some(80)), all_keys(&member, Some(80)));
    let header = json(&ok(&from_cairn, &["get", "probe", "-w", "json"]))["header"].clone();
    assert_eq!(header["revision"].as_i64(), Some(revision), "{header}");
    assert!(ok(&from_cairn, &["lease", "list"]).contains("found 1 leases"));
    assert!(ok(&from_cairn, &["role", "get", "readers"]).contains("app/"));

    // etcd → Cairn: an etcd 3.4 snapshot reads as etcdctl reads it and restores into Cairn.
    let source = Etcd::start();
    let etcd_member = source.endpoint();
    write_history(&etcd_member);
    let etcd_file = cairn.root.path().join("etcd.db");
    ok(&etcd_member, &["snapshot", "save", etcd_file.to_str().unwrap()]);
    for format in ["simple", "json", "table"] {
        assert_eq!(
            snapshot_status(cairnctl, &etcd_file, format),
            snapshot_status(etcdctl, &etcd_file, format),
            "snapshot status -w {format} of etcd's file"
        );
    }
    let root = tempfile::TempDir::new().unwrap();
    let mut restored = vec![Member::new(root.path(), "from-etcd", "from-etcd")];
    restore_members(&etcd_file, &restored);
    start_as_one_cluster(&mut restored);
    wait_serving(&restored);
    let into_cairn = restored[0].endpoint();
    assert_eq!(all_keys(&into_cairn, None), all_keys(&etcd_member, None));
    assert_eq!(all_keys(&into_cairn, Some(80)), all_keys(&etcd_member, Some(80)));
    assert!(ok(&into_cairn, &["lease", "list"]).contains("found 1 leases"));
    assert!(ok(&into_cairn, &["user", "get", "reader"]).contains("readers"));
}
