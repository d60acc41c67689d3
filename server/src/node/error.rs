//! Errors of node operations, worded exactly as etcd words them (clients match on the text), and
//! their form on the peer plane when a forwarded request fails on the leader.

use crate::auth::AuthError;
use crate::mvcc::MvccError;
use crate::pb::peerpb::ForwardError;
use crate::pb::peerpb::forward_error::Kind;
use crate::state::Refusal;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A forwarded write whose leader failed before answering: it may or may not have committed.
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A request a client may not make as it stands; the text is etcd's for the same refusal.
    #[error("{0}")]
    InvalidRequest(String),
    /// A peer forwarded something only this member itself may propose.
    #[error("etcdserver: request not forwardable: {0}")]
    NotForwardable(String),
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl NodeError {
    pub fn invalid(message: &str) -> NodeError {
        NodeError::InvalidRequest(message.to_owned())
    }

    /// The error of an entry the state machine refused with `code`.
    pub fn refused(code: u32) -> NodeError {
        match Refusal::from_code(code) {
            Some(Refusal::Mvcc(error)) => NodeError::Mvcc(error),
            Some(Refusal::Auth(error)) => NodeError::Auth(error),
            None => NodeError::Internal(format!("unknown apply error code {code}")),
        }
    }

    /// The error as the peer plane carries it back to the member that forwarded the request.
    pub fn to_wire(&self) -> ForwardError {
        let (kind, code, message) = match self {
            NodeError::NoLeader => (Kind::NoLeader, 0, String::new()),
            NodeError::LeaderChanged => (Kind::LeaderChanged, 0, String::new()),
            NodeError::Timeout => (Kind::Timeout, 0, String::new()),
            NodeError::TimeoutDueToLeaderFail => (Kind::TimeoutDueToLeaderFail, 0, String::new()),
            NodeError::Stopped => (Kind::Stopped, 0, String::new()),
            NodeError::NotLeader => (Kind::NotLeader, 0, String::new()),
            NodeError::Mvcc(error) => (Kind::Store, error.code(), String::new()),
            NodeError::Auth(error) => (Kind::Store, error.code(), String::new()),
            NodeError::InvalidRequest(message) => (Kind::InvalidRequest, 0, message.clone()),
            NodeError::NotForwardable(message) => (Kind::NotForwardable, 0, message.clone()),
            NodeError::MemberExists => (Kind::MemberExists, 0, String::new()),
            NodeError::PeerUrlExists => (Kind::PeerUrlExists, 0, String::new()),
            NodeError::MemberBadUrls => (Kind::MemberBadUrls, 0, String::new()),
            NodeError::NotEnoughStarted => (Kind::NotEnoughStarted, 0, String::new()),
            NodeError::MemberNotFound => (Kind::MemberNotFound, 0, String::new()),
            NodeError::MemberNotLearner => (Kind::MemberNotLearner, 0, String::new()),
            NodeError::LearnerNotReady => (Kind::LearnerNotReady, 0, String::new()),
            NodeError::TooManyLearners => (Kind::TooManyLearners, 0, String::new()),
            NodeError::BadLeaderTransferee => (Kind::BadLeaderTransferee, 0, String::new()),
            NodeError::NotSupportedForLearner => (Kind::NotSupportedForLearner, 0, String::new()),
            NodeError::Internal(message) => (Kind::Internal, 0, message.clone()),
        };
        ForwardError {
            kind: kind as i32,
            code,
            message,
        }
    }

    /// The error a peer reported, as this member reports it to its client.
    pub fn from_wire(error: &ForwardError) -> NodeError {
        let message = error.message.clone();
        match Kind::try_from(error.kind).unwrap_or(Kind::Unknown) {
            Kind::NoLeader => NodeError::NoLeader,
            Kind::LeaderChanged => NodeError::LeaderChanged,
            Kind::Timeout => NodeError::Timeout,
            Kind::TimeoutDueToLeaderFail => NodeError::TimeoutDueToLeaderFail,
            Kind::Stopped => NodeError::Stopped,
            Kind::NotLeader => NodeError::NotLeader,
            Kind::Store => NodeError::refused(error.code),
            Kind::InvalidRequest => NodeError::InvalidRequest(message),
            Kind::NotForwardable => NodeError::NotForwardable(message),
            Kind::MemberExists => NodeError::MemberExists,
            Kind::PeerUrlExists => NodeError::PeerUrlExists,
            Kind::MemberBadUrls => NodeError::MemberBadUrls,
            Kind::NotEnoughStarted => NodeError::NotEnoughStarted,
            Kind::MemberNotFound => NodeError::MemberNotFound,
            Kind::MemberNotLearner => NodeError::MemberNotLearner,
            Kind::LearnerNotReady => NodeError::LearnerNotReady,
            Kind::TooManyLearners => NodeError::TooManyLearners,
            Kind::BadLeaderTransferee => NodeError::BadLeaderTransferee,
            Kind::NotSupportedForLearner => NodeError::NotSupportedForLearner,
            Kind::Internal => NodeError::Internal(message),
            Kind::Unknown => NodeError::Internal(format!("leader reported an unknown error: {message}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_crosses_the_peer_plane_unchanged() {
        let errors = [
            NodeError::NoLeader,
            NodeError::LeaderChanged,
            NodeError::Timeout,
            NodeError::TimeoutDueToLeaderFail,
            NodeError::Stopped,
            NodeError::NotLeader,
            NodeError::Mvcc(MvccError::NoSpace),
            NodeError::Mvcc(MvccError::Compacted),
            NodeError::Auth(AuthError::PermissionDenied),
            NodeError::Auth(AuthError::AuthOldRevision),
            NodeError::invalid("etcdserver: key is not provided"),
            NodeError::NotForwardable("member attributes of another member".into()),
            NodeError::MemberExists,
            NodeError::PeerUrlExists,
            NodeError::MemberBadUrls,
            NodeError::NotEnoughStarted,
            NodeError::MemberNotFound,
            NodeError::MemberNotLearner,
            NodeError::LearnerNotReady,
            NodeError::TooManyLearners,
            NodeError::BadLeaderTransferee,
            NodeError::NotSupportedForLearner,
            NodeError::Internal("disk on fire".into()),
        ];
        for error in errors {
            assert_eq!(NodeError::from_wire(&error.to_wire()), error);
        }
        let unknown = ForwardError {
            kind: 999,
            code: 0,
            message: "from the future".into(),
        };
        assert_eq!(
            NodeError::from_wire(&unknown).to_string(),
            "etcdserver: leader reported an unknown error: from the future"
        );
    }
}
