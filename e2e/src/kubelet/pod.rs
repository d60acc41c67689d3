//! One pod bound to this node, from its first status to its final deletion: an IP, its volumes,
//! init containers in order, then every container supervised; status written on each change;
//! SIGTERM with the grace period when the pod is deleted, then the pod object removed.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use tokio::sync::{Notify, watch};

use super::Kubelet;
use super::container::{Kind, supervise};
use super::env::EnvContext;
use super::status::{ContainerView, PodView};
use super::volumes::{PodVolumes, prepare, refresh};

/// A pod this kubelet runs; shared by its container supervisors and its status writer.
pub struct PodRun {
    pub kubelet: Arc<Kubelet>,
    pub pod: Pod,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub ip: String,
    /// The group that gives the pod's connections its address, in a private network namespace.
    pub network_group: Option<u32>,
    pub dir: PathBuf,
    view: Mutex<PodView>,
    changed: Notify,
    volumes: Mutex<PodVolumes>,
}

impl PodRun {
    pub fn container(&self, kind: Kind, index: usize) -> Container {
        let spec = self.pod.spec.clone().unwrap_or_default();
        match kind {
            Kind::Init => spec.init_containers.unwrap_or_default()[index].clone(),
            Kind::Main => spec.containers[index].clone(),
        }
    }

    pub fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    pub fn grace_period(&self) -> Duration {
        let seconds = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    pub fn hostname(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone())
    }

    /// Changes one container's view and wakes the status writer.
    pub fn update(&self, kind: Kind, index: usize, change: impl FnOnce(&mut ContainerView)) {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let list = match kind {
            Kind::Init => &mut view.init_containers,
            Kind::Main => &mut view.containers,
        };
        change(&mut list[index]);
        drop(view);
        self.changed.notify_one();
    }

    pub fn volumes(&self) -> PodVolumes {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn spec_file(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}{SPEC_SUFFIX}"))
    }

    /// The file the container's termination message path is bound to.
    pub fn termination_file(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.termination-log"))
    }

    pub fn log_file(&self, container: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{container}.log"))
    }

    /// Keeps the last run's log as `<container>.previous.log` (what `--previous` shows) and opens a
    /// fresh one.
    pub fn rotate_log(&self, container: &str) -> std::io::Result<File> {
        let current = self.log_file(container);
        if let Some(dir) = current.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if current.exists() {
            std::fs::rename(&current, current.with_extension("previous.log"))?;
        }
        File::create(current)
    }

    /// The environment's context, with the ConfigMaps and Secrets the container reads.
    pub async fn env_context(&self, maps: &[String], secrets: &[String]) -> Result<EnvContext, String> {
        let mut context = self
            .kubelet
            .env_context(&self.ip, self.kubeconfig_env(), &self.hostname());
        let config_maps: Api<ConfigMap> = Api::namespaced(self.kubelet.client.clone(), &self.namespace);
        for name in maps {
            if let Some(cm) = config_maps.get_opt(name).await.map_err(|e| e.to_string())? {
                context
                    .config_maps
                    .insert(name.clone(), cm.data.unwrap_or_default());
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(self.kubelet.client.clone(), &self.namespace);
        for name in secrets {
            if let Some(secret) = secret_api.get_opt(name).await.map_err(|e| e.to_string())? {
                let data: BTreeMap<String, String> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                context.secrets.insert(name.clone(), data);
            }
        }
        Ok(context)
    }

    fn kubeconfig_env(&self) -> String {
        self.volumes().kubeconfig.display().to_string()
    }

    pub async fn event(&self, type_: EventType, reason: &str, note: &str) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note.to_owned()),
            // The recorder folds repeats into one event by reason and action, not by note; kubelet
            // folds by message. The note as action (within its 128-character limit) keeps a new
            // message ("statuscode: 500" after "connection refused") from hiding under an old one.
            action: note.chars().take(128).collect(),
            secondary: None,
        };
        if let Err(error) = self
            .kubelet
            .recorder
            .publish(&event, &self.pod.object_ref(&()))
            .await
        {
            tracing::debug!(pod = %self.name, %error, "cannot record an event");
        }
    }

    fn set_waiting(&self, kind: Kind, reason: &str, message: Option<String>) {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let list = match kind {
            Kind::Init => &mut view.init_containers,
            Kind::Main => &mut view.containers,
        };
        for container in list {
            container.state = super::status::RunState::waiting(reason, message.clone());
        }
        drop(view);
        self.changed.notify_one();
    }

    /// Writes the status whenever the view changes, until `done`.
    async fn write_status(self: Arc<Self>, mut done: watch::Receiver<bool>) {
        let api: Api<Pod> = Api::namespaced(self.kubelet.client.clone(), &self.namespace);
        let mut previous = Vec::new();
        let mut written = None;
        loop {
            let view = self.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if written.as_ref() != Some(&view) {
                let status = view.to_api(&previous, Timestamp::now());
                let patch = serde_json::json!({
                    "metadata": {"uid": self.uid},
                    "status": status,
                });
                match api
                    .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        previous = status.conditions.unwrap_or_default();
                        written = Some(view);
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                    Err(error) => tracing::warn!(pod = %self.name, %error, "cannot write pod status"),
                }
            }
            if *done.borrow() {
                return;
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = done.changed() => {}
            }
        }
    }
}

/// Container specs (`podexec::ContainerSpec`) are `<pod dir>/<container>.spec.json`; only running
/// pods have them, which is how `sandbox exec` and `logs` find a pod's current incarnation.
pub const SPEC_SUFFIX: &str = ".spec.json";

/// What a worker hears about its pod: its latest version, or `None` once it is gone from the API.
pub type PodUpdates = watch::Receiver<Option<Pod>>;

