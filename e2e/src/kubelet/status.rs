//! Pod status from what the kubelet observes of its processes: phase, conditions and container
//! statuses, computed the way kubelet does. Pure; the pod worker owns the observations.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// One container's state as the kubelet sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        started_at: Timestamp,
        finished_at: Timestamp,
        pid: u32,
        /// What the container left behind (`terminationMessagePolicy`).
        message: Option<String>,
    },
}

impl RunState {
    pub fn waiting(reason: &str, message: Option<String>) -> RunState {
        RunState::Waiting {
            reason: reason.to_owned(),
            message,
        }
    }

    fn to_api(&self) -> ContainerState {
        match self {
            RunState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            RunState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            RunState::Terminated {
                exit_code,
                signal,
                reason,
                started_at,
                finished_at,
                pid,
                message,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(reason.clone()),
                    started_at: Some(Time(*started_at)),
                    finished_at: Some(Time(*finished_at)),
                    container_id: Some(container_id(*pid)),
                    message: message.clone(),
                }),
                ..Default::default()
            },
        }
    }
}

pub fn container_id(pid: u32) -> String {
    format!("sandbox://{pid}")
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub binary: Option<String>,
    pub pid: Option<u32>,
    pub state: RunState,
    pub last_termination: Option<RunState>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
}

