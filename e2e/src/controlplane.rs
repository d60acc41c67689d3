//! The real control plane on loopback: its store (Debian's etcd-server, or a Cairn member), kube-apiserver with TLS, a
//! static admin token and RBAC, then kube-controller-manager with the controllers Cairn relies on.
//! Each runs as a child process with its log in the sandbox directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pki::Pki;

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "{binary} not found in {dir}: run e2e/scripts/build-k8s.sh (or set CAIRN_K8S_BIN to a directory holding \
         kube-apiserver and kube-controller-manager 1.20)"
    )]
    MissingKubernetes { binary: &'static str, dir: PathBuf },
    #[error("{0} not found: install Debian's etcd-server (apt-get install etcd-server)")]
    MissingEtcd(PathBuf),
    #[error("{0} not found: build the workspace (cargo build --workspace) to run the sandbox on Cairn")]
    MissingCairn(PathBuf),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} exited during start-up; the end of {log}:\n{tail}")]
    Exited {
        what: &'static str,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} was not ready within {seconds}s; see {log}")]
    NotReady {
        what: &'static str,
        seconds: u64,
        log: PathBuf,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

/// Loopback ports; none of them is etcd's or Cairn's default, so a sandbox never collides with either.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            etcd_client: 23790,
            etcd_peer: 23800,
            apiserver: 16443,
        }
    }
}

/// What stores the API objects: Debian's etcd, or a Cairn member (Kubernetes on Cairn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Store {
    #[default]
    Etcd,
    Cairn,
}

impl Store {
    /// `CAIRN_SANDBOX_STORE` (etcd or cairn), etcd when unset or unknown.
    pub fn from_env() -> Store {
        match std::env::var("CAIRN_SANDBOX_STORE").as_deref() {
            Ok("cairn") => Store::Cairn,
            _ => Store::Etcd,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Store::Etcd => "etcd",
            Store::Cairn => "cairn",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Binaries {
    pub store: Store,
    /// The store's server: /usr/bin/etcd, or the workspace's `cairn`.
    pub store_server: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
}

impl Binaries {
    /// The directory e2e/scripts/build-k8s.sh fills: `$CAIRN_K8S_BIN`, else the cache.
    pub fn kubernetes_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("CAIRN_K8S_BIN") {
            return PathBuf::from(dir);
        }
        cache_dir().join("k8s-1.20.2/bin")
    }

    /// Finds the control plane's binaries; Cairn's server is the workspace's `cairn`, in
    /// `workspace_bin` (the target directory that holds the sandbox binary).
    pub fn locate(store: Store, workspace_bin: &Path) -> Result<Binaries, ControlPlaneError> {
        let dir = Binaries::kubernetes_dir();
        let find = |binary: &'static str| {
            let path = dir.join(binary);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ControlPlaneError::MissingKubernetes {
                    binary,
                    dir: dir.clone(),
                })
            }
        };
        let store_server = match store {
            Store::Etcd => PathBuf::from("/usr/bin/etcd"),
            Store::Cairn => workspace_bin.join("cairn"),
        };
        if !store_server.is_file() {
            return Err(match store {
                Store::Etcd => ControlPlaneError::MissingEtcd(store_server),
                Store::Cairn => ControlPlaneError::MissingCairn(store_server),
            });
        }
        Ok(Binaries {
            store,
            store_server,
            apiserver: find("kube-apiserver")?,
            controller_manager: find("kube-controller-manager")?,
        })
    }
}

/// `$XDG_CACHE_HOME/cairn`, or `~/.cache/cairn`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("cairn")
}

struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

pub struct ControlPlane {
    components: Vec<Component>,
    pub kubeconfig: PathBuf,
    pub pki: Pki,
    pub ports: Ports,
}

