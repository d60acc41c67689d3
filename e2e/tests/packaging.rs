//! What ships besides the binaries, checked without a cluster: `helm lint --strict` and
//! `helm template` of the chart with several value sets (and clear refusals of bad ones), every
//! example in `examples/` is a KVCluster the operator accepts, and the Dockerfile builds both
//! images as non-root from the Rust version the workspace asks for; the README's quick start names
//! an executable script and the test command `.ci/run` ends with.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_e2e::testkit::helm_dir;
use cairn_operator::crd::KVCluster;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm(args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(helm_dir().join("helm/helm"))
        .env("HELM_CACHE_HOME", home.path())
        .env("HELM_CONFIG_HOME", home.path())
        .env("HELM_DATA_HOME", home.path())
        .args(args)
        .arg(root().join("charts/cairn-operator"))
        .output()
        .expect("run helm (e2e/scripts/install-helm.sh installs it)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The rendered documents of `helm template` with `sets`.
fn render(sets: &[&str]) -> Vec<serde_yaml::Value> {
    let mut args = vec!["template", "cairn-operator", "--namespace", "ops"];
    for set in sets {
        args.extend(["--set", set]);
    }
    documents(&args)
}

/// The documents `helm args` prints.
fn documents(args: &[&str]) -> Vec<serde_yaml::Value> {
    let output = helm(args);
    assert!(output.status.success(), "{args:?}: {}", text(&output.stderr));
    let rendered = text(&output.stdout);
    serde_yaml::Deserializer::from_str(&rendered)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|doc: &serde_yaml::Value| !doc.is_null())
        .collect()
}

fn kinds(docs: &[serde_yaml::Value]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    kinds
}

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[test]
fn the_chart_lints_and_renders_with_each_value_set() {
    let lint = helm(&["lint", "--strict"]);
    assert!(
        lint.status.success(),
        "{}{}",
        text(&lint.stdout),
        text(&lint.stderr)
    );

    let defaults = render(&[]);
    assert_eq!(
        kinds(&defaults),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let deployment = find(&defaults, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/cairn-dev/cairn-operator:0.1.0");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
    let crd = find(&defaults, "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");

    // One replica without a lease, no CRD, no metrics Service, an existing ServiceAccount.
    let minimal = render(&[
        "replicaCount=1",
        "leaderElection.enabled=false",
        "crds.install=false",
        "metrics.service.enabled=false",
        "serviceAccount.create=false",
        "serviceAccount.name=ops-robot",
        "fullnameOverride=kv-operator",
    ]);
    assert_eq!(
        kinds(&minimal),
        ["ClusterRole", "ClusterRoleBinding", "Deployment"]
    );
    let deployment = find(&minimal, "Deployment");
    assert_eq!(deployment["metadata"]["name"], "kv-operator");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "ops-robot");
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--leader-elect=false"), "{args:?}");

    // Monitoring, CRD released on uninstall, pinned image.
    let monitored = render(&[
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prom",
        "crds.keep=false",
        "image.tag=0.2.0",
        "image.repository=registry.local/cairn-operator",
    ]);
    let monitor = find(&monitored, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    let crd = find(&monitored, "CustomResourceDefinition");
    assert!(crd["metadata"]["annotations"].is_null());
    let image = &find(&monitored, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(image, "registry.local/cairn-operator:0.2.0");
    // NetworkPolicies: the operator is told to make them (and may), with the namespaces listed.
    let args_of = |docs: &[serde_yaml::Value]| -> Vec<String> {
        find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    assert!(
        !args_of(&defaults)
            .iter()
            .any(|a| a.starts_with("--network-policies"))
    );
    let fenced = render(&[
        "networkPolicy.enabled=true",
        "networkPolicy.clientNamespaces={web,monitoring}",
    ]);
    let args = args_of(&fenced);
    assert!(args.contains(&"--network-policies=true".to_owned()), "{args:?}");
    assert!(
        args.contains(&"--client-namespaces=web,monitoring".to_owned()),
        "{args:?}"
    );
    let may_apply_policies = fenced.iter().filter(|d| d["kind"] == "ClusterRole").any(|role| {
        role["rules"].as_sequence().unwrap().iter().any(|rule| {
            rule["resources"][0] == "networkpolicies"
                && rule["verbs"].as_sequence().unwrap().iter().any(|v| v == "patch")
        })
    });
    assert!(
        may_apply_policies,
        "the ClusterRole lets the operator apply NetworkPolicies"
    );
}

/// The CRD's CEL rules go to servers that run CEL (1.25 and later); older servers' clients
/// (kubectl, helm) refuse them as an unknown field, so there they are left out.
#[test]
fn the_crd_carries_its_cel_rules_only_where_the_server_runs_them() {
    let storage_rules = |version: &str| {
        let docs = documents(&["template", "cairn-operator", "--kube-version", version]);
        let crd = find(&docs, "CustomResourceDefinition");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let storage = &schema["properties"]["spec"]["properties"]["storage"];
        storage["x-kubernetes-validations"]
            .as_sequence()
            .map_or(0, Vec::len)
    };
    assert_eq!(storage_rules("1.25.0"), 2);
    assert_eq!(storage_rules("1.33.1"), 2);
    assert_eq!(storage_rules("1.24.17"), 0);
    assert_eq!(storage_rules("1.20.2"), 0);
}

#[test]
fn bad_values_are_refused_by_name() {
    for (sets, expected) in [
        (
            vec!["replicaCount=2", "leaderElection.enabled=false"],
            "replicaCount above 1 needs leaderElection.enabled",
        ),
        (
            vec!["leaderElection.renewDeadlineSeconds=20"],
            "renewDeadlineSeconds must be less than leaseDurationSeconds",
        ),
        (vec!["logFormat=xml"], "logFormat"),
        (
            vec!["networkPolicy.clientNamespaces={Not_A_Namespace}"],
            "clientNamespaces",
        ),
        (vec!["replicaCount=0"], "replicaCount"),
        (vec!["imagePullPolicy=Always"], "imagePullPolicy"),
        (
            vec!["serviceAccount.create=false"],
            "serviceAccount.name must name an existing ServiceAccount",
        ),
        (
            vec![
                "metrics.serviceMonitor.enabled=true",
                "metrics.service.enabled=false",
            ],
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
    ] {
        let mut args = vec!["template", "cairn-operator"];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let output = helm(&args);
        assert!(!output.status.success(), "{sets:?} was accepted");
        assert!(
            text(&output.stderr).contains(expected),
            "{sets:?}: {}",
            text(&output.stderr)
        );
    }
}

/// Every example validates, and none puts the (plaintext) client port outside the cluster.
#[test]
fn every_example_is_a_kvcluster_the_operator_accepts() {
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let yaml = std::fs::read_to_string(&path).unwrap();
        let cluster: KVCluster = serde_yaml::from_str(&yaml)
            .unwrap_or_else(|e| panic!("{}: not a KVCluster: {e}", path.display()));
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let valid = cairn_operator::validate::validate(&name, "default", &cluster.spec)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        // The client port is plaintext gRPC: no example offers it outside the cluster.
        assert_eq!(
            valid.client_service.type_,
            cairn_operator::crd::ServiceType::ClusterIP,
            "{} exposes the plaintext client port outside the cluster",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 3, "minimal, DNS SRV and storage examples");
}

#[test]
fn the_dockerfile_builds_both_images_as_non_root() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let workspace = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let rust_version = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("the workspace's rust-version");
    assert!(
        dockerfile.contains(&format!("ARG RUST_VERSION={rust_version}\n")),
        "the build stage uses the workspace's Rust {rust_version}"
    );
    // Each final stage, from its FROM to the next.
    for (target, exposes) in [("cairn", "EXPOSE 2379 2380"), ("cairn-operator", "EXPOSE 8080")] {
        let start = dockerfile
            .find(&format!(" AS {target}\n"))
            .unwrap_or_else(|| panic!("no target {target}"));
        let stage = &dockerfile[start..];
        let stage = &stage[..stage[1..].find("\nFROM ").map_or(stage.len(), |i| i + 1)];
        assert!(stage.contains("USER 65532:65532"), "{target} runs as non-root");
        assert!(stage.contains(exposes), "{target}: {exposes}");
        assert!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{target}\"]")),
            "{target}'s entrypoint"
        );
    }
}

#[test]
fn the_readme_quick_start_is_what_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Quick start\n")
        .nth(1)
        .expect("README.md has a Quick start section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the Quick start opens with a sh block");
    let commands: Vec<&str> = block
        .lines()
        .map(|line| line.split('#').next().unwrap().trim())
        .filter(|command| !command.is_empty())
        .collect();
    assert_eq!(commands.len(), 2, "two commands: {commands:?}");
    let script = commands[0];
    let metadata = std::fs::metadata(root().join(script)).unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o111 != 0,
        "{script} is not executable"
    );
    // CI runs exactly the README's test command, as its last step.
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let last = ci
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty() && !line.starts_with('#'))
        .unwrap();
    assert_eq!(
        last, commands[1],
        ".ci/run does not end with the README's test command"
    );
}