impl ContainerView {
    pub fn new(name: &str, image: &str) -> ContainerView {
        ContainerView {
            name: name.to_owned(),
            image: image.to_owned(),
            binary: None,
            pid: None,
            state: RunState::waiting("ContainerCreating", None),
            last_termination: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    fn to_api(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self
                .binary
                .as_ref()
                .map(|b| format!("sandbox://{b}"))
                .unwrap_or_default(),
            container_id: self.pid.map(container_id),
            ready: self.ready,
            started: Some(self.started),
            restart_count: self.restart_count,
            state: Some(self.state.to_api()),
            last_state: self.last_termination.as_ref().map(RunState::to_api),
            ..Default::default()
        }
    }

    fn has_run(&self) -> bool {
        self.restart_count > 0 || !matches!(self.state, RunState::Waiting { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Timestamp,
    pub restart_policy: String,
    pub init_containers: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
}

impl PodView {
    pub fn initialized(&self) -> bool {
        self.init_containers
            .iter()
            .all(|c| matches!(c.state, RunState::Terminated { exit_code: 0, .. }))
    }

    /// kubelet's getPhase, for processes instead of containers.
    pub fn phase(&self) -> &'static str {
        let never = self.restart_policy == "Never";
        let failed_init = self
            .init_containers
            .iter()
            .any(|c| matches!(&c.state, RunState::Terminated { exit_code, .. } if *exit_code != 0));
        if !self.initialized() {
            return if failed_init && never { "Failed" } else { "Pending" };
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for container in &self.containers {
            match &container.state {
                RunState::Running { .. } => running += 1,
                RunState::Terminated { exit_code, .. } => {
                    stopped += 1;
                    if *exit_code == 0 {
                        succeeded += 1;
                    }
                }
                RunState::Waiting { .. } if container.has_run() => running += 1,
                RunState::Waiting { .. } => waiting += 1,
            }
        }
        if waiting > 0 {
            return "Pending";
        }
        if running > 0 {
            return "Running";
        }
        if stopped == self.containers.len() && stopped > 0 {
            return match self.restart_policy.as_str() {
                "Always" => "Running",
                "OnFailure" if succeeded < stopped => "Running",
                _ if succeeded == stopped => "Succeeded",
                _ => "Failed",
            };
        }
        "Pending"
    }

    /// The status to write; conditions keep their transition time from `previous` while unchanged.
    pub fn to_api(&self, previous: &[PodCondition], now: Timestamp) -> PodStatus {
        let containers_ready = !self.containers.is_empty() && self.containers.iter().all(|c| c.ready);
        let condition = |kind: &str, status: bool| {
            let status = if status { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == kind && c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            PodCondition {
                type_: kind.to_owned(),
                status: status.to_owned(),
                last_transition_time: Some(since),
                ..Default::default()
            }
        };
        PodStatus {
            phase: Some(self.phase().to_owned()),
            host_ip: Some(self.host_ip.clone()),
            pod_ip: self.pod_ip.clone(),
            pod_ips: self.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
            start_time: Some(Time(self.start_time)),
            conditions: Some(vec![
                condition("Initialized", self.initialized()),
                condition("Ready", containers_ready),
                condition("ContainersReady", containers_ready),
                condition("PodScheduled", true),
            ]),
            init_container_statuses: (!self.init_containers.is_empty())
                .then(|| self.init_containers.iter().map(ContainerView::to_api).collect()),
            container_statuses: Some(self.containers.iter().map(ContainerView::to_api).collect()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(policy: &str, states: Vec<RunState>) -> PodView {
        PodView {
            pod_ip: Some("127.10.0.2".into()),
            host_ip: "127.0.0.1".into(),
            start_time: Timestamp::UNIX_EPOCH,
            restart_policy: policy.into(),
            init_containers: vec![],
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| ContainerView {
                    state,
                    ..ContainerView::new(&format!("c{i}"), "podtool")
                })
                .collect(),
        }
    }

    fn exited(code: i32) -> RunState {
        RunState::Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
            pid: 7,
            message: None,
        }
    }

    #[test]
    fn phase_follows_kubelet() {
        let running = RunState::Running {
            started_at: Timestamp::UNIX_EPOCH,
        };
        let creating = RunState::waiting("ContainerCreating", None);
        assert_eq!(view("Always", vec![creating.clone()]).phase(), "Pending");
        assert_eq!(view("Always", vec![running.clone(), creating]).phase(), "Pending");
        assert_eq!(view("Always", vec![running.clone()]).phase(), "Running");
        assert_eq!(view("Always", vec![exited(1)]).phase(), "Running");
        assert_eq!(view("Never", vec![exited(0), exited(0)]).phase(), "Succeeded");
        assert_eq!(view("Never", vec![exited(0), exited(2)]).phase(), "Failed");
        assert_eq!(view("OnFailure", vec![exited(2)]).phase(), "Running");
        assert_eq!(view("OnFailure", vec![exited(0)]).phase(), "Succeeded");

        let mut backing_off = view("Always", vec![RunState::waiting("CrashLoopBackOff", None)]);
        backing_off.containers[0].restart_count = 3;
        assert_eq!(backing_off.phase(), "Running");

        let mut init = view("Never", vec![RunState::waiting("PodInitializing", None)]);
        init.init_containers = vec![ContainerView {
            state: exited(1),
            ..ContainerView::new("init", "podtool")
        }];
        assert_eq!(init.phase(), "Failed");
    }

    #[test]
    fn conditions_keep_their_transition_time_until_they_change() {
        let mut pod = view(
            "Always",
            vec![RunState::Running {
                started_at: Timestamp::UNIX_EPOCH,
            }],
        );
        let t1 = Timestamp::from_second(100).unwrap();
        let t2 = Timestamp::from_second(200).unwrap();
        let first = pod.to_api(&[], t1);
        let ready = |status: &PodStatus| {
            status
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&first).status, "False");
        let same = pod.to_api(first.conditions.as_deref().unwrap(), t2);
        assert_eq!(ready(&same).last_transition_time, Some(Time(t1)));
        pod.containers[0].ready = true;
        let changed = pod.to_api(first.conditions.as_deref().unwrap(), t2);
        assert_eq!(ready(&changed).status, "True");
        assert_eq!(ready(&changed).last_transition_time, Some(Time(t2)));
        assert_eq!(changed.pod_ip.as_deref(), Some("127.10.0.2"));
    }
}
