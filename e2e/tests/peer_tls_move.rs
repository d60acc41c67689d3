//! A running cluster created with plaintext peers moves to peer TLS by one edit of its spec, in
//! the sandbox, while a client writes throughout: members restart listening under both schemes,
//! their peer URLs change to https:// one at a time and a while apart, then they restart on TLS
//! only. Never two members away, the same cluster and members after, every acknowledged write on
//! every member, and the peer port refusing plaintext at the end where it served it before.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn_e2e::testkit::{TestNamespace, TestSandbox, poll_until, wait_for};
use cairn_operator::crd::{KVCluster, KVClusterStatus};
use common::{
    OperatorSandbox, Traffic, client_options, member_endpoint, operator_events, wait_settled, with_operator,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MEMBERS: [&str; 3] = ["kv-0", "kv-1", "kv-2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plaintext_cluster_moves_its_peers_to_tls_one_member_at_a_time_under_writes() {
    let OperatorSandbox {
        env,
        context,
        dir: _dir,
    } = OperatorSandbox::start(20543, 27690, 30).await;
    with_operator(&env, context, move_peers(&env)).await;
}

async fn move_peers(env: &TestSandbox) {
    let ns = env.namespace("peer-move").await;
    ns.apply(
        "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\n\
         spec: {replicas: 3, storage: {size: 64Mi}, tls: {peer: {enabled: false}}}\n",
    )
    .await;
    let before = wait_settled(&ns, 3, Duration::from_secs(120)).await;
    assert_eq!(before.peer_tls, Some(false));
    assert!(
        before.members.iter().all(|m| m.peer_url.starts_with("http://")),
        "{:?}",
        before.members
    );
    for member in MEMBERS {
        assert_eq!(
            peer_port_answer(&ns, member).await,
            PeerPort::Plaintext,
            "{member} before the move"
        );
    }

    let pods: Api<Pod> = ns.api();
    let traffic = Traffic::start(&pods, &MEMBERS).await;

    let started = Instant::now();
    let clusters: Api<KVCluster> = ns.api();
    let ask = serde_json::json!({"spec": {"tls": {"peer": {"enabled": true}}}});
    clusters
        .patch("kv", &PatchParams::default(), &Patch::Merge(&ask))
        .await
        .unwrap();
    wait_for("the move to begin", Duration::from_secs(60), || async {
        let status = clusters.get("kv").await.ok()?.status?;
        status.peer_tls_move.is_some().then_some(())
    })
    .await;
    // Done: peer TLS latched, and every pod on TLS only (the last roll follows the latch).
    let done = poll_until(Duration::from_secs(420), || async {
        let status = clusters.get("kv").await.ok()?.status?;
        let latched = status.peer_tls == Some(true) && status.peer_tls_move.is_none();
        let mut on_tls = true;
        for member in MEMBERS {
            on_tls &= peer_listen_urls(&pods, member).await.as_deref() == Some("https://$(POD_IP):2380");
        }
        (latched && on_tls).then_some(())
    })
    .await;
    if done.is_none() {
        let status = clusters.get("kv").await.ok().and_then(|c| c.status);
        panic!(
            "timed out waiting for the peers to be on TLS only; status {status:#?}\n{}",
            ns.report().await
        );
    }
    let after = wait_settled(&ns, 3, Duration::from_secs(120)).await;
    for member in MEMBERS {
        ns.wait_pod_ready(member, Duration::from_secs(60)).await;
    }
    let moved_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = traffic.stop().await;
    eprintln!(
        "moved 3 members' peers to TLS in {:.1}s; {} writes acknowledged, {} failed",
        moved_in.as_secs_f64(),
        seen.acknowledged.len(),
        seen.failed
    );
    seen.at_most_one_away();
    assert_eq!(after.cluster_id, before.cluster_id, "the same cluster");
    let ids = |status: &KVClusterStatus| -> BTreeSet<String> {
        status.members.iter().map(|m| m.id.clone()).collect()
    };
    assert_eq!(ids(&after), ids(&before), "the same members");
    assert!(
        after
            .members
            .iter()
            .all(|m| m.healthy && m.peer_url.starts_with("https://")),
        "every member known by its https:// peer URL: {:?}",
        after.members
    );

    // The operator's record: each URL changed once, at least the settling time apart, then
    // TLS latched.
    let steps = operator_events(
        &ns,
        &["MemberRestarted", "LeaderMoved", "PeerURLUpdated", "PeerTLSOn"],
    )
    .await;
    let updates: Vec<&(String, String, i64)> = steps
        .iter()
        .filter(|(reason, ..)| reason == "PeerURLUpdated")
        .collect();
    assert_eq!(updates.len(), 3, "{steps:#?}");
    for pair in updates.windows(2) {
        assert!(
            pair[1].2 - pair[0].2 >= 14,
            "URL changes {}s apart: {steps:#?}",
            pair[1].2 - pair[0].2
        );
    }
    let latched = steps.iter().position(|(reason, ..)| reason == "PeerTLSOn");
    let last_update = steps.iter().rposition(|(reason, ..)| reason == "PeerURLUpdated");
    assert!(
        matches!((last_update, latched), (Some(u), Some(l)) if u < l),
        "TLS latched after the last URL change: {steps:#?}"
    );
    // Two rolls: each member's pod is seen Ready under three UIDs (repeated Events of one
    // member's restarts are one Event series, so the pods tell it).
    for member in MEMBERS {
        let uids: BTreeSet<&String> = seen
            .looks
            .iter()
            .filter_map(|l| l.pods[member].as_ref())
            .collect();
        assert_eq!(uids.len(), 3, "{member} restarted twice: {steps:#?}");
    }

    // Every acknowledged write is on every member, and plaintext no longer reaches a peer port.
    seen.on_every_member(&ns, &MEMBERS, |_| client_options(), false)
        .await;
    for member in MEMBERS {
        assert_eq!(
            peer_port_answer(&ns, member).await,
            PeerPort::Refused,
            "{member} after the move"
        );
    }
}

/// The member's peer listen URLs, as its pod's spec gives them.
async fn peer_listen_urls(pods: &Api<Pod>, member: &str) -> Option<String> {
    let pod = pods.get(member).await.ok()?;
    let container = pod.spec?.containers.into_iter().next()?;
    container
        .env?
        .into_iter()
        .find(|var| var.name == "CAIRN_LISTEN_PEER_URLS")?
        .value
}

#[derive(Debug, PartialEq, Eq)]
enum PeerPort {
    /// It answered an HTTP/2 connection preface with a SETTINGS frame.
    Plaintext,
    /// It answered with anything else (a TLS alert) or closed the connection.
    Refused,
}

/// What the member's peer port does with a plaintext HTTP/2 client.
async fn peer_port_answer(ns: &TestNamespace, member: &str) -> PeerPort {
    let client = member_endpoint(ns, member).await;
    let ip = client.trim_start_matches("http://").trim_end_matches(":2379");
    let mut stream = tokio::net::TcpStream::connect((ip, 2380))
        .await
        .expect("the peer port accepts connections");
    // The client preface, then an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.expect("send the preface");
    let mut header = [0u8; 9];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header)).await;
    match read {
        // A frame header: 3 bytes of length, then the type; 4 is SETTINGS.
        Ok(Ok(_)) if header[3] == 4 => PeerPort::Plaintext,
        _ => PeerPort::Refused,
    }
}
