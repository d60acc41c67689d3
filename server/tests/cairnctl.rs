//! `cairnctl` against a real three-member cluster: it prints what Debian's etcdctl prints for the
//! same request, and its membership, leadership, lease, txn and snapshot verbs do what they say.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{Cluster, Member, cairnctl, cairnctl_stdin, ctl_ok, etcdctl_stdin, ok, wait_until};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the same arguments through both tools and requires identical stdout.
fn same_as_etcdctl(endpoints: &str, args: &[&str]) {
    let theirs = ok(endpoints, args);
    let ours = ctl_ok(endpoints, args);
    assert_eq!(ours, theirs, "cairnctl {args:?} differs from etcdctl");
}

#[test]
fn reads_print_exactly_what_etcdctl_prints() {
    let cluster = Cluster::start(3, "ctl-reads");
    let all = cluster.endpoints();
    for (key, value) in [
        ("fruit/apple", "red"),
        ("fruit/banana", "yellow"),
        ("fruit/cherry", "dark red"),
        ("veg/leek", "green"),
    ] {
        ctl_ok(&all, &["put", key, value]);
    }
    ctl_ok(&all, &["put", "fruit/apple", "green"]);
    let lease = ctl_ok(&all, &["lease", "grant", "600"]);
    let lease_id = lease.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(lease, format!("lease {lease_id} granted with TTL(600s)\n"));
    ctl_ok(&all, &["put", "leased", "v", &format!("--lease={lease_id}")]);

    let one = cluster.members[1].endpoint();
    for args in [
        &["get", "fruit/apple"][..],
        &["get", "fruit/", "--prefix"],
        &["get", "fruit/", "--prefix", "--keys-only"],
        &["get", "fruit/", "--prefix", "--print-value-only"],
        &["get", "fruit/", "--prefix", "--limit=2"],
        &["get", "fruit/b", "--from-key"],
        &["get", "fruit/a", "fruit/c"],
        &["get", "fruit/", "--prefix", "--sort-by=VALUE", "--order=DESCEND"],
        &["get", "fruit/apple", "--rev=2"],
        &["get", "fruit/", "--prefix", "--consistency=s"],
        &["get", "fruit/", "--prefix", "-w", "json"],
        &["get", "missing"],
        &["member", "list"],
        &["member", "list", "-w", "json"],
        &["member", "list", "-w", "table"],
        &["lease", "list"],
        &["lease", "list", "-w", "json"],
        &["lease", "timetolive", &lease_id, "--keys"],
    ] {
        same_as_etcdctl(&one, args);
    }
    // Status of every member, in each format (no writes happen in between).
    for format in ["simple", "json", "table"] {
        same_as_etcdctl(&all, &["endpoint", "status", "-w", format]);
    }
    same_as_etcdctl(&one, &["endpoint", "status", "--cluster"]);

    let count = ctl_ok(&one, &["get", "fruit/", "--prefix", "--count-only"]);
    assert_eq!(count, "3\n");
    let health = ctl_ok(&one, &["endpoint", "health", "--cluster"]);
    assert_eq!(
        health
            .matches("is healthy: successfully committed proposal: took = ")
            .count(),
        3,
        "{health}"
    );
    let health: serde_json::Value =
        serde_json::from_str(&ctl_ok(&all, &["endpoint", "health", "-w", "json"])).unwrap();
    assert!(
        health.as_array().unwrap().iter().all(|h| h["health"] == true),
        "{health}"
    );
}

