//! The node (etcd's EtcdServer): the one place where storage, the Raft network and Raft meet. This
//! file wires them together and runs the member's background work; its rooms serve requests —
//! `kv`, `lessor`, `members`, `maintenance`, `auth` — through `leader`, the one way to the leader,
//! while `raft_node` drives Raft. Services call named methods here, on behalf of the `Caller` that
//! `auth` established for the request, and never see the state machine.

mod auth;
mod compactor;
mod error;
mod identity;
mod kv;
mod leader;
mod lessor;
mod maintenance;
mod members;
mod observer;
mod raft_node;
mod snapshot;
mod validate;
mod watches;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use auth::AuthChange;
pub use error::NodeError;
pub use identity::StartError;
pub use lessor::Lessor;
pub use validate::Limits;

use crate::PeerNode;
use crate::bootstrap::identity as member_identity;
use crate::config::{ClusterState, Config};
use crate::metrics::WriteStage;
use crate::network::raft::{NetworkFactory, PeerAddresses};
use crate::network::{ClusterInfo, PeerClient, protocol};
use crate::pb::cairnpb::{Caller, MemberAttributes};
use crate::pb::etcdserverpb::ResponseHeader;
use crate::store::{LogStore, SharedMachine, StateMachine, force, snap_dir, wal_dir};
use crate::watch::Feed;
use leader::LeaderCall;
use raft_node::{Raft, RaftNode};

/// The etcd API version Cairn speaks, reported by Status and /version.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// How long a client request may wait for a leader, a commit or a forwarded answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// openraft's election timer bounds for etcd's `--election-timeout` E. openraft holds a follower's
/// vote for a leader lease of `max` after the last heartbeat and then waits a random timeout in
/// `[min, max)`, so a follower campaigns after `[max + min, 2 max)` of silence. With `[E/4, 3E/4)`
/// that is `[E, 1.5E)`, as soon as etcd's followers campaign (`[E, 2E)`), and the lease, during
/// which followers refuse to vote for anyone else, is 3E/4.
fn election_timer(election_timeout: Duration) -> (u64, u64) {
    let election = election_timeout.as_millis() as u64;
    (election / 4, election * 3 / 4)
}

/// Everything a member needs to serve its clients and peers.
pub struct Node {
    pub config: Config,
    pub member_id: u64,
    pub cluster_id: u64,
    raft: RaftNode,
    peers: PeerClient,
    lessor: Lessor,
    limits: Limits,
    /// Set to a reason when this member must stop (removed from the cluster, Raft failed).
    fatal: watch::Sender<Option<String>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Applied revisions, as watchers receive them.
    feed: Arc<Feed>,
    /// The simple tokens this member knows, as the log issued them.
    tokens: Arc<crate::auth::Tokens>,
    /// The peer URLs Raft dials, following the membership.
    peer_addresses: PeerAddresses,
}

