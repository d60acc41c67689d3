//! A follower whose log lost its end — entries it had acknowledged, as a disk that drops synced
//! writes leaves it — is caught up again by the leader: the leader neither stalls nor stops, and
//! every member ends with every write. (The robustness suite's first disk faults found a leader
//! that panicked on meeting such a follower.)

mod support;

use std::time::Duration;

use support::{Cluster, ok, wait_until};

/// Offsets of the frames (length, CRC, payload) after a segment's 12-byte header.
fn frames(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = vec![];
    let mut offset = 12;
    while offset + 8 <= bytes.len() {
        offsets.push(offset);
        offset += 8 + u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
    }
    offsets
}

#[test]
fn a_follower_that_lost_acknowledged_entries_is_caught_up_again() {
    let mut cluster = Cluster::start(3, "reversion");
    let (leader, _) = cluster.leader();
    let at_leader = cluster.members[leader].endpoint();
    let follower = (leader + 1) % 3;
    for i in 0..30 {
        ok(&at_leader, &["put", &format!("k{i}"), "v"]);
    }
    cluster.members[follower].kill9();
    // The newest segment holds what the follower wrote since it started: drop its last ten
    // records, entries it had acknowledged among them.
    let wal = cluster.members[follower].data_dir.join("member").join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    let newest = segments.pop().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    let offsets = frames(&bytes);
    assert!(
        offsets.len() > 20,
        "too few records to drop some: {}",
        offsets.len()
    );
    let keep = offsets[offsets.len() - 10];
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(keep as u64)
        .unwrap();

    cluster.members[follower].start();
    for i in 30..40 {
        ok(&at_leader, &["put", &format!("k{i}"), "v"]);
    }
    let back = cluster.members[follower].endpoint();
    wait_until("the follower has every write", Duration::from_secs(20), || {
        support::etcdctl(&back, &["get", "k39", "--consistency=s", "--print-value-only"]).stdout == b"v\n"
            && support::etcdctl(&back, &["get", "k25", "--consistency=s", "--print-value-only"]).stdout
                == b"v\n"
    });
    assert!(
        cluster.members[leader]
            .wait_exit(Duration::from_millis(100))
            .is_none(),
        "the leader stopped:\n{}",
        cluster.logs()
    );
    assert_eq!(ok(&at_leader, &["get", "k0", "--print-value-only"]), "v\n");
}
