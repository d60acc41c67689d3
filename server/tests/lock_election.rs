//! Locks and elections as users take them: etcdctl 3.4's `lock` and `elect` (etcd's client-side
//! recipes over Watch and Txn) and the Lock and Election services, which interoperate because
//! they use the same keys.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use cairn::pb::etcdserverpb::LeaseGrantRequest;
use cairn::pb::etcdserverpb::lease_client::LeaseClient;
use cairn::pb::v3electionpb::election_client::ElectionClient;
use cairn::pb::v3electionpb::{CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest};
use cairn::pb::v3lockpb::lock_client::LockClient;
use cairn::pb::v3lockpb::{LockRequest, UnlockRequest};
use futures::StreamExt;
use support::{Cluster, etcdctl_path, etcdctl_until, ok};

fn spawn_etcdctl(endpoint: &str, args: &[&str], stdout: Stdio) -> std::process::Child {
    Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcdctl")
}

/// Reads a journal of lock holders' `start <who> [key]` and `end <who>` lines, checks that
/// `holders` turns were taken one at a time, and returns each turn's holder and key.
fn turns(journal: &std::path::Path, holders: usize) -> Vec<(String, String)> {
    let lines: Vec<String> = std::fs::read_to_string(journal)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2 * holders, "{lines:?}");
    lines
        .chunks(2)
        .map(|pair| {
            let mut start = pair[0].split_whitespace();
            assert_eq!(start.next(), Some("start"), "a holder starts: {lines:?}");
            let who = start.next().expect("the holder's name").to_owned();
            let key = start.next().unwrap_or("").to_owned();
            assert_eq!(pair[1], format!("end {who}"), "holders overlapped: {lines:?}");
            (who, key)
        })
        .collect()
}