impl Node {
    /// Resolves identity, opens storage and starts Raft. Listeners are started by the caller, then
    /// `bootstrap` initializes a new cluster.
    pub async fn open(
        config: Config,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Node>, StartError> {
        let peer_tls = identity::peer_tls(&config)?;
        let identity = identity::resolve_identity(&config, peer_tls.clone()).await?;
        let peers = PeerClient::new(
            identity.member_id,
            identity.cluster_id,
            protocol::message_limit(config.max_request_bytes),
            peer_tls,
        );
        let fsync_metrics = metrics.clone();
        let log = LogStore::open(
            &wal_dir(&config.data_dir),
            Box::new(move |d| fsync_metrics.observe_wal_fsync(d)),
            metrics.stage_observer(WriteStage::WalAppend),
        )
        .await?;
        let feed = Arc::new(Feed::default());
        let tokens = Arc::new(crate::auth::Tokens::new(config.auth.token_ttl));
        let observer = observer::Applied {
            feed: feed.clone(),
            tokens: tokens.clone(),
            apply_time: metrics.stage_observer(WriteStage::Apply),
        };
        let state_machine = StateMachine::open(&snap_dir(&config.data_dir), Arc::new(observer))
            .map_err(StartError::StateMachine)?;
        let machine = state_machine.shared();
        if config.force_new_cluster {
            force_new_cluster(&log, &machine, identity.member_id).await?;
        }
        let (election_timeout_min, election_timeout_max) = election_timer(config.election_timeout);
        let raft_config = openraft::Config {
            cluster_name: format!("cairn-{:x}", identity.cluster_id),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min,
            election_timeout_max,
            // A member that was cut off asks first whether it could win, so coming back never
            // raises the term under a healthy leader (etcd's PreVote).
            enable_pre_vote: Some(true),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            // Keep some log after a snapshot so briefly lagging members catch up without one.
            max_in_snapshot_log_to_keep: config.snapshot_count.min(5_000),
            install_snapshot_timeout: 60_000,
            // A member that lost the end of its log (a disk that dropped synced writes, or a flipped
            // bit in its last record's length, which replay takes for a write cut short) is caught
            // up again from where it really is. Without this the leader would keep believing the
            // member holds what it lost: replication to it would stall, and a debug build's leader
            // panics (the robustness suite's first disk faults hit both).
            allow_log_reversion: Some(true),
            // A restarted leader wins an election again before it leads, as in etcd. Restored at
            // once (openraft's default) it would serve read indexes from the commit point it last
            // wrote, which is not synced and can be behind, while its state machine (rebuilt from
            // the log) starts from that point: reads would miss writes it had acknowledged before
            // the restart. The robustness suite's power loss of a leader showed such reads.
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| StartError::Raft(e.to_string()))?,
        );
        let peer_addresses = PeerAddresses::default();
        let network = NetworkFactory {
            client: peers.clone(),
            addresses: peer_addresses.clone(),
            observe_append: metrics.stage_observer(WriteStage::PeerAppend),
        };
        let raft = Raft::new(identity.member_id, raft_config, network, log, state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (fatal, _) = watch::channel(None);
        let node = Arc::new(Node {
            lessor: Lessor::new(config.election_timeout),
            limits: Limits {
                max_request_bytes: config.max_request_bytes,
                max_txn_ops: config.max_txn_ops,
            },
            config,
            member_id: identity.member_id,
            cluster_id: identity.cluster_id,
            raft: RaftNode::new(raft, machine, REQUEST_TIMEOUT),
            peers,
            fatal,
            metrics,
            feed,
            tokens,
            peer_addresses,
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
        let raft = self.raft.raft();
        let initialized = raft
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
                        member_identity::member_id(urls, &self.config.token, None),
                        PeerNode {
                            peer_urls: urls.clone(),
                        },
                    )
                })
                .collect();
            if let Err(error) = raft.initialize(members).await {
                // Another initial member may have initialized us first through replication.
                tracing::info!(%error, "cluster initialization skipped");
            }
        }
        tokio::spawn(self.clone().publish_attributes());
        tokio::spawn(self.clone().watch_removal());
        tokio::spawn(self.clone().watch_leader_changes());
        tokio::spawn(self.clone().follow_peer_urls());
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

