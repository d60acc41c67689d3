//! On-disk formats across versions: a data dir written by the first release (WAL segments and a
//! snapshot without format headers, kept in tests/fixtures/format-v1) starts and serves its data,
//! and a data dir holding a file from a newer format is refused by name with nothing changed.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Member, copy_dir, etcdctl, ok, wait_or_explain};
use tempfile::TempDir;

/// A member on a copy of the first release's data dir (member "fixture", token "fixture-v1").
fn fixture_member(root: &TempDir) -> Member {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1/data");
    let mut member = Member::new(root.path(), "fixture", "fixture-v1");
    copy_dir(&fixture, &member.data_dir);
    member.initial_cluster = format!("fixture={}", member.peer_url);
    member
}

fn wait_serving(member: &Member) {
    let endpoint = member.endpoint();
    wait_or_explain(
        "the member serves linearizable reads",
        Duration::from_secs(20),
        || etcdctl(&endpoint, &["get", "key1"]).status.success(),
        || std::fs::read_to_string(&member.log).unwrap_or_default(),
    );
}

#[test]
fn a_data_dir_of_the_first_release_starts_and_keeps_its_data() {
    let root = TempDir::new().unwrap();
    let mut member = fixture_member(&root);
    member.start();
    wait_serving(&member);
    let endpoint = member.endpoint();
    // The fixture holds key1..key30 without key3, and after-snapshot, at revision 33: part of it
    // comes from the snapshot (taken at entry 19), the rest from the log after it.
    let keys = ok(&endpoint, &["get", "", "--prefix", "--keys-only"]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 30, "{keys:?}");
    assert!(!keys.contains(&"key3"));
    assert_eq!(
        ok(&endpoint, &["get", "key30", "--print-value-only"]),
        "value30\n"
    );
    assert_eq!(
        ok(&endpoint, &["get", "after-snapshot", "--print-value-only"]),
        "yes\n"
    );
    let status = ok(&endpoint, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status[0]["Status"]["header"]["revision"], 33);

    // Written on in today's format, the mixed data dir starts again with everything.
    ok(&endpoint, &["put", "today", "v2"]);
    member.kill9();
    member.start();
    wait_serving(&member);
    assert_eq!(ok(&endpoint, &["get", "today", "--print-value-only"]), "v2\n");
    assert_eq!(ok(&endpoint, &["get", "key1", "--print-value-only"]), "value1\n");
    let segments: Vec<_> = std::fs::read_dir(member.data_dir.join("member/wal"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        segments.iter().any(|s| s.starts_with(b"CAIRNWAL")),
        "no segment in today's format"
    );
}

#[test]
fn a_data_dir_with_a_newer_format_is_refused_by_name_and_left_alone() {
    let root = TempDir::new().unwrap();
    let mut member = fixture_member(&root);
    let segment = member.data_dir.join("member/wal/0000000000000000.wal");
    let mut newer = b"CAIRNWAL".to_vec();
    newer.extend(7u32.to_le_bytes());
    newer.extend(std::fs::read(&segment).unwrap());
    std::fs::write(&segment, &newer).unwrap();
    member.start();
    let (status, log) = member
        .wait_exit(Duration::from_secs(20))
        .expect("a member with a newer WAL format exits");
    assert!(!status.success());
    assert!(
        log.contains("is in format version 7, newer than this cairn reads"),
        "{log}"
    );
    let wal: Vec<_> = std::fs::read_dir(member.data_dir.join("member/wal"))
        .unwrap()
        .collect();
    assert_eq!(wal.len(), 1, "the refused member wrote a new segment");
    assert_eq!(std::fs::read(&segment).unwrap(), newer);
}
