//! The one way to the leader and the peer plane's guard, through real processes: every request only
//! the leader may serve works when a client reaches a follower (so it was forwarded), and a peer
//! port refuses strangers, unknown protocol versions, forwarded internal entries, invalid forwarded
//! requests and oversized messages, the last before decoding them, on single calls and on the
//! append stream alike.

mod support;

use std::time::Duration;

use cairn::pb::cairnpb::MemberAttributes;
use cairn::pb::etcdserverpb::PutRequest;
use cairn::pb::peerpb::forward_error::Kind;
use cairn::pb::peerpb::forward_reply::Reply;
use cairn::pb::peerpb::forward_request::Request as Call;
use cairn::pb::peerpb::peer_client::PeerClient;
use cairn::pb::peerpb::{self, ForwardRequest};
use support::{Cluster, etcdctl, ok, wait_until};
use tonic::Code;

fn run(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoint, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} through a follower failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_request_for_the_leader_works_through_a_follower() {
    let cluster = Cluster::start(3, "forwarding");
    let (leader, _) = cluster.leader();
    let follower = cluster.members[(leader + 1) % 3].endpoint();
    let at_leader = cluster.members[leader].endpoint();

    // Writes (forwarded proposals) and a linearizable read (forwarded read index).
    run(&follower, &["put", "a", "1"]);
    assert_eq!(run(&follower, &["get", "a", "--print-value-only"]), "1\n");
    run(&follower, &["put", "b", "2"]);
    assert_eq!(run(&follower, &["del", "b"]), "1\n");
    let swapped = support::etcdctl_stdin(&follower, &["txn"], "value(\"a\") = \"1\"\n\nput a 3\n\n\n");
    assert!(
        swapped.status.success(),
        "{}",
        String::from_utf8_lossy(&swapped.stderr)
    );
    assert_eq!(ok(&at_leader, &["get", "a", "--print-value-only"]), "3\n");
    let status: serde_json::Value =
        serde_json::from_str(&run(&follower, &["endpoint", "status", "-w", "json"])).unwrap();
    let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    run(&follower, &["compaction", &(revision - 1).to_string()]);

    // Leases: grant and revoke go through the log, keep-alive and time-to-live ask the leader's clock.
    let granted = run(&follower, &["lease", "grant", "60"]);
    let lease = granted.split_whitespace().nth(1).expect("lease ID").to_owned();
    run(&follower, &["put", "leased", "x", "--lease", &lease]);
    assert!(run(&follower, &["lease", "keep-alive", "--once", &lease]).contains("TTL(60)"));
    assert!(run(&follower, &["lease", "timetolive", &lease, "--keys"]).contains("leased"));
    run(&follower, &["lease", "revoke", &lease]);
    assert_eq!(ok(&at_leader, &["get", "leased"]), "");

    // Alarms: disarming goes through the log.
    run(&follower, &["alarm", "disarm"]);

    // Membership: add a learner, update its URLs, remove it — all asked of a follower.
    let port = support::free_port();
    let added = run(
        &follower,
        &[
            "member",
            "add",
            "extra",
            &format!("--peer-urls=http://127.0.0.1:{port}"),
            "--learner",
        ],
    );
    let id = added.split_whitespace().nth(1).expect("member ID").to_owned();
    let other = support::free_port();
    run(
        &follower,
        &[
            "member",
            "update",
            &id,
            &format!("--peer-urls=http://127.0.0.1:{other}"),
        ],
    );
    assert!(ok(&at_leader, &["member", "list"]).contains(&format!("http://127.0.0.1:{other}")));
    // A learner that never started is not in sync: promotion is refused by the leader, by name.
    let promote = etcdctl(&follower, &["member", "promote", &id]);
    assert!(
        String::from_utf8_lossy(&promote.stderr)
            .contains("can only promote a learner member which is in sync"),
        "{}",
        String::from_utf8_lossy(&promote.stderr)
    );
    run(&follower, &["member", "remove", &id]);
    assert!(!ok(&at_leader, &["member", "list"]).contains(&id));
}

/// A raw peer client, speaking for `member` of `cluster` in protocol `version`.
struct RawPeer {
    client: PeerClient<tonic::transport::Channel>,
    cluster: u64,
    member: u64,
    version: Option<u32>,
}

impl RawPeer {
    async fn connect(url: &str) -> RawPeer {
        let client = PeerClient::connect(url.to_owned())
            .await
            .unwrap()
            .max_encoding_message_size(64 << 20);
        RawPeer {
            client,
            cluster: 0,
            member: 0,
            version: Some(1),
        }
    }

    fn stamp<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("cairn-cluster-id", self.cluster.into());
        request
            .metadata_mut()
            .insert("cairn-member-id", self.member.into());
        if let Some(version) = self.version {
            request
                .metadata_mut()
                .insert("cairn-peer-version", version.into());
        }
        request
    }

    async fn forward(&mut self, call: Call) -> Result<Reply, tonic::Status> {
        let request = self.stamp(ForwardRequest {
            request: Some(call),
            caller: None,
        });
        let reply = self.client.forward(request).await?.into_inner();
        Ok(reply.reply.expect("a forward reply carries a reply"))
    }
}

