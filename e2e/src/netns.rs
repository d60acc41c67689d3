//! Private network namespaces for fault tests: entering one, telling whether we are in one, and
//! loading nftables scripts there. The sandbox only ever touches nftables inside a namespace that
//! is not the host's, so a test can never change the machine's own network configuration.

use std::io::Write;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, unshare};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot create a private network namespace (needs root): {0}")]
    Unshare(nix::Error),
    #[error("cannot bring up the loopback interface with `ip link set lo up`: {0}")]
    Loopback(String),
    #[error(
        "this network namespace has interfaces besides loopback ({0}), so it looks like the \
         host's network namespace; nftables rules are only loaded in a private one (run under \
         `unshare -n`, or call netns::enter_private on the test's thread)"
    )]
    HostNamespace(String),
    #[error("cannot tell which network namespace this is: {0}")]
    Inspect(std::io::Error),
    #[error("nft failed ({reason}) on:\n{script}")]
    Nft { reason: String, script: String },
}

/// Moves the calling thread into a new network namespace with its loopback interface up.
///
/// A network namespace belongs to a thread: call this on a thread before it starts a runtime or
/// spawns anything, so that every thread and process it creates afterwards lives there too.
pub fn enter_private() -> Result<(), NetnsError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
    let output = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()
        .map_err(|e| NetnsError::Loopback(e.to_string()))?;
    if !output.status.success() {
        return Err(NetnsError::Loopback(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// Refuses a network namespace with any interface but `lo`: what `unshare -n` makes has only that.
/// (Comparing with process 1's namespace would be exact, but it is not readable on every machine.)
pub fn check_private() -> Result<(), NetnsError> {
    let others = interfaces()?
        .into_iter()
        .filter(|name| name != "lo")
        .collect::<Vec<_>>();
    if others.is_empty() {
        Ok(())
    } else {
        Err(NetnsError::HostNamespace(others.join(", ")))
    }
}

/// The interfaces of this thread's network namespace.
fn interfaces() -> Result<Vec<String>, NetnsError> {
    let table = std::fs::read_to_string("/proc/thread-self/net/dev").map_err(NetnsError::Inspect)?;
    // Two header lines, then `name: counters...` per interface.
    Ok(table
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .collect())
}

/// Loads `script` with `nft -f -` (one atomic transaction), refusing outside a private namespace.
pub fn nft(script: &str) -> Result<(), NetnsError> {
    check_private()?;
    let failed = |reason: String| NetnsError::Nft {
        reason,
        script: script.to_owned(),
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run nft (Debian package nftables): {e}")))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(|e| failed(e.to_string()))?;
    let output = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(String::from_utf8_lossy(&output.stderr).trim().to_owned()))
    }
}

/// An nftables script that replaces table `ip <name>` with `body` in one transaction (declaring
/// the table first makes the delete valid when it does not exist yet).
pub fn replace_table(name: &str, body: &str) -> String {
    format!("table ip {name}\ndelete table ip {name}\ntable ip {name} {{\n{body}}}\n")
}
