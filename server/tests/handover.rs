//! A leader that is asked to stop (SIGTERM, as on every pod deletion and rolling update) hands
//! leadership over before it exits: another member leads in a higher term while the old process is
//! still running, and writes sent through the other members all succeed meanwhile.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Cluster, etcdctl, ok, wait_or_explain};

fn status(endpoint: &str) -> Option<serde_json::Value> {
    let out = etcdctl(endpoint, &["endpoint", "status", "-w", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .flatten()
        .map(|s| s[0]["Status"].clone())
}

#[test]
fn a_stopping_leader_hands_over_and_no_write_fails() {
    let mut cluster = Cluster::start(3, "handover");
    let (leader, leader_id) = cluster.leader();
    let old_term = status(&cluster.members[leader].endpoint()).unwrap()["raftTerm"]
        .as_u64()
        .unwrap();
    let others: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.members[i].endpoint())
        .collect();

    // Writes through the two other members, four writers one write after another each, all
    // through the stop: several writes are usually in flight on the leader when it hands over.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (stop, failures, others) = (stop.clone(), failures.clone(), others.clone());
            std::thread::spawn(move || {
                let mut written = 0;
                while !stop.load(Ordering::SeqCst) {
                    let endpoint = &others[(written + writer) % 2];
                    let out = etcdctl(endpoint, &["put", &format!("w{writer}-k{written}"), "v"]);
                    if !out.status.success() {
                        failures
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&out.stderr).into_owned());
                    }
                    written += 1;
                }
                written
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    cluster.members[leader].terminate();
    // While the old leader is still shutting down, a survivor already leads in a higher term.
    let new_term = {
        let mut seen = None;
        wait_or_explain(
            "another member leads in a higher term",
            Duration::from_secs(10),
            || {
                seen = others.iter().find_map(|e| {
                    let s = status(e)?;
                    let leads = s["leader"].as_u64()? != u64::from_str_radix(&leader_id, 16).ok()?;
                    let term = s["raftTerm"].as_u64()?;
                    (leads && s["leader"].as_u64()? != 0 && term > old_term).then_some(term)
                });
                seen.is_some()
            },
            || cluster.logs(),
        );
        seen.unwrap()
    };
    let (exit, log) = cluster.members[leader]
        .wait_exit(Duration::from_secs(15))
        .expect("the old leader exits");
    assert!(exit.success(), "{log}");
    let handed = log
        .find("handed leadership over")
        .expect("the hand-over is logged");
    let stopped = log.find("member stopped").expect("the stop is logged");
    assert!(handed < stopped, "{log}");

    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let counts: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let written: usize = counts.iter().sum();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {written} writes failed: {failures:?}",
        failures.len()
    );
    assert!(
        counts.iter().all(|c| *c > 5),
        "too few writes were made: {counts:?}"
    );
    for (writer, count) in counts.iter().enumerate() {
        let last = format!("w{writer}-k{}", count - 1);
        assert_eq!(ok(&others[0], &["get", &last, "--print-value-only"]), "v\n");
    }
    assert!(new_term > old_term);
}

/// A follower asked to stop ends the leader's append stream to it along with Raft, rather than
/// holding its peer port open until the port's grace period runs out.
#[test]
fn a_stopping_follower_does_not_hold_its_peer_port_open() {
    let mut cluster = Cluster::start(3, "follower-stop");
    let (leader, _) = cluster.leader();
    let follower = (leader + 1) % 3;
    // Writes open the leader's append streams to both followers; then all is quiet.
    for i in 0..3 {
        ok(
            &cluster.members[leader].endpoint(),
            &["put", &format!("k{i}"), "v"],
        );
    }
    cluster.members[follower].terminate();
    let (exit, log) = cluster.members[follower]
        .wait_exit(Duration::from_secs(15))
        .expect("the follower exits");
    assert!(exit.success(), "{log}");
    assert!(log.contains("member stopped"), "{log}");
    assert!(
        !log.contains("still open after the grace period"),
        "the follower waited for its peer port's grace period:\n{log}"
    );
}
