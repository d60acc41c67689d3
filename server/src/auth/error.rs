//! Refusals of the auth store, worded exactly as etcd words them (clients match on the text), with
//! the stable codes under which the log's answers carry them.

/// Why an auth request or a permission check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: authentication failed, password was given for no password user")]
    NoPasswordUser,
}

impl AuthError {
    const ALL: [AuthError; 18] = [
        AuthError::RootUserNotExist,
        AuthError::RootRoleNotExist,
        AuthError::UserAlreadyExist,
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::RoleAlreadyExist,
        AuthError::RoleNotFound,
        AuthError::RoleEmpty,
        AuthError::AuthFailed,
        AuthError::PermissionDenied,
        AuthError::RoleNotGranted,
        AuthError::PermissionNotGranted,
        AuthError::AuthNotEnabled,
        AuthError::InvalidAuthToken,
        AuthError::InvalidAuthMgmt,
        AuthError::AuthOldRevision,
        AuthError::PermissionNotGiven,
        AuthError::NoPasswordUser,
    ];

    /// The stable code stored in the log's answers, beside the store's own (1–99); never
    /// renumber a variant.
    pub fn code(self) -> u32 {
        100 + match self {
            AuthError::RootUserNotExist => 1,
            AuthError::RootRoleNotExist => 2,
            AuthError::UserAlreadyExist => 3,
            AuthError::UserEmpty => 4,
            AuthError::UserNotFound => 5,
            AuthError::RoleAlreadyExist => 6,
            AuthError::RoleNotFound => 7,
            AuthError::RoleEmpty => 8,
            AuthError::AuthFailed => 9,
            AuthError::PermissionDenied => 10,
            AuthError::RoleNotGranted => 11,
            AuthError::PermissionNotGranted => 12,
            AuthError::AuthNotEnabled => 13,
            AuthError::InvalidAuthToken => 14,
            AuthError::InvalidAuthMgmt => 15,
            AuthError::AuthOldRevision => 16,
            AuthError::PermissionNotGiven => 17,
            AuthError::NoPasswordUser => 18,
        }
    }

    pub fn from_code(code: u32) -> Option<AuthError> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_stay_clear_of_the_stores() {
        for error in AuthError::ALL {
            assert_eq!(AuthError::from_code(error.code()), Some(error));
            assert_eq!(crate::mvcc::MvccError::from_code(error.code()), None);
        }
        let mut codes: Vec<u32> = AuthError::ALL.iter().map(|e| e.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), AuthError::ALL.len());
    }
}
