//! Test harness: real `cairn` processes on loopback, driven with Debian's `etcdctl` (ETCDCTL_API=3).
//! Every wait is bounded; processes are killed when the harness is dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

pub fn etcdctl_path() -> &'static str {
    // Debian's etcd-client package; .ci/run installs it.
    assert!(
        Path::new("/usr/bin/etcdctl").exists(),
        "etcdctl not found: install Debian's etcd-client package (apt-get install etcd-client)"
    );
    "/usr/bin/etcdctl"
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub process: Option<Child>,
    pub token: String,
    pub initial_cluster: String,
    pub state: &'static str,
}

impl Member {
    pub fn new(root: &Path, name: &str, token: &str) -> Member {
        Member {
            name: name.to_owned(),
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            data_dir: root.join(format!("{name}.cairn")),
            log: root.join(format!("{name}.log")),
            process: None,
            token: token.to_owned(),
            initial_cluster: String::new(),
            state: "new",
        }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={}", self.client_url))
            .arg(format!("--advertise-client-urls={}", self.client_url))
            .arg(format!("--listen-peer-urls={}", self.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--initial-cluster-state={}", self.state))
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--log-level=info");
        command
    }

    pub fn start(&mut self) {
        assert!(self.process.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cairn");
        self.process = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself; its exit status and log.
    pub fn wait_exit(&mut self, within: Duration) -> Option<(std::process::ExitStatus, String)> {
        let deadline = Instant::now() + within;
        let child = self.process.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.process = None;
                return Some((status, std::fs::read_to_string(&self.log).unwrap_or_default()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn endpoint(&self) -> String {
        self.client_url.trim_start_matches("http://").to_owned()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub root: TempDir,
    pub members: Vec<Member>,
}

impl Cluster {
    /// Starts `size` members bootstrapped statically with `token`.
    pub fn start(size: usize, token: &str) -> Cluster {
        let root = TempDir::new().unwrap();
        let mut members: Vec<Member> = (0..size)
            .map(|i| Member::new(root.path(), &format!("m{i}"), token))
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect();
        for member in &mut members {
            member.initial_cluster = initial.join(",");
            member.start();
        }
        let cluster = Cluster { root, members };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.process.is_some())
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Waits until every running member answers a linearizable read.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for member in self.members.iter().filter(|m| m.process.is_some()) {
            loop {
                let out = etcdctl(&member.endpoint(), &["endpoint", "health"]);
                if out.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never became healthy:\n{}",
                    member.name,
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// The member ID (hex) of the current leader, as `endpoint status` reports it.
    pub fn leader(&self) -> (usize, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for (i, member) in self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.process.is_some())
            {
                let out = etcdctl(&member.endpoint(), &["endpoint", "status", "-w", "json"]);
                if !out.status.success() {
                    continue;
                }
                let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let me = status[0]["Status"]["header"]["member_id"].as_u64().unwrap_or(0);
                let leader = status[0]["Status"]["leader"].as_u64().unwrap_or(u64::MAX);
                if me == leader {
                    return (i, format!("{me:x}"));
                }
            }
            assert!(Instant::now() < deadline, "no leader:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

pub fn etcdctl_stdin(endpoints: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs etcdctl and returns stdout, failing the test with stderr when it fails.
pub fn ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
