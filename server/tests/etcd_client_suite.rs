//! The integration tests and examples that ship inside the `etcd-client` crate's source, run
//! against one Cairn member on 127.0.0.1:2379 exactly as their authors run them against etcd, and
//! against Debian's etcd 3.4 the same way: every test that passes on etcd must pass on Cairn.
//!
//! The crate's source comes from cargo's registry (cairnctl depends on the crate, so it is there);
//! it is copied to a scratch directory and built with its own lock file, in a target directory
//! outside the clone (see `suite_target`) so later runs, from any clone, rebuild only the crate.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{copy_dir, etcdctl, wait_until};

/// The examples run against the single member. `cluster` adds a member that must then start (the
/// crate runs it against a three-node cluster).
const EXAMPLES: &[&str] = &[
    "auth",
    "auth_role",
    "auth_user",
    "election",
    "kv",
    "lease",
    "lock",
    "maintenance",
    "namespace",
    "watch",
];

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The etcd-client crate's source directory, as cargo resolved it for this workspace.
fn crate_source() -> PathBuf {
    let out = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "etcd-client")
        .expect("etcd-client in the dependency graph")["manifest_path"]
        .as_str()
        .unwrap()
        .to_owned();
    Path::new(&manifest).parent().unwrap().to_owned()
}

/// Where the suite is built: `CAIRN_ETCD_CLIENT_SUITE_TARGET` when set, else a cache beside the
/// sandbox's (`$XDG_CACHE_HOME/cairn`, or `~/.cache/cairn`), else the workspace's target directory.
/// The cache only saves time: an empty one is filled by the first run.
fn suite_target() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAIRN_ETCD_CLIENT_SUITE_TARGET") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")));
    match cache {
        Some(cache) => cache.join("cairn").join("etcd-client-suite"),
        None => workspace_root().join("target").join("etcd-client-suite"),
    }
}

struct Suite {
    dir: tempfile::TempDir,
    target: PathBuf,
}

impl Suite {
    fn build() -> Suite {
        let dir = tempfile::TempDir::new().unwrap();
        copy_dir(&crate_source(), dir.path());
        let suite = Suite {
            dir,
            target: suite_target(),
        };
        let built = suite
            .cargo(&["test", "--locked", "--tests", "--examples", "--no-run"])
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "building the etcd-client suite failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        suite
    }

    fn cargo(&self, args: &[&str]) -> Command {
        let mut command = Command::new(cargo());
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("CARGO_TARGET_DIR", &self.target)
            // Nothing here is debugged; without debug info the build is smaller and quicker.
            .env("CARGO_PROFILE_DEV_DEBUG", "0")
            .env_remove("RUSTFLAGS");
        command
    }

    /// Each test's outcome: true when it passed.
    fn tests(&self) -> BTreeMap<String, bool> {
        let out = self
            .cargo(&["test", "--locked", "--test", "client", "--test", "namespace"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| l.strip_prefix("test "))
            .filter_map(|l| l.split_once(" ... "))
            .filter(|(_, outcome)| !outcome.starts_with("ignored"))
            .map(|(name, outcome)| (name.to_owned(), outcome == "ok"))
            .collect()
    }

    fn example(&self, name: &str) -> (bool, String) {
        let out = self
            .cargo(&["run", "--locked", "-q", "--example", name])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// A server on 127.0.0.1:2379, the address the suite is written for, set up as the crate's own
/// CI sets up etcd: tokens that live 2 s, and a `root` user (password `rootpwd`) with the root
/// role, which the auth tests log in as after enabling auth themselves.
fn serve(program: &str, dir: &Path) -> Child {
    let mut command = Command::new(program);
    command
        .arg("--name=suite")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg("--listen-client-urls=http://127.0.0.1:2379")
        .arg("--advertise-client-urls=http://127.0.0.1:2379")
        .arg("--listen-peer-urls=http://127.0.0.1:2380")
        .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
        .arg("--initial-cluster=suite=http://127.0.0.1:2380")
        .arg("--auth-token-ttl=2")
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap());
    let child = command.spawn().expect("start the server");
    wait_until("the server on 127.0.0.1:2379", Duration::from_secs(30), || {
        etcdctl("127.0.0.1:2379", &["endpoint", "health"])
            .status
            .success()
    });
    for args in [
        &["user", "add", "root:rootpwd"][..],
        &["user", "grant-role", "root", "root"],
    ] {
        let out = etcdctl("127.0.0.1:2379", args);
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    }
    child
}

fn stop(mut server: Child) {
    let _ = server.kill();
    let _ = server.wait();
    // The next server binds the same ports.
    wait_until("port 2379 to be free", Duration::from_secs(10), || {
        std::net::TcpListener::bind("127.0.0.1:2379").is_ok()
    });
}

#[test]
fn the_etcd_client_crates_own_tests_pass_on_cairn_as_on_etcd() {
    let suite = Suite::build();

    let etcd_dir = tempfile::TempDir::new().unwrap();
    let etcd = serve("/usr/bin/etcd", etcd_dir.path());
    let on_etcd = suite.tests();
    stop(etcd);

    let cairn_dir = tempfile::TempDir::new().unwrap();
    let cairn = serve(env!("CARGO_BIN_EXE_cairn"), cairn_dir.path());
    let on_cairn = suite.tests();
    let examples: Vec<(&str, bool, String)> = EXAMPLES
        .iter()
        .map(|name| {
            let (passed, output) = suite.example(name);
            (*name, passed, output)
        })
        .collect();
    stop(cairn);

    assert!(on_etcd.len() >= 20, "the suite ran: {on_etcd:?}");
    let mut regressions = Vec::new();
    for (test, passed_on_etcd) in &on_etcd {
        let passed_on_cairn = on_cairn.get(test).copied().unwrap_or(false);
        if *passed_on_etcd && !passed_on_cairn {
            regressions.push(test.clone());
        }
    }
    let passed = on_cairn.values().filter(|p| **p).count();
    eprintln!(
        "etcd-client suite: {passed} of {} tests pass on Cairn, {} on etcd 3.4; examples: {}",
        on_cairn.len(),
        on_etcd.values().filter(|p| **p).count(),
        examples
            .iter()
            .map(|(name, ok, _)| format!("{name} {}", if *ok { "ok" } else { "FAILED" }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        regressions.is_empty(),
        "pass on etcd 3.4 but not on Cairn: {regressions:?}\n{}",
        std::fs::read_to_string(cairn_dir.path().join("server.log")).unwrap_or_default()
    );
    for (name, ok, output) in &examples {
        assert!(ok, "example {name} failed on Cairn:\n{output}");
    }
}
