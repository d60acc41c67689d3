//! Limits and bad input through etcdctl: oversized requests, the space quota and its alarm.

mod support;

use support::{Cluster, etcdctl, etcdctl_stdin, ok};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn oversized_requests_are_refused_by_name_and_change_nothing() {
    let cluster = Cluster::start(1, "limits");
    let endpoint = cluster.members[0].endpoint();
    let big = "x".repeat(1_600_000);
    // Over --max-request-bytes (1.5 MiB by default) but under the gRPC limit: refused by Cairn itself.
    let refused = etcdctl_stdin(&endpoint, &["put", "big"], &big);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("etcdserver: request is too large"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(ok(&endpoint, &["get", "big"]), "");
    ok(&endpoint, &["put", "small", "fine"]);
}

#[test]
fn space_quota_raises_nospace_until_freed_and_disarmed() {
    let mut cluster = Cluster::start(1, "quota");
    // Restart with a tiny quota (the data dir keeps its identity; flags like this one apply).
    let member = &mut cluster.members[0];
    member.kill9();
    let mut command = member.command();
    command.arg("--quota-backend-bytes=20000");
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&member.log)
        .unwrap();
    member.process = Some(
        command
            .stderr(log)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    cluster.wait_healthy(std::time::Duration::from_secs(20));
    let endpoint = cluster.members[0].endpoint();

    let value = "v".repeat(4000);
    let mut refused = None;
    for i in 0..20 {
        let out = etcdctl(&endpoint, &["put", &format!("k{i}"), &value]);
        if !out.status.success() {
            refused = Some(stderr(&out));
            break;
        }
    }
    let refused = refused.expect("the quota must refuse a write");
    assert!(
        refused.contains("etcdserver: mvcc: database space exceeded"),
        "{refused}"
    );
    assert!(ok(&endpoint, &["alarm", "list"]).contains("alarm:NOSPACE"));
    // /health reports the alarm as etcd's does; readiness does not take the member out of its
    // Service for it, since reads, deletes and compactions are still served.
    assert_eq!(
        http_get(&endpoint, "/health"),
        (503, r#"{"health":"false","reason":"ALARM NOSPACE"}"#.to_owned())
    );
    assert_eq!(http_get(&endpoint, "/readyz"), (200, "ok\n".to_owned()));
    // Read and delete still work; writes stay refused while the alarm is on.
    assert!(!ok(&endpoint, &["get", "k0", "--print-value-only"]).is_empty());
    let deleted = ok(&endpoint, &["del", "k", "--prefix"]);
    assert!(deleted.trim().parse::<u32>().unwrap() > 0);
    assert!(!etcdctl(&endpoint, &["put", "after", "x"]).status.success());
    // Free the history, disarm, write again: etcd's compact → defrag → disarm routine.
    let revision: serde_json::Value =
        serde_json::from_str(&ok(&endpoint, &["get", "x", "-w", "json"])).unwrap();
    let revision = revision["header"]["revision"].as_i64().unwrap().to_string();
    ok(&endpoint, &["compaction", &revision]);
    ok(&endpoint, &["defrag"]);
    ok(&endpoint, &["alarm", "disarm"]);
    assert_eq!(ok(&endpoint, &["put", "after", "x"]).trim(), "OK");
    assert_eq!(http_get(&endpoint, "/health").0, 200);
}

/// GET with curl: the status code and body.
fn http_get(endpoint: &str, path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://{endpoint}{path}"))
        .output()
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}
