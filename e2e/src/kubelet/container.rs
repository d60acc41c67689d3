//! One container of a running pod: start its process through `pod-exec`, run its probes, restart
//! it by the pod's restartPolicy with back-off, and stop it with SIGTERM, a grace period, then
//! SIGKILL to its whole process group. Every change lands in the pod's view.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Probe};
use kube::runtime::events::EventType;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::watch;

use super::env::{command_line, container_env, referenced_objects};
use super::images::repository_name;
use super::pod::PodRun;
use super::probes::probe_once;
use super::status::RunState;
use super::volumes::container_mounts;
use crate::podexec::{BindMount, ContainerSpec};

/// Back-off between restarts: doubles from the first to the cap, and starts over after a run that
/// lasted longer than `RESET_AFTER` (kubelet: 10 s to 5 min; shorter here, tests wait on it).
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
const RESET_AFTER: Duration = Duration::from_secs(60);

/// Which list the container is in: init containers run to completion, one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Init,
    Main,
}

/// How a container run ended.
enum Ended {
    Exited(std::process::ExitStatus),
    /// A liveness or startup probe failed: the process was stopped and may restart.
    Unhealthy(std::process::ExitStatus),
    /// The pod is going away: the process was stopped and must not restart.
    Stopped,
}

/// Runs the container until the pod stops (`stop` turns to Some(grace)), or, for init containers
/// and by restartPolicy, until it has finished. Returns whether it finished successfully.
pub async fn supervise(
    run: Arc<PodRun>,
    kind: Kind,
    index: usize,
    mut stop: watch::Receiver<Option<Duration>>,
) -> bool {
    let container = run.container(kind, index);
    let policy = run.restart_policy();
    let mut backoff = BACKOFF_FIRST;
    loop {
        if stop.borrow().is_some() {
            return false;
        }
        let child = match start(&run, kind, index, &container).await {
            Ok(child) => child,
            Err((reason, message)) => {
                run.update(kind, index, |c| {
                    c.state = RunState::waiting(&reason, Some(message.clone()))
                });
                run.event(EventType::Warning, "Failed", &format!("Error: {message}"))
                    .await;
                if wait_or_stop(&mut stop, Duration::from_secs(2)).await {
                    return false;
                }
                continue;
            }
        };
        let started = Instant::now();
        let ended = watch_process(&run, kind, index, &container, child, &mut stop).await;
        run.update(kind, index, |c| {
            c.ready = false;
            c.started = false;
        });
        let status = match ended {
            Ended::Stopped => return false,
            Ended::Exited(status) | Ended::Unhealthy(status) => status,
        };
        let success = status.code() == Some(0);
        let restart = match (kind, policy.as_str()) {
            (Kind::Init, "Never") => false,
            (Kind::Init, _) => !success,
            (Kind::Main, "Always") => true,
            (Kind::Main, "OnFailure") => !success,
            _ => false,
        };
        if !restart {
            return success;
        }
        if started.elapsed() > RESET_AFTER {
            backoff = BACKOFF_FIRST;
        }
        let message = format!(
            "back-off {}s restarting failed container={} pod={}",
            backoff.as_secs(),
            container.name,
            run.name
        );
        run.update(kind, index, |c| {
            c.last_termination = Some(c.state.clone());
            c.state = RunState::waiting("CrashLoopBackOff", Some(message.clone()));
        });
        run.event(
            EventType::Warning,
            "BackOff",
            &message.replace("back-off", "Back-off"),
        )
        .await;
        if wait_or_stop(&mut stop, backoff).await {
            return false;
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
        run.update(kind, index, |c| c.restart_count += 1);
    }
}

/// True when the pod is stopping (then at once), false after `delay`.
async fn wait_or_stop(stop: &mut watch::Receiver<Option<Duration>>, delay: Duration) -> bool {
    let stopping = tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(Option::is_some) => true,
    };
    stopping || stop.borrow().is_some()
}

/// The grace period, once the pod is stopping.
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        // The pod worker is gone: nobody waits for a grace period.
        Err(_) => Duration::ZERO,
    }
}