#[test]
fn writes_and_transactions_print_what_etcdctl_prints() {
    let cluster = Cluster::start(3, "ctl-writes");
    let all = cluster.endpoints();
    // Each tool works on its own keys; outputs must match once the key names are swapped.
    let both = |args: &[&str], input: &str| {
        let theirs_args: Vec<String> = args.iter().map(|a| a.replace("@", "e")).collect();
        let ours_args: Vec<String> = args.iter().map(|a| a.replace("@", "c")).collect();
        let theirs_args: Vec<&str> = theirs_args.iter().map(String::as_str).collect();
        let ours_args: Vec<&str> = ours_args.iter().map(String::as_str).collect();
        let theirs = etcdctl_stdin(&all, &theirs_args, &input.replace("@", "e"));
        let ours = cairnctl_stdin(&all, &ours_args, &input.replace("@", "c"));
        assert!(
            theirs.status.success(),
            "etcdctl {theirs_args:?}: {}",
            text(&theirs.stderr)
        );
        assert!(
            ours.status.success(),
            "cairnctl {ours_args:?}: {}",
            text(&ours.stderr)
        );
        assert_eq!(
            text(&ours.stdout),
            text(&theirs.stdout).replace("k-e", "k-c"),
            "{args:?}"
        );
    };
    both(&["put", "k-@1", "one"], "");
    both(&["put", "k-@1", "uno", "--prev-kv"], "");
    both(&["put", "k-@2", "two"], "");
    both(&["put", "k-@3"], "from stdin");
    both(&["get", "k-@3", "--print-value-only"], "");
    both(&["del", "k-@2", "--prev-kv"], "");
    both(&["del", "k-@", "--prefix"], "");
    both(&["put", "k-@1", "again"], "");

    let txn = "value(\"k-@1\") = \"again\"\nmod(\"k-@1\") > \"0\"\n\nput k-@1 \"swapped value\"\nget k-@1\n\nput k-@1 lost\n\n";
    both(&["txn"], txn);
    both(&["txn", "-i"], txn);
    both(&["get", "k-@1"], "");
    // The same transaction again fails its compare and runs the failure branch.
    both(&["txn"], txn);
    both(&["get", "k-@1", "--print-value-only"], "");
    let json: serde_json::Value =
        serde_json::from_slice(&cairnctl_stdin(&all, &["txn", "-w", "json"], &txn.replace("@", "c")).stdout)
            .unwrap();
    // A false `succeeded` is left out, as Go's omitempty (and so etcdctl) leaves it out.
    assert!(json.get("succeeded").is_none(), "{json}");
    assert!(
        json["responses"][0]["Response"]["ResponsePut"]["header"]["revision"]
            .as_i64()
            .unwrap()
            > 0,
        "{json}"
    );

    let revision = serde_json::from_str::<serde_json::Value>(&ctl_ok(&all, &["get", "k-c1", "-w", "json"]))
        .unwrap()["header"]["revision"]
        .as_i64()
        .unwrap();
    assert_eq!(
        ctl_ok(&all, &["compaction", &revision.to_string()]),
        format!("compacted revision {revision}\n")
    );
    let compacted = cairnctl(&all, &["get", "k-c1", "--rev=1"]);
    assert!(!compacted.status.success());
    assert_eq!(
        text(&compacted.stderr),
        "Error: etcdserver: mvcc: required revision has been compacted\n"
    );
}

#[test]
fn bad_input_gets_etcds_messages_and_a_failing_exit() {
    let cluster = Cluster::start(1, "ctl-errors");
    let one = cluster.endpoints();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["put", "", "v"], "", "Error: etcdserver: key is not provided\n"),
        (&["txn"], "size(\"k\") = \"1\"\n\n\n\n", "unknown target \"size\""),
        (&["txn"], "\nwatch k\n\n\n", "invalid txn request \"watch k\""),
        (
            &["get", "k", "--prefix", "--from-key"],
            "",
            "`--prefix` and `--from-key` cannot be set at the same time",
        ),
        (
            &["get", "k", "--consistency=x"],
            "",
            "unknown consistency flag \"x\"",
        ),
        (&["lease", "revoke", "nothex"], "", "bad lease ID \"nothex\""),
        (
            &["member", "remove", "1234"],
            "",
            "Error: etcdserver: member not found\n",
        ),
        (&["put", "k", "v", "-w", "table"], "", "put cannot print as table"),
    ];
    for (args, input, expected) in cases {
        let out = cairnctl_stdin(&one, args, input);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // An unknown lease is not an error: etcdctl reports it as expired.
    same_as_etcdctl(&one, &["lease", "timetolive", "abc"]);
    let nobody = format!("127.0.0.1:{}", support::free_port());
    let unreachable = cairnctl(&nobody, &["--dial-timeout=300ms", "get", "k"]);
    assert!(!unreachable.status.success());
    let stderr = text(&unreachable.stderr);
    assert!(
        stderr.starts_with(&format!("Error: cannot reach {nobody}: ")),
        "{stderr}"
    );

    let two = format!("{one},{one}");
    let out = cairnctl(&two, &["snapshot", "save", "/nonexistent/x.db"]);
    assert!(text(&out.stderr).contains("snapshot must be requested from one selected endpoint, not 2"));
}

