//! The one mapping from Cairn's errors to gRPC statuses, with etcd's codes and exact messages.

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::mvcc::MvccError;
use crate::node::NodeError;
use crate::recipes::RecipeError;

pub fn mvcc_status(error: MvccError) -> Status {
    let code = match error {
        MvccError::KeyNotFound => Code::InvalidArgument,
        MvccError::Compacted | MvccError::FutureRevision | MvccError::LeaseTtlTooLarge => Code::OutOfRange,
        MvccError::LeaseNotFound => Code::NotFound,
        MvccError::LeaseExists => Code::FailedPrecondition,
        MvccError::NoSpace => Code::ResourceExhausted,
        MvccError::Corrupt => Code::DataLoss,
    };
    Status::new(code, error.to_string())
}

pub fn auth_status(error: AuthError) -> Status {
    let code = match error {
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::InvalidAuthMgmt
        | AuthError::AuthOldRevision
        | AuthError::PermissionNotGiven
        | AuthError::NoPasswordUser => Code::InvalidArgument,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
    };
    Status::new(code, error.to_string())
}

pub fn node_status(error: NodeError) -> Status {
    let code = match &error {
        NodeError::Mvcc(inner) => return mvcc_status(*inner),
        NodeError::Auth(inner) => return auth_status(*inner),
        NodeError::NoLeader
        | NodeError::LeaderChanged
        | NodeError::Timeout
        | NodeError::TimeoutDueToLeaderFail
        | NodeError::Stopped => Code::Unavailable,
        NodeError::NotLeader
        | NodeError::MemberExists
        | NodeError::PeerUrlExists
        | NodeError::NotEnoughStarted
        | NodeError::MemberNotLearner
        | NodeError::LearnerNotReady
        | NodeError::TooManyLearners
        | NodeError::BadLeaderTransferee
        | NodeError::NotSupportedForLearner => Code::FailedPrecondition,
        NodeError::InvalidRequest(_) | NodeError::MemberBadUrls => Code::InvalidArgument,
        NodeError::NotForwardable(_) => Code::PermissionDenied,
        NodeError::MemberNotFound => Code::NotFound,
        NodeError::Internal(_) => Code::Unknown,
    };
    Status::new(code, error.to_string())
}

/// Recipe refusals are plain errors in etcd (gRPC code Unknown, etcd's text); store and node
/// errors keep their own mapping.
pub fn recipe_status(error: RecipeError) -> Status {
    match error {
        RecipeError::Node(error) => node_status(error),
        RecipeError::Compacted => mvcc_status(MvccError::Compacted),
        other => Status::new(Code::Unknown, other.to_string()),
    }
}
