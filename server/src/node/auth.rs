//! Auth on this member (etcd's Auth service, and the credentials of every request): who a request
//! comes from, password checks that issue tokens, and the management of users and roles, which
//! goes through the log like any write. Passwords are hashed here, before proposing: the log and
//! the snapshots only ever hold bcrypt hashes.

use super::leader::LeaderCall;
use super::{Node, NodeError};
use crate::auth::{self, AuthError, Tokens};
use crate::pb::authpb::Permission;
use crate::pb::cairnpb::{Authenticate, Caller};
use crate::pb::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest,
};

/// How often a password check is repeated when users changed while it ran.
const AUTHENTICATE_ATTEMPTS: usize = 3;

/// A change to auth that goes through the log.
pub enum AuthChange {
    Enable,
    Disable,
    UserAdd(AuthUserAddRequest),
    UserDelete(AuthUserDeleteRequest),
    UserChangePassword(AuthUserChangePasswordRequest),
    UserGrantRole(AuthUserGrantRoleRequest),
    UserRevokeRole(AuthUserRevokeRoleRequest),
    RoleAdd(AuthRoleAddRequest),
    RoleDelete(AuthRoleDeleteRequest),
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

impl Node {
    /// Who a request comes from: the user of its token, else (with `--client-cert-auth`) the
    /// common name of its verified client certificate, else nobody. Credentials count only while
    /// auth is on, and carry the auth store's revision of the moment.
    pub async fn caller(
        &self,
        token: Option<&str>,
        certificate_user: Option<&str>,
    ) -> Result<Caller, NodeError> {
        let (enabled, revision) = self.auth_status();
        if !enabled {
            return Ok(Caller::default());
        }
        let user = match token {
            Some(token) => Some(self.token_user(token).await?),
            None => certificate_user.map(str::to_owned),
        };
        Ok(match user {
            Some(user) => Caller {
                user,
                auth_revision: revision,
                internal: false,
            },
            None => Caller::default(),
        })
    }

    async fn token_user(&self, token: &str) -> Result<String, NodeError> {
        if let Some(user) = self.tokens.user(token) {
            return Ok(user);
        }
        // A token issued a moment ago through another member may not be applied here yet.
        self.linearizable_barrier().await?;
        self.tokens
            .user(token)
            .ok_or(NodeError::Auth(AuthError::InvalidAuthToken))
    }

    /// Refuses a caller who is not root once auth is on (membership and maintenance calls).
    pub fn authorize_admin(&self, caller: &Caller) -> Result<(), NodeError> {
        Ok(self.raft.read(|m| m.app.auth.check_admin(caller))?)
    }

