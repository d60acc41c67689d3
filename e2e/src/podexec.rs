//! `sandbox pod-exec`: the last step before a pod's program runs. In a fresh mount and UTS namespace
//! it bind-mounts the pod's volumes (and its /etc/hosts and /etc/resolv.conf) where the pod spec
//! wants them, takes the pod's hostname and environment, then replaces itself with the program.
//! The kubelet writes one spec per container; probes and `sandbox exec` reuse it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PodExecError {
    #[error("cannot read the pod spec {path}: {reason}")]
    Spec { path: PathBuf, reason: String },
    #[error("cannot make a private mount namespace: {0}")]
    Namespace(nix::Error),
    #[error("cannot mount {source_path} at {target}: {error}")]
    Mount {
        source_path: PathBuf,
        target: PathBuf,
        error: nix::Error,
    },
    #[error("cannot set the hostname to {hostname:?}: {error}")]
    Hostname { hostname: String, error: nix::Error },
    #[error("cannot run {program:?}: {error}")]
    Exec {
        program: OsString,
        error: std::io::Error,
    },
    #[error("no program given after --")]
    NoProgram,
}

/// One bind mount into the pod's namespace. The target exists on the host (the kubelet creates
/// missing mount points and removes them again).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// What a container's process sees: written by the kubelet, read by `pod-exec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerSpec {
    pub hostname: String,
    pub mounts: Vec<BindMount>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// The pod's group, which gives its connections the pod's address (`kubelet::pod_network`).
    #[serde(default)]
    pub network_group: Option<u32>,
}

impl ContainerSpec {
    pub fn read(path: &Path) -> Result<ContainerSpec, PodExecError> {
        let spec = |reason: String| PodExecError::Spec {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| spec(e.to_string()))?;
        serde_json::from_slice(&text).map_err(|e| spec(e.to_string()))
    }
}

/// Enters the pod's namespaces and executes `program`; returns only on failure.
pub fn exec_in_pod(spec: &ContainerSpec, program: &[OsString]) -> PodExecError {
    match enter(spec) {
        Ok(()) => {}
        Err(error) => return error,
    }
    let Some((program, args)) = program.split_first() else {
        return PodExecError::NoProgram;
    };
    let mut command = std::process::Command::new(program);
    command.args(args).env_clear().envs(spec.env.iter().cloned());
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    if let Some(group) = spec.network_group {
        command.gid(group);
    }
    let error = command.exec();
    PodExecError::Exec {
        program: program.clone(),
        error,
    }
}

fn enter(spec: &ContainerSpec) -> Result<(), PodExecError> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS).map_err(PodExecError::Namespace)?;
    // Without this, mounts made here would propagate back to the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(PodExecError::Namespace)?;
    for bind in &spec.mounts {
        let failed = |error| PodExecError::Mount {
            source_path: bind.source.clone(),
            target: bind.target.clone(),
            error,
        };
        mount(
            Some(&bind.source),
            &bind.target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(failed)?;
        if bind.read_only {
            mount(
                None::<&str>,
                &bind.target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(failed)?;
        }
    }
    nix::unistd::sethostname(&spec.hostname).map_err(|error| PodExecError::Hostname {
        hostname: spec.hostname.clone(),
        error,
    })
}
