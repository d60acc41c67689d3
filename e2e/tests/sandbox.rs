//! The `sandbox` command against the real control plane: up brings kube-apiserver and
//! kube-controller-manager up (kubectl and helm work, controllers act), up again changes nothing,
//! down leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cairn_e2e::testkit::{helm_dir, kubectl_path};

const API_PORT: u16 = 17443;
const ETCD_PORT: u16 = 24790;

fn sandbox(dir: &Path, action: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .arg(format!("--dir={}", dir.display()))
        .arg(format!("--api-port={API_PORT}"))
        .arg(format!("--etcd-port={ETCD_PORT}"))
        .arg("--pod-octet=11")
        .arg(action)
        .output()
        .expect("run sandbox")
}

fn helm_path() -> PathBuf {
    helm_dir().join("helm/helm")
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(kubectl_path())
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn group_members(pgid: i32) -> Vec<String> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: the fields after the command name.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first() != Some(&"Z") {
            members.push(stat.split(')').next().unwrap_or_default().to_owned());
        }
    }
    members
}

#[test]
fn up_gives_a_working_control_plane_and_down_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let up = sandbox(dir.path(), "up");
    assert!(
        up.status.success(),
        "sandbox up failed:\n{}{}",
        text(&up.stdout),
        text(&up.stderr)
    );
    let kubeconfig = dir.path().join("kubeconfig");
    assert_eq!(text(&up.stdout), format!("KUBECONFIG={}\n", kubeconfig.display()));
    assert!(
        text(&up.stderr).contains("starting kube-apiserver"),
        "progress is shown: {}",
        text(&up.stderr)
    );
    let env = sandbox(dir.path(), "env");
    assert_eq!(
        text(&env.stdout),
        format!("KUBECONFIG={}\n", kubeconfig.display())
    );
    let pgid: i32 = std::fs::read_to_string(dir.path().join("sandbox.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let overview = kubectl(&kubeconfig, &["get", "nodes,pods", "-A"]);
    assert!(overview.status.success(), "{}", text(&overview.stderr));
    assert!(
        text(&overview.stdout).contains("node/sandbox"),
        "{}",
        text(&overview.stdout)
    );
    let namespaces = kubectl(&kubeconfig, &["get", "namespaces", "-o", "name"]);
    assert!(namespaces.status.success(), "{}", text(&namespaces.stderr));
    assert!(text(&namespaces.stdout).contains("namespace/kube-system"));
    // RBAC is on: an unknown token is refused.
    let stranger = Command::new(kubectl_path())
        .env("KUBECONFIG", &kubeconfig)
        .args(["--token=not-a-token", "get", "pods"])
        .output()
        .unwrap();
    assert!(
        text(&stranger.stderr).contains("Unauthorized"),
        "{}",
        text(&stranger.stderr)
    );

    // The controller manager really runs: a new namespace gets its default ServiceAccount.
    assert!(
        kubectl(&kubeconfig, &["create", "namespace", "probe"])
            .status
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if kubectl(&kubeconfig, &["get", "serviceaccount", "default", "-n", "probe"])
            .status
            .success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no default ServiceAccount: is kube-controller-manager running?"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // helm (from e2e/scripts/install-helm.sh) installs a throw-away chart into it.
    let helm = helm_path();
    let helm_home = dir.path().join("helm");
    let helm_cmd = |args: &[&str]| {
        Command::new(&helm)
            .env("KUBECONFIG", &kubeconfig)
            .env("HELM_CACHE_HOME", &helm_home)
            .env("HELM_CONFIG_HOME", &helm_home)
            .env("HELM_DATA_HOME", &helm_home)
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e} (run e2e/scripts/install-helm.sh)", helm.display()))
    };
    assert!(helm_cmd(&["create", "throwaway"]).status.success());
    let installed = helm_cmd(&["install", "throwaway", "./throwaway", "--namespace", "probe"]);
    assert!(installed.status.success(), "{}", text(&installed.stderr));
    let deployment = kubectl(
        &kubeconfig,
        &["get", "deployment", "throwaway", "-n", "probe", "-o", "name"],
    );
    assert_eq!(
        text(&deployment.stdout),
        "deployment.apps/throwaway\n",
        "{}",
        text(&deployment.stderr)
    );

    let again = sandbox(dir.path(), "up");
    assert!(again.status.success());
    assert!(
        text(&again.stderr).contains("already up"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        text(&sandbox(dir.path(), "status").stdout).split(':').next(),
        Some("up")
    );

    assert!(
        group_members(pgid).len() >= 4,
        "supervisor, etcd, apiserver, controller manager"
    );
    let down = sandbox(dir.path(), "down");
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_eq!(group_members(pgid), Vec::<String>::new(), "processes left behind");
    let status = sandbox(dir.path(), "status");
    assert_eq!(text(&status.stdout), "down\n");
    assert!(sandbox(dir.path(), "down").status.success(), "down is idempotent");
}