/// Runs the pod until it is deleted, then deletes its object for good.
pub async fn run_pod(kubelet: Arc<Kubelet>, pod: Pod, mut updates: PodUpdates) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let ip = kubelet.ips.allocate(&uid);
    let network_group = kubelet.pod_sources.as_ref().and_then(|sources| {
        let address = ip.parse().expect("the pool hands out IPv4 addresses");
        sources
            .add(address)
            .inspect_err(|error| tracing::error!(pod = %name, %error, "the pod's connections keep 127.0.0.1"))
            .ok()
    });
    let dir = kubelet.pod_dir(&namespace, &name, &uid);
    let view = PodView {
        pod_ip: Some(ip.clone()),
        host_ip: kubelet.host_ip.clone(),
        start_time: Timestamp::now(),
        restart_policy: spec.restart_policy.clone().unwrap_or_else(|| "Always".into()),
        init_containers: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| ContainerView::new(&c.name, c.image.as_deref().unwrap_or_default()))
            .collect(),
        containers: spec
            .containers
            .iter()
            .map(|c| ContainerView::new(&c.name, c.image.as_deref().unwrap_or_default()))
            .collect(),
    };
    let run = Arc::new(PodRun {
        kubelet: kubelet.clone(),
        pod,
        name,
        namespace,
        uid,
        ip,
        network_group,
        dir,
        view: Mutex::new(view),
        changed: Notify::new(),
        volumes: Mutex::new(PodVolumes::default()),
    });
    tracing::info!(pod = %run.name, namespace = %run.namespace, ip = %run.ip, "starting pod");
    let (done_tx, done_rx) = watch::channel(false);
    let writer = tokio::spawn(run.clone().write_status(done_rx));

    let (stop_tx, stop_rx) = watch::channel(None::<Duration>);
    let lifecycle = run_containers(run.clone(), stop_rx);
    tokio::pin!(lifecycle);
    let mut finished = false;
    loop {
        tokio::select! {
            _ = &mut lifecycle, if !finished => finished = true,
            changed = updates.changed() => {
                let latest = updates.borrow().clone();
                let gone = changed.is_err() || latest.is_none();
                let deleting = latest.as_ref().and_then(|p| p.metadata.deletion_timestamp.as_ref()).is_some();
                if gone || deleting {
                    let grace = latest
                        .as_ref()
                        .and_then(|p| p.metadata.deletion_grace_period_seconds)
                        .map_or(run.grace_period(), |s| Duration::from_secs(s.max(0) as u64));
                    let grace = if gone { Duration::ZERO } else { grace };
                    let _ = stop_tx.send(Some(grace));
                    if !finished {
                        (&mut lifecycle).await;
                    }
                    break;
                }
            }
        }
    }
    let _ = done_tx.send(true);
    let _ = writer.await;
    let api: Api<Pod> = Api::namespaced(kubelet.client.clone(), &run.namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(run.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&run.name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(error) => tracing::warn!(pod = %run.name, %error, "cannot delete the pod object"),
    }
    if let Some(sources) = &kubelet.pod_sources {
        sources.remove(run.ip.parse().expect("the pool hands out IPv4 addresses"));
    }
    kubelet.ips.release(&run.uid);
    let _ = std::fs::remove_dir_all(run.dir.join("volumes"));
    for entry in std::fs::read_dir(&run.dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().ends_with(SPEC_SUFFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    tracing::info!(pod = %run.name, namespace = %run.namespace, "pod stopped");
}

/// Keeps the pod's Secret and ConfigMap volumes current until the pod stops. Kubelet's own
/// period is about a minute; the sandbox looks every two seconds, so tests of a rotated Secret
/// need not wait.
async fn keep_volumes_current(run: Arc<PodRun>, mut stop: watch::Receiver<Option<Duration>>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.wait_for(Option::is_some) => return,
        }
        for file in refresh(&run.kubelet.client, &run.pod, &run.dir).await {
            tracing::info!(pod = %run.name, file = %file.display(), "volume file updated");
        }
    }
}

/// Volumes, then init containers in order, then all containers until they finish or the pod stops.
async fn run_containers(run: Arc<PodRun>, mut stop: watch::Receiver<Option<Duration>>) {
    loop {
        let context = run.kubelet.env_context(&run.ip, String::new(), &run.hostname());
        match prepare(
            &run.kubelet.client,
            &run.pod,
            &run.dir,
            &run.ip,
            &context,
            &run.kubelet.volume_context,
        )
        .await
        {
            Ok(volumes) => {
                *run.volumes.lock().unwrap_or_else(|e| e.into_inner()) = volumes;
                tokio::spawn(keep_volumes_current(run.clone(), stop.clone()));
                break;
            }
            Err(error) => {
                let message = format!("MountVolume.SetUp failed: {error}");
                run.set_waiting(Kind::Init, "PodInitializing", Some(message.clone()));
                run.set_waiting(Kind::Main, "ContainerCreating", Some(message.clone()));
                run.event(EventType::Warning, "FailedMount", &message).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.wait_for(Option::is_some) => return,
                }
            }
        }
    }
    let spec = run.pod.spec.clone().unwrap_or_default();
    let init_containers = spec.init_containers.iter().flatten().count();
    if init_containers > 0 {
        run.set_waiting(Kind::Main, "PodInitializing", None);
    }
    for index in 0..init_containers {
        if !supervise(run.clone(), Kind::Init, index, stop.clone()).await {
            // Failed for good (restartPolicy Never: the pod is Failed) or stopping: either way
            // nothing more starts.
            let _ = stop.wait_for(Option::is_some).await;
            return;
        }
    }
    let supervisors =
        (0..spec.containers.len()).map(|index| supervise(run.clone(), Kind::Main, index, stop.clone()));
    futures::future::join_all(supervisors).await;
}