fn refused(reply: Reply) -> (Kind, String) {
    match reply {
        Reply::Error(error) => (Kind::try_from(error.kind).unwrap(), error.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn put(key: &str, value_bytes: usize) -> Call {
    Call::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![b'v'; value_bytes],
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_what_a_client_port_would_and_more() {
    let cluster = Cluster::start(1, "peer-guard");
    let member = &cluster.members[0];
    let mut peer = RawPeer::connect(&member.peer_url).await;

    // A stranger learns nothing of the cluster: not its IDs from Hello, not its members.
    let hello = peerpb::HelloRequest {
        min_version: 1,
        max_version: 1,
    };
    let greeted = peer.client.hello(peer.stamp(hello)).await.unwrap().into_inner();
    assert_eq!(
        (greeted.version, greeted.cluster_id, greeted.member_id),
        (1, 0, 0)
    );
    let status = peer
        .client
        .cluster_info(peer.stamp(peerpb::ClusterInfoRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("only members of this cluster"),
        "{}",
        status.message()
    );
    // A member being added asks with the peer URLs it was added with, and is answered.
    let info = peer
        .client
        .cluster_info(peer.stamp(peerpb::ClusterInfoRequest {
            peer_urls: vec![member.peer_url.clone()],
        }))
        .await
        .unwrap()
        .into_inner();
    let member_id = info.members[0].id;
    let status = peer.forward(put("k", 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("cluster ID mismatch"),
        "{}",
        status.message()
    );
    // So is a stranger's append stream, before it carries anything.
    let status = peer
        .client
        .append_stream(peer.stamp(futures::stream::empty()))
        .await
        .unwrap_err();
    assert!(status.message().contains("cluster ID mismatch"), "{status:?}");

    // A member of the cluster must name a protocol version it speaks.
    peer.cluster = info.cluster_id;
    peer.member = member_id;
    let hello = peerpb::HelloRequest {
        min_version: 5,
        max_version: 9,
    };
    let status = peer.client.hello(peer.stamp(hello)).await.unwrap_err();
    assert!(
        status.message().contains("no common peer protocol version"),
        "{}",
        status.message()
    );
    peer.version = Some(7);
    let status = peer.forward(put("k", 1)).await.unwrap_err();
    assert!(
        status.message().contains("protocol version 7"),
        "{}",
        status.message()
    );
    peer.version = None;
    let status = peer.forward(put("k", 1)).await.unwrap_err();
    assert!(
        status.message().contains("cairn-peer-version"),
        "{}",
        status.message()
    );
    peer.version = Some(1);

    // Forwarded requests are checked as client requests are.
    let (kind, message) = refused(peer.forward(put("", 1)).await.unwrap());
    assert_eq!(
        (kind, message.as_str()),
        (Kind::InvalidRequest, "etcdserver: key is not provided")
    );
    let (kind, message) = refused(peer.forward(put("big", 2_000_000)).await.unwrap());
    assert_eq!(
        (kind, message.as_str()),
        (Kind::InvalidRequest, "etcdserver: request is too large")
    );

    // Only a member itself may publish its attributes.
    let forged = MemberAttributes {
        id: member_id ^ 1,
        name: "impostor".into(),
        client_urls: vec![],
    };
    let (kind, _) = refused(peer.forward(Call::PublishAttributes(forged)).await.unwrap());
    assert_eq!(kind, Kind::NotForwardable);
    let members = ok(&member.endpoint(), &["member", "list"]);
    assert!(!members.contains("impostor"), "{members}");

    // A message over the peer limit (16 MiB here) is refused before it is decoded.
    let oversized = peerpb::AppendEntriesRequest {
        entries: vec![peerpb::Entry {
            payload: Some(peerpb::entry::Payload::Normal(cairn::pb::cairnpb::RaftRequest {
                request: Some(cairn::pb::cairnpb::raft_request::Request::Put(PutRequest {
                    key: b"huge".to_vec(),
                    value: vec![0; 17 << 20],
                    ..Default::default()
                })),
                caller: None,
            })),
            log_id: None,
        }],
        ..Default::default()
    };
    let status = peer
        .client
        .append_entries(peer.stamp(oversized.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{}",
        status.message()
    );

    // A member's append stream is checked message by message as single appends are: a malformed
    // message ends it with the reason, an oversized one is refused before it is decoded.
    peer.version = Some(2);
    for (message, code, reason) in [
        (
            peerpb::AppendEntriesRequest::default(),
            Code::InvalidArgument,
            "vote is missing",
        ),
        (oversized, Code::OutOfRange, "message length too large"),
    ] {
        let (requests, outgoing) = futures::channel::mpsc::unbounded();
        let mut replies = peer
            .client
            .append_stream(peer.stamp(outgoing))
            .await
            .unwrap()
            .into_inner();
        requests.unbounded_send(message).unwrap();
        let status = replies.message().await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(reason), "{status:?}");
    }
    peer.version = Some(1);

    // A valid forwarded write still goes through, and the member is unharmed.
    let answer = peer.forward(put("fine", 1)).await.unwrap();
    assert!(matches!(answer, Reply::Applied(_)), "{answer:?}");
    let endpoint = member.endpoint();
    wait_until("the member serves reads", Duration::from_secs(5), || {
        etcdctl(&endpoint, &["get", "fine", "--print-value-only"]).stdout == b"v\n"
    });
}
