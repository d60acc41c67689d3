//! The sandbox's kubelet: registers one Node, binds every unscheduled pod to it and runs each pod's
//! containers as local processes (see `pod`), each pod with its own loopback IP, mount namespace and
//! ServiceAccount credentials. Claims' directories go when their PersistentVolumeClaim goes.

pub mod container;
pub mod env;
pub mod images;
pub mod pod;
pub mod pod_network;
pub mod probes;
pub mod status;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use self::env::EnvContext;
use self::images::ImageMap;
use self::pod::run_pod;
use self::pod_network::PodSources;
use self::volumes::{MountPoints, VolumeContext};

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot register node {node:?}: {source}")]
    Register { node: String, source: kube::Error },
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The node this kubelet registers, and how its pods reach the rest of the sandbox.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    pub state_dir: PathBuf,
    pub images: ImageMap,
    /// The binary that has the `pod-exec` subcommand (the sandbox itself).
    pub pod_exec: PathBuf,
    /// Pod IPs are 127.<octet>.0.2 and up.
    pub pod_octet: u8,
    pub dns_ip: Ipv4Addr,
    pub api_port: u16,
    pub ca_cert: PathBuf,
}

/// What every pod worker shares.
pub struct Kubelet {
    pub client: Client,
    pub node_name: String,
    pub host_ip: String,
    pub images: ImageMap,
    pub pod_exec: PathBuf,
    pub mount_points: MountPoints,
    pub process_groups: ProcessGroups,
    pub volume_context: VolumeContext,
    pub ips: IpPool,
    /// Set when the sandbox runs in a private network namespace: pods' own source addresses.
    pub pod_sources: Option<PodSources>,
    pub recorder: Recorder,
    state_dir: PathBuf,
    api_port: u16,
    cpu_cores: f64,
    memory_bytes: f64,
}

