//! The JSON gateway through curl, as etcd users script it: the classic walk-through (put, get,
//! prefix range, a key on a lease, compare-and-swap, a watch that sees a put from elsewhere), every
//! answer held against etcd 3.4's gateway for the same requests; errors, streams, members,
//! maintenance, locks and elections.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::{Cluster, Etcd};

/// POSTs `body` to `path` with curl; the HTTP status and the answer as JSON.
fn post(endpoint: &str, path: &str, body: &str) -> (u16, Value) {
    post_as(endpoint, None, path, body)
}

/// POSTs with a token in `Authorization`, as etcd's gateway takes it.
fn post_as(endpoint: &str, token: Option<&str>, path: &str, body: &str) -> (u16, Value) {
    let mut curl = Command::new("curl");
    curl.args(["-s", "-X", "POST", "-w", "\n%{http_code}"]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: {token}")]);
    }
    let out = curl
        .arg(format!("http://{endpoint}{path}"))
        .args(["-d", body])
        .output()
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (json, status) = text.rsplit_once('\n').unwrap();
    let value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{path}: {e}: {json:?}"));
    (status.parse().unwrap(), value)
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Drops what differs between any two servers by nature: their IDs and terms, lease IDs.
fn comparable(mut value: Value) -> Value {
    if let Some(header) = value.get_mut("header").and_then(Value::as_object_mut) {
        header.remove("cluster_id");
        header.remove("member_id");
        header.remove("raft_term");
    }
    if let Some(object) = value.as_object_mut() {
        object.remove("ID");
    }
    if let Some(kvs) = value.get_mut("kvs").and_then(Value::as_array_mut) {
        for kv in kvs {
            if let Some(kv) = kv.as_object_mut() {
                kv.remove("lease");
            }
        }
    }
    value
}

/// The walk-through: each step's status and comparable answer.
fn walk_through(endpoint: &str) -> Vec<(String, u16, Value)> {
    let mut steps = Vec::new();
    let mut step = |name: &str, path: &str, body: String| {
        let (status, value) = post(endpoint, path, &body);
        steps.push((name.to_owned(), status, comparable(value.clone())));
        value
    };
    step(
        "put",
        "/v3/kv/put",
        json!({"key": b64("foo"), "value": b64("bar")}).to_string(),
    );
    step("get", "/v3/kv/range", json!({"key": b64("foo")}).to_string());
    step(
        "put 2",
        "/v3/kv/put",
        json!({"key": b64("foo2"), "value": b64("baz")}).to_string(),
    );
    step(
        "prefix",
        "/v3/kv/range",
        json!({"key": b64("foo"), "range_end": b64("fop"), "sort_order": "DESCEND"}).to_string(),
    );
    let lease = step("grant", "/v3/lease/grant", json!({"TTL": 60}).to_string());
    let id = lease["ID"].as_str().unwrap().to_owned();
    step(
        "put with lease",
        "/v3/kv/put",
        json!({"key": b64("ttl"), "value": b64("soon gone"), "lease": id}).to_string(),
    );
    step("revoke", "/v3/lease/revoke", json!({"ID": id}).to_string());
    step("gone", "/v3/kv/range", json!({"key": b64("ttl")}).to_string());
    let cas = |expected: &str| {
        json!({
            "compare": [{"target": "VALUE", "key": b64("foo"), "value": b64(expected)}],
            "success": [{"request_put": {"key": b64("foo"), "value": b64("swapped")}}],
            "failure": [{"request_range": {"key": b64("foo")}}]
        })
        .to_string()
    };
    step("cas wins", "/v3/kv/txn", cas("bar"));
    step("cas loses", "/v3/kv/txn", cas("bar"));
    step(
        "delete",
        "/v3/kv/deleterange",
        json!({"key": b64("foo2"), "prev_kv": true}).to_string(),
    );
    step("no key", "/v3/kv/put", json!({"value": b64("x")}).to_string());
    step(
        "compacted",
        "/v3/kv/range",
        json!({"key": b64("foo"), "revision": "-1"}).to_string(),
    );
    step(
        "future",
        "/v3/kv/range",
        json!({"key": b64("foo"), "revision": "1000"}).to_string(),
    );
    step(
        "compact",
        "/v3/kv/compaction",
        json!({"revision": "3"}).to_string(),
    );
    step(
        "old read",
        "/v3/kv/range",
        json!({"key": b64("foo"), "revision": "2"}).to_string(),
    );
    step(
        "unknown lease",
        "/v3/lease/timetolive",
        json!({"ID": "42"}).to_string(),
    );
    steps
}

#[test]
fn the_walk_through_answers_as_etcds_gateway_does() {
    let cairn = Cluster::start(1, "gateway-walk");
    let etcd = Etcd::start();
    let ours = walk_through(&cairn.endpoints());
    let theirs = walk_through(&etcd.endpoint());
    for (ours, theirs) in ours.iter().zip(&theirs) {
        assert_eq!(ours, theirs, "step {} (left: Cairn, right: etcd)", ours.0);
    }
    // And the answers are what the walk-through shows.
    assert_eq!(ours[1].2["kvs"][0]["value"], json!(b64("bar")));
    assert_eq!(ours[3].2["count"], json!("2"));
    assert_eq!(ours[7].2.get("kvs"), None, "the lease took its key with it");
    assert_eq!(ours[8].2["succeeded"], json!(true));
    assert_eq!(
        ours[9].2.get("succeeded"),
        None,
        "false is left out, as etcd leaves it out"
    );
    assert_eq!((ours[11].1, &ours[11].2["code"]), (400, &json!(3)));
    assert_eq!(ours[11].2["error"], json!("etcdserver: key is not provided"));
}

/// Users, roles and tokens over the gateway: each step's status and answer, tokens left out.
fn auth_walk_through(endpoint: &str) -> Vec<(String, u16, Value)> {
    let mut steps = Vec::new();
    let mut step = |name: &str, token: Option<&str>, path: &str, body: Value| {
        let (status, mut value) = post_as(endpoint, token, path, &body.to_string());
        let token = value.as_object_mut().and_then(|o| o.remove("token"));
        steps.push((name.to_owned(), status, comparable(value)));
        token.and_then(|t| t.as_str().map(str::to_owned))
    };
    step(
        "root",
        None,
        "/v3/auth/user/add",
        json!({"name": "root", "password": "rootpw"}),
    );
    step("root role", None, "/v3/auth/role/add", json!({"name": "root"}));
    step(
        "grant root",
        None,
        "/v3/auth/user/grant",
        json!({"user": "root", "role": "root"}),
    );
    step(
        "alice",
        None,
        "/v3/auth/user/add",
        json!({"name": "alice", "password": "pw"}),
    );
    step("role", None, "/v3/auth/role/add", json!({"name": "app"}));
    step(
        "permission",
        None,
        "/v3/auth/role/grant",
        json!({"name": "app", "perm": {"permType": "READWRITE", "key": b64("app/"), "range_end": b64("app0")}}),
    );
    step(
        "grant app",
        None,
        "/v3/auth/user/grant",
        json!({"user": "alice", "role": "app"}),
    );
    step("enable", None, "/v3/auth/enable", json!({}));
    step(
        "anonymous put",
        None,
        "/v3/kv/put",
        json!({"key": b64("app/x"), "value": b64("1")}),
    );
    step(
        "wrong password",
        None,
        "/v3/auth/authenticate",
        json!({"name": "alice", "password": "no"}),
    );
    let alice = step(
        "login",
        None,
        "/v3/auth/authenticate",
        json!({"name": "alice", "password": "pw"}),
    );
    let alice = alice.as_deref();
    step(
        "her put",
        alice,
        "/v3/kv/put",
        json!({"key": b64("app/x"), "value": b64("1")}),
    );
    step("her read", alice, "/v3/kv/range", json!({"key": b64("app/x")}));
    step("not hers", alice, "/v3/kv/range", json!({"key": b64("other")}));
    step("not root", alice, "/v3/auth/user/list", json!({}));
    step(
        "bad token",
        Some("forged"),
        "/v3/kv/range",
        json!({"key": b64("app/x")}),
    );
    let root = step(
        "root login",
        None,
        "/v3/auth/authenticate",
        json!({"name": "root", "password": "rootpw"}),
    );
    step(
        "roles",
        root.as_deref(),
        "/v3/auth/role/get",
        json!({"role": "app"}),
    );
    step("users", root.as_deref(), "/v3/auth/user/list", json!({}));
    step("disable", root.as_deref(), "/v3/auth/disable", json!({}));
    steps
}

#[test]
fn users_roles_and_tokens_answer_as_etcds_gateway_does() {
    let cairn = Cluster::start(1, "gateway-auth");
    let etcd = Etcd::start();
    let ours = auth_walk_through(&cairn.endpoints());
    let theirs = auth_walk_through(&etcd.endpoint());
    for (ours, theirs) in ours.iter().zip(&theirs) {
        assert_eq!(ours, theirs, "step {} (left: Cairn, right: etcd)", ours.0);
    }
    let refused = |name: &str| ours.iter().find(|s| s.0 == name).unwrap().2["message"].clone();
    assert_eq!(refused("not hers"), json!("etcdserver: permission denied"));
    assert_eq!(refused("anonymous put"), json!("etcdserver: user name is empty"));
}

#[test]
fn a_streamed_watch_sees_a_put_made_elsewhere() {
    let cluster = Cluster::start(3, "gateway-watch");
    let watching = cluster.members[0].endpoint();
    let writing = cluster.members[2].endpoint();
    let mut watch = Command::new("curl")
        .args(["-s", "-N", "-X", "POST"])
        .arg(format!("http://{watching}/v3/watch"))
        .args([
            "-d",
            &json!({"create_request": {"key": b64("w"), "range_end": b64("x"), "prev_kv": true}}).to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let created: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(created["result"]["created"], json!(true));
    post(
        &writing,
        "/v3/kv/put",
        &json!({"key": b64("w1"), "value": b64("one")}).to_string(),
    );
    post(
        &writing,
        "/v3/kv/put",
        &json!({"key": b64("w1"), "value": b64("two")}).to_string(),
    );
    post(
        &writing,
        "/v3/kv/put",
        &json!({"key": b64("elsewhere"), "value": b64("x")}).to_string(),
    );
    let mut values = Vec::new();
    while values.len() < 2 {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        for event in line["result"]["events"].as_array().unwrap() {
            values.push((
                event["kv"]["value"].as_str().unwrap().to_owned(),
                event
                    .get("prev_kv")
                    .map(|p| p["value"].as_str().unwrap().to_owned()),
            ));
        }
    }
    assert_eq!(values, vec![(b64("one"), None), (b64("two"), Some(b64("one")))]);
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn leases_members_maintenance_locks_and_elections_over_the_gateway() {
    let cluster = Cluster::start(3, "gateway-rest");
    let endpoint = cluster.members[1].endpoint();
    let (_, lease) = post(&endpoint, "/v3/lease/grant", &json!({"TTL": 30}).to_string());
    let id = lease["ID"].as_str().unwrap().to_owned();
    // A keep-alive stream: each request in the body renews the lease.
    let out = Command::new("curl")
        .args(["-s", "-N", "-X", "POST", "--max-time", "5"])
        .arg(format!("http://{endpoint}/v3/lease/keepalive"))
        .args(["-d", &format!("{} {}", json!({"ID": id}), json!({"ID": id}))])
        .output()
        .unwrap();
    let renewals: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(renewals.len(), 2, "{renewals:?}");
    assert!(
        renewals
            .iter()
            .all(|r| r["result"]["ID"] == json!(id) && r["result"]["TTL"] == json!("30"))
    );
    let (_, leases) = post(&endpoint, "/v3/lease/leases", "");
    assert_eq!(leases["leases"][0]["ID"], json!(id));

    let (status, members) = post(&endpoint, "/v3/cluster/member/list", "");
    assert_eq!(status, 200);
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
    let (_, state) = post(&endpoint, "/v3/maintenance/status", "");
    assert_eq!(state["version"], json!("3.5.0"));
    assert!(state["leader"].as_str().is_some());
    let (status, _) = post(&endpoint, "/v3/maintenance/hash", "");
    assert_eq!(status, 200);
    let (status, _) = post(&endpoint, "/v3/maintenance/defragment", "");
    assert_eq!(status, 200);
    let (_, alarms) = post(
        &endpoint,
        "/v3/maintenance/alarm",
        &json!({"action": "GET"}).to_string(),
    );
    assert_eq!(alarms.get("alarms"), None);
    let (status, missing) = post(
        &endpoint,
        "/v3/cluster/member/remove",
        &json!({"ID": "1"}).to_string(),
    );
    assert_eq!(
        (status, &missing["message"]),
        (404, &json!("etcdserver: member not found"))
    );
    let (status, bad) = post(&endpoint, "/v3/kv/range", "{not json");
    assert_eq!((status, &bad["code"]), (400, &json!(3)));
    // /v3beta/ is the same API.
    let (status, _) = post(
        &endpoint,
        "/v3beta/kv/range",
        &json!({"key": b64("k")}).to_string(),
    );
    assert_eq!(status, 200);

    let (_, locked) = post(
        &endpoint,
        "/v3/lock/lock",
        &json!({"name": b64("gate"), "lease": id}).to_string(),
    );
    let key = locked["key"].as_str().unwrap().to_owned();
    assert!(
        String::from_utf8(base64_decode(&key))
            .unwrap()
            .starts_with("gate/")
    );
    let (status, _) = post(&endpoint, "/v3/lock/unlock", &json!({"key": key}).to_string());
    assert_eq!(status, 200);
    let (_, campaign) = post(
        &endpoint,
        "/v3/election/campaign",
        &json!({"name": b64("vote"), "lease": id, "value": b64("me")}).to_string(),
    );
    assert_eq!(campaign["leader"]["lease"], json!(id));
    let (_, leader) = post(
        &endpoint,
        "/v3/election/leader",
        &json!({"name": b64("vote")}).to_string(),
    );
    assert_eq!(leader["kv"]["value"], json!(b64("me")));
    let (status, _) = post(
        &endpoint,
        "/v3/election/resign",
        &json!({"leader": campaign["leader"]}).to_string(),
    );
    assert_eq!(status, 200);
    let (status, none) = post(
        &endpoint,
        "/v3/election/leader",
        &json!({"name": b64("vote")}).to_string(),
    );
    assert_eq!((status, &none["message"]), (500, &json!("election: no leader")));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}
