//! Multi-process tests: real `cairn` members on loopback, used through Debian's etcdctl exactly as an
//! operator would, with `kill -9` for crashes.

mod support;

use std::time::Duration;

use support::{Cluster, Member, etcdctl, etcdctl_stdin, ok, wait_or_explain, wait_until};

#[test]
fn three_members_serve_etcdctl_through_every_endpoint() {
    let cluster = Cluster::start(3, "etcdctl-suite");
    let all = cluster.endpoints();
    // Writes through every member (followers forward to the leader), reads from every member.
    for (i, member) in cluster.members.iter().enumerate() {
        assert_eq!(
            ok(
                &member.endpoint(),
                &["put", &format!("dir/k{i}"), &format!("v{i}")]
            )
            .trim(),
            "OK"
        );
    }
    // Every write is timed stage by stage (cairn_write_stage_duration_seconds): where it entered,
    // the leader's round trips to its followers, their handling, each member's log append and apply.
    // Who led may change under load, so roles are read from the counts: one member sent the
    // appends of the three writes, the two others handled them.
    let mut leading = 0;
    let mut following = 0;
    for (i, member) in cluster.members.iter().enumerate() {
        let metrics = support::http_body(&format!("{}/metrics", member.client_url));
        let count = |stage: &str| -> u64 {
            let prefix = format!("cairn_write_stage_duration_seconds_count{{stage=\"{stage}\"}} ");
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .map_or(0, |n| n.parse().unwrap())
        };
        assert!(
            count("write") >= 1 && count("wal_append") >= 3 && count("apply") >= 3,
            "member {i}:\n{metrics}"
        );
        leading += usize::from(count("peer_append") >= 3);
        following += usize::from(count("peer_append_handled") >= 3);
    }
    assert!(
        leading >= 1 && following >= 2,
        "{leading} sent appends, {following} handled them"
    );
    for member in &cluster.members {
        let got = ok(&member.endpoint(), &["get", "dir/", "--prefix"]);
        assert_eq!(
            got, "dir/k0\nv0\ndir/k1\nv1\ndir/k2\nv2\n",
            "from {}",
            member.name
        );
        assert_eq!(
            ok(&member.endpoint(), &["get", "dir/k0", "dir/k2"]),
            "dir/k0\nv0\ndir/k1\nv1\n"
        );
        let serial = ok(
            &member.endpoint(),
            &["get", "dir/k1", "--consistency=s", "--print-value-only"],
        );
        assert_eq!(serial, "v1\n");
    }
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&all, &["get", "dir/", "--prefix", "--limit=1", "-w", "json"])).unwrap();
    assert_eq!(
        (listed["count"].as_i64(), listed["more"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(ok(&all, &["del", "dir/k0"]).trim(), "1");

    // Compare-and-swap with etcdctl's interactive txn syntax.
    let txn = etcdctl_stdin(
        &all,
        &["txn"],
        "value(\"dir/k1\") = \"v1\"\n\nput dir/k1 swapped\n\nget dir/k1\n\n",
    );
    assert!(txn.status.success(), "{}", String::from_utf8_lossy(&txn.stderr));
    assert!(String::from_utf8_lossy(&txn.stdout).starts_with("SUCCESS"));
    let failed = etcdctl_stdin(
        &all,
        &["txn"],
        "value(\"dir/k1\") = \"v1\"\n\nput dir/k1 again\n\nget dir/k1\n\n",
    );
    assert!(String::from_utf8_lossy(&failed.stdout).starts_with("FAILURE"));
    assert_eq!(ok(&all, &["get", "dir/k1", "--print-value-only"]), "swapped\n");

    // Leases: grant, attach, inspect, revoke deletes the key.
    let grant = ok(&all, &["lease", "grant", "60"]);
    let lease = grant.split_whitespace().nth(1).expect("lease ID").to_owned();
    ok(&all, &["put", "leased", "x", &format!("--lease={lease}")]);
    let ttl = ok(&all, &["lease", "timetolive", &lease, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"),
        "{ttl}"
    );
    assert!(ok(&all, &["lease", "list"]).contains(&lease));
    ok(&all, &["lease", "revoke", &lease]);
    assert_eq!(ok(&all, &["get", "leased"]), "");

    // Cluster and maintenance views.
    let members = ok(&all, &["member", "list"]);
    assert_eq!(
        members.lines().filter(|l| l.contains(", started, ")).count(),
        3,
        "{members}"
    );
    let health = etcdctl(&all, &["endpoint", "health", "--cluster"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&health.stderr)
            .matches("is healthy")
            .count(),
        3
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok(&all, &["endpoint", "status", "-w", "json"])).unwrap();
    let statuses = status.as_array().unwrap();
    assert_eq!(statuses.len(), 3);
    let leaders: Vec<u64> = statuses
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "members disagree on the leader: {leaders:?}"
    );
    let leading = statuses
        .iter()
        .filter(|s| s["Status"]["header"]["member_id"] == s["Status"]["leader"])
        .count();
    assert_eq!(leading, 1, "exactly one member leads");
    let snapshot = cluster.root.path().join("backup.db");
    let saved = etcdctl(
        &cluster.members[0].endpoint(),
        &["snapshot", "save", snapshot.to_str().unwrap()],
    );
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    assert!(String::from_utf8_lossy(&saved.stdout).contains("Snapshot saved at"));
    let hashes = ok(&all, &["endpoint", "hashkv"]);
    let values: Vec<&str> = hashes.lines().map(|l| l.rsplit(", ").next().unwrap()).collect();
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "hashes differ across members: {hashes}"
    );

    // Bad input: named clearly, nothing changed.
    let empty = etcdctl(&all, &["put", "", "x"]);
    assert!(String::from_utf8_lossy(&empty.stderr).contains("etcdserver: key is not provided"));
}

#[test]
fn leader_kill9_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(3, "leader-crash");
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        let key = format!("before/{i:02}");
        if etcdctl(&cluster.endpoints(), &["put", &key, "v"])
            .status
            .success()
        {
            acknowledged.push(key);
        }
    }
    let (leader, old_id) = cluster.leader();
    cluster.members[leader].kill9();
    let (_, new_id) = cluster.leader();
    assert_ne!(old_id, new_id, "a new leader must take over");
    for i in 0..30 {
        let key = format!("after/{i:02}");
        if etcdctl(&cluster.endpoints(), &["put", &key, "v"])
            .status
            .success()
        {
            acknowledged.push(key);
        }
    }
    assert!(
        acknowledged.len() >= 55,
        "most writes should succeed, got {}",
        acknowledged.len()
    );
    // The old leader comes back and catches up.
    cluster.members[leader].start();
    cluster.wait_healthy(Duration::from_secs(30));
    for member in &cluster.members {
        let keys = ok(&member.endpoint(), &["get", "", "--from-key", "--keys-only"]);
        for key in &acknowledged {
            assert!(
                keys.lines().any(|l| l == key),
                "{} lost acknowledged {key}",
                member.name
            );
        }
    }
}

