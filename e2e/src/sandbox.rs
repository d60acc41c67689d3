//! One sandbox = one directory: the supervisor's pid, a progress file, the kubeconfig, the PKI and
//! every component's log. `up` starts the supervisor (`sandbox run`) in its own process group and
//! follows its progress; `down` stops it; both are idempotent.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::controlplane::{Binaries, ControlPlane, ControlPlaneError, Ports, Store, cache_dir, tail};
use crate::dns::{ClusterDns, DnsError};
use crate::kubelet::images::ImageMap;
use crate::kubelet::pod::SPEC_SUFFIX;
use crate::kubelet::pod_network::PodSources;
use crate::kubelet::volumes::MountPoints;
use crate::kubelet::{KubeletConfig, KubeletError, ProcessGroups};
use crate::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the sandbox failed to start: {reason}\nthe end of {log}:\n{tail}")]
    Failed {
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the sandbox was not up within {0}s")]
    Timeout(u64),
    #[error("cannot talk to the sandbox's kube-apiserver: {0}")]
    Api(String),
    #[error("cannot install the CRDs in {dir}: {reason}")]
    Crds { dir: PathBuf, reason: String },
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    #[error("no started container of pod {0} on this sandbox")]
    NoPod(String),
    #[error(transparent)]
    Network(#[from] NetnsError),
    #[error("{0} stopped; the sandbox went down with it")]
    ComponentDied(String),
}

const READY: &str = "ready";
const FAILED: &str = "failed: ";

#[derive(Debug, Clone)]
pub struct Sandbox {
    pub dir: PathBuf,
    pub ports: Ports,
    /// Pods get 127.<pod_octet>.0.2 and up; cluster DNS listens on 127.<pod_octet>.255.53:53.
    pub pod_octet: u8,
    /// Images beyond the workspace's own, as (name, binary).
    pub images: Vec<(String, PathBuf)>,
    /// CustomResourceDefinitions (YAML files) installed before the controller manager starts.
    pub crds: Option<PathBuf>,
    /// Run in the caller's private network namespace and give pods' connections their own source
    /// addresses (nftables), so fault tests can cut links between pods (`crate::faults`).
    pub private_network: bool,
    /// What kube-apiserver stores the API objects in.
    pub store: Store,
}

pub const DEFAULT_POD_OCTET: u8 = 10;

impl Default for Sandbox {
    /// `$CAIRN_SANDBOX_DIR`, else `~/.cache/cairn/sandbox`, on the default ports.
    fn default() -> Self {
        let dir = std::env::var_os("CAIRN_SANDBOX_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join("sandbox"));
        Sandbox {
            dir,
            ports: Ports::default(),
            pod_octet: DEFAULT_POD_OCTET,
            images: Vec::new(),
            crds: None,
            private_network: false,
            store: Store::from_env(),
        }
    }
}

impl Sandbox {
    /// A test's own sandbox in `dir`: its apiserver port, its etcd client port (peers on the
    /// port 10 above) and its pod octet, so that tests running at once never meet; no CRDs, the
    /// host's network.
    pub fn for_test(dir: &Path, apiserver: u16, etcd_client: u16, pod_octet: u8) -> Sandbox {
        Sandbox {
            dir: dir.to_owned(),
            ports: Ports {
                etcd_client,
                etcd_peer: etcd_client + 10,
                apiserver,
            },
            pod_octet,
            images: Vec::new(),
            crds: None,
            private_network: false,
            store: Store::from_env(),
        }
    }

    pub fn dns_address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(127, self.pod_octet, 255, 53), 53))
    }

    /// The kubelet's state: pods (logs, container specs), claims' data, process groups.
    pub fn kubelet_dir(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("sandbox.pid")
    }

    fn progress_file(&self) -> PathBuf {
        self.dir.join("progress")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("sandbox.log")
    }

    /// The supervisor's pid, if it is running.
    pub fn pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.pid_file()).ok()?;
        let pid = Pid::from_raw(text.trim().parse().ok()?);
        kill(pid, None).ok().map(|()| pid)
    }

    pub fn is_up(&self) -> bool {
        self.pid().is_some() && self.progress().iter().any(|line| line == READY)
    }

    fn progress(&self) -> Vec<String> {
        std::fs::read_to_string(self.progress_file())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
        let path = path.to_owned();
        move |source| SandboxError::Io { path, source }
    }

    /// Starts the sandbox unless it is up, printing each step through `report`.
    pub fn up(&self, supervisor: &Path, report: &dyn Fn(&str)) -> Result<(), SandboxError> {
        if self.is_up() {
            report("the sandbox is already up");
            return Ok(());
        }
        self.down()?;
        self.check_network()?;
        let workspace_bin = supervisor.parent().unwrap_or(Path::new("."));
        build_missing(self.store, workspace_bin, report)?;
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        std::fs::write(self.progress_file(), "").map_err(self.io(&self.progress_file()))?;
        let log = std::fs::File::create(self.log()).map_err(self.io(&self.log()))?;
        let err = log.try_clone().map_err(self.io(&self.log()))?;
        let mut command = Command::new(supervisor);
        command
            .arg("run")
            .arg(format!("--dir={}", self.dir.display()))
            .arg(format!("--api-port={}", self.ports.apiserver))
            .arg(format!("--etcd-port={}", self.ports.etcd_client))
            .arg(format!("--pod-octet={}", self.pod_octet));
        for (name, binary) in &self.images {
            command.arg(format!("--image={name}={}", binary.display()));
        }
        if let Some(crds) = &self.crds {
            command.arg(format!("--crds={}", crds.display()));
        }
        if self.private_network {
            command.arg("--private-network");
        }
        command.arg(format!("--store={}", self.store.name()));
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: it outlives this command, and `down` can stop the group.
            .process_group(0)
            .spawn()
            .map_err(self.io(supervisor))?;
        std::fs::write(self.pid_file(), child.id().to_string()).map_err(self.io(&self.pid_file()))?;

        let within = Duration::from_secs(180);
        let deadline = Instant::now() + within;
        let mut shown = 0;
        loop {
            let lines = self.progress();
            for line in &lines[shown.min(lines.len())..] {
                if line == READY {
                    report("the sandbox is up");
                    return Ok(());
                }
                if let Some(reason) = line.strip_prefix(FAILED) {
                    let failure = SandboxError::Failed {
                        reason: reason.to_owned(),
                        log: self.log(),
                        tail: tail(&self.log(), 30),
                    };
                    self.down()?;
                    return Err(failure);
                }
                report(line);
            }
            shown = lines.len();
            if self.pid().is_none() {
                return Err(SandboxError::Failed {
                    reason: "the supervisor exited".into(),
                    log: self.log(),
                    tail: tail(&self.log(), 30),
                });
            }
            if Instant::now() > deadline {
                self.down()?;
                return Err(SandboxError::Timeout(within.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the supervisor (which stops everything it started); kills its process group if it
    /// does not finish within the grace period. Does nothing when the sandbox is not running.
    pub fn down(&self) -> Result<(), SandboxError> {
        let Some(pid) = self.pid() else {
            let _ = std::fs::remove_file(self.pid_file());
            return Ok(());
        };
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while kill(pid, None).is_ok() && Instant::now() < deadline {
            // A zombie child of this very process (tests) counts as gone.
            if is_zombie(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = std::fs::remove_file(self.pid_file());
        // Normally the kubelet has stopped its pods already; these are left only if it could not.
        ProcessGroups::kill_all(&self.kubelet_dir().join("process-groups"));
        MountPoints::new(self.kubelet_dir().join("mount-points")).remove_all();
        Ok(())
    }

    /// The supervisor: starts the control plane, cluster DNS and the kubelet, says `ready`, and
    /// runs until SIGTERM or SIGINT, or until a component dies.
    pub fn run(&self) -> Result<(), SandboxError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let progress = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.progress_file())
            .map_err(self.io(&self.progress_file()))?;
        let say = |line: &str| {
            let mut file = &progress;
            let _ = file.seek(SeekFrom::End(0));
            let _ = writeln!(file, "{line}");
            eprintln!("sandbox: {line}");
        };
        // A sandbox starts empty (etcd too): no pods, claims or logs of an earlier run.
        MountPoints::new(self.kubelet_dir().join("mount-points")).remove_all();
        let _ = std::fs::remove_dir_all(self.kubelet_dir());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(self.io(&self.dir))?;
        let result = self
            .check_network()
            .and_then(|()| self.start_all(&runtime, &say))
            .and_then(|mut plane| {
                let served = runtime.block_on(self.serve(&mut plane, &say));
                plane.stop();
                served
            });
        if let Err(error) = &result {
            say(&format!("{FAILED}{error}"));
        }
        result
    }

    /// A sandbox with a private network must be started inside one: its rules stay there.
    fn check_network(&self) -> Result<(), SandboxError> {
        if self.private_network {
            crate::netns::check_private()?;
        }
        Ok(())
    }

    fn start_all(
        &self,
        runtime: &tokio::runtime::Runtime,
        say: &dyn Fn(&str),
    ) -> Result<ControlPlane, SandboxError> {
        let me = std::env::current_exe().map_err(self.io(Path::new("/proc/self/exe")))?;
        let binaries = Binaries::locate(self.store, me.parent().unwrap_or(Path::new(".")))?;
        let mut plane = ControlPlane::start(&self.dir, self.ports, &binaries, say)?;
        if let Some(dir) = &self.crds {
            say(&format!("installing the CRDs in {}", dir.display()));
            runtime.block_on(async {
                let client = client(&self.kubeconfig()).await?;
                crate::crds::install(&client, dir)
                    .await
                    .map_err(|reason| SandboxError::Crds {
                        dir: dir.clone(),
                        reason,
                    })
            })?;
        }
        plane.start_controller_manager(&self.dir, &binaries, say)?;
        Ok(plane)
    }

    /// Cluster DNS and the kubelet, until asked to stop or until a control-plane component dies.
    async fn serve(&self, plane: &mut ControlPlane, say: &dyn Fn(&str)) -> Result<(), SandboxError> {
        let client = client(&self.kubeconfig()).await?;
        say(&format!("starting cluster DNS on {}", self.dns_address()));
        let dns = ClusterDns::bind(self.dns_address()).await?;
        let me = std::env::current_exe().map_err(self.io(Path::new("/proc/self/exe")))?;
        let images_dir = me.parent().map(Path::to_owned).unwrap_or_default();
        let config = KubeletConfig {
            node_name: "sandbox".into(),
            state_dir: self.kubelet_dir(),
            images: ImageMap::new(&images_dir, &self.images),
            pod_exec: me,
            pod_octet: self.pod_octet,
            dns_ip: Ipv4Addr::new(127, self.pod_octet, 255, 53),
            api_port: self.ports.apiserver,
            ca_cert: plane.pki.ca_cert.clone(),
        };
        say("starting the kubelet");
        crate::kubelet::register(&client, &config).await?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let dns = tokio::spawn(dns.follow(client.clone(), shutdown.clone()));
        let pod_sources = match self.private_network {
            true => Some(PodSources::install()?),
            false => None,
        };
        let kubelet = tokio::spawn(crate::kubelet::run(client, config, pod_sources, shutdown));
        say(READY);

        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(self.io(&self.dir))?;
        let mut int = signal(SignalKind::interrupt()).map_err(self.io(&self.dir))?;
        let outcome = loop {
            tokio::select! {
                _ = term.recv() => break Ok(()),
                _ = int.recv() => break Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if let Err(error) = plane.check_alive() {
                        break Err(SandboxError::ComponentDied(error.to_string()));
                    }
                }
            }
        };
        eprintln!("sandbox: stopping");
        let _ = stop.send(true);
        let _ = kubelet.await;
        let _ = dns.await;
        outcome
    }
}

impl Sandbox {
    /// The directory of the newest pod called `namespace/name` (older ones keep their logs).
    /// The directory of the pod's running incarnation: a pod deleted and created again under the
    /// same name has a directory per UID, and only running ones hold container specs (the
    /// kubelet removes them when a pod stops). The newest spec wins while both briefly exist.
    fn pod_dir(&self, namespace: &str, name: &str) -> Result<PathBuf, SandboxError> {
        let pods = self.kubelet_dir().join("pods");
        let prefix = format!("{namespace}_{name}_");
        let newest_spec = |dir: &Path| {
            std::fs::read_dir(dir)
                .ok()?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(SPEC_SUFFIX))
                .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
                .max()
        };
        std::fs::read_dir(&pods)
            .map_err(self.io(&pods))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter_map(|e| Some((newest_spec(&e.path())?, e.path())))
            .max()
            .map(|(_, path)| path)
            .ok_or_else(|| SandboxError::NoPod(format!("{namespace}/{name}")))
    }

    /// The spec file of a container (the first one when `container` is None).
    pub fn container_spec(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
    ) -> Result<PathBuf, SandboxError> {
        let dir = self.pod_dir(namespace, name)?;
        let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(self.io(&dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(SPEC_SUFFIX))
            .collect();
        specs.sort();
        match container {
            Some(container) => {
                let spec = dir.join(format!("{container}{SPEC_SUFFIX}"));
                specs.contains(&spec).then_some(spec)
            }
            None => specs.into_iter().next(),
        }
        .ok_or_else(|| {
            SandboxError::NoPod(format!(
                "{namespace}/{name} container {}",
                container.unwrap_or("(any)")
            ))
        })
    }

    /// A container's log file (the first container's when `container` is None).
    pub fn container_log(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
        previous: bool,
    ) -> Result<PathBuf, SandboxError> {
        let spec = self.container_spec(namespace, name, container)?;
        let container = spec
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(SPEC_SUFFIX).to_owned())
            .unwrap_or_default();
        let suffix = if previous { "previous.log" } else { "log" };
        let dir = spec.parent().map(Path::to_owned).unwrap_or_default();
        Ok(dir.join("logs").join(format!("{container}.{suffix}")))
    }
}

/// A client acting as the sandbox's admin.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client, SandboxError> {
    let api = |e: &dyn std::fmt::Display| SandboxError::Api(e.to_string());
    let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| api(&e))?;
    let config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| api(&e))?;
    kube::Client::try_from(config).map_err(|e| api(&e))
}