    /// Stops Raft (a leader hands over first: `hand_over_leadership`).
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.raft().shutdown().await {
            tracing::debug!(%error, "raft shutdown");
        }
    }

    /// Returns once Raft has shut down here: the member is stopping, and long-lived peer streams
    /// end rather than hold the peer port open through its grace period.
    pub async fn raft_stopped(&self) {
        let wait = self.raft.raft().wait(None);
        // An error means the metrics are gone with Raft: stopped all the same.
        let _ = wait
            .state(openraft::ServerState::Shutdown, "member stopping")
            .await;
    }

    /// The Raft instance, for the peer service's Raft RPCs only.
    pub fn raft(&self) -> &Raft {
        self.raft.raft()
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    pub fn is_learner(&self) -> bool {
        self.raft.is_learner()
    }

    pub fn revision(&self) -> i64 {
        self.raft.read(|m| m.app.mvcc.revision())
    }

    /// The header every response carries.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.term(),
        }
    }

    /// Waits until this member's state reflects every write committed before the call (ReadIndex:
    /// the leader confirms its leadership with a quorum; followers ask the leader for the index).
    pub async fn linearizable_barrier(&self) -> Result<(), NodeError> {
        if crate::planted::active(crate::planted::Bug::StaleReads) {
            return Ok(());
        }
        let call = LeaderCall::ReadIndex(crate::pb::peerpb::ReadIndexRequest {});
        let index = self.on_leader(call, &Caller::internal()).await?.read_index()?;
        self.raft.applied(index).await
    }

    /// Whether `member` was removed from the cluster for good. Asked on every peer call: a member of
    /// the current membership is answered from Raft's metrics, without waiting for the state
    /// machine's lock (which apply holds), since a removed ID never comes back.
    pub fn is_removed(&self, member: u64) -> bool {
        !self.raft.is_member(member) && self.raft.read(|m| m.app.removed.contains(&member))
    }

    /// Who is in the cluster, for members joining it.
    pub fn cluster_info(&self) -> ClusterInfo {
        let metrics = self.raft.metrics();
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.peer_urls.clone()))
            .collect();
        let (removed, started) = self.raft.read(|m| {
            let removed = m.app.removed.iter().copied().collect();
            let started = m
                .app
                .members
                .iter()
                .filter(|(_, attributes)| !attributes.name.is_empty())
                .map(|(id, _)| *id)
                .collect();
            (removed, started)
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
            let current = self.raft.read(|m| m.app.members.get(&self.member_id).cloned());
            if current.is_some_and(|c| c.name == attributes.name && c.client_urls == attributes.client_urls) {
                return;
            }
            let call = LeaderCall::PublishAttributes(attributes.clone());
            let published = self.on_leader(call, &Caller::internal()).await;
            if let Err(error) = published.and_then(|answer| answer.applied()) {
                tracing::debug!(%error, "publishing member attributes; will retry");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether a peer says this member was removed. A removed member is cut off before the removal
    /// record reaches it, so it has to ask (as etcd members learn it from their peers).
    async fn removed_according_to_peers(&self) -> bool {
        let metrics = self.raft.metrics();
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
            if let Ok(info) = self
                .peers
                .cluster_info(&url, Duration::from_secs(1), &self.config.advertise_peer_urls)
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
        use openraft::async_runtime::WatchReceiver;
        let mut metrics = self.raft.raft().metrics();
        let mut last_asked = Instant::now();
        loop {
            let ask_peers = last_asked.elapsed() >= Duration::from_secs(1);
            if ask_peers {
                last_asked = Instant::now();
            }
            if self.is_removed(self.member_id)
                || self.peers.told_removed()
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

    /// Keeps the URLs Raft dials its peers at the membership's, as soon as a change (a
    /// MemberUpdate) is appended.
    async fn follow_peer_urls(self: Arc<Self>) {
        use openraft::async_runtime::WatchReceiver;
        let mut metrics = self.raft.raft().metrics();
        let mut followed = None;
        loop {
            {
                let current = metrics.borrow_and_update();
                let membership = &current.membership_config;
                // Metrics change with every entry; the membership only now and then.
                if followed != Some(*membership.log_id()) {
                    followed = Some(*membership.log_id());
                    let urls = membership
                        .membership()
                        .nodes()
                        .filter_map(|(id, node)| Some((*id, node.peer_urls.first()?.clone())));
                    self.peer_addresses.replace(urls);
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    async fn watch_leader_changes(self: Arc<Self>) {
        use openraft::async_runtime::WatchReceiver;
        let mut metrics = self.raft.raft().metrics();
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

/// Makes this member its cluster's only voter before Raft starts (`--force-new-cluster`): the
/// log gets a vote in a new term and a membership entry of this member alone after everything
/// it holds, so it elects itself and commits all of it.
async fn force_new_cluster(log: &LogStore, machine: &SharedMachine, member: u64) -> Result<(), StartError> {
    let (last_in_log, vote, logged_membership) = log.tail();
    let (applied, stored) = {
        let machine = machine.read().expect("state machine lock poisoned");
        (machine.last_applied, machine.last_membership.clone())
    };
    let membership = logged_membership.unwrap_or_else(|| stored.membership().clone());
    let tail = force::LogTail {
        last_log_id: last_in_log.or(applied),
        vote,
        membership: &membership,
    };
    match force::sole_member(member, &tail)? {
        None => tracing::info!("--force-new-cluster: this member is its cluster's only member already"),
        Some((vote, entry)) => {
            let dropped: Vec<String> = membership
                .nodes()
                .filter(|(id, _)| **id != member)
                .map(|(id, _)| format!("{id:x}"))
                .collect();
            tracing::warn!(
                term = vote.leader_id().term,
                index = entry.log_id.index,
                dropped = %dropped.join(","),
                "--force-new-cluster: this member is now its cluster's only member, with all its data; \
                 the others must start over empty. Remove the flag once it runs."
            );
            log.force(vote, entry).await.map_err(StartError::ForceWrite)?;
        }
    }
    Ok(())
}