#[test]
fn all_members_kill9_and_restart_lose_nothing() {
    let mut cluster = Cluster::start(3, "full-crash");
    for i in 0..40 {
        ok(
            &cluster.endpoints(),
            &["put", &format!("k{i:02}"), &format!("value-{i}")],
        );
    }
    for member in &mut cluster.members {
        member.kill9();
    }
    for member in &mut cluster.members {
        member.start();
    }
    cluster.wait_healthy(Duration::from_secs(30));
    for member in &cluster.members {
        let values = ok(
            &member.endpoint(),
            &["get", "k", "--prefix", "--print-value-only"],
        );
        assert_eq!(
            values.lines().count(),
            40,
            "{} after restart:\n{values}",
            member.name
        );
        assert!(values.lines().enumerate().all(|(i, v)| v == format!("value-{i}")));
    }
}

#[test]
fn members_of_another_cluster_are_refused() {
    let mut cluster = Cluster::start(3, "cluster-a");
    // A data dir never changes clusters: restarting with another token fails before touching it.
    cluster.members[2].kill9();
    cluster.members[2].token = "cluster-b".into();
    cluster.members[2].start();
    let (status, log) = cluster.members[2]
        .wait_exit(Duration::from_secs(10))
        .expect("must exit");
    assert!(!status.success());
    assert!(
        log.contains("--initial-cluster-token is \"cluster-b\"; refusing to mix clusters"),
        "{log}"
    );

    // A fresh member with another token that points at this cluster's peers is refused by them.
    let mut stranger = Member::new(cluster.root.path(), "stranger", "cluster-b");
    stranger.initial_cluster = format!(
        "stranger={},m0={}",
        stranger.peer_url, cluster.members[0].peer_url
    );
    stranger.start();
    wait_until(
        "the cluster to refuse the stranger",
        Duration::from_secs(15),
        || {
            std::fs::read_to_string(&cluster.members[0].log)
                .unwrap_or_default()
                .contains("cluster ID mismatch")
        },
    );
    let stranger_log = std::fs::read_to_string(&stranger.log).unwrap();
    assert!(
        stranger_log.contains("request sent was ignored by remote peer"),
        "{stranger_log}"
    );
    assert!(!etcdctl(&stranger.endpoint(), &["put", "x", "y"]).status.success());
    let members = ok(&cluster.members[0].endpoint(), &["member", "list"]);
    assert_eq!(
        members.lines().count(),
        3,
        "the stranger never joined:\n{members}"
    );
}