    /// Checks a password and issues a simple token that every member will know.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<String, NodeError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (enabled, revision, hash) = self.raft.read(|m| {
                let auth = &m.app.auth;
                let hash = auth
                    .user(name)
                    .filter(|u| !u.no_password)
                    .map(|u| u.password_hash.clone());
                (auth.enabled, auth.revision, hash)
            });
            if !enabled {
                return Err(AuthError::AuthNotEnabled.into());
            }
            let hash = hash.ok_or(AuthError::AuthFailed)?;
            let password = password.to_owned();
            let matches = tokio::task::spawn_blocking(move || auth::password_matches(&password, &hash))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))?;
            if !matches {
                tracing::info!(user = %name, "authentication failed: wrong password");
                return Err(AuthError::AuthFailed.into());
            }
            let token = Tokens::generate();
            let call = LeaderCall::Authenticate(Authenticate {
                name: name.to_owned(),
                token: token.clone(),
            });
            // Applied only if users did not change since the check (the caller's revision).
            let checked = Caller {
                user: name.to_owned(),
                auth_revision: revision,
                internal: false,
            };
            match self.write(call, &checked).await {
                Ok(_) => return Ok(token),
                Err(NodeError::Auth(AuthError::AuthOldRevision)) if attempts < AUTHENTICATE_ATTEMPTS => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Whether auth is on, and the auth store's revision.
    pub fn auth_status(&self) -> (bool, u64) {
        self.raft.read(|m| (m.app.auth.enabled, m.app.auth.revision))
    }

    /// Commits a change to auth; only root may make one once auth is on (checked at apply).
    pub async fn auth_change(&self, caller: &Caller, change: AuthChange) -> Result<i64, NodeError> {
        let cost = self.config.auth.bcrypt_cost;
        let call = match change {
            AuthChange::Enable => LeaderCall::AuthEnable(AuthEnableRequest {}),
            AuthChange::Disable => LeaderCall::AuthDisable(AuthDisableRequest {}),
            AuthChange::UserAdd(mut request) => {
                if request.name.is_empty() {
                    return Err(AuthError::UserEmpty.into());
                }
                if !request.options.is_some_and(|o| o.no_password) {
                    request.hashed_password =
                        hashed(&request.password, &request.hashed_password, cost).await?;
                }
                request.password.clear();
                LeaderCall::UserAdd(request)
            }
            AuthChange::UserChangePassword(mut request) => {
                request.hashed_password = hashed(&request.password, &request.hashed_password, cost).await?;
                request.password.clear();
                LeaderCall::UserChangePassword(request)
            }
            AuthChange::UserDelete(request) => LeaderCall::UserDelete(request),
            AuthChange::UserGrantRole(request) => LeaderCall::UserGrantRole(request),
            AuthChange::UserRevokeRole(request) => LeaderCall::UserRevokeRole(request),
            AuthChange::RoleAdd(request) => LeaderCall::RoleAdd(request),
            AuthChange::RoleDelete(request) => LeaderCall::RoleDelete(request),
            AuthChange::RoleGrantPermission(request) => LeaderCall::RoleGrantPermission(request),
            AuthChange::RoleRevokePermission(request) => LeaderCall::RoleRevokePermission(request),
        };
        Ok(self.write(call, caller).await?.revision)
    }

    /// A user's roles: root may see anyone's, a user their own.
    pub async fn user_get(&self, caller: &Caller, name: &str) -> Result<Vec<String>, NodeError> {
        self.linearizable_barrier().await?;
        self.raft.read(|m| {
            let auth = &m.app.auth;
            if caller.user != name {
                auth.check_admin(caller)?;
            }
            let user = auth.user(name).ok_or(AuthError::UserNotFound)?;
            Ok(user.roles.iter().cloned().collect())
        })
    }

    /// A role's permissions: root may see any role's, a user those of its own roles.
    pub async fn role_get(&self, caller: &Caller, role: &str) -> Result<Vec<Permission>, NodeError> {
        self.linearizable_barrier().await?;
        self.raft.read(|m| {
            let auth = &m.app.auth;
            if let Err(error) = auth.check_admin(caller)
                && !auth.has_role(&caller.user, role)
            {
                return Err(error.into());
            }
            Ok(auth.role(role)?)
        })
    }

    pub async fn user_list(&self, caller: &Caller) -> Result<Vec<String>, NodeError> {
        self.linearizable_barrier().await?;
        self.raft.read(|m| {
            m.app.auth.check_admin(caller)?;
            Ok(m.app.auth.users())
        })
    }

    pub async fn role_list(&self, caller: &Caller) -> Result<Vec<String>, NodeError> {
        self.linearizable_barrier().await?;
        self.raft.read(|m| {
            m.app.auth.check_admin(caller)?;
            Ok(m.app.auth.roles())
        })
    }
}

/// bcrypt is slow by design: it runs on a blocking thread.
async fn hashed(password: &str, hashed_by_client: &str, cost: u32) -> Result<String, NodeError> {
    let (password, given) = (password.to_owned(), hashed_by_client.to_owned());
    tokio::task::spawn_blocking(move || auth::password_hash(&password, &given, cost))
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
        .map_err(|e| match e {
            auth::PasswordError::InvalidHash => NodeError::InvalidRequest(e.to_string()),
            auth::PasswordError::Hash(message) => NodeError::Internal(message),
        })
}
