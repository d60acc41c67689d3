//! The node: the one place where storage, the Raft network and Raft meet. It resolves this member's
//! identity, starts Raft, and offers the operations the client and peer services call: propose a
//! change (forwarded to the leader when needed), linearizable reads, membership and leases.

mod compactor;
mod error;
mod lessor;
mod members;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::{RaftMetrics, ReadPolicy, ServerState};
use tokio::sync::watch;

pub use error::NodeError;
pub use lessor::Lessor;

use crate::bootstrap::{data_dir, identity};
use crate::config::{ClusterState, Config};
use crate::network::raft::NetworkFactory;
use crate::network::{ClusterInfo, ForwardError, PeerAnswer, PeerCall, PeerClient, PeerError};
use crate::pb::cairnpb::{MemberAttributes, RaftRequest, RaftResponse, raft_request, raft_response};
use crate::pb::etcdserverpb::ResponseHeader;
use crate::store::{LogStore, SharedMachine, StateMachine, snap_dir, wal_dir};
use crate::{PeerNode, TypeConfig};

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// The etcd API version Cairn speaks, reported by Status and /version.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// How long a client request may wait for a leader, a commit or a forwarded answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] data_dir::DataDirError),
    #[error("cannot open the Raft log: {0}")]
    Log(#[from] crate::store::LogStoreError),
    #[error("cannot open the state machine: {0}")]
    StateMachine(std::io::Error),
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error(
        "data dir {dir} belongs to cluster {cluster_id:x} (token {stored:?}), but --initial-cluster-token is {given:?}; \
         refusing to mix clusters"
    )]
    OtherCluster {
        dir: String,
        cluster_id: u64,
        stored: String,
        given: String,
    },
    #[error(
        "data dir {dir} belongs to member {stored:?}, not --name {given:?}; use the data dir of this member"
    )]
    OtherMember {
        dir: String,
        stored: String,
        given: String,
    },
    #[error("cannot join the existing cluster: {0}")]
    Join(String),
    #[error(
        "member {member_id:x} already started in cluster {cluster_id:x}, but its data dir {dir} is \
         empty: its data was lost. Refusing to rejoin with no log; remove the member \
         (`member remove {member_id:x}`) and add it again"
    )]
    DataLost {
        dir: String,
        member_id: u64,
        cluster_id: u64,
    },
}

/// Everything a member needs to serve its clients and peers.
pub struct Node {
    pub config: Config,
    pub member_id: u64,
    pub cluster_id: u64,
    pub raft: Raft,
    pub machine: SharedMachine,
    pub peers: PeerClient,
    pub lessor: Lessor,
    /// Set to a reason when this member must stop (removed from the cluster, Raft failed).
    fatal: watch::Sender<Option<String>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Node {
    /// Resolves identity, opens storage and starts Raft. Listeners are started by the caller, then
    /// `bootstrap` initializes a new cluster.
    pub async fn open(
        config: Config,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Node>, StartError> {
        let identity = resolve_identity(&config).await?;
        let peers = PeerClient::new(identity.member_id, identity.cluster_id);
        let fsync_metrics = metrics.clone();
        let log = LogStore::open(
            &wal_dir(&config.data_dir),
            Box::new(move |d| fsync_metrics.observe_wal_fsync(d)),
        )
        .await?;
        let state_machine =
            StateMachine::open(&snap_dir(&config.data_dir)).map_err(StartError::StateMachine)?;
        let machine = state_machine.shared();
        let election_ms = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: format!("cairn-{:x}", identity.cluster_id),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            // Keep some log after a snapshot so briefly lagging members catch up without one.
            max_in_snapshot_log_to_keep: config.snapshot_count.min(5_000),
            install_snapshot_timeout: 60_000,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| StartError::Raft(e.to_string()))?,
        );
        let network = NetworkFactory {
            client: peers.clone(),
        };
        let raft = Raft::new(identity.member_id, raft_config, network, log, state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (fatal, _) = watch::channel(None);
        let node = Arc::new(Node {
            lessor: Lessor::new(config.election_timeout),
            config,
            member_id: identity.member_id,
            cluster_id: identity.cluster_id,
            raft,
            machine,
            peers,
            fatal,
            metrics,
        });
        tracing::info!(
            name = %node.config.name,
            member_id = %format!("{:x}", node.member_id),
            cluster_id = %format!("{:x}", node.cluster_id),
            "member started"
        );
        Ok(node)
    }

    /// Initializes a brand-new cluster (idempotent: every initial member does the same) and starts
    /// the member's background work.
    pub async fn bootstrap(self: &Arc<Self>) -> Result<(), StartError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if !initialized && self.config.cluster_state == ClusterState::New {
            let members: BTreeMap<u64, PeerNode> = self
                .config
                .initial_cluster
                .values()
                .map(|urls| {
                    (
                        identity::member_id(urls, &self.config.token, None),
                        PeerNode {
                            peer_urls: urls.clone(),
                        },
                    )
                })
                .collect();
            if let Err(error) = self.raft.initialize(members).await {
                // Another initial member may have initialized us first through replication.
                tracing::info!(%error, "cluster initialization skipped");
            }
        }
        tokio::spawn(self.clone().publish_attributes());
        tokio::spawn(self.clone().watch_removal());
        tokio::spawn(self.clone().watch_leader_changes());
        tokio::spawn(lessor::run(self.clone()));
        if let Some(policy) = self.config.auto_compaction {
            tokio::spawn(compactor::run(self.clone(), policy));
        }
        Ok(())
    }

