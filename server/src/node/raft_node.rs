//! Driving Raft (etcd's raftNode): the openraft instance, who leads, proposing and confirming
//! reads on this member, and the shared state machine that applied entries land in. Knows
//! nothing of clients or of forwarding.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{RaftMetrics, ReadPolicy, ServerState};

use super::NodeError;
use crate::TypeConfig;
use crate::pb::cairnpb::{RaftRequest, RaftResponse};
use crate::store::{Machine, SharedMachine, StateMachine};

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

pub struct RaftNode {
    raft: Raft,
    machine: SharedMachine,
    /// How long a proposal or read may wait for Raft.
    timeout: Duration,
    /// Proposals in flight hold this shared; closing proposals takes it exclusively, which waits
    /// until every admitted proposal has its answer.
    in_flight: tokio::sync::RwLock<()>,
    /// Set once this member stops taking proposals (it is handing leadership over to stop).
    closed: AtomicBool,
}

impl RaftNode {
    pub fn new(raft: Raft, machine: SharedMachine, timeout: Duration) -> RaftNode {
        RaftNode {
            raft,
            machine,
            timeout,
            in_flight: tokio::sync::RwLock::new(()),
            closed: AtomicBool::new(false),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Reads one figure of Raft's metrics without copying them (the hot paths ask on every request).
    fn peek<T>(&self, read: impl FnOnce(&RaftMetrics<TypeConfig>) -> T) -> T {
        read(&self.raft.metrics().borrow_watched())
    }

    pub fn leader_id(&self) -> Option<u64> {
        self.peek(|m| m.current_leader)
    }

    pub fn term(&self) -> u64 {
        self.peek(|m| m.current_term)
    }

    pub fn is_leader(&self) -> bool {
        self.peek(|m| m.state == ServerState::Leader)
    }

    pub fn is_learner(&self) -> bool {
        self.peek(|m| m.state == ServerState::Learner)
    }

    /// Reads the applied state. Callers keep the closure short: apply waits for it.
    pub fn read<T>(&self, read: impl FnOnce(&Machine) -> T) -> T {
        read(&self.machine.read().expect("state machine lock poisoned"))
    }

    /// Whether `member` is in the current membership, voter or learner.
    pub fn is_member(&self, member: u64) -> bool {
        self.peek(|m| m.membership_config.membership().get_node(&member).is_some())
    }

    /// The first peer URL of `member` in the current membership.
    pub fn peer_url_of(&self, member: u64) -> Option<String> {
        self.peek(|m| {
            m.membership_config
                .membership()
                .get_node(&member)
                .and_then(|n| n.peer_urls.first().cloned())
        })
    }

    /// Commits `request` on this member, which must lead; `NotLeader` otherwise.
    pub async fn propose(&self, request: RaftRequest) -> Result<RaftResponse, NodeError> {
        use openraft::error::ClientWriteError;
        let _in_flight = self.in_flight.read().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(NodeError::NotLeader);
        }
        match tokio::time::timeout(self.timeout, self.raft.client_write(request)).await {
            Err(_) => Err(NodeError::Timeout),
            Ok(Ok(written)) => Ok(written.data),
            Ok(Err(error)) => match error.into_api_error() {
                Some(ClientWriteError::ForwardToLeader(_)) => Err(NodeError::NotLeader),
                Some(_) => Err(NodeError::LeaderChanged),
                None => Err(NodeError::Stopped),
            },
        }
    }

    /// Stops taking proposals, and waits at most `within` for those in flight to be answered. A
    /// leader about to stop calls this before handing over: an entry proposed here but committed
    /// under the next leader is answered only when this member applies it, and a member that
    /// stopped first would leave its caller (often a forwarding member) not knowing the outcome.
    /// Proposals refused from now on get `NotLeader`, which forwarding members retry elsewhere.
    pub async fn close_proposals(&self, within: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        tokio::time::timeout(within, self.in_flight.write()).await.is_ok()
    }

    /// The leader's read index: leadership confirmed with a quorum, and applied here.
    pub async fn read_index(&self) -> Result<u64, NodeError> {
        match tokio::time::timeout(self.timeout, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Err(_) => Err(NodeError::Timeout),
            Ok(Ok(read)) => Ok(read.index()),
            Ok(Err(error)) => match error.into_api_error() {
                Some(openraft::error::LinearizableReadError::ForwardToLeader(_)) => Err(NodeError::NotLeader),
                Some(_) => Err(NodeError::Timeout),
                None => Err(NodeError::Stopped),
            },
        }
    }

    /// Asks `target` to take over leadership, then waits at most `within` until `done` holds.
    pub async fn transfer_leadership(
        &self,
        target: u64,
        within: Duration,
        done: impl Fn(&RaftMetrics<TypeConfig>) -> bool + Send,
    ) -> Result<(), NodeError> {
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|_| NodeError::Stopped)?;
        self.raft
            .wait(Some(within))
            .metrics(done, "leader transfer")
            .await
            .map(|_| ())
            .map_err(|_| NodeError::Timeout)
    }

    /// Waits until this member has applied the log through `index`.
    pub async fn applied(&self, index: u64) -> Result<(), NodeError> {
        self.raft
            .wait(Some(self.timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| NodeError::Timeout)
    }
}