/// Resolves image, environment and mounts, writes the spec `pod-exec` reads, starts the process.
async fn start(
    run: &PodRun,
    kind: Kind,
    index: usize,
    container: &Container,
) -> Result<Child, (String, String)> {
    let image = container.image.clone().unwrap_or_default();
    let binary = run
        .kubelet
        .images
        .resolve(&image)
        .map(PathBuf::from)
        .map_err(|message| ("ErrImagePull".to_owned(), message))?;
    run.update(kind, index, |c| c.binary = Some(binary.display().to_string()));

    let config_error = |message: String| ("CreateContainerConfigError".to_owned(), message);
    let (maps, secrets) = referenced_objects(container);
    let context = run.env_context(&maps, &secrets).await.map_err(config_error)?;
    let env = container_env(&run.pod, container, &context).map_err(|e| config_error(e.to_string()))?;
    let volumes = run.volumes();
    let mut mounts =
        container_mounts(container, &volumes, &run.pod).map_err(|e| config_error(e.to_string()))?;
    // What the process writes at its termination message path is its message (each run starts
    // with an empty file).
    let termination_path = PathBuf::from(
        container
            .termination_message_path
            .as_deref()
            .unwrap_or("/dev/termination-log"),
    );
    if !mounts.iter().any(|m| m.target == termination_path) {
        let file = run.termination_file(&container.name);
        std::fs::write(&file, b"").map_err(|e| config_error(format!("{}: {e}", file.display())))?;
        mounts.push(BindMount {
            source: file,
            target: termination_path,
            read_only: false,
        });
    }
    for mount in &mounts {
        run.kubelet
            .mount_points
            .ensure(&mount.source, &mount.target)
            .map_err(|e| config_error(e.to_string()))?;
    }
    let spec = ContainerSpec {
        hostname: run.hostname(),
        mounts,
        env: env.clone(),
        working_dir: container.working_dir.as_ref().map(PathBuf::from),
        network_group: run.network_group,
    };
    let spec_file = run.spec_file(&container.name);
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| config_error(e.to_string()))?;
    write_private(&spec_file, &json).map_err(|e| config_error(format!("{}: {e}", spec_file.display())))?;

    // A command naming the image's own program (as images' entrypoints do) runs its binary, one
    // naming a program the image ships runs the workspace's binary of it; any other command runs
    // from this machine's PATH.
    let (program, args) = command_line(container, &env);
    let program = match program {
        None => binary.display().to_string(),
        Some(p) if repository_name(&p) == repository_name(&image) => binary.display().to_string(),
        Some(p) => match run.kubelet.images.shipped(&image, &p) {
            Some(shipped) => shipped.display().to_string(),
            None => p,
        },
    };
    let log = run
        .rotate_log(&container.name)
        .map_err(|e| ("RunContainerError".to_owned(), e.to_string()))?;
    let err = log
        .try_clone()
        .map_err(|e| ("RunContainerError".to_owned(), e.to_string()))?;
    let child = tokio::process::Command::new(&run.kubelet.pod_exec)
        .arg("pod-exec")
        .arg(format!("--spec={}", spec_file.display()))
        .arg("--")
        .arg(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group, so that stopping the container stops everything it started.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            (
                "RunContainerError".to_owned(),
                format!("cannot start {program}: {e}"),
            )
        })?;
    let pid = child.id().unwrap_or_default();
    run.kubelet.process_groups.add(pid);
    run.update(kind, index, |c| {
        c.pid = Some(pid);
        c.state = RunState::Running {
            started_at: Timestamp::now(),
        };
    });
    run.event(
        EventType::Normal,
        "Started",
        &format!("Started container {}", container.name),
    )
    .await;
    Ok(child)
}

fn write_private(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)
}

/// Waits for the process to exit, a probe to give up on it, or the pod to stop.
async fn watch_process(
    run: &Arc<PodRun>,
    kind: Kind,
    index: usize,
    container: &Container,
    mut child: Child,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> Ended {
    let pid = child.id().unwrap_or_default();
    let started_at = Timestamp::now();
    let probes = run_probes(run.clone(), kind, index, container.clone());
    tokio::pin!(probes);
    let (ended, status) = tokio::select! {
        status = child.wait() => {
            let status = status.ok();
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            (None, status)
        }
        reason = &mut probes => {
            run.event(EventType::Normal, "Killing", &format!("Container {} {reason}, will be restarted", container.name)).await;
            let status = terminate(&mut child, run.grace_period()).await;
            (Some(false), status)
        }
        grace = stop_requested(stop) => {
            run.event(EventType::Normal, "Killing", &format!("Stopping container {}", container.name)).await;
            let status = terminate(&mut child, grace).await;
            (Some(true), status)
        }
    };
    run.kubelet.process_groups.remove(pid);
    let finished_at = Timestamp::now();
    let (exit_code, signal) = match status {
        Some(status) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => (code, None),
                (None, Some(signal)) => (128 + signal, Some(signal)),
                (None, None) => (-1, None),
            }
        }
        None => (-1, None),
    };
    let reason = if exit_code == 0 { "Completed" } else { "Error" };
    let message = termination_message(
        container,
        exit_code,
        &run.termination_file(&container.name),
        &run.log_file(&container.name),
    );
    run.update(kind, index, |c| {
        c.state = RunState::Terminated {
            exit_code,
            signal,
            reason: reason.to_owned(),
            started_at,
            finished_at,
            pid,
            message,
        };
    });
    let status = status.unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        std::process::ExitStatus::from_raw(255 << 8)
    });
    match ended {
        None => Ended::Exited(status),
        Some(false) => Ended::Unhealthy(status),
        Some(true) => Ended::Stopped,
    }
}

