//! What end-to-end tests need around a sandbox: start it (or reuse a running one), a namespace per
//! test, YAML applied the way `kubectl apply` does, waits with a reason on timeout, pod deletion,
//! container logs, and commands run inside a pod (its mounts, DNS and environment).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::pinned_kind;
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;

use crate::sandbox::{Sandbox, client};

/// A sandbox brought up for tests; `down` stops it (tests call it, also after a failure).
pub struct TestSandbox {
    pub sandbox: Sandbox,
    pub client: Client,
    binary: PathBuf,
}

impl TestSandbox {
    /// Brings `sandbox` up with the `sandbox` binary (unless it is up already).
    pub async fn start(sandbox: Sandbox, binary: &Path) -> TestSandbox {
        let up = {
            let sandbox = sandbox.clone();
            let binary = binary.to_owned();
            tokio::task::spawn_blocking(move || sandbox.up(&binary, &|line| eprintln!("sandbox: {line}")))
                .await
                .expect("sandbox up panicked")
        };
        if let Err(error) = up {
            panic!("sandbox up failed: {error}");
        }
        let client = client(&sandbox.kubeconfig())
            .await
            .expect("a client for the sandbox");
        TestSandbox {
            sandbox,
            client,
            binary: binary.to_owned(),
        }
    }

    /// kubectl for this sandbox, with a discovery cache of its own: a cache kept in ~/.kube from
    /// an earlier sandbox on the same address would not know resources this one has.
    pub fn kubectl(&self) -> Command {
        let mut kubectl = Command::new(kubectl_path());
        kubectl.env("KUBECONFIG", self.sandbox.kubeconfig()).arg(format!(
            "--cache-dir={}",
            self.sandbox.dir.join("kubectl-cache").display()
        ));
        kubectl
    }

    /// helm (from e2e/scripts/install-helm.sh) for this sandbox, with its caches and settings
    /// in the sandbox's directory.
    pub fn helm(&self) -> Command {
        let home = self.sandbox.dir.join("helm");
        let mut helm = Command::new(helm_dir().join("helm/helm"));
        helm.env("KUBECONFIG", self.sandbox.kubeconfig())
            .env("HELM_CACHE_HOME", &home)
            .env("HELM_CONFIG_HOME", &home)
            .env("HELM_DATA_HOME", &home);
        helm
    }

    /// A fresh namespace `<prefix>-<random>`, once its default ServiceAccount exists (pods need it).
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("a namespace object");
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the test namespace");
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        wait_for(
            &format!("the default ServiceAccount of {name}"),
            Duration::from_secs(30),
            || async {
                accounts
                    .get_opt("default")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                    .then_some(())
            },
        )
        .await;
        TestNamespace {
            name,
            client: self.client.clone(),
            sandbox: self.sandbox.clone(),
            binary: self.binary.clone(),
        }
    }

    pub fn down(&self) {
        if let Err(error) = self.sandbox.down() {
            eprintln!("sandbox down: {error}");
        }
    }
}

pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    sandbox: Sandbox,
    binary: PathBuf,
}