#[test]
fn leases_keep_alive_expire_and_revoke() {
    let cluster = Cluster::start(1, "ctl-leases");
    let one = cluster.endpoints();
    let granted = ctl_ok(&one, &["lease", "grant", "3"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_owned();
    ctl_ok(&one, &["put", "session", "alive", &format!("--lease={id}")]);
    let renewed = ctl_ok(&one, &["lease", "keep-alive", &id, "--once"]);
    assert_eq!(renewed, format!("lease {id} keepalived with TTL(3)\n"));

    // A running keep-alive holds the key past its TTL.
    let mut keeper = std::process::Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args([&format!("--endpoints={one}"), "lease", "keep-alive", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(ctl_ok(&one, &["get", "session", "--print-value-only"]), "alive\n");
    keeper.kill().unwrap();
    let output = keeper.wait_with_output().unwrap();
    assert!(
        text(&output.stdout).lines().count() >= 2,
        "{}",
        text(&output.stdout)
    );

    let live = ctl_ok(&one, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        live.starts_with(&format!("lease {id} granted with TTL(3s), remaining(")),
        "{live}"
    );
    assert!(live.ends_with(", attached keys([session])\n"), "{live}");
    assert_eq!(
        ctl_ok(&one, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ctl_ok(&one, &["get", "session"]), "");
    assert_eq!(
        ctl_ok(&one, &["lease", "keep-alive", &id]),
        format!("lease {id} expired or revoked.\n")
    );
}

#[test]
fn members_are_added_updated_promoted_led_and_removed() {
    let cluster = Cluster::start(3, "ctl-members");
    let all = cluster.endpoints();
    ctl_ok(&all, &["put", "seed", "1"]);
    let mut joiner = Member::new(cluster.root.path(), "m3", "ctl-members");
    let added = ctl_ok(
        &all,
        &[
            "member",
            "add",
            "m3",
            &format!("--peer-urls={}", joiner.peer_url),
            "--learner",
        ],
    );
    let first = added.lines().next().unwrap();
    assert!(
        first.starts_with("Member ") && first.contains(" added to cluster "),
        "{added}"
    );
    let id = first.split_whitespace().nth(1).unwrap().to_owned();
    let vars: BTreeMap<&str, &str> = added
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('"')))
        .collect();
    assert_eq!(vars["CAIRN_NAME"], "m3");
    assert_eq!(vars["CAIRN_INITIAL_ADVERTISE_PEER_URLS"], joiner.peer_url);
    assert_eq!(vars["CAIRN_INITIAL_CLUSTER_STATE"], "existing");
    assert_eq!(vars["CAIRN_INITIAL_CLUSTER"].split(',').count(), 4, "{added}");
    // Start the new member exactly as cairnctl said to.
    joiner.initial_cluster = vars["CAIRN_INITIAL_CLUSTER"].to_owned();
    joiner.state = "existing";
    joiner.start();
    wait_until("the learner to be promoted", Duration::from_secs(30), || {
        cairnctl(&all, &["member", "promote", &id]).status.success()
    });
    // The new member publishes its name and client URLs through the log once it runs; until a
    // member has applied that entry it lists m3 as unstarted, as etcd does.
    let started = format!(
        "{id}, started, m3, {}, {}, false",
        joiner.peer_url, joiner.client_url
    );
    wait_until("m3 to be listed as started", Duration::from_secs(15), || {
        ctl_ok(&all, &["member", "list"]).contains(&started)
    });

    // MemberUpdate: the same peer address, spelt with a host name; the member keeps working.
    let port = joiner.peer_url.rsplit(':').next().unwrap();
    let renamed = format!("http://localhost:{port}");
    // IDs are printed as etcdctl prints them, `%16x`: padded with spaces, not zeros.
    let cluster_id = first.split(" added to cluster ").nth(1).unwrap();
    assert_eq!(
        ctl_ok(
            &all,
            &["member", "update", &id, &format!("--peer-urls={renamed}")]
        ),
        format!("Member {id:>16} updated in cluster {cluster_id}\n")
    );
    // The update was applied on the member that answered; the joiner may apply it a moment later.
    let renamed_json = format!("\"peerURLs\":[\"{renamed}\"]");
    wait_until(
        "the joiner to list its new peer URL",
        Duration::from_secs(15),
        || ctl_ok(&joiner.endpoint(), &["member", "list", "-w", "json"]).contains(&renamed_json),
    );
    ctl_ok(&joiner.endpoint(), &["put", "after-update", "ok"]);

    // Hand leadership to the new member, then back away from it, and remove it.
    let old_leader = cluster.leader().1;
    assert_eq!(
        ctl_ok(&format!("{all},{}", joiner.endpoint()), &["move-leader", &id]),
        format!("Leadership transferred from {old_leader} to {id}\n")
    );
    let status: serde_json::Value =
        serde_json::from_str(&ctl_ok(&joiner.endpoint(), &["endpoint", "status", "-w", "json"])).unwrap();
    assert_eq!(
        format!("{:x}", status[0]["Status"]["leader"].as_u64().unwrap()),
        id
    );
    assert_eq!(
        ctl_ok(
            &format!("{all},{}", joiner.endpoint()),
            &["move-leader", &old_leader]
        ),
        format!("Leadership transferred from {id} to {old_leader}\n")
    );
    assert_eq!(
        ctl_ok(&all, &["member", "remove", &id]),
        format!("Member {id:>16} removed from cluster {cluster_id}\n")
    );
    let (status, _) = joiner
        .wait_exit(Duration::from_secs(15))
        .expect("a removed member stops");
    assert!(!status.success());
    wait_until("the member list to shrink to 3", Duration::from_secs(15), || {
        ctl_ok(&all, &["member", "list"]).lines().count() == 3
    });
    let not_leader = cairnctl(&cluster.members[0].endpoint(), &["move-leader", &id]);
    assert!(!not_leader.status.success());
}

#[test]
fn snapshot_save_writes_a_complete_checked_file() {
    let cluster = Cluster::start(3, "ctl-snapshot");
    let all = cluster.endpoints();
    for i in 0..50 {
        ctl_ok(&all, &["put", &format!("snap/{i:02}"), &"x".repeat(100)]);
    }
    // A snapshot holds what its member has applied (as etcd's does, so one can be taken without a
    // quorum); a linearizable read through the member first makes sure that is every write.
    ctl_ok(&cluster.members[2].endpoint(), &["get", "snap/49"]);
    let path = cluster.root.path().join("backup.db");
    let saved = ctl_ok(
        &cluster.members[2].endpoint(),
        &["snapshot", "save", path.to_str().unwrap()],
    );
    assert_eq!(saved, format!("Snapshot saved at {}\n", path.display()));
    assert!(!cluster.root.path().join("backup.db.part").exists());
    // The file is etcd's snapshot layout: the data, then the SHA-256 of the data; the data holds the keys.
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(&path).unwrap();
    let (data, digest) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(data).as_slice(), digest, "integrity trailer");
    for i in [0, 25, 49] {
        let key = format!("snap/{i:02}");
        assert!(
            data.windows(key.len()).any(|w| w == key.as_bytes()),
            "{key} is not in the snapshot"
        );
    }
    // etcdctl saves a snapshot of the same member too (members may apply internal entries in
    // between, so the two files need not be byte-identical).
    let reference = cluster.root.path().join("reference.db");
    ok(
        &cluster.members[2].endpoint(),
        &["snapshot", "save", reference.to_str().unwrap()],
    );
    assert!(std::fs::metadata(&reference).unwrap().len() > 32);
}
