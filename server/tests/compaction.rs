//! Auto-compaction through the flags users set (`--auto-compaction-mode/-retention`): the leader
//! compacts, every member drops the same history, and a bad retention is refused at start.

mod support;

use std::time::Duration;

use support::{Cluster, Member, etcdctl, ok, wait_or_explain};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

#[test]
fn periodic_auto_compaction_drops_old_history_on_every_member() {
    let cluster = Cluster::start_with(3, "autocompact", &["--auto-compaction-retention=2s"]);
    cluster.wait_healthy(Duration::from_secs(30));
    let all = cluster.endpoints();
    ok(&all, &["put", "k", "first"]);
    let first_revision = revision_of(&all, "k");
    ok(&all, &["put", "k", "second"]);

    // Nothing is compacted before the history is 2 s old; once it is, the first revision goes
    // on every member, and the newest value stays.
    for member in &cluster.members {
        let endpoint = member.endpoint();
        wait_or_explain(
            &format!("{} to compact away revision {first_revision}", member.name),
            Duration::from_secs(30),
            || {
                let read = etcdctl(&endpoint, &["get", "k", &format!("--rev={first_revision}")]);
                !read.status.success() && String::from_utf8_lossy(&read.stderr).contains(COMPACTED)
            },
            || cluster.logs(),
        );
        assert_eq!(ok(&endpoint, &["get", "k", "--print-value-only"]), "second\n");
    }
    assert!(
        cluster.logs().contains("auto-compacted history"),
        "{}",
        cluster.logs()
    );
}

/// The revision at which `key` was last written.
fn revision_of(endpoints: &str, key: &str) -> i64 {
    let json = ok(endpoints, &["get", key, "-w", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["kvs"][0]["mod_revision"].as_i64().expect("a mod_revision")
}

#[test]
fn a_retention_that_does_not_fit_the_mode_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let member = Member::new(dir.path(), "bad", "bad-retention");
    for (mode, retention) in [("periodic", "1d"), ("revision", "30m")] {
        let output = member
            .command()
            .arg(format!("--auto-compaction-mode={mode}"))
            .arg(format!("--auto-compaction-retention={retention}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "--auto-compaction-retention \"{retention}\" is not valid with --auto-compaction-mode {mode}"
            )),
            "{stderr}"
        );
        assert!(!member.data_dir.exists(), "nothing is written for a bad flag");
    }
}
