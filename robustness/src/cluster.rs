//! A cluster of real `cairn` processes in the caller's private network namespace, each member on
//! an address of its own (127.77.0.10, .11, ...) with etcd's ports, and the faults a nemesis
//! injects: SIGKILL and restart, SIGSTOP and SIGCONT, and cut links between members.
//!
//! Members' outgoing connections are given their own address (one source-NAT rule per member's
//! process group, as the sandbox does for pods), so a cut between two addresses is a real
//! partition of their peer traffic, while the suite's clients (from 127.0.0.1) still reach every
//! member.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::faults::Links;
use cairn_e2e::kubelet::pod_network::PodSources;
use cairn_e2e::netns::NetnsError;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the member program {0} is missing (build the suite first: cargo build -p cairn-robustness)")]
    NoBinary(PathBuf),
    #[error("cannot set up the members' network: {0}")]
    Network(#[from] NetnsError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the cluster did not become healthy within {0:?}:\n{1}")]
    NotHealthy(Duration, String),
}

pub struct Member {
    pub name: String,
    pub ip: Ipv4Addr,
    group: u32,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<Child>,
    paused: bool,
    initial_cluster: String,
    state: &'static str,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}:2380", self.ip)
    }

    /// Its exit status if its process has exited by itself (which is then no longer running).
    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.process.as_mut()?.try_wait().ok().flatten()?;
        self.process = None;
        Some(status)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Where its write-ahead log's segments are (the server's layout).
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("member").join("wal")
    }
}

pub struct Cluster {
    root: TempDir,
    binary: PathBuf,
    token: String,
    planted: Option<String>,
    pub members: Vec<Member>,
    sources: PodSources,
    links: Links,
}

/// The address of member `index`.
pub fn member_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 77, 0, 10 + index as u8)
}

