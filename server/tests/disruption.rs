//! Leader stability: a member cut off from the others (here: paused, so its peers' messages stop
//! reaching it and its election timer runs out) does not depose a healthy leader when it returns,
//! thanks to pre-vote and the followers' leader lease (etcd's PreVote and CheckQuorum).

mod support;

use std::time::Duration;

use support::{Cluster, etcdctl, ok};

fn leader_and_term(endpoint: &str) -> (u64, u64) {
    let out = etcdctl(endpoint, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = &status[0]["Status"];
    (
        status["leader"].as_u64().unwrap(),
        status["raftTerm"].as_u64().unwrap(),
    )
}

fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn a_member_that_comes_back_does_not_depose_a_healthy_leader() {
    let cluster = Cluster::start(3, "disruption");
    let (leader, _) = cluster.leader();
    let at_leader = cluster.members[leader].endpoint();
    let before = leader_and_term(&at_leader);
    let away = (leader + 1) % 3;
    let pid = cluster.members[away].process.as_ref().unwrap().id();
    for round in 0..3 {
        // Away for several election timeouts (500 ms here), while the others go on writing.
        signal(pid, "STOP");
        for i in 0..10 {
            ok(&at_leader, &["put", &format!("r{round}-{i}"), "v"]);
            std::thread::sleep(Duration::from_millis(150));
        }
        signal(pid, "CONT");
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            leader_and_term(&at_leader),
            before,
            "the returning member disturbed the leader (round {round}):\n{}",
            cluster.logs()
        );
    }
    // And it caught up with what was written while it was away.
    let back = cluster.members[away].endpoint();
    assert_eq!(ok(&back, &["get", "r2-9", "--print-value-only"]), "v\n");
}
