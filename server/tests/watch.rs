//! Watch through the interfaces users have: Debian's etcdctl 3.4 against a Cairn member, held
//! byte for byte against the same commands on a real etcd, watches served by every member of a
//! cluster, and a member's memory while watchers stop reading.

mod support;

use std::time::Duration;

use support::{Cluster, Etcd, cairnctl_until, etcdctl_stdin, etcdctl_until, ok};

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

/// Which client runs the watch commands.
#[derive(Clone, Copy)]
enum Client {
    Etcdctl,
    Cairnctl,
}

/// What a client prints for a set of watch commands against one server.
fn watch_transcript(endpoint: &str, client: Client) -> Vec<(String, String, String, Option<i32>)> {
    let within = Duration::from_secs(10);
    let mut transcript = Vec::new();
    let mut record = |name: &str, args: &[&str], input: &str, lines: usize| {
        let (out, err, code) = match client {
            Client::Etcdctl => etcdctl_until(endpoint, args, input, lines, within),
            Client::Cairnctl => cairnctl_until(endpoint, args, input, lines, within),
        };
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
    let ours = watch_transcript(&cairn.endpoints(), Client::Etcdctl);
    let theirs = watch_transcript(&etcd.endpoint(), Client::Etcdctl);
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

/// cairnctl's watch prints what etcdctl's prints, byte for byte, standard error included.
#[test]
fn cairnctl_watch_prints_what_etcdctl_prints() {
    let first = Cluster::start(1, "watch-cairnctl-a");
    let second = Cluster::start(1, "watch-cairnctl-b");
    write_history(&first.endpoints());
    write_history(&second.endpoints());
    let etcdctl = watch_transcript(&first.endpoints(), Client::Etcdctl);
    let cairnctl = watch_transcript(&second.endpoints(), Client::Cairnctl);
    for (theirs, ours) in etcdctl.iter().zip(&cairnctl) {
        assert_eq!(
            ours, theirs,
            "cairnctl {} differs (left: cairnctl, right: etcdctl)",
            ours.0
        );
    }
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

/// Resident memory of a process: now, and the peak since it started (kB).
fn resident_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Watchers whose clients stop reading must not grow the member's memory: while they are stalled,
/// 100,000 puts happen; the member's peak resident memory stays under a bound far below what
/// buffering their events would take, and afterwards each watcher receives every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watchers_cost_bounded_memory_and_miss_nothing() {
    use cairn::pb::etcdserverpb::kv_client::KvClient;
    use cairn::pb::etcdserverpb::watch_client::WatchClient;
    use cairn::pb::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, watch_request};
    use futures::StreamExt;

    const STREAMS: usize = 8;
    const WATCHERS_PER_STREAM: usize = 4;
    const PUTS: usize = 100_000;
    const WRITERS: usize = 32;
    const VALUE: usize = 256;
    // Buffering these events for every watcher would take STREAMS * WATCHERS * PUTS * ~300 bytes,
    // about 960 MB; the member's whole footprint must stay under this.
    const BOUND_MB: u64 = 300;

    let cluster = Cluster::start(1, "watch-memory");
    let member = &cluster.members[0];
    let pid = member.process.as_ref().unwrap().id();
    let url = member.client_url.clone();

    // Stalled streams, each on a connection of its own, created and then never read.
    let mut stalled = Vec::new();
    for _ in 0..STREAMS {
        let mut client = WatchClient::connect(url.clone()).await.unwrap();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..WATCHERS_PER_STREAM {
            sender
                .send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                        key: b"load/".to_vec(),
                        range_end: b"load0".to_vec(),
                        ..Default::default()
                    })),
                })
                .unwrap();
        }
        let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver);
        let mut responses = client.watch(requests).await.unwrap().into_inner();
        // Read the created answers only.
        for _ in 0..WATCHERS_PER_STREAM {
            let created = responses.next().await.unwrap().unwrap();
            assert!(created.created);
        }
        stalled.push((client, sender, responses));
    }
    let (_, start_peak) = resident_kb(pid);
    let metrics = support::http_body(&format!("{url}/metrics"));
    assert!(
        metrics.contains(&format!(
            "etcd_debugging_mvcc_watcher_total {}",
            STREAMS * WATCHERS_PER_STREAM
        )) && metrics.contains(&format!("etcd_debugging_mvcc_watch_stream_total {STREAMS}")),
        "the member counts its streams and watchers:\n{metrics}"
    );

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let mut kv = KvClient::connect(url).await.unwrap();
            for i in (w..PUTS).step_by(WRITERS) {
                kv.put(PutRequest {
                    key: format!("load/{i:06}").into_bytes(),
                    value: vec![b'x'; VALUE],
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let (rss, peak) = resident_kb(pid);
    eprintln!(
        "member memory with {} stalled watchers: peak {} MB before the puts, {} MB after {PUTS} puts (now {} MB)",
        STREAMS * WATCHERS_PER_STREAM,
        start_peak / 1024,
        peak / 1024,
        rss / 1024
    );
    assert!(
        peak / 1024 < BOUND_MB,
        "peak resident memory {} MB is over {BOUND_MB} MB",
        peak / 1024
    );

    // Now every watcher reads: each sees all PUTS events, revisions strictly increasing.
    let mut readers = Vec::new();
    for (client, sender, mut responses) in stalled {
        readers.push(tokio::spawn(async move {
            let _keep = (client, sender);
            let mut seen = vec![Vec::new(); WATCHERS_PER_STREAM];
            let mut done = 0;
            while done < WATCHERS_PER_STREAM {
                let response = tokio::time::timeout(Duration::from_secs(60), responses.next())
                    .await
                    .expect("events keep coming")
                    .unwrap()
                    .unwrap();
                let revisions = &mut seen[response.watch_id as usize % WATCHERS_PER_STREAM];
                for event in response.events {
                    revisions.push(event.kv.unwrap().mod_revision);
                }
                if !response.canceled && revisions.len() == PUTS {
                    done += 1;
                }
            }
            seen
        }));
    }
    for reader in readers {
        for revisions in reader.await.unwrap() {
            assert_eq!(revisions.len(), PUTS);
            assert!(
                revisions.windows(2).all(|w| w[1] == w[0] + 1),
                "in order, no gaps, no repeats"
            );
        }
    }
}