/// On a fresh machine the control plane is not built yet: build it with the project's script,
/// whose progress lines pass through `report`. Etcd missing is reported, not installed.
fn build_missing(store: Store, workspace_bin: &Path, report: &dyn Fn(&str)) -> Result<(), SandboxError> {
    match Binaries::locate(store, workspace_bin) {
        Err(ControlPlaneError::MissingKubernetes { .. }) => {}
        Err(other) => return Err(other.into()),
        Ok(_) => return Ok(()),
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-k8s.sh");
    report(&format!(
        "kube-apiserver is not built yet: running {} (about 8 minutes)",
        script.display()
    ));
    let mut child = Command::new(&script)
        .stdin(Stdio::null())
        // `up` prints only KUBECONFIG=... on stdout; anything the build prints goes to stderr.
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SandboxError::Io {
            path: script.clone(),
            source,
        })?;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            report(&line);
        }
    }
    let status = child.wait().map_err(|source| SandboxError::Io {
        path: script.clone(),
        source,
    })?;
    if !status.success() {
        return Err(SandboxError::Failed {
            reason: format!("{} failed ({status})", script.display()),
            log: script,
            tail: String::new(),
        });
    }
    Binaries::locate(store, workspace_bin)?;
    Ok(())
}

fn is_zombie(pid: Pid) -> bool {
    let Ok(file) = std::fs::File::open(format!("/proc/{pid}/status")) else {
        return true;
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("State:"))
        .is_some_and(|l| l.contains('Z'))
}