impl Kubelet {
    pub fn pod_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        pod_dir(&self.state_dir, namespace, name, uid)
    }

    /// What every container's environment starts with.
    pub fn env_context(&self, pod_ip: &str, kubeconfig: String, hostname: &str) -> EnvContext {
        let port = self.api_port.to_string();
        let mut base = vec![
            (
                "PATH".to_owned(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("HOME".to_owned(), "/root".to_owned()),
            ("HOSTNAME".to_owned(), hostname.to_owned()),
            // There is no kube-proxy: the in-cluster address of the API is the apiserver itself.
            ("KUBERNETES_SERVICE_HOST".to_owned(), self.host_ip.clone()),
            ("KUBERNETES_SERVICE_PORT".to_owned(), port.clone()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".to_owned(), port.clone()),
            (
                "KUBERNETES_PORT".to_owned(),
                format!("tcp://{}:{port}", self.host_ip),
            ),
        ];
        if !kubeconfig.is_empty() {
            base.push(("KUBECONFIG".to_owned(), kubeconfig));
        }
        EnvContext {
            pod_ip: pod_ip.to_owned(),
            host_ip: self.host_ip.clone(),
            base,
            node_cpu_cores: self.cpu_cores,
            node_memory_bytes: self.memory_bytes,
            ..Default::default()
        }
    }
}

pub fn pod_dir(state_dir: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    state_dir.join("pods").join(format!("{namespace}_{name}_{uid}"))
}

/// Loopback addresses for pods, one per pod UID.
pub struct IpPool {
    octet: u8,
    used: Mutex<BTreeMap<String, u32>>,
}

impl IpPool {
    pub fn new(octet: u8) -> IpPool {
        IpPool {
            octet,
            used: Mutex::new(BTreeMap::new()),
        }
    }

    /// The pod's address: the lowest free one from 127.<octet>.0.2, kept until `release`.
    pub fn allocate(&self, uid: &str) -> String {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let index = match used.get(uid) {
            Some(index) => *index,
            None => {
                let taken: std::collections::BTreeSet<u32> = used.values().copied().collect();
                let index = (2..)
                    .find(|i| !taken.contains(i) && i % 256 != 0 && i % 256 != 255)
                    .unwrap_or(2);
                used.insert(uid.to_owned(), index);
                index
            }
        };
        Ipv4Addr::new(127, self.octet, (index / 256) as u8, (index % 256) as u8).to_string()
    }

    pub fn release(&self, uid: &str) {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

/// The process groups of running containers, one file each, so that `sandbox down` can stop
/// them even when the kubelet could not.
pub struct ProcessGroups {
    dir: PathBuf,
}

impl ProcessGroups {
    pub fn new(dir: PathBuf) -> ProcessGroups {
        let _ = std::fs::create_dir_all(&dir);
        ProcessGroups { dir }
    }

    pub fn add(&self, pgid: u32) {
        let _ = std::fs::write(self.dir.join(pgid.to_string()), "");
    }

    pub fn remove(&self, pgid: u32) {
        let _ = std::fs::remove_file(self.dir.join(pgid.to_string()));
    }

    /// SIGKILL to every recorded group; returns how many there were.
    pub fn kill_all(dir: &Path) -> usize {
        let mut killed = 0;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Some(pgid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                killed += 1;
            }
            let _ = std::fs::remove_file(entry.path());
        }
        killed
    }
}

const HOST_IP: &str = "127.0.0.1";

fn cpu_cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Creates the kubelet's directories and registers its Node, Ready.
pub async fn register(client: &Client, config: &KubeletConfig) -> Result<(), KubeletError> {
    for dir in [config.state_dir.join("pods"), config.state_dir.join("claims")] {
        std::fs::create_dir_all(&dir).map_err(|source| KubeletError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    register_node(client, &config.node_name, HOST_IP, cpu_cores(), total_memory()).await
}

/// Runs the kubelet (after `register`) until `shutdown` turns true; then stops every pod's
/// processes (SIGTERM, a short grace, SIGKILL) and removes the mount points it created.
pub async fn run(
    client: Client,
    config: KubeletConfig,
    pod_sources: Option<PodSources>,
    mut shutdown: watch::Receiver<bool>,
) {
    let claims_dir = config.state_dir.join("claims");
    let host_ip = HOST_IP.to_owned();
    let cpu_cores = cpu_cores();
    let memory_bytes = total_memory();

    let kubelet = Arc::new(Kubelet {
        client: client.clone(),
        node_name: config.node_name.clone(),
        host_ip: host_ip.clone(),
        images: config.images.clone(),
        pod_exec: config.pod_exec.clone(),
        mount_points: MountPoints::new(config.state_dir.join("mount-points")),
        process_groups: ProcessGroups::new(config.state_dir.join("process-groups")),
        volume_context: VolumeContext {
            claims_dir: claims_dir.clone(),
            dns_ip: config.dns_ip.to_string(),
            api_server: format!("https://{host_ip}:{}", config.api_port),
            ca_cert: config.ca_cert.clone(),
        },
        ips: IpPool::new(config.pod_octet),
        pod_sources,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "kubelet".into(),
                instance: Some(config.node_name.clone()),
            },
        ),
        state_dir: config.state_dir.clone(),
        api_port: config.api_port,
        cpu_cores,
        memory_bytes,
    });

    let heartbeat = tokio::spawn(heartbeat(client.clone(), config.node_name.clone()));
    let claims = tokio::spawn(remove_deleted_claims(client.clone(), claims_dir));
    let mut workers: HashMap<String, (watch::Sender<Option<Pod>>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher::watcher(pods, watcher::Config::default()).boxed();
    let mut listed: Option<Vec<String>> = None;
    loop {
        let event = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            event = events.next() => event,
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        workers.retain(|_, (_, task)| !task.is_finished());
        match event {
            Event::Init => listed = Some(Vec::new()),
            Event::InitApply(pod) | Event::Apply(pod) => {
                if let Some(listed) = listed.as_mut() {
                    listed.extend(pod.metadata.uid.clone());
                }
                handle_pod(&kubelet, &mut workers, pod).await;
            }
            Event::Delete(pod) => {
                if let Some((updates, _)) = pod.metadata.uid.as_ref().and_then(|uid| workers.get(uid)) {
                    let _ = updates.send(None);
                }
            }
            Event::InitDone => {
                // A pod that vanished while the watch was down is gone.
                let present = listed.take().unwrap_or_default();
                for (uid, (updates, _)) in &workers {
                    if !present.contains(uid) {
                        let _ = updates.send(None);
                    }
                }
            }
        }
    }

    tracing::info!(pods = workers.len(), "kubelet stopping its pods");
    for (updates, _) in workers.values() {
        updates.send_modify(|pod| {
            if let Some(pod) = pod {
                // A short grace at shutdown: the sandbox is going away with its pods.
                pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::now(),
                ));
                pod.metadata.deletion_grace_period_seconds = Some(2);
            }
        });
    }
    for (_, (_, task)) in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    ProcessGroups::kill_all(&config.state_dir.join("process-groups"));
    kubelet.mount_points.remove_all();
    heartbeat.abort();
    claims.abort();
}

async fn handle_pod(
    kubelet: &Arc<Kubelet>,
    workers: &mut HashMap<String, (watch::Sender<Option<Pod>>, tokio::task::JoinHandle<()>)>,
    pod: Pod,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if node.is_empty() {
        if pod.metadata.deletion_timestamp.is_none() {
            bind(kubelet, &pod).await;
        }
        return;
    }
    if node != kubelet.node_name {
        return;
    }
    if let Some((updates, _)) = workers.get(&uid) {
        let _ = updates.send(Some(pod));
        return;
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let ours_before = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).is_some();
    if ours_before && pod.metadata.deletion_timestamp.is_none() && (phase == "Succeeded" || phase == "Failed")
    {
        return;
    }
    // A pod that was running under an earlier kubelet (the sandbox restarted) starts over here.
    let (updates, receiver) = watch::channel(Some(pod.clone()));
    let task = tokio::spawn(run_pod(kubelet.clone(), pod, receiver));
    workers.insert(uid, (updates, task));
}

/// The annotation that ties a claim's volume to one node.
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The scheduler's job, for a one-node cluster: bind the pod to this node, unless a claim it
/// needs is missing or being deleted (the scheduler leaves such a pod Pending, which is what lets
/// the claim go: only scheduled pods hold a claim), or its volume lives on another node (a claim
/// annotated `volume.kubernetes.io/selected-node` with another node's name, as a local volume
/// of a node that is gone).
async fn bind(kubelet: &Kubelet, pod: &Pod) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(kubelet.client.clone(), &namespace);
    let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    for claim in volumes.filter_map(|v| v.persistent_volume_claim.as_ref()) {
        let unusable = match claims.get_opt(&claim.claim_name).await {
            Ok(Some(found)) => {
                let elsewhere = found
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SELECTED_NODE))
                    .is_some_and(|node| *node != kubelet.node_name);
                found.metadata.deletion_timestamp.is_some() || elsewhere
            }
            Ok(None) => true,
            Err(error) => {
                tracing::warn!(pod = %name, %error, "cannot read the pod's claim");
                true
            }
        };
        if unusable {
            tracing::info!(pod = %name, claim = %claim.claim_name, "unschedulable: its claim is missing, being deleted or on another node");
            return;
        }
    }
    let api: Api<Pod> = Api::namespaced(kubelet.client.clone(), &namespace);
    let binding = Binding {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some(kubelet.node_name.clone()),
            ..Default::default()
        },
    };
    let result: Result<serde_json::Value, _> = api
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await;
    if let Err(error) = result {
        tracing::warn!(pod = %name, %error, "cannot bind the pod");
    }
}

