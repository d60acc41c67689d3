//! `--force-new-cluster` with real processes: a 3-member cluster loses two members for good; the
//! survivor restarts with the flag and serves alone with every key it had, in a new term; the
//! flag left on changes nothing more; new members join it; a dropped member that comes back with
//! its old data cannot disturb it. Without data the flag is refused by name.

mod support;

use std::time::Duration;

use support::{Cluster, Member, etcdctl, ok, wait_or_explain};

fn member_ids(endpoint: &str) -> Vec<String> {
    ok(endpoint, &["member", "list"])
        .lines()
        .map(|line| line.split(',').next().unwrap_or_default().trim().to_owned())
        .collect()
}

#[test]
fn a_survivor_forced_into_a_new_cluster_keeps_its_data_and_takes_new_members() {
    let mut cluster = Cluster::start(3, "force");
    let all = cluster.endpoints();
    for i in 0..50 {
        ok(&all, &["put", &format!("k{i:02}"), &format!("v{i}")]);
    }
    let before = member_ids(&cluster.members[0].endpoint());
    assert_eq!(before.len(), 3);

    // Two members are gone for good; the survivor has no quorum.
    cluster.members[1].kill9();
    cluster.members[2].kill9();
    let survivor = cluster.members[0].endpoint();
    let refused = etcdctl(&survivor, &["put", "stuck", "x", "--command-timeout=2s"]);
    assert!(!refused.status.success(), "no quorum, no write");

    // Restarted with the flag: it is the only member, with all 50 keys, and takes writes.
    cluster.members[0].kill9();
    cluster.members[0].extra_args = vec!["--force-new-cluster".into()];
    cluster.members[0].start();
    cluster.wait_healthy(Duration::from_secs(20));
    let (_, leader) = cluster.leader();
    assert_eq!(member_ids(&survivor), vec![leader.clone()]);
    assert!(before.contains(&leader), "the same member ID");
    let keys = ok(&survivor, &["get", "k", "--prefix", "--keys-only"]);
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 50, "{keys}");
    assert_eq!(ok(&survivor, &["put", "after", "1"]), "OK\n");
    let log = std::fs::read_to_string(&cluster.members[0].log).unwrap();
    assert!(
        log.contains("--force-new-cluster: this member is now its cluster's only member"),
        "{log}"
    );

    // The flag left on: nothing more happens.
    cluster.members[0].kill9();
    cluster.members[0].start();
    cluster.wait_healthy(Duration::from_secs(20));
    assert_eq!(member_ids(&survivor), vec![leader.clone()]);
    let log = std::fs::read_to_string(&cluster.members[0].log).unwrap();
    assert!(
        log.contains("this member is its cluster's only member already"),
        "{log}"
    );
    assert_eq!(ok(&survivor, &["get", "after", "--print-value-only"]), "1\n");

    // A dropped member back with its old data cannot take part or disturb the survivor.
    cluster.members[1].start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ok(&survivor, &["put", "still", "here"]), "OK\n");
    assert_eq!(member_ids(&survivor), vec![leader.clone()]);
    cluster.members[1].kill9();

    // New members join the forced cluster and catch up with everything.
    let (learner, id) = cluster.add_learner("m3", "force");
    let endpoint = survivor.clone();
    wait_or_explain(
        "the new member to be promoted",
        Duration::from_secs(20),
        || etcdctl(&endpoint, &["member", "promote", &id]).status.success(),
        || cluster.logs(),
    );
    let keys = ok(
        &learner.endpoint(),
        &["get", "k", "--prefix", "--keys-only", "--consistency=s"],
    );
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 50);
    assert_eq!(member_ids(&survivor).len(), 2);
}

#[test]
fn forcing_a_new_cluster_without_data_is_refused() {
    let root = tempfile::TempDir::new().unwrap();
    let mut member = Member::new(root.path(), "empty", "force-empty");
    member.initial_cluster = format!("empty={}", member.peer_url);
    member.extra_args = vec!["--force-new-cluster=true".into()];
    member.start();
    let (status, log) = member
        .wait_exit(Duration::from_secs(20))
        .expect("cairn refuses to start");
    assert!(!status.success());
    assert!(
        log.contains("--force-new-cluster needs this member's data, but its log is empty"),
        "{log}"
    );
}