    /// Resolves when the member must stop, with the reason.
    pub async fn stopped(&self) -> String {
        let mut fatal = self.fatal.subscribe();
        loop {
            if let Some(reason) = fatal.borrow_and_update().clone() {
                return reason;
            }
            if fatal.changed().await.is_err() {
                return "node dropped".into();
            }
        }
    }

    pub fn raft_metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    pub fn leader_id(&self) -> Option<u64> {
        self.raft_metrics().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.raft_metrics().state == ServerState::Leader
    }

    pub fn is_learner(&self) -> bool {
        self.raft_metrics().state == ServerState::Learner
    }

    pub fn revision(&self) -> i64 {
        self.read_machine(|m| m.app.mvcc.revision())
    }

    pub fn read_machine<T>(&self, read: impl FnOnce(&crate::store::Machine) -> T) -> T {
        read(&self.machine.read().expect("state machine lock poisoned"))
    }

    /// The header every response carries.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_metrics().current_term,
        }
    }

    fn peer_url_of(&self, member: u64) -> Option<String> {
        let metrics = self.raft_metrics();
        metrics
            .membership_config
            .membership()
            .get_node(&member)
            .and_then(|n| n.peer_urls.first().cloned())
    }

    /// Sends `call` to the current leader, waiting for one to exist.
    async fn call_leader(&self, call: &PeerCall, deadline: Instant) -> Result<PeerAnswer, NodeError> {
        loop {
            let leader = self.leader_id();
            if let Some(url) = leader.and_then(|l| self.peer_url_of(l)) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match self.peers.call(&url, call, remaining).await {
                    Ok(PeerAnswer::Failed(ForwardError::NotLeader)) => {}
                    Ok(PeerAnswer::Failed(ForwardError::Node(error))) => return Err(error),
                    Ok(answer) => return Ok(answer),
                    // The outcome of a timed-out call is unknown: never resend it.
                    Err(PeerError::Timeout { .. }) => return Err(NodeError::Timeout),
                    Err(error) => tracing::debug!(%error, "forwarding to the leader failed; retrying"),
                }
            }
            if Instant::now() >= deadline {
                return Err(if leader.is_some() {
                    NodeError::Timeout
                } else {
                    NodeError::NoLeader
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `call` to the leader (for services that ask the leader directly).
    pub async fn call_leader_public(
        &self,
        call: &PeerCall,
        deadline: Instant,
    ) -> Result<PeerAnswer, NodeError> {
        self.call_leader(call, deadline).await
    }

    /// Commits `request` through Raft on the leader and returns the state machine's answer.
    pub async fn propose(&self, request: RaftRequest) -> Result<RaftResponse, NodeError> {
        self.metrics.proposal_pending(1);
        let result = self.propose_inner(request).await;
        self.metrics.proposal_pending(-1);
        self.metrics.proposal_done(result.is_ok());
        let response = result?;
        match response.response {
            Some(raft_response::Response::Error(code)) => Err(crate::mvcc::MvccError::from_code(code)
                .map(NodeError::Mvcc)
                .unwrap_or_else(|| NodeError::Internal(format!("unknown apply error code {code}")))),
            _ => Ok(response),
        }
    }

    async fn propose_inner(&self, request: RaftRequest) -> Result<RaftResponse, NodeError> {
        if self.is_leader() {
            match self.propose_here(request.clone()).await {
                Err(NodeError::NotLeader) => {}
                other => return other,
            }
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        match self.call_leader(&PeerCall::Propose(request), deadline).await? {
            PeerAnswer::Proposed(response) => Ok(response),
            _ => Err(NodeError::Internal("leader answered a different call".into())),
        }
    }

    /// Proposes on this member only; `NotLeader` if it does not lead.
    pub async fn propose_here(&self, request: RaftRequest) -> Result<RaftResponse, NodeError> {
        use openraft::error::ClientWriteError;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.raft.client_write(request)).await {
            Err(_) => Err(NodeError::Timeout),
            Ok(Ok(written)) => Ok(written.data),
            Ok(Err(error)) => match error.into_api_error() {
                Some(ClientWriteError::ForwardToLeader(_)) => Err(NodeError::NotLeader),
                Some(_) => Err(NodeError::LeaderChanged),
                None => Err(NodeError::Stopped),
            },
        }
    }

    /// Waits until this member's state reflects every write committed before the call (ReadIndex:
    /// the leader confirms its leadership with a quorum; followers ask the leader for the index).
    pub async fn linearizable_barrier(&self) -> Result<(), NodeError> {
        let index = if self.is_leader() {
            match self.read_index_here().await {
                Err(NodeError::NotLeader) => None,
                other => Some(other?),
            }
        } else {
            None
        };
        let index = match index {
            Some(index) => index,
            None => match self
                .call_leader(&PeerCall::ReadIndex, Instant::now() + REQUEST_TIMEOUT)
                .await?
            {
                PeerAnswer::ReadIndex(index) => index,
                _ => return Err(NodeError::Internal("leader answered a different call".into())),
            },
        };
        self.raft
            .wait(Some(REQUEST_TIMEOUT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| NodeError::Timeout)?;
        Ok(())
    }

    /// The leader's read index: confirmed with a quorum, and applied here.
    pub async fn read_index_here(&self) -> Result<u64, NodeError> {
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        {
            Err(_) => Err(NodeError::Timeout),
            Ok(Ok(read)) => Ok(read.index()),
            Ok(Err(error)) => match error.into_api_error() {
                Some(openraft::error::LinearizableReadError::ForwardToLeader(_)) => Err(NodeError::NotLeader),
                Some(_) => Err(NodeError::Timeout),
                None => Err(NodeError::Stopped),
            },
        }
    }

    /// Who is in the cluster, for members joining it.
    pub fn cluster_info(&self) -> ClusterInfo {
        let metrics = self.raft_metrics();
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.peer_urls.clone()))
            .collect();
        let removed = self.read_machine(|m| m.app.removed.iter().copied().collect());
        let started = self.read_machine(|m| {
            m.app
                .members
                .iter()
                .filter(|(_, attributes)| !attributes.name.is_empty())
                .map(|(id, _)| *id)
                .collect()
        });
        ClusterInfo {
            cluster_id: self.cluster_id,
            members,
            removed,
            started,
        }
    }

    /// Publishes this member's name and client URLs once a leader exists (etcd members do the same),
    /// so MemberList shows them.
    async fn publish_attributes(self: Arc<Self>) {
        let attributes = MemberAttributes {
            id: self.member_id,
            name: self.config.name.clone(),
            client_urls: self.config.advertise_client_urls.clone(),
        };
        loop {
            let current = self.read_machine(|m| m.app.members.get(&self.member_id).cloned());
            if current.is_some_and(|c| c.name == attributes.name && c.client_urls == attributes.client_urls) {
                return;
            }
            let request = RaftRequest {
                request: Some(raft_request::Request::MemberAttributes(attributes.clone())),
            };
            match self.propose(request).await {
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "publishing member attributes; will retry"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether a peer says this member was removed. A removed member is cut off before the removal
    /// record reaches it, so it has to ask (as etcd members learn it from their peers).
    async fn removed_according_to_peers(&self) -> bool {
        let metrics = self.raft_metrics();
        let in_membership = metrics
            .membership_config
            .membership()
            .get_node(&self.member_id)
            .is_some();
        if in_membership && metrics.current_leader.is_some() {
            return false;
        }
        let mut urls: Vec<String> = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.member_id)
            .filter_map(|(_, node)| node.peer_urls.first().cloned())
            .collect();
        urls.extend(
            self.config
                .initial_cluster
                .iter()
                .filter(|(n, _)| **n != self.config.name)
                .flat_map(|(_, u)| u.clone()),
        );
        for url in urls {
            if let Ok(PeerAnswer::ClusterInfo(info)) = self
                .peers
                .call(&url, &PeerCall::ClusterInfo, Duration::from_secs(1))
                .await
                && info.cluster_id == self.cluster_id
            {
                return info.removed.contains(&self.member_id);
            }
        }
        false
    }

    /// Stops the member when the cluster removes it, now or at restart.
    async fn watch_removal(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let mut last_asked = Instant::now();
        loop {
            let ask_peers = last_asked.elapsed() >= Duration::from_secs(1);
            if ask_peers {
                last_asked = Instant::now();
            }
            if self.read_machine(|m| m.app.removed.contains(&self.member_id))
                || (ask_peers && self.removed_according_to_peers().await)
            {
                let reason = "this member has been permanently removed from the cluster. Exiting.".to_owned();
                tracing::error!("{reason}");
                self.fatal.send_replace(Some(reason));
                return;
            }
            let stopped = metrics
                .borrow_watched()
                .running_state
                .as_ref()
                .err()
                .map(|e| e.to_string());
            if let Some(error) = stopped {
                let reason = format!("raft stopped: {error}");
                self.fatal.send_replace(Some(reason));
                return;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn watch_leader_changes(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let mut leader = None;
        loop {
            let current = metrics.borrow_and_update().current_leader;
            if current != leader {
                if current.is_some() {
                    self.metrics.leader_changed();
                }
                tracing::info!(leader = ?current.map(|l| format!("{l:x}")), "leader changed");
                leader = current;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Finds out which member of which cluster this is: from the data dir if initialized (it wins over
/// flags), from the flags for a new cluster, or from the running cluster when joining it.
async fn resolve_identity(config: &Config) -> Result<data_dir::MemberIdentity, StartError> {
    let dir = config.data_dir.display().to_string();
    if let Some(stored) = data_dir::load(&config.data_dir)? {
        if stored.token != config.token {
            return Err(StartError::OtherCluster {
                dir,
                cluster_id: stored.cluster_id,
                stored: stored.token,
                given: config.token.clone(),
            });
        }
        if stored.name != config.name {
            return Err(StartError::OtherMember {
                dir,
                stored: stored.name,
                given: config.name.clone(),
            });
        }
        tracing::info!(%dir, "data dir is initialized; --initial-cluster flags are ignored");
        return Ok(stored);
    }
    let identity = match config.cluster_state {
        ClusterState::New => {
            let ids: Vec<u64> = config
                .initial_cluster
                .values()
                .map(|urls| identity::member_id(urls, &config.token, None))
                .collect();
            data_dir::MemberIdentity {
                name: config.name.clone(),
                // The cluster's own spelling of this member's URLs (SRV gives host names).
                member_id: identity::member_id(&config.initial_cluster[&config.name], &config.token, None),
                cluster_id: identity::cluster_id(&ids),
                token: config.token.clone(),
            }
        }
        ClusterState::Existing => join_existing(config).await?,
    };
    data_dir::save(&config.data_dir, &identity)?;
    Ok(identity)
}

/// Asks the members listed in `--initial-cluster` who is in the cluster, and checks the list matches
/// what this member was started with (etcd's ValidateClusterAndAssignIDs).
async fn join_existing(config: &Config) -> Result<data_dir::MemberIdentity, StartError> {
    let client = PeerClient::new(0, 0);
    let mut errors = Vec::new();
    for (name, urls) in &config.initial_cluster {
        if *name == config.name {
            continue;
        }
        for url in urls {
            match client
                .call(url, &PeerCall::ClusterInfo, Duration::from_secs(3))
                .await
            {
                Ok(PeerAnswer::ClusterInfo(info)) => return identity_from_cluster(config, info),
                Ok(_) => errors.push(format!("{url}: unexpected answer")),
                Err(error) => errors.push(error.to_string()),
            }
        }
    }
    Err(StartError::Join(format!(
        "no listed peer answered: {}",
        errors.join("; ")
    )))
}

fn identity_from_cluster(config: &Config, info: ClusterInfo) -> Result<data_dir::MemberIdentity, StartError> {
    let sorted = |urls: &[String]| {
        let mut urls = urls.to_vec();
        urls.sort();
        urls
    };
    if info.members.len() != config.initial_cluster.len() {
        return Err(StartError::Join(format!(
            "assign ids error: the member count is unequal (cluster has {}, --initial-cluster lists {})",
            info.members.len(),
            config.initial_cluster.len()
        )));
    }
    for urls in config.initial_cluster.values() {
        if !info
            .members
            .iter()
            .any(|(_, member_urls)| sorted(member_urls) == sorted(urls))
        {
            return Err(StartError::Join(format!(
                "unmatched member while checking PeerURLs: {urls:?} is not a member of cluster {:x}",
                info.cluster_id
            )));
        }
    }
    let mine = sorted(&config.initial_cluster[&config.name]);
    let Some((member_id, _)) = info.members.iter().find(|(_, urls)| sorted(urls) == mine) else {
        return Err(StartError::Join(format!(
            "this member's peer URLs {mine:?} are not in cluster {:x}; run `member add` first",
            info.cluster_id
        )));
    };
    if info.removed.contains(member_id) {
        return Err(StartError::Join(
            "this member has been permanently removed from the cluster".into(),
        ));
    }
    // A started member had a data dir; an empty one now means its data was lost. Coming back
    // under the same ID would let it vote with a log it no longer has, and undo committed writes.
    if info.started.contains(member_id) {
        return Err(StartError::DataLost {
            dir: config.data_dir.display().to_string(),
            member_id: *member_id,
            cluster_id: info.cluster_id,
        });
    }
    Ok(data_dir::MemberIdentity {
        name: config.name.clone(),
        member_id: *member_id,
        cluster_id: info.cluster_id,
        token: config.token.clone(),
    })
}
