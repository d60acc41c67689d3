//! Test harness: real `cairn` processes on loopback, driven with Debian's `etcdctl` (ETCDCTL_API=3).
//! Every wait is bounded; processes are killed when the harness is dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod pki;

/// A port for a member to listen on. Taken from below the kernel's ephemeral range (32768+), so
/// that a restarted member never finds its port taken by some client's outgoing connection; each
/// test process walks its own stretch of the range (seeded by its pid) and skips ports in use.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (seed + step) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + SPAN);
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
    /// Flags added after the harness's own, e.g. DNS discovery instead of `--initial-cluster`.
    pub extra_args: Vec<String>,
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
            extra_args: Vec::new(),
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
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--initial-cluster-state={}", self.state))
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--log-level=info");
        if !self.initial_cluster.is_empty() {
            command.arg(format!("--initial-cluster={}", self.initial_cluster));
        }
        command.args(&self.extra_args);
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

    /// Asks the member to stop (SIGTERM, as Kubernetes does); `wait_exit` sees it go.
    pub fn terminate(&self) {
        let pid = self.process.as_ref().expect("the member runs").id();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(signalled.success());
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
        Cluster::start_with(size, token, &[])
    }

    /// Starts `size` members bootstrapped statically, each with `extra_args` added to its flags.
    pub fn start_with(size: usize, token: &str, extra_args: &[&str]) -> Cluster {
        let root = TempDir::new().unwrap();
        let mut members: Vec<Member> = (0..size)
            .map(|i| Member::new(root.path(), &format!("m{i}"), token))
            .collect();
        for member in &mut members {
            member.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        }
        start_as_one_cluster(&mut members);
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
        logs_of(&self.members)
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

    /// Adds a learner `name` with etcdctl's `member add --learner` and starts it with the
    /// initial cluster etcdctl printed; returns the running member and its ID (hex).
    pub fn add_learner(&self, name: &str, token: &str) -> (Member, String) {
        let mut learner = Member::new(self.root.path(), name, token);
        let peer_urls = format!("--peer-urls={}", learner.peer_url);
        let added = ok(
            &self.endpoints(),
            &["member", "add", name, &peer_urls, "--learner"],
        );
        learner.initial_cluster = added
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("member add prints ETCD_INITIAL_CLUSTER")
            .to_owned();
        // etcdctl names the new member only if the answer's member list already holds it.
        assert!(
            learner
                .initial_cluster
                .contains(&format!("{name}={}", learner.peer_url)),
            "the member list answered by member add lacks the new member:\n{added}"
        );
        let id = added.split_whitespace().nth(1).expect("member ID").to_owned();
        learner.state = "existing";
        learner.start();
        (learner, id)
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

/// Starts `members` as the initial members of one new cluster (each lists all of them).
pub fn start_as_one_cluster(members: &mut [Member]) {
    let initial: Vec<String> = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect();
    for member in members {
        member.initial_cluster = initial.join(",");
        member.start();
    }
}

/// Every member's log, each under its name.
pub fn logs_of(members: &[Member]) -> String {
    members
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

/// A GET with curl: the body.
pub fn http_body(url: &str) -> String {
    let out = Command::new("curl").args(["-s", url]).output().expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let mut command = Command::new(etcdctl_path());
    command.env("ETCDCTL_API", "3");
    client_with_stdin(command, endpoints, args, input)
}

/// Runs an etcd client command (etcdctl or cairnctl) against `endpoints`, feeding it `input`.
fn client_with_stdin(mut command: Command, endpoints: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().expect("wait for the client")
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

/// Polls `done` every 200ms until it holds; fails the test naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, done: impl FnMut() -> bool) {
    wait_or_explain(what, within, done, String::new);
}

/// As `wait_until`, adding `explain()` (say, the members' logs) to the failure.
pub fn wait_or_explain(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
    explain: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the workspace's `cairnctl` with `input` on stdin.
pub fn cairnctl_stdin(endpoints: &str, args: &[&str], input: &str) -> Output {
    client_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_cairnctl")),
        endpoints,
        args,
        input,
    )
}

pub fn cairnctl(endpoints: &str, args: &[&str]) -> Output {
    cairnctl_stdin(endpoints, args, "")
}

/// Runs `cairnctl`, fails the test unless it succeeds, and returns its stdout.
pub fn ctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = cairnctl(endpoints, args);
    assert!(
        out.status.success(),
        "cairnctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A single-member etcd (Debian's etcd-server) on loopback, for tests that hold Cairn's answers
/// against etcd's own.
pub struct Etcd {
    pub client_url: String,
    _dir: TempDir,
    process: Child,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = TempDir::new().unwrap();
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        Etcd::launch(dir, peer_url)
    }

    /// An etcd whose data dir `etcdctl snapshot restore` made from `snapshot`.
    pub fn restored_from(snapshot: &Path) -> Etcd {
        let dir = TempDir::new().unwrap();
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let data_dir = dir.path().join("data");
        let restored = Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg("--name=etcd")
            .arg(format!("--initial-cluster=etcd={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .output()
            .expect("run etcdctl snapshot restore");
        assert!(
            restored.status.success(),
            "etcdctl snapshot restore {}: {}",
            snapshot.display(),
            String::from_utf8_lossy(&restored.stderr)
        );
        Etcd::launch(dir, peer_url)
    }

    fn launch(dir: TempDir, peer_url: String) -> Etcd {
        let etcd = "/usr/bin/etcd";
        assert!(
            Path::new(etcd).exists(),
            "etcd not found: install Debian's etcd-server package (apt-get install etcd-server)"
        );
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let process = Command::new(etcd)
            .arg("--name=etcd")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=etcd={peer_url}"))
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let etcd = Etcd {
            client_url,
            _dir: dir,
            process,
        };
        wait_until("etcd to answer", Duration::from_secs(30), || {
            etcdctl(&etcd.endpoint(), &["endpoint", "health"])
                .status
                .success()
        });
        etcd
    }

    pub fn endpoint(&self) -> String {
        self.client_url.trim_start_matches("http://").to_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Runs etcdctl until it has printed `lines` lines on stdout (or `within` passed), then stops it;
/// for commands that run until stopped, such as `watch`. Returns stdout, stderr and whether it
/// exited by itself (with its code).
pub fn etcdctl_until(
    endpoints: &str,
    args: &[&str],
    input: &str,
    lines: usize,
    within: Duration,
) -> (String, String, Option<i32>) {
    run_until(
        Command::new(etcdctl_path()),
        endpoints,
        args,
        input,
        lines,
        within,
    )
}

/// As `etcdctl_until`, for the workspace's cairnctl.
pub fn cairnctl_until(
    endpoints: &str,
    args: &[&str],
    input: &str,
    lines: usize,
    within: Duration,
) -> (String, String, Option<i32>) {
    run_until(
        Command::new(env!("CARGO_BIN_EXE_cairnctl")),
        endpoints,
        args,
        input,
        lines,
        within,
    )
}

fn run_until(
    mut command: Command,
    endpoints: &str,
    args: &[&str],
    input: &str,
    lines: usize,
    within: Duration,
) -> (String, String, Option<i32>) {
    use std::io::{Read, Write};
    let mut child = command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    // Input is written, and stdin kept open until the end, from a thread of its own.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        for line in input.split_inclusive('\n') {
            if let Some(pause) = line.strip_prefix("#sleep ") {
                std::thread::sleep(Duration::from_millis(pause.trim().parse().unwrap()));
                continue;
            }
            let _ = stdin.write_all(line.as_bytes());
        }
        let _ = done_rx.recv_timeout(Duration::from_secs(120));
    });
    let mut stdout = child.stdout.take().unwrap();
    let (out_tx, out_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 || out_tx.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut exited = None;
    loop {
        while let Ok(chunk) = out_rx.try_recv() {
            out.extend(chunk);
        }
        if let Some(status) = child.try_wait().unwrap() {
            while let Ok(chunk) = out_rx.recv_timeout(Duration::from_millis(200)) {
                out.extend(chunk);
            }
            exited = status.code();
            break;
        }
        if out.iter().filter(|b| **b == b'\n').count() >= lines || Instant::now() >= deadline {
            // The rest of a burst (a replayed history prints event by event) is read before the
            // client goes: until it has been quiet for half a second, for at most 5 s more.
            let settle = Instant::now() + Duration::from_secs(5);
            while Instant::now() < settle {
                match out_rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(chunk) => out.extend(chunk),
                    Err(_) => break,
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            while let Ok(chunk) = out_rx.recv_timeout(Duration::from_millis(100)) {
                out.extend(chunk);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = done_tx.send(());
    let _ = writer.join();
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    (String::from_utf8_lossy(&out).into_owned(), err, exited)
}

/// Copies a directory tree (test fixtures, crate sources).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
