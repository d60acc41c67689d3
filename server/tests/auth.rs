//! etcd's Auth API through the clients users have: the same etcdctl 3.4 session of users, roles,
//! `auth enable` and reads inside and outside a user's prefix, run against etcd and against a
//! 3-member Cairn cluster, answers compared step by step; then, through the gRPC API on several
//! members, tokens that follow role and password changes, watches and maintenance refused
//! without the rights, and the JSON gateway's `Authorization` header.

mod support;

use std::process::Output;
use std::time::Duration;

use cairn::pb::etcdserverpb::auth_client::AuthClient;
use cairn::pb::etcdserverpb::kv_client::KvClient;
use cairn::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn::pb::etcdserverpb::watch_client::WatchClient;
use cairn::pb::etcdserverpb::{
    AlarmRequest, AlarmType, AuthenticateRequest, HashRequest, RangeRequest, StatusRequest,
    WatchCreateRequest, WatchRequest, alarm_request::AlarmAction, watch_request::RequestUnion,
};
use support::{Cluster, Etcd, etcdctl};
use tonic::Code;

/// What a step printed: its output on success, its `Error:` line on failure (etcdctl's warning
/// logs around it carry timestamps).
fn outcome(out: &Output) -> String {
    if out.status.success() {
        return format!("ok: {}", String::from_utf8_lossy(&out.stdout).trim_end());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|line| line.starts_with("Error:"))
        .unwrap_or(&stderr);
    format!("failed: {error}")
}

/// Runs a client (etcdctl or cairnctl) against `endpoint` with `args`, feeding it `input`.
type Client = dyn Fn(&str, &[&str], Option<&str>) -> Output;

fn etcdctl_client(endpoint: &str, args: &[&str], input: Option<&str>) -> Output {
    match input {
        Some(input) => support::etcdctl_stdin(endpoint, args, input),
        None => etcdctl(endpoint, args),
    }
}

fn cairnctl_client(endpoint: &str, args: &[&str], input: Option<&str>) -> Output {
    support::cairnctl_stdin(endpoint, args, input.unwrap_or(""))
}

/// Root, and alice with read-write on `/app/`, before auth is enabled.
const SETUP: [&[&str]; 5] = [
    &["user", "add", "root:rootpw"],
    &["user", "add", "alice:alicepw"],
    &["role", "add", "app"],
    &[
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "/app/",
        "--prefix=true",
    ],
    &["user", "grant-role", "alice", "app"],
];

/// The session: root and alice (read-write on `/app/`), auth on, then each user where their
/// rights end. `endpoint(i)` is the member step `i` talks to.
fn session(client: &Client, endpoint: &dyn Fn(usize) -> String) -> Vec<(String, String)> {
    let root = "--user=root:rootpw";
    let alice = "--user=alice:alicepw";
    let mut steps: Vec<Vec<&str>> = SETUP.iter().map(|step| step.to_vec()).collect();
    steps.extend([
        vec!["role", "grant-permission", "app", "read", "/shared"],
        vec!["auth", "enable"],
        vec![root, "put", "/app/x", "1"],
        vec![root, "put", "/other", "2"],
        vec![root, "put", "/shared", "3"],
        vec![alice, "get", "/app/x"],
        vec![alice, "put", "/app/y", "4"],
        vec![alice, "get", "/app/", "--prefix"],
        vec![alice, "get", "/other"],
        vec![alice, "put", "/other", "5"],
        vec![alice, "get", "/shared"],
        vec![alice, "put", "/shared", "6"],
        vec![alice, "del", "/app/", "--prefix"],
        vec![alice, "txn"],
        vec!["get", "/app/x"],
        vec!["--user=alice:wrong", "get", "/app/x"],
        vec!["--user=nobody:pw", "get", "/app/x"],
        vec![alice, "user", "list"],
        vec![alice, "role", "add", "sneaky"],
        vec![alice, "user", "grant-role", "alice", "root"],
        vec![alice, "member", "remove", "1234"],
        vec![root, "user", "list"],
        vec![root, "user", "get", "alice"],
        vec![root, "role", "get", "app"],
        vec![root, "role", "revoke-permission", "app", "/app/", "--prefix=true"],
        vec![alice, "get", "/app/x"],
        vec![root, "user", "delete", "root"],
        vec![root, "user", "revoke-role", "root", "root"],
        vec![root, "role", "delete", "root"],
        vec![root, "user", "delete", "alice"],
        vec![alice, "get", "/shared"],
        vec![root, "auth", "disable"],
        vec!["get", "/other"],
    ]);
    steps
        .iter()
        .enumerate()
        .map(|(i, args)| {
            // The txn step reads its operations from stdin: a compare on a key alice may read and
            // a put she may not make, so the whole transaction is refused.
            let input =
                (args.last() == Some(&"txn")).then_some("value(\"/shared\") = \"3\"\n\nput /other 7\n\n\n");
            let out = client(&endpoint(i), args, input);
            (args.join(" "), outcome(&out))
        })
        .collect()
}