/// The message a container leaves in its status: what it wrote at its termination message path
/// (kubelet keeps 4096 bytes of it), else, when it failed with `FallbackToLogsOnError`, the tail
/// of its log (kubelet's limits: 80 lines, 2048 bytes).
fn termination_message(
    container: &Container,
    exit_code: i32,
    file: &std::path::Path,
    log: &std::path::Path,
) -> Option<String> {
    if let Ok(written) = std::fs::read(file)
        && !written.is_empty()
    {
        let kept = &written[..written.len().min(4096)];
        return Some(String::from_utf8_lossy(kept).into_owned());
    }
    let policy = container.termination_message_policy.as_deref();
    if exit_code == 0 || policy != Some("FallbackToLogsOnError") {
        return None;
    }
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(80)..].join("\n");
    if tail.len() > 2048 {
        let mut cut = tail.len() - 2048;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_owned();
    }
    Some(tail).filter(|t| !t.is_empty())
}

/// SIGTERM to the process, then after `grace` SIGKILL to its process group.
async fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let pid = Pid::from_raw(child.id().unwrap_or_default() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = killpg(pid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    let _ = killpg(pid, Signal::SIGKILL);
    status
}

/// Runs startup, then readiness and liveness probes; returns only when the container must be
/// restarted, with the reason.
async fn run_probes(run: Arc<PodRun>, kind: Kind, index: usize, container: Container) -> String {
    if kind == Kind::Init {
        return std::future::pending().await;
    }
    if let Some(startup) = &container.startup_probe {
        let mut failures = 0;
        tokio::time::sleep(initial_delay(startup)).await;
        loop {
            match run.probe(startup, &container).await {
                Ok(()) => break,
                Err(reason) => {
                    failures += 1;
                    run.event(
                        EventType::Warning,
                        "Unhealthy",
                        &format!("Startup probe failed: {reason}"),
                    )
                    .await;
                    if failures >= startup.failure_threshold.unwrap_or(3) {
                        return "failed startup probe".into();
                    }
                }
            }
            tokio::time::sleep(period(startup)).await;
        }
    }
    run.update(kind, index, |c| c.started = true);

    let readiness = async {
        let Some(probe) = &container.readiness_probe else {
            run.update(kind, index, |c| c.ready = true);
            return std::future::pending::<String>().await;
        };
        tokio::time::sleep(initial_delay(probe)).await;
        let (mut successes, mut failures) = (0, 0);
        loop {
            match run.probe(probe, &container).await {
                Ok(()) => {
                    successes += 1;
                    failures = 0;
                    if successes >= probe.success_threshold.unwrap_or(1) {
                        run.update(kind, index, |c| c.ready = true);
                    }
                }
                Err(reason) => {
                    failures += 1;
                    successes = 0;
                    if failures >= probe.failure_threshold.unwrap_or(3) {
                        run.update(kind, index, |c| c.ready = false);
                    }
                    if failures == 1 {
                        run.event(
                            EventType::Warning,
                            "Unhealthy",
                            &format!("Readiness probe failed: {reason}"),
                        )
                        .await;
                    }
                }
            }
            tokio::time::sleep(period(probe)).await;
        }
    };
    let liveness = async {
        let Some(probe) = &container.liveness_probe else {
            return std::future::pending::<String>().await;
        };
        tokio::time::sleep(initial_delay(probe)).await;
        let mut failures = 0;
        loop {
            match run.probe(probe, &container).await {
                Ok(()) => failures = 0,
                Err(reason) => {
                    failures += 1;
                    run.event(
                        EventType::Warning,
                        "Unhealthy",
                        &format!("Liveness probe failed: {reason}"),
                    )
                    .await;
                    if failures >= probe.failure_threshold.unwrap_or(3) {
                        return "failed liveness probe".to_owned();
                    }
                }
            }
            tokio::time::sleep(period(probe)).await;
        }
    };
    tokio::select! {
        reason = readiness => reason,
        reason = liveness => reason,
    }
}

fn initial_delay(probe: &Probe) -> Duration {
    Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64)
}

fn period(probe: &Probe) -> Duration {
    Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64)
}

impl PodRun {
    async fn probe(&self, probe: &Probe, container: &Container) -> Result<(), String> {
        probe_once(
            probe,
            container,
            &self.ip,
            &self.kubelet.pod_exec,
            &self.spec_file(&container.name),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(policy: Option<&str>) -> Container {
        Container {
            name: "c".to_owned(),
            termination_message_policy: policy.map(str::to_owned),
            ..Container::default()
        }
    }

    #[test]
    fn the_message_file_wins_and_the_log_is_the_fallback_of_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (file, log) = (dir.path().join("message"), dir.path().join("log"));
        std::fs::write(&log, "starting\nError: refused\n").unwrap();
        std::fs::write(&file, "").unwrap();
        let fallback = container(Some("FallbackToLogsOnError"));
        assert_eq!(
            termination_message(&fallback, 1, &file, &log).as_deref(),
            Some("starting\nError: refused")
        );
        assert_eq!(termination_message(&fallback, 0, &file, &log), None);
        assert_eq!(termination_message(&container(None), 1, &file, &log), None);

        std::fs::write(&file, "x".repeat(5000)).unwrap();
        for (policy, code) in [(None, 0), (Some("FallbackToLogsOnError"), 1)] {
            let message = termination_message(&container(policy), code, &file, &log).unwrap();
            assert_eq!(message, "x".repeat(4096));
        }
    }
}
