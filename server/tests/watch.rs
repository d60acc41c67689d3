//! Watch through the interfaces users have: Debian's etcdctl 3.4 against a Cairn member, held
//! byte for byte against the same commands on a real etcd, watches served by every member of a
//! cluster, and a member's memory while watchers stop reading.

mod support;

use std::time::Duration;

use support::{Cluster, Etcd, etcdctl_stdin, etcdctl_until, ok};

/// The same writes on any etcd v3 server give the same revisions: puts, a transaction, a range
/// delete, and a lease whose revocation deletes its key.
fn write_history(endpoint: &str) {
    ok(endpoint, &["put", "a", "1"]);
    ok(endpoint, &["put", "a", "2"]);
    let txn = etcdctl_stdin(endpoint, &["txn"], "\nput b 1\nput c 1\n\n\n");
    assert!(txn.status.success(), "{}", String::from_utf8_lossy(&txn.stderr));
    ok(endpoint, &["del", "a"]);
    let lease = ok(endpoint, &["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).expect("lease ID").to_owned();
    ok(endpoint, &["put", "d", "leased", &format!("--lease={lease}")]);
    ok(endpoint, &["lease", "revoke", &lease]);
    ok(endpoint, &["del", "b", "d"]);
    ok(endpoint, &["put", "e", "last"]);
}

/// What etcdctl prints for a set of watch commands against one server.
fn watch_transcript(endpoint: &str) -> Vec<(String, String, String, Option<i32>)> {
    let within = Duration::from_secs(10);
    let mut transcript = Vec::new();
    let mut record = |name: &str, args: &[&str], input: &str, lines: usize| {
        let (out, err, code) = etcdctl_until(endpoint, args, input, lines, within);
        transcript.push((name.to_owned(), out, err, code));
    };
    // Every event since revision 1, with previous values.
    record(
        "all history",
        &["watch", "--rev=1", "--prefix", "", "--prev-kv"],
        "",
        27,
    );
    record("one key from 3", &["watch", "--rev=3", "a"], "", 6);
    record("range c to z", &["watch", "--rev=1", "c", "z"], "", 12);
    // The exec form: one command per event, told about the event through its environment.
    record(
        "exec",
        &[
            "watch",
            "--rev=5",
            "--prefix",
            "",
            "--",
            "sh",
            "-c",
            "echo \"$ETCD_WATCH_REVISION $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE\"",
        ],
        "",
        24,
    );
    // Interactive: a watch, then the stream's progress.
    record(
        "interactive progress",
        &["watch", "-i"],
        "watch --rev=9 e\n#sleep 500\nprogress\n",
        4,
    );
    ok(endpoint, &["compact", "6"]);
    record("behind compaction", &["watch", "--rev=5", "a"], "", 100);
    record("at compaction", &["watch", "--rev=6", "--prefix", ""], "", 6);
    transcript
}

#[test]
fn etcdctl_watch_prints_on_cairn_what_it_prints_on_etcd() {
    let cairn = Cluster::start(1, "watch-etcdctl");
    let etcd = Etcd::start();
    write_history(&cairn.endpoints());
    write_history(&etcd.endpoint());
    let ours = watch_transcript(&cairn.endpoints());
    let theirs = watch_transcript(&etcd.endpoint());
    for (cairn, etcd) in ours.iter().zip(&theirs) {
        assert_eq!(
            cairn, etcd,
            "etcdctl {} differs (left: Cairn, right: etcd)",
            cairn.0
        );
    }
    // The transcripts are not empty agreement: the history is all there.
    let all = &ours[0].1;
    assert!(all.contains("DELETE\nd\nleased\nd\n\n"), "{all}");
    assert!(ours[4].1.contains("progress notify: "), "{}", ours[4].1);
    assert!(
        ours[5].2.contains("required revision has been compacted"),
        "{}",
        ours[5].2
    );
}

#[test]
fn every_member_serves_watches_from_its_own_state() {
    let cluster = Cluster::start(3, "watch-members");
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    // Watchers on each member, started before the writes, each sees every write.
    let watchers: Vec<_> = endpoints
        .iter()
        .map(|endpoint| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                etcdctl_until(
                    &endpoint,
                    &["watch", "--prefix", "k"],
                    "",
                    3 * 20,
                    Duration::from_secs(30),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    for i in 0..20 {
        let writer = &endpoints[i % endpoints.len()];
        ok(writer, &["put", &format!("k{i:02}"), &format!("v{i}")]);
    }
    let expected: String = (0..20).map(|i| format!("PUT\nk{i:02}\nv{i}\n")).collect();
    for (watcher, endpoint) in watchers.into_iter().zip(&endpoints) {
        let (out, err, _) = watcher.join().unwrap();
        assert_eq!(out, expected, "watch on {endpoint}: {err}\n{}", cluster.logs());
    }
    // And a new watcher on a follower replays the same history from revision 1.
    let (leader, _) = cluster.leader();
    let follower = &endpoints[(leader + 1) % endpoints.len()];
    let (out, _, _) = etcdctl_until(
        follower,
        &["watch", "--rev=1", "--prefix", "k"],
        "",
        60,
        Duration::from_secs(10),
    );
    assert_eq!(out, expected);
}