async fn register_node(
    client: &Client,
    name: &str,
    host_ip: &str,
    cpu_cores: f64,
    memory_bytes: f64,
) -> Result<(), KubeletError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let failed = |source| KubeletError::Register {
        node: name.to_owned(),
        source,
    };
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": std::env::consts::ARCH,
        }},
    });
    nodes
        .patch(
            name,
            &PatchParams::apply("sandbox-kubelet").force(),
            &Patch::Apply(&node),
        )
        .await
        .map_err(failed)?;
    let capacity = serde_json::json!({
        "cpu": format!("{cpu_cores}"),
        "memory": format!("{}", memory_bytes as u64),
        "pods": "110",
        "ephemeral-storage": "100Gi",
    });
    let status = serde_json::json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": name}],
        "nodeInfo": {
            "kubeletVersion": "v1.20.2-sandbox", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH, "containerRuntimeVersion": "sandbox://processes",
            "osImage": "", "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
        },
        "conditions": ready_condition(),
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(failed)?;
    Ok(())
}

fn ready_condition() -> serde_json::Value {
    let now = jiff::Timestamp::now().to_string();
    serde_json::json!([{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "the sandbox kubelet is running pods as local processes",
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }])
}

async fn heartbeat(client: Client, name: String) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        tokio::time::sleep(Duration::from_secs(20)).await;
        let status = serde_json::json!({"status": {"conditions": ready_condition()}});
        if let Err(error) = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            tracing::warn!(%error, "node heartbeat failed");
        }
    }
}

/// A claim's data lives as long as the claim: its directory goes when the claim is deleted.
async fn remove_deleted_claims(client: Client, claims_dir: PathBuf) {
    let claims: Api<PersistentVolumeClaim> = Api::all(client);
    let mut events = watcher::watcher(claims, watcher::Config::default()).boxed();
    let mut listed: Vec<PathBuf> = Vec::new();
    while let Some(event) = events.next().await {
        let claim_dir_of = |claim: &PersistentVolumeClaim| {
            volumes::claim_dir(
                &claims_dir,
                claim.metadata.namespace.as_deref().unwrap_or_default(),
                claim.metadata.name.as_deref().unwrap_or_default(),
                claim.metadata.uid.as_deref().unwrap_or_default(),
            )
        };
        match event {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(claim)) => listed.push(claim_dir_of(&claim)),
            Ok(Event::InitDone) => {
                // Directories of claims deleted while nobody watched.
                for namespace in std::fs::read_dir(&claims_dir).into_iter().flatten().flatten() {
                    for claim in std::fs::read_dir(namespace.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        if !listed.contains(&claim.path()) {
                            let _ = std::fs::remove_dir_all(claim.path());
                        }
                    }
                }
            }
            Ok(Event::Delete(claim)) => {
                let dir = claim_dir_of(&claim);
                tracing::info!(claim = ?claim.metadata.name, "claim deleted; removing its data");
                let _ = std::fs::remove_dir_all(dir);
            }
            Ok(Event::Apply(_)) => {}
            Err(error) => {
                tracing::warn!(%error, "claim watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn total_memory() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(8e9, |kb| kb * 1024.0)
}
