//! The README's first command, `e2e/scripts/quickstart.sh`, as a new user runs it (minus the
//! installing and building the suite has done already), against a sandbox of the test's own: it
//! must end with the minimal example Available with three members, a key written with cairnctl and
//! read back with etcdctl, and next steps that work as printed, whose endpoints are the members.
//! Run again, it reuses what is up and leaves the cluster as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_e2e::sandbox::Sandbox;
use cairn_e2e::testkit::{TestSandbox, succeed};
use cairn_operator::crd::KVCluster;
use common::then_down;
use kube::Api;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sandbox_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sandbox"))
}

/// Runs the quick start against `sandbox`, with the workspace's binaries next to `sandbox`.
fn quickstart(sandbox: &Sandbox) -> Output {
    Command::new(root().join("e2e/scripts/quickstart.sh"))
        .env("CAIRN_QUICKSTART_PREPARED", "1")
        .env("CAIRN_BIN_DIR", sandbox_binary().parent().unwrap())
        .env("CAIRN_SANDBOX_DIR", &sandbox.dir)
        .env("CAIRN_SANDBOX_API_PORT", sandbox.ports.apiserver.to_string())
        .env("CAIRN_SANDBOX_ETCD_PORT", sandbox.ports.etcd_client.to_string())
        .env("CAIRN_SANDBOX_POD_OCTET", sandbox.pod_octet.to_string())
        .output()
        .expect("run e2e/scripts/quickstart.sh")
}

/// stdout and stderr of a run that must have succeeded.
fn succeeded(run: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "quickstart.sh failed ({}):\n{text}",
        run.status
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_ends_with_an_available_cluster_and_working_next_steps() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::for_test(dir.path(), 19143, 26490, 23);
    let first = {
        let sandbox = sandbox.clone();
        tokio::task::spawn_blocking(move || quickstart(&sandbox))
            .await
            .unwrap()
    };
    // Up already when the script got that far; brought up (and then down) otherwise.
    let env = TestSandbox::start(sandbox.clone(), sandbox_binary()).await;
    then_down(&env, async {
        let text = succeeded(&first);
        assert!(text.contains("Cairn is running"), "{text}");
        assert!(
            text.contains("quickstart\nhello from "),
            "etcdctl did not read the key back:\n{text}"
        );
        let kubeconfig = format!("export KUBECONFIG={}", sandbox.kubeconfig().display());
        assert!(text.contains(&kubeconfig), "no `{kubeconfig}` in:\n{text}");

        let clusters: Api<KVCluster> = Api::namespaced(env.client.clone(), "default");
        let status = clusters.get("kv").await.unwrap().status.unwrap();
        let available = status.conditions.iter().find(|c| c.type_ == "Available");
        assert_eq!(available.map(|c| c.status.as_str()), Some("True"), "{status:?}");
        assert_eq!(status.members.len(), 3, "{status:?}");
        assert!(status.members.iter().all(|m| m.healthy), "{status:?}");

        // The printed next steps work as printed, in a shell of their own (all but scaling and
        // stopping, which would change what the rest of the test looks at).
        let stdout = String::from_utf8_lossy(&first.stdout);
        let steps = stdout
            .split("In a new shell:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no next steps in:\n{text}"));
        let script: Vec<&str> = steps
            .lines()
            .map(|line| line.split(" # ").next().unwrap().trim())
            .filter(|line| !line.is_empty())
            .filter(|line| !line.starts_with("kubectl scale") && !line.starts_with("sandbox down"))
            .collect();
        // A home of its own, as a new user's: kubectl's discovery cache in the machine's ~/.kube
        // may be from another sandbox that had the same address.
        let shown = succeed(
            Command::new("bash")
                .args(["-euc", &script.join("\n")])
                .env("HOME", dir.path()),
        );
        assert!(shown.contains("greeting\nhello\n"), "{script:?}:\n{shown}");
        assert!(shown.contains("IS LEADER"), "no endpoint status table:\n{shown}");

        // The printed endpoints are the members, and each one serves the key.
        let endpoints = steps
            .split_whitespace()
            .find_map(|word| word.strip_prefix("ENDPOINTS="))
            .unwrap_or_else(|| panic!("no endpoints in:\n{steps}"));
        let endpoints: Vec<&str> = endpoints.split(',').collect();
        assert_eq!(endpoints.len(), 3, "{endpoints:?}");
        for endpoint in &endpoints {
            let value = succeed(
                Command::new(sandbox_binary().with_file_name("cairnctl"))
                    .arg(format!("--endpoints={endpoint}"))
                    .args(["get", "quickstart", "--print-value-only", "--consistency=s"]),
            );
            assert!(value.starts_with("hello from "), "{endpoint}: {value:?}");
        }

        // Again: everything is reused, and the cluster keeps its identity.
        let again = {
            let sandbox = sandbox.clone();
            tokio::task::spawn_blocking(move || quickstart(&sandbox))
                .await
                .unwrap()
        };
        succeeded(&again);
        let after = clusters.get("kv").await.unwrap().status.unwrap();
        assert_eq!(after.cluster_token, status.cluster_token);
        assert_eq!(after.cluster_id, status.cluster_id);
    })
    .await;
}