#[test]
fn etcdctl_lock_holders_take_turns_across_members() {
    let cluster = Cluster::start(3, "lock-etcdctl");
    let dir = tempfile::TempDir::new().unwrap();
    let journal = dir.path().join("journal");
    let holders: Vec<_> = (0..4)
        .map(|i| {
            let endpoint = cluster.members[i % 3].endpoint();
            let script = format!(
                "echo start {i} >> {0}; sleep 0.3; echo end {i} >> {0}",
                journal.display()
            );
            spawn_etcdctl(
                &endpoint,
                &["lock", "turns", "--", "sh", "-c", &script],
                Stdio::null(),
            )
        })
        .collect();
    for mut holder in holders {
        assert!(holder.wait().unwrap().success());
    }
    turns(&journal, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_service_and_etcdctl_exclude_each_other() {
    let cluster = Cluster::start(1, "lock-service");
    let url = cluster.members[0].client_url.clone();
    let endpoint = cluster.members[0].endpoint();
    let mut locks = LockClient::connect(url.clone()).await.unwrap();
    let held = locks
        .lock(LockRequest {
            name: b"shared".to_vec(),
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(held.key.starts_with(b"shared/"), "{:?}", held.key);

    // etcdctl waits while the service's holder has the lock...
    let mut waiter = spawn_etcdctl(&endpoint, &["lock", "shared"], Stdio::piped());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(waiter.try_wait().unwrap().is_none());
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(waiter.stdout.take().unwrap());
    // ... and takes it, printing its key, once the holder unlocks.
    locks
        .unlock(UnlockRequest {
            key: held.key.clone(),
        })
        .await
        .unwrap();
    let read = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        stdout.read_line(&mut line).unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("etcdctl takes the lock")
        .unwrap();
    assert!(line.starts_with("shared/"), "{line}");

    // Now a Lock call waits for etcdctl, and gets the lock once etcdctl is interrupted.
    let mut second = locks.clone();
    let pending = tokio::spawn(async move {
        second
            .lock(LockRequest {
                name: b"shared".to_vec(),
                lease: 0,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !pending.is_finished(),
        "the lock was granted while etcdctl held it"
    );
    Command::new("kill")
        .args(["-INT", &waiter.id().to_string()])
        .status()
        .unwrap();
    let granted = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the Lock call is granted after etcdctl lets go")
        .unwrap()
        .unwrap()
        .into_inner();
    assert!(granted.key.starts_with(b"shared/"));
    let _ = waiter.wait();
}

#[test]
fn etcdctl_elect_follows_a_change_of_leader() {
    let cluster = Cluster::start(3, "elect-etcdctl");
    let endpoint = |i: usize| cluster.members[i].endpoint();
    let observer_endpoint = endpoint(2);
    let observer = std::thread::spawn(move || {
        etcdctl_until(
            &observer_endpoint,
            &["elect", "-l", "chair"],
            "",
            4,
            Duration::from_secs(20),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut alpha = spawn_etcdctl(&endpoint(0), &["elect", "chair", "alpha"], Stdio::null());
    std::thread::sleep(Duration::from_millis(800));
    let mut beta = spawn_etcdctl(&endpoint(1), &["elect", "chair", "beta"], Stdio::null());
    std::thread::sleep(Duration::from_millis(800));
    // alpha resigns when interrupted; beta, waiting, takes over.
    Command::new("kill")
        .args(["-INT", &alpha.id().to_string()])
        .status()
        .unwrap();
    let _ = alpha.wait();
    let (out, err, _) = observer.join().unwrap();
    let _ = beta.kill();
    let _ = beta.wait();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "observer printed {out:?} ({err})");
    assert!(lines[0].starts_with("chair/") && lines[2].starts_with("chair/"));
    assert_eq!((lines[1], lines[3]), ("alpha", "beta"), "{out}");
    assert_ne!(lines[0], lines[2], "a new leader key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_election_service_campaigns_proclaims_observes_and_resigns() {
    let cluster = Cluster::start(1, "elect-service");
    let url = cluster.members[0].client_url.clone();
    let leases = LeaseClient::connect(url.clone()).await.unwrap();
    let lease = || {
        let mut leases = leases.clone();
        async move {
            leases
                .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
                .await
                .unwrap()
                .into_inner()
                .id
        }
    };
    let (first, second) = (lease().await, lease().await);
    let mut elections = ElectionClient::connect(url).await.unwrap();
    let name = b"board".to_vec();

    let no_leader = elections
        .leader(LeaderRequest { name: name.clone() })
        .await
        .unwrap_err();
    assert_eq!(no_leader.message(), "election: no leader");

    let mut observe = elections
        .observe(LeaderRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    let leader = elections
        .campaign(CampaignRequest {
            name: name.clone(),
            lease: first,
            value: b"one".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_eq!((leader.name.as_slice(), leader.lease), (name.as_slice(), first));

    let mut rival = elections.clone();
    let rival_name = name.clone();
    let waiting = tokio::spawn(async move {
        rival
            .campaign(CampaignRequest {
                name: rival_name,
                lease: second,
                value: b"two".to_vec(),
            })
            .await
    });
    elections
        .proclaim(ProclaimRequest {
            leader: Some(leader.clone()),
            value: b"one, again".to_vec(),
        })
        .await
        .unwrap();
    let current = elections
        .leader(LeaderRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner()
        .kv
        .unwrap();
    assert_eq!(
        (current.key, current.value),
        (leader.key.clone(), b"one, again".to_vec())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "the rival won while the leader held office"
    );

    elections
        .resign(ResignRequest {
            leader: Some(leader.clone()),
        })
        .await
        .unwrap();
    let rival = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the rival leads after the resignation")
        .unwrap()
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_eq!(rival.lease, second);
    // A resigned leader may no longer proclaim.
    let stale = elections
        .proclaim(ProclaimRequest {
            leader: Some(leader),
            value: b"usurp".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.message(), "election: not leader");

    // The observer saw each leader and each value, in order.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let response = tokio::time::timeout(Duration::from_secs(10), observe.next())
            .await
            .expect("observe keeps reporting")
            .unwrap()
            .unwrap();
        seen.push(String::from_utf8(response.kv.unwrap().value).unwrap());
    }
    assert_eq!(seen, ["one", "one, again", "two"]);
}

/// cairnctl's lock and elect go through the Lock and Election services and print what etcdctl
/// prints; they exclude and follow etcdctl's own holders and candidates.
#[test]
fn cairnctl_lock_and_elect_work_with_etcdctl() {
    let cluster = Cluster::start(1, "cairnctl-recipes");
    let endpoint = cluster.members[0].endpoint();
    let dir = tempfile::TempDir::new().unwrap();
    let journal = dir.path().join("journal");
    let script = |who: &str| {
        format!(
            "echo start {who} $ETCD_LOCK_KEY >> {0}; sleep 0.4; echo end {who} >> {0}",
            journal.display()
        )
    };
    let cairnctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cairnctl"))
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cairnctl")
    };
    let ours = cairnctl(&["lock", "mixed", "--", "sh", "-c", &script("cairnctl")]);
    let theirs = spawn_etcdctl(
        &endpoint,
        &["lock", "mixed", "--", "sh", "-c", &script("etcdctl")],
        Stdio::null(),
    );
    for mut holder in [ours, theirs] {
        assert!(holder.wait().unwrap().success());
    }
    for (_, key) in turns(&journal, 2) {
        assert!(key.starts_with("mixed/"), "ETCD_LOCK_KEY is set: {key:?}");
    }

    // An election: cairnctl observes, etcdctl leads, cairnctl takes over when etcdctl resigns.
    let observer_endpoint = endpoint.clone();
    let observer = std::thread::spawn(move || {
        support::cairnctl_until(
            &observer_endpoint,
            &["elect", "-l", "seat"],
            "",
            4,
            Duration::from_secs(20),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut first = spawn_etcdctl(&endpoint, &["elect", "seat", "etcdctl"], Stdio::null());
    std::thread::sleep(Duration::from_millis(800));
    let mut second = cairnctl(&["elect", "seat", "cairnctl"]);
    std::thread::sleep(Duration::from_millis(800));
    Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    let _ = first.wait();
    let mut elected = String::new();
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(second.stdout.take().unwrap());
        out.read_line(&mut elected).unwrap();
        out.read_line(&mut elected).unwrap();
    }
    let (observed, err, _) = observer.join().unwrap();
    Command::new("kill")
        .args(["-INT", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(
        second.wait().unwrap().success(),
        "cairnctl elect resigns cleanly when interrupted"
    );
    let lines: Vec<&str> = observed.lines().collect();
    assert_eq!(lines.len(), 4, "observer printed {observed:?} ({err})");
    assert_eq!((lines[1], lines[3]), ("etcdctl", "cairnctl"));
    assert_eq!(
        elected,
        format!("{}\ncairnctl\n", lines[2]),
        "the new leader prints its key and value"
    );
    assert!(
        ok(&endpoint, &["get", "seat", "--prefix"]).is_empty(),
        "nothing left behind"
    );
}