impl Cluster {
    /// Starts `size` members of `binary` (the server's `cairn` program) bootstrapped statically.
    /// Must run in a private network namespace.
    /// `planted` names a planted bug every member runs with (self-tests only).
    pub fn start(binary: &Path, size: usize, planted: Option<String>) -> Result<Cluster, ClusterError> {
        if !binary.is_file() {
            return Err(ClusterError::NoBinary(binary.to_owned()));
        }
        let binary = binary.to_owned();
        let root = TempDir::new().map_err(|source| ClusterError::Io {
            what: "cannot make a temporary directory".into(),
            source,
        })?;
        let sources = PodSources::install()?;
        let links = Links::new()?;
        let mut members = Vec::new();
        for index in 0..size {
            let ip = member_ip(index);
            let name = format!("m{index}");
            members.push(Member {
                group: sources.add(ip)?,
                ip,
                data_dir: root.path().join(format!("{name}.cairn")),
                log: root.path().join(format!("{name}.log")),
                name,
                process: None,
                paused: false,
                initial_cluster: String::new(),
                state: "new",
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            root,
            binary,
            token: format!("robustness-{}", std::process::id()),
            planted,
            members,
            sources,
            links,
        };
        for index in 0..size {
            cluster.members[index].initial_cluster = initial.clone();
            cluster.spawn(index)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) -> Result<(), ClusterError> {
        let member = &self.members[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(|source| ClusterError::Io {
                what: format!("cannot open {}", member.log.display()),
                source,
            })?;
        let mut command = Command::new(&self.binary);
        command
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", member.data_dir.display()))
            .arg(format!("--listen-client-urls={}", member.client_url()))
            .arg(format!("--advertise-client-urls={}", member.client_url()))
            .arg(format!("--listen-peer-urls={}", member.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", member.peer_url()))
            .arg(format!("--initial-cluster={}", member.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--initial-cluster-state={}", member.state))
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--log-level=info")
            .gid(member.group)
            .stdout(Stdio::null())
            .stderr(log);
        command
            .env_remove("CAIRN_PLANTED_BUG")
            .env("CAIRN_DISK_FAULTS", "1");
        if let Some(bug) = &self.planted {
            command.env("CAIRN_PLANTED_BUG", bug);
        }
        let child = command.spawn().map_err(|source| ClusterError::Io {
            what: format!("cannot start {}", self.binary.display()),
            source,
        })?;
        self.members[index].process = Some(child);
        Ok(())
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// SIGKILL: the process ends at once, with whatever it had not written lost.
    pub fn kill(&mut self, index: usize) {
        let member = &mut self.members[index];
        if let Some(mut child) = member.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        member.paused = false;
    }

    /// Starts a member that is not running, on its data directory.
    pub fn restart(&mut self, index: usize) -> Result<(), ClusterError> {
        if self.members[index].process.is_none() {
            self.spawn(index)?;
        }
        Ok(())
    }

    fn signal(&mut self, index: usize, signal: Signal) {
        if let Some(child) = &self.members[index].process {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
            self.members[index].paused = signal == Signal::SIGSTOP;
        }
    }

    pub fn pause(&mut self, index: usize) {
        self.signal(index, Signal::SIGSTOP);
    }

    pub fn resume(&mut self, index: usize) {
        self.signal(index, Signal::SIGCONT);
    }

    /// Drops every packet between two members, both ways.
    pub fn cut(&self, a: usize, b: usize) -> Result<(), ClusterError> {
        Ok(self.links.cut(self.members[a].ip, self.members[b].ip)?)
    }

    pub fn heal(&self) -> Result<(), ClusterError> {
        Ok(self.links.heal_all()?)
    }

    /// Undoes every fault: links healed, paused members resumed, stopped members started.
    pub fn recover(&mut self) -> Result<(), ClusterError> {
        self.heal()?;
        for index in 0..self.size() {
            if self.members[index].paused {
                self.resume(index);
            }
            self.restart(index)?;
        }
        Ok(())
    }

    /// Forgets member `index`'s data: it must be stopped, and joins again as a new member.
    pub fn wipe(&mut self, index: usize) -> Result<(), ClusterError> {
        self.kill(index);
        let dir = &self.members[index].data_dir;
        match std::fs::remove_dir_all(dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(ClusterError::Io {
                what: format!("cannot remove {}", dir.display()),
                source: error,
            }),
            _ => Ok(()),
        }
    }

    /// Starts member `index` (wiped) as a new member of the cluster `initial_cluster` lists.
    pub fn rejoin(&mut self, index: usize, initial_cluster: String) -> Result<(), ClusterError> {
        let member = &mut self.members[index];
        member.initial_cluster = initial_cluster;
        member.state = "existing";
        self.spawn(index)
    }

    /// Waits up to `within` for member `index` to exit by itself; its exit status if it did.
    pub async fn wait_exit(&mut self, index: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.members[index].process.as_ref()?;
            if let Some(status) = self.members[index].reap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The end of member `index`'s log.
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        tail(&self.members[index].log, lines)
    }

    /// Exits of members that stopped by themselves (a member that refuses to go on), with the
    /// end of their log.
    pub fn exited(&mut self) -> Vec<String> {
        let mut exits = Vec::new();
        for member in &mut self.members {
            if let Some(status) = member.reap() {
                exits.push(format!(
                    "{} exited ({status}):\n{}",
                    member.name,
                    tail(&member.log, 20)
                ));
            }
        }
        exits
    }

    /// The last lines of every member's log.
    pub fn logs(&self, lines: usize) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {} ---\n{}\n", m.name, tail(&m.log, lines)))
            .collect()
    }

    /// Waits until every member answers a linearizable read.
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + within;
        for member in &self.members {
            loop {
                if crate::client::linearizable_revision(&member.client_url())
                    .await
                    .is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(ClusterError::NotHealthy(within, self.logs(30)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The member that leads now: the one that answers that it does.
    pub async fn leader(&self) -> Option<usize> {
        for (index, member) in self.members.iter().enumerate() {
            if member.is_running()
                && !member.paused
                && let Ok((leader, me)) = crate::client::leader_of(&member.client_url()).await
                && leader == me
            {
                return Some(index);
            }
        }
        None
    }

    /// Keeps the members' data directories and logs after the cluster is gone (for a failed run);
    /// returns where they are.
    pub fn keep_files(&mut self) -> PathBuf {
        self.root.disable_cleanup(true);
        self.root.path().to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.size() {
            self.resume(index);
            self.kill(index);
            self.sources.remove(self.members[index].ip);
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