impl ControlPlane {
    /// Starts etcd, the apiserver and the controller manager in `dir`, reporting each step to
    /// `progress`; returns once the apiserver answers `/readyz` as the admin.
    pub fn start(
        dir: &Path,
        ports: Ports,
        binaries: &Binaries,
        progress: &dyn Fn(&str),
    ) -> Result<ControlPlane, ControlPlaneError> {
        let pki = Pki::create(&dir.join("pki"))?;
        let kubeconfig = dir.join("kubeconfig");
        write(&kubeconfig, &admin_kubeconfig(&pki, ports.apiserver))?;
        let mut plane = ControlPlane {
            components: Vec::new(),
            kubeconfig,
            pki,
            ports,
        };

        let store = binaries.store.name();
        progress(&format!("starting the store ({store})"));
        let store_dir = dir.join(store);
        let _ = std::fs::remove_dir_all(&store_dir);
        let client = format!("http://127.0.0.1:{}", ports.etcd_client);
        let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
        let mut server = Command::new(&binaries.store_server);
        server
            .arg("--name=sandbox")
            .arg(format!("--data-dir={}", store_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=sandbox={peer}"));
        if binaries.store == Store::Etcd {
            // The sandbox's API objects are thrown away with it; fsync would only slow tests down.
            // (Cairn always syncs: it has no way to be told otherwise.)
            server.arg("--unsafe-no-fsync");
        }
        plane.spawn(store, server, dir)?;

        progress("starting kube-apiserver");
        let mut apiserver = Command::new(&binaries.apiserver);
        apiserver
            .arg(format!("--etcd-servers={client}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", ports.apiserver))
            .arg(format!("--tls-cert-file={}", plane.pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                plane.pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", plane.pki.ca_cert.display()))
            .arg(format!("--token-auth-file={}", plane.pki.tokens.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                plane.pki.service_account_public.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                plane.pki.service_account_key.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            // Loopback cannot be published in the `kubernetes` Endpoints; without this the
            // apiserver logs an error every ten seconds.
            .arg("--endpoint-reconciler-type=none");
        plane.spawn("kube-apiserver", apiserver, dir)?;
        plane.wait_ready("kube-apiserver", Duration::from_secs(90))?;
        Ok(plane)
    }

    /// Starts the controller manager; call it after the CRDs are installed, so that its garbage
    /// collector knows their types from the start instead of after its 30 s discovery resync.
    pub fn start_controller_manager(
        &mut self,
        dir: &Path,
        binaries: &Binaries,
        progress: &dyn Fn(&str),
    ) -> Result<(), ControlPlaneError> {
        progress("starting kube-controller-manager");
        let mut manager = Command::new(&binaries.controller_manager);
        manager
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg("--secure-port=0")
            .arg("--port=0")
            .arg(
                "--controllers=garbagecollector,statefulset,namespace,serviceaccount,serviceaccount-token,\
                 endpoint,endpointslice,disruption,replicaset,deployment,pvc-protection,job",
            )
            .arg(format!(
                "--service-account-private-key-file={}",
                self.pki.service_account_key.display()
            ))
            .arg(format!("--root-ca-file={}", self.pki.ca_cert.display()));
        self.spawn("kube-controller-manager", manager, dir)?;
        // It has no port to ask; give it a moment to fail on bad flags before calling it started.
        std::thread::sleep(Duration::from_millis(500));
        self.check_alive()
    }

    fn spawn(
        &mut self,
        name: &'static str,
        mut command: Command,
        dir: &Path,
    ) -> Result<(), ControlPlaneError> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|source| ControlPlaneError::Write {
            path: log.clone(),
            source,
        })?;
        let err = file.try_clone().map_err(|source| ControlPlaneError::Write {
            path: log.clone(),
            source,
        })?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|source| ControlPlaneError::Spawn { what: name, source })?;
        self.components.push(Component { name, child, log });
        Ok(())
    }

    /// Fails with the log of the first component that has exited.
    pub fn check_alive(&mut self) -> Result<(), ControlPlaneError> {
        for component in &mut self.components {
            if let Ok(Some(_)) = component.child.try_wait() {
                return Err(ControlPlaneError::Exited {
                    what: component.name,
                    log: component.log.clone(),
                    tail: tail(&component.log, 20),
                });
            }
        }
        Ok(())
    }

    fn wait_ready(&mut self, what: &'static str, within: Duration) -> Result<(), ControlPlaneError> {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            if readyz(self.ports.apiserver, &self.pki) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.components.last().map(|c| c.log.clone()).unwrap_or_default();
                return Err(ControlPlaneError::NotReady {
                    what,
                    seconds: within.as_secs(),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops everything, newest first: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        while let Some(mut component) = self.components.pop() {
            let pid = Pid::from_raw(component.child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = component.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = component.child.kill();
            let _ = component.child.wait();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks `/readyz` with the admin token; `curl` keeps TLS setup out of this synchronous path.
fn readyz(port: u16, pki: &Pki) -> bool {
    Command::new("curl")
        .args(["-sf", "--max-time", "2", "--cacert"])
        .arg(&pki.ca_cert)
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", pki.admin_token))
        .arg(format!("https://127.0.0.1:{port}/readyz"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn admin_kubeconfig(pki: &Pki, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
         certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: sandbox\n  \
         context:\n    cluster: sandbox\n    user: admin\n    namespace: default\ncurrent-context: sandbox\n",
        ca = pki.ca_cert.display(),
        token = pki.admin_token,
    )
}

fn write(path: &Path, content: &str) -> Result<(), ControlPlaneError> {
    std::fs::write(path, content).map_err(|source| ControlPlaneError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