impl TestNamespace {
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Applies every document of `yaml` into this namespace with server-side apply.
    pub async fn apply(&self, yaml: &str) {
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let object = DynamicObject::deserialize(document).expect("a Kubernetes object in YAML");
            let types = object.types.clone().expect("apiVersion and kind");
            let gvk = kube::api::GroupVersionKind::try_from(&types).expect("a valid apiVersion");
            let (resource, capabilities) = pinned_kind(&self.client, &gvk)
                .await
                .unwrap_or_else(|e| panic!("the server does not know {gvk:?}: {e}"));
            let api: Api<DynamicObject> = if capabilities.scope == kube::discovery::Scope::Namespaced {
                Api::namespaced_with(self.client.clone(), &self.name, &resource)
            } else {
                Api::all_with(self.client.clone(), &resource)
            };
            let name = object.name_any();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let params = PatchParams::apply("cairn-e2e").force();
                match api.patch(&name, &params, &Patch::Apply(&object)).await {
                    Ok(_) => break,
                    // The server asks to retry, e.g. a pod of a ServiceAccount created a moment
                    // ago, before the controller manager has issued its token.
                    Err(kube::Error::Api(e)) if e.reason == "ServerTimeout" && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => panic!("apply {} {name}: {e}", types.kind),
                }
            }
        }
    }

    /// The pod once it is Ready.
    pub async fn wait_pod_ready(&self, name: &str, within: Duration) -> Pod {
        let pods: Api<Pod> = self.api();
        wait_for(
            &format!("pod {}/{name} to be Ready", self.name),
            within,
            || async { pods.get_opt(name).await.ok().flatten().filter(is_ready) },
        )
        .await
    }

    /// Waits until the StatefulSet reports `replicas` ready pods.
    pub async fn wait_statefulset_ready(&self, name: &str, replicas: i32, within: Duration) {
        let sets: Api<StatefulSet> = self.api();
        wait_for(
            &format!(
                "StatefulSet {}/{name} to be {replicas}/{replicas} Ready",
                self.name
            ),
            within,
            || async {
                let set = sets.get(name).await.ok()?;
                (set.status?.ready_replicas == Some(replicas)).then_some(())
            },
        )
        .await
    }

    /// Deletes a pod with its grace period and waits until it is gone.
    pub async fn delete_pod(&self, name: &str) {
        let pods: Api<Pod> = self.api();
        let uid = pods.get(name).await.expect("the pod to delete").uid();
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete the pod");
        wait_for(
            &format!("pod {}/{name} to be deleted", self.name),
            Duration::from_secs(60),
            || async {
                let current = pods.get_opt(name).await.ok()?;
                (current.and_then(|p| p.uid()) != uid).then_some(())
            },
        )
        .await;
    }

    /// Runs `command` inside the pod (first container unless `container` is given).
    pub fn exec(&self, pod: &str, container: Option<&str>, command: &[&str]) -> Output {
        let mut exec = Command::new(&self.binary);
        exec.arg(format!("--dir={}", self.sandbox.dir.display()))
            .arg("exec")
            .arg(format!("{}/{pod}", self.name));
        if let Some(container) = container {
            exec.arg(format!("--container={container}"));
        }
        exec.arg("--").args(command).output().expect("run sandbox exec")
    }

    /// The container's log, as `sandbox logs` prints it.
    pub fn logs(&self, pod: &str, container: Option<&str>, previous: bool) -> String {
        self.sandbox
            .container_log(&self.name, pod, container, previous)
            .ok()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// What a failing test should show: every pod's phase, readiness, restarts and the tail of
    /// its containers' logs (the previous run's too, when a container restarted).
    pub async fn report(&self) -> String {
        let pods: Api<Pod> = self.api();
        let Ok(list) = pods.list(&Default::default()).await else {
            return format!("cannot list the pods of {}", self.name);
        };
        let mut report = String::new();
        for pod in list {
            let name = pod.name_any();
            let status = pod.status.clone().unwrap_or_default();
            let restarts: i32 = status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| c.restart_count)
                .sum();
            report.push_str(&format!(
                "== pod {name}: phase {:?}, ready {}, restarts {restarts}, IP {:?}\n",
                status.phase.unwrap_or_default(),
                is_ready(&pod),
                status.pod_ip.unwrap_or_default(),
            ));
            for previous in [true, false] {
                let log = self.logs(&name, None, previous);
                if log.is_empty() {
                    continue;
                }
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(25)..];
                let run = if previous { "previous run" } else { "current run" };
                report.push_str(&format!("-- {run}, last {} lines:\n", tail.len()));
                for line in tail {
                    report.push_str(line);
                    report.push('\n');
                }
            }
        }
        report
    }

    pub async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.name, &DeleteParams::default()).await;
    }
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Polls `check` until it gives a value; panics naming `what` after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(within, check).await {
        Some(value) => value,
        None => panic!("timed out after {within:?} waiting for {what}"),
    }
}

/// Polls `check` until it gives a value, or gives up after `within`.
pub async fn poll_until<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// kubectl from PATH, else the one e2e/scripts/install-helm.sh unpacks next to helm.
pub fn kubectl_path() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubectl"))
            .find(|candidate| candidate.is_file())
    });
    let works = |path: &Path| {
        Command::new(path)
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    match on_path {
        Some(path) if works(&path) => path,
        _ => helm_dir().join("kubectl/kubectl"),
    }
}

/// Where e2e/scripts/install-helm.sh puts helm and kubectl: `$CAIRN_HELM_DIR`, else the cache.
pub fn helm_dir() -> PathBuf {
    std::env::var_os("CAIRN_HELM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::controlplane::cache_dir().join("helm-v3.17.2"))
}

/// Runs `command` (kubectl, helm, ...), failing the test with its output unless it succeeds;
/// its stdout.
pub fn succeed(command: &mut Command) -> String {
    let output = command.output().expect("run the command");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The body of a plain HTTP `GET path` (an operator's `/metrics`, say); None unless it answers 200.
pub fn http_get(address: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if !response.starts_with("HTTP/1.0 200") {
        return None;
    }
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}