#[test]
fn etcdctl_auth_session_answers_as_etcd_does() {
    let etcd = Etcd::start();
    let expected = session(&etcdctl_client, &|_| etcd.endpoint());
    // Sanity: the session exercises both sides of every rule against etcd itself.
    let answers: Vec<&str> = expected.iter().map(|(_, a)| a.as_str()).collect();
    assert!(
        answers.contains(&"failed: Error: etcdserver: permission denied"),
        "{expected:#?}"
    );
    assert!(answers.contains(&"ok: /app/x\n1"), "{expected:#?}");

    let cluster = Cluster::start(3, "auth-etcdctl");
    // Every step on another member: tokens issued through one member are used on it at once,
    // and most calls are forwarded to the leader.
    let members: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let got = session(&etcdctl_client, &|i| members[i % members.len()].clone());
    for ((step, want), (_, answer)) in expected.iter().zip(&got) {
        assert_eq!(answer, want, "etcdctl {step}\n{}", cluster.logs());
    }
}

#[test]
fn cairnctl_user_role_and_auth_verbs_answer_as_etcdctl_does() {
    let by_etcdctl = Cluster::start(1, "auth-by-etcdctl");
    let expected = session(&etcdctl_client, &|_| by_etcdctl.members[0].endpoint());
    drop(by_etcdctl);
    let by_cairnctl = Cluster::start(1, "auth-by-cairnctl");
    let got = session(&cairnctl_client, &|_| by_cairnctl.members[0].endpoint());
    for ((step, want), (_, answer)) in expected.iter().zip(&got) {
        assert_eq!(answer, want, "cairnctl {step}");
    }
    let role_get = support::cairnctl(&by_cairnctl.members[0].endpoint(), &["role", "get", "app"]);
    assert_eq!(
        String::from_utf8_lossy(&role_get.stdout),
        "Role app\nKV Read:\n\t/shared\nKV Write:\n",
        "{role_get:?}"
    );
}

/// Sets up root and alice (read-write on `/app/`) and turns auth on, through etcdctl.
fn secure(endpoint: &str) {
    let finish: [&[&str]; 2] = [&["auth", "enable"], &["--user=root:rootpw", "put", "/app/x", "1"]];
    for args in SETUP.iter().chain(&finish) {
        support::ok(endpoint, args);
    }
}

async fn token(url: &str, name: &str, password: &str) -> Result<String, tonic::Status> {
    let mut auth = AuthClient::connect(url.to_owned()).await.unwrap();
    let request = AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    Ok(auth.authenticate(request).await?.into_inner().token)
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("token", token.parse().unwrap());
    request
}

async fn read(url: &str, token: &str, key: &str) -> Result<usize, tonic::Status> {
    let mut kv = KvClient::connect(url.to_owned()).await.unwrap();
    let request = RangeRequest {
        key: key.into(),
        ..Default::default()
    };
    Ok(kv.range(with_token(request, token)).await?.into_inner().kvs.len())
}