#[test]
fn member_whose_data_was_lost_is_refused_instead_of_rejoining_or_starting_over() {
    let mut cluster = Cluster::start(3, "lost-data");
    ok(&cluster.endpoints(), &["put", "before", "loss"]);
    let lost = &mut cluster.members[2];
    lost.kill9();
    std::fs::remove_dir_all(&lost.data_dir).unwrap();

    // Told to join the cluster it was part of, it finds itself already started there.
    lost.state = "existing";
    lost.start();
    let (status, log) = lost.wait_exit(Duration::from_secs(20)).expect("must exit");
    assert!(!status.success());
    assert!(
        log.contains("but its data dir") && log.contains("is empty: its data was lost"),
        "{log}"
    );
    assert!(!lost.data_dir.exists(), "nothing may be written before the error");

    // The other two serve on, and still count it as a member.
    ok(&cluster.members[0].endpoint(), &["put", "after", "loss"]);
    let members = ok(&cluster.members[1].endpoint(), &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
}

#[test]
fn a_member_joining_before_it_was_added_is_told_to_add_it_first() {
    let cluster = Cluster::start(1, "not-added");
    let mut early = Member::new(cluster.root.path(), "m1", "not-added");
    early.state = "existing";
    early.initial_cluster = format!(
        "{}={},m1={}",
        cluster.members[0].name, cluster.members[0].peer_url, early.peer_url
    );
    early.start();
    let (status, log) = early.wait_exit(Duration::from_secs(20)).expect("must exit");
    assert!(!status.success());
    // The operator recognizes a pod that started too early by these words.
    assert!(
        log.contains("are not in the cluster of") && log.contains("run `member add` first"),
        "{log}"
    );
    assert!(
        !early.data_dir.exists(),
        "nothing may be written before the error"
    );
}

#[test]
fn learner_is_added_promoted_and_removed_at_runtime() {
    let cluster = Cluster::start(3, "reconfigure");
    ok(&cluster.endpoints(), &["put", "seed", "1"]);
    let (mut learner, id) = cluster.add_learner("m3", "reconfigure");
    // A learner serves serializable reads once it has caught up, and refuses the rest.
    wait_until("the learner to catch up", Duration::from_secs(20), || {
        etcdctl(
            &learner.endpoint(),
            &["get", "seed", "--consistency=s", "--print-value-only"],
        )
        .stdout
            == b"1\n"
    });
    let refused = etcdctl(&learner.endpoint(), &["put", "x", "y"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rpc not supported for learner"));
    wait_until("the learner to be promoted", Duration::from_secs(20), || {
        etcdctl(&cluster.endpoints(), &["member", "promote", &id])
            .status
            .success()
    });
    let members = ok(&cluster.endpoints(), &["member", "list"]);
    assert_eq!(
        members.lines().filter(|l| l.ends_with(", false")).count(),
        4,
        "{members}"
    );
    ok(&learner.endpoint(), &["put", "via-new-member", "ok"]);
    assert_eq!(
        ok(
            &cluster.members[0].endpoint(),
            &["get", "via-new-member", "--print-value-only"]
        ),
        "ok\n"
    );

    ok(&cluster.endpoints(), &["member", "remove", &id]);
    let (status, log) = learner
        .wait_exit(Duration::from_secs(15))
        .expect("a removed member stops");
    assert!(!status.success());
    assert!(
        log.contains("this member has been permanently removed from the cluster"),
        "{log}"
    );
    assert_eq!(ok(&cluster.endpoints(), &["member", "list"]).lines().count(), 3);
}

#[test]
fn removal_that_would_lose_quorum_is_refused() {
    let mut cluster = Cluster::start(3, "strict-reconfig");
    let (leader, _) = cluster.leader();
    let down = (leader + 1) % 3;
    let victim = (leader + 2) % 3;
    cluster.members[down].kill9();
    let list = ok(&cluster.members[leader].endpoint(), &["member", "list"]);
    let victim_id = list
        .lines()
        .find(|l| l.contains(&format!(", {}, ", cluster.members[victim].name)))
        .and_then(|l| l.split(',').next())
        .expect("victim in member list")
        .to_owned();
    // Wait until the leader notices the dead member, then removing a live one must be refused.
    std::thread::sleep(Duration::from_secs(2));
    let refused = etcdctl(
        &cluster.members[leader].endpoint(),
        &["member", "remove", &victim_id],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("etcdserver: re-configuration failed due to not enough started members"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        ok(&cluster.members[leader].endpoint(), &["member", "list"])
            .lines()
            .count(),
        3
    );
}

/// With a small --snapshot-count the leader purges its log, so a member that was down and a member
/// added later can only catch up by installing a snapshot; both end with the same data (HashKV).
#[test]
fn lagging_and_new_members_catch_up_by_snapshot() {
    let mut cluster = Cluster::start_with(3, "snapshots", &["--snapshot-count=50"]);
    let all = cluster.endpoints();
    ok(&all, &["put", "early", "1"]);
    // A follower goes down, so that every write below must succeed on the remaining quorum.
    let (leader, _) = cluster.leader();
    let lagging = (leader + 1) % 3;
    cluster.members[lagging].kill9();
    let up = cluster.endpoints();
    for i in 0..300 {
        ok(&up, &["put", &format!("while-down/{i:03}"), "v"]);
    }

    // The lagging member comes back logging JSON, so its lines can be read by machines (and here).
    cluster.members[lagging]
        .extra_args
        .push("--log-format=json".into());
    cluster.members[lagging].start();
    let endpoint = cluster.members[lagging].endpoint();
    wait_or_explain(
        "the lagging member to catch up",
        Duration::from_secs(30),
        || {
            etcdctl(
                &endpoint,
                &["get", "while-down/299", "--consistency=s", "--print-value-only"],
            )
            .stdout
                == b"v\n"
        },
        || cluster.logs(),
    );
    let log = std::fs::read_to_string(&cluster.members[lagging].log).unwrap();
    let restarted = &log[log.find("{\"timestamp\"").expect("JSON log lines")..];
    let messages: Vec<String> = restarted
        .lines()
        .map(|line| {
            let entry: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(entry["level"].is_string(), "{line}");
            entry["fields"]["message"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert!(
        messages.iter().any(|m| m == "snapshot installed"),
        "no snapshot install in\n{restarted}"
    );

    // A member added now also starts from a snapshot.
    let (joiner, _) = cluster.add_learner("m3", "snapshots");
    wait_or_explain(
        "the new member to catch up",
        Duration::from_secs(30),
        || {
            let out = etcdctl(
                &joiner.endpoint(),
                &["get", "while-down/299", "--consistency=s", "--print-value-only"],
            );
            out.stdout == b"v\n"
        },
        || {
            format!(
                "{}\n--- m3 ---\n{}",
                cluster.logs(),
                std::fs::read_to_string(&joiner.log).unwrap_or_default()
            )
        },
    );
    assert!(
        std::fs::read_to_string(&joiner.log)
            .unwrap()
            .contains("snapshot installed")
    );

    let revision = ok(&all, &["get", "early", "-w", "json"]);
    let revision: serde_json::Value = serde_json::from_str(&revision).unwrap();
    let revision = revision["header"]["revision"].as_i64().unwrap().to_string();
    let hashes: Vec<String> = cluster
        .members
        .iter()
        .chain([&joiner])
        .map(|m| {
            let out = ok(
                &m.endpoint(),
                &["endpoint", "hashkv", &format!("--rev={revision}"), "-w", "json"],
            );
            let value: serde_json::Value = serde_json::from_str(&out).unwrap();
            value[0]["HashKV"]["hash"].to_string()
        })
        .collect();
    assert!(
        hashes.iter().all(|h| h == &hashes[0]),
        "members disagree after catching up: {hashes:?}"
    );
}
