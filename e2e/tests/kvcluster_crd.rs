//! The KVCluster CRD from `crds/` in the real apiserver: `kubectl explain` shows the field docs,
//! defaults are filled in, invalid specs are refused by the schema with a message naming the
//! field, `kubectl get kvc` shows the printer columns, and `kubectl scale` works through /scale.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Output, Stdio};

use cairn_e2e::sandbox::Sandbox;
use cairn_e2e::testkit::TestSandbox;
use futures::FutureExt;

fn kubectl(env: &TestSandbox, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = env
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_documents_defaults_and_refuses_bad_specs() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox {
        crds: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")),
        ..Sandbox::for_test(dir.path(), 17943, 25290, 16)
    };
    let env = TestSandbox::start(sandbox, Path::new(env!("CARGO_BIN_EXE_sandbox"))).await;
    let outcome = AssertUnwindSafe(checks(&env)).catch_unwind().await;
    env.down();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn checks(env: &TestSandbox) {
    let ns = env.namespace("crd").await;
    let n = ns.name.as_str();

    let explained = kubectl(env, &["explain", "kvcluster.spec.replicas"], None);
    assert!(
        text(&explained.stdout).contains("How many members the cluster has"),
        "{}{}",
        text(&explained.stdout),
        text(&explained.stderr)
    );

    let created = kubectl(
        env,
        &["apply", "-n", n, "-f", "-"],
        Some("apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {name: kv}\nspec: {}\n"),
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let stored = kubectl(
        env,
        &[
            "get",
            "kvc",
            "kv",
            "-n",
            n,
            "-o",
            "jsonpath={.spec.replicas} {.spec.bootstrap.mode} {.spec.clientService.type}",
        ],
        None,
    );
    assert_eq!(
        text(&stored.stdout),
        "3 Static ClusterIP",
        "{}",
        text(&stored.stderr)
    );
    let listed = kubectl(env, &["get", "kvc", "-n", n], None);
    let header: Vec<String> = text(&listed.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REPLICAS",
            "READY",
            "LEADER",
            "AVAILABLE",
            "VERSION",
            "AGE"
        ]
    );

    let scaled = kubectl(env, &["scale", "-n", n, "kvc/kv", "--replicas=5"], None);
    assert!(scaled.status.success(), "{}", text(&scaled.stderr));
    let stored = kubectl(
        env,
        &["get", "kvc", "kv", "-n", n, "-o", "jsonpath={.spec.replicas}"],
        None,
    );
    assert_eq!(text(&stored.stdout), "5");

    for (spec, expected) in [
        ("{replicas: -1}", "spec.replicas"),
        ("{replicas: 11}", "spec.replicas"),
        ("{bootstrap: {mode: Gossip}}", "spec.bootstrap.mode"),
        (
            "{server: {heartbeatIntervalMs: fast}}",
            "spec.server.heartbeatIntervalMs",
        ),
        ("{imagePullPolicy: Sometimes}", "spec.imagePullPolicy"),
        (
            "{server: {autoCompaction: {retention: 1day}}}",
            "spec.server.autoCompaction.retention",
        ),
    ] {
        let refused = kubectl(
            env,
            &["apply", "-n", n, "-f", "-"],
            Some(&format!(
                "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: bad}}\nspec: {spec}\n"
            )),
        );
        assert!(!refused.status.success(), "{spec} was accepted");
        assert!(
            text(&refused.stderr).contains(expected),
            "{spec}: {}",
            text(&refused.stderr)
        );
    }
    let none = kubectl(env, &["get", "kvc", "bad", "-n", n], None);
    assert!(!none.status.success(), "nothing was stored for the refused specs");
    ns.delete().await;
}