/// `read`, tried again while the member answers etcd's `revision of auth store is old`: a member
/// that applies an auth change while it serves the read refuses it that way, and etcd's clients
/// take it as a cue to try again (clientv3 retries it after renewing its token).
async fn read_settled(url: &str, token: &str, key: &str) -> Result<usize, tonic::Status> {
    for _ in 0..50 {
        match read(url, token, key).await {
            Err(status) if status.message() == "etcdserver: revision of auth store is old" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer => return answer,
        }
    }
    read(url, token, key).await
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_follow_role_and_password_changes_on_every_member() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(3, "auth-tokens"))
        .await
        .unwrap();
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
    let first = endpoints[0].clone();
    tokio::task::spawn_blocking(move || secure(&first)).await.unwrap();

    // A token issued through one member works on every member.
    let alice = token(&urls[1], "alice", "alicepw").await.unwrap();
    for url in &urls {
        assert_eq!(read(url, &alice, "/app/x").await.unwrap(), 1, "{url}");
    }
    let denied = read(&urls[2], &alice, "/other").await.unwrap_err();
    assert_eq!(
        (denied.code(), denied.message()),
        (Code::PermissionDenied, "etcdserver: permission denied")
    );

    // Watches: inside the prefix created, outside it refused as etcd refuses them.
    let mut watch = WatchClient::connect(urls[0].clone()).await.unwrap();
    let create = |key: &str, range_end: &str| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        })),
    };
    let requests = futures::stream::iter([create("/app/", "/app0"), create("/", "0")]);
    let mut responses = watch
        .watch(with_token(requests, &alice))
        .await
        .unwrap()
        .into_inner();
    let inside = responses.message().await.unwrap().unwrap();
    assert!(inside.created && !inside.canceled, "{inside:?}");
    let outside = responses.message().await.unwrap().unwrap();
    assert!(outside.created && outside.canceled, "{outside:?}");
    assert_eq!(outside.watch_id, -1);
    assert_eq!(outside.cancel_reason, "etcdserver: permission denied");

    // Maintenance and alarms are root's; Status is anyone's, as in etcd.
    let mut maintenance = MaintenanceClient::connect(urls[2].clone()).await.unwrap();
    maintenance
        .status(with_token(StatusRequest {}, &alice))
        .await
        .unwrap();
    let hash = maintenance.hash(with_token(HashRequest {}, &alice)).await;
    assert_eq!(hash.unwrap_err().code(), Code::PermissionDenied);
    let raise = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: 0,
        alarm: AlarmType::Nospace as i32,
    };
    let raised = maintenance.alarm(with_token(raise, &alice)).await;
    assert_eq!(
        raised.unwrap_err().message(),
        "etcdserver: permission denied",
        "alice raised an alarm"
    );
    let root = token(&urls[0], "root", "rootpw").await.unwrap();
    maintenance
        .status(with_token(StatusRequest {}, &root))
        .await
        .unwrap();

    // A role change applies to tokens already issued.
    let first = endpoints[0].clone();
    tokio::task::spawn_blocking(move || {
        support::ok(
            &first,
            &[
                "--user=root:rootpw",
                "role",
                "revoke-permission",
                "app",
                "/app/",
                "--prefix=true",
            ],
        )
    })
    .await
    .unwrap();
    for url in &urls {
        let denied = read_settled(url, &alice, "/app/x").await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{url}: {denied:?}");
    }

    // A new password ends the old tokens on every member.
    let first = endpoints[0].clone();
    let changed = tokio::task::spawn_blocking(move || {
        support::etcdctl_stdin(
            &first,
            &[
                "--user=root:rootpw",
                "user",
                "passwd",
                "alice",
                "--interactive=false",
            ],
            "newpw\n",
        )
    })
    .await
    .unwrap();
    assert!(changed.status.success(), "{changed:?}");
    for url in &urls {
        let gone = read(url, &alice, "/app/x").await.unwrap_err();
        assert_eq!(
            (gone.code(), gone.message()),
            (Code::Unauthenticated, "etcdserver: invalid auth token"),
            "{url}"
        );
    }
    let old = token(&urls[1], "alice", "alicepw").await.unwrap_err();
    assert_eq!(
        old.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    token(&urls[1], "alice", "newpw").await.unwrap();
}
