//! The replicated application state: the MVCC store, member attributes, alarms and the auth
//! store. `apply` turns one log entry into one response, after checking that the entry's caller may
//! make it (`authorize`); every member applies the same entries and reaches the same state.

mod authorize;

pub use authorize::txn_permitted;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, AuthStore};
use crate::mvcc::{Mvcc, MvccError};
use crate::pb::cairnpb::{Caller, RaftRequest, RaftResponse, raft_request::Request, raft_response::Response};
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmResponse, AlarmType, CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse,
    alarm_request::AlarmAction,
};

/// What the cluster knows of a member beyond its Raft role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppState {
    pub mvcc: Mvcc,
    pub members: BTreeMap<u64, MemberAttributes>,
    /// IDs of members removed from the cluster; they may never rejoin.
    pub removed: BTreeSet<u64>,
    /// Active alarms as (member ID, alarm type).
    pub alarms: BTreeSet<(u64, i32)>,
    /// Users and roles. Encoded after everything else by the state machine (see `Machine`), so
    /// states written before auth existed still decode.
    #[serde(skip)]
    pub auth: AuthStore,
}

/// Why an entry was refused at apply: the store's reasons, or the caller's lack of rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl Refusal {
    /// The code a refusal has in the log's answers; the two kinds' codes never overlap.
    pub fn code(self) -> u32 {
        match self {
            Refusal::Mvcc(error) => error.code(),
            Refusal::Auth(error) => error.code(),
        }
    }

    pub fn from_code(code: u32) -> Option<Refusal> {
        MvccError::from_code(code)
            .map(Refusal::Mvcc)
            .or_else(|| AuthError::from_code(code).map(Refusal::Auth))
    }
}

fn refused(error: Refusal, revision: i64) -> RaftResponse {
    RaftResponse {
        response: Some(Response::Error(error.code())),
        revision,
    }
}

impl AppState {
    pub fn has_alarm(&self, alarm: AlarmType) -> bool {
        self.alarms.iter().any(|(_, a)| *a == alarm as i32)
    }

    pub fn alarm_members(&self) -> Vec<AlarmMember> {
        self.alarms
            .iter()
            .map(|(member_id, alarm)| AlarmMember {
                member_id: *member_id,
                alarm: *alarm,
            })
            .collect()
    }

    /// A member left the cluster: it may never come back under the same ID.
    pub fn record_removed(&mut self, id: u64) {
        self.members.remove(&id);
        self.removed.insert(id);
    }

    /// Applies one entry. Refusals are answers, not failures: they go back to the client.
    pub fn apply(&mut self, request: &RaftRequest) -> RaftResponse {
        let outcome = self.apply_request(request);
        let revision = self.mvcc.revision();
        match outcome {
            Ok(response) => RaftResponse {
                response: Some(response),
                revision,
            },
            Err(error) => refused(error, revision),
        }
    }

    fn apply_request(&mut self, request: &RaftRequest) -> Result<Response, Refusal> {
        let Some(entry) = &request.request else {
            return Ok(Response::Done(Default::default()));
        };
        // Entries without a caller are the members' own, or were written before auth existed.
        let caller = request.caller.clone().unwrap_or_else(Caller::internal);
        authorize::authorize(&self.auth, &self.mvcc, &caller, entry)?;
        self.apply_entry(entry)
    }

    fn apply_entry(&mut self, request: &Request) -> Result<Response, Refusal> {
        // A full store only accepts requests that free space (etcd's NOSPACE alarm).
        let no_space = self.has_alarm(AlarmType::Nospace);
        Ok(match request {
            Request::Put(put) => {
                if no_space {
                    return Err(MvccError::NoSpace.into());
                }
                Response::Put(self.mvcc.put(put)?)
            }
            Request::DeleteRange(delete) => Response::DeleteRange(self.mvcc.delete_range(delete)),
            Request::Txn(txn) => {
                if no_space && txn_writes(txn) {
                    return Err(MvccError::NoSpace.into());
                }
                Response::Txn(self.mvcc.txn(txn)?)
            }
            Request::Compaction(compaction) => {
                self.mvcc.compact(compaction.revision)?;
                Response::Compaction(CompactionResponse::default())
            }
            Request::LeaseGrant(grant) => {
                if no_space {
                    return Err(MvccError::NoSpace.into());
                }
                self.mvcc.lease_grant(grant.id, grant.ttl)?;
                Response::LeaseGrant(LeaseGrantResponse {
                    id: grant.id,
                    ttl: grant.ttl,
                    ..Default::default()
                })
            }
            Request::LeaseRevoke(revoke) => {
                self.mvcc.lease_revoke(revoke.id)?;
                Response::LeaseRevoke(LeaseRevokeResponse::default())
            }
            Request::Alarm(alarm) => {
                let entry = (alarm.member_id, alarm.alarm);
                match AlarmAction::try_from(alarm.action) {
                    Ok(AlarmAction::Activate) if alarm.alarm != AlarmType::None as i32 => {
                        self.alarms.insert(entry);
                    }
                    Ok(AlarmAction::Deactivate) => {
                        self.alarms.remove(&entry);
                    }
                    _ => {}
                }
                Response::Alarm(AlarmResponse {
                    header: None,
                    alarms: self.alarm_members(),
                })
            }
            Request::MemberAttributes(attributes) => {
                if !self.removed.contains(&attributes.id) {
                    let member = self.members.entry(attributes.id).or_default();
                    member.name = attributes.name.clone();
                    member.client_urls = attributes.client_urls.clone();
                }
                Response::Done(Default::default())
            }
            Request::MemberPeerUrls(urls) => {
                if !self.removed.contains(&urls.id) {
                    self.members.entry(urls.id).or_default().peer_urls = urls.peer_urls.clone();
                }
                Response::Done(Default::default())
            }
            // Written by earlier versions; removals are now recorded with the membership change.
            Request::MemberRemoved(removed) => {
                self.record_removed(removed.id);
                Response::Done(Default::default())
            }
            Request::AuthEnable(_) => auth_done(self.auth.enable())?,
            Request::AuthDisable(_) => {
                self.auth.disable();
                Response::Done(Default::default())
            }
            // Checked by `authorize`; every member's token table learns the token from the entry.
            Request::Authenticate(_) => auth_done(Ok(()))?,
            Request::UserAdd(add) => auth_done(self.auth.user_add(add))?,
            Request::UserDelete(delete) => auth_done(self.auth.user_delete(&delete.name))?,
            Request::UserChangePassword(change) => auth_done(self.auth.user_change_password(change))?,
            Request::UserGrantRole(grant) => auth_done(self.auth.user_grant_role(&grant.user, &grant.role))?,
            Request::UserRevokeRole(revoke) => {
                auth_done(self.auth.user_revoke_role(&revoke.name, &revoke.role))?
            }
            Request::RoleAdd(add) => auth_done(self.auth.role_add(&add.name))?,
            Request::RoleDelete(delete) => auth_done(self.auth.role_delete(&delete.role))?,
            Request::RoleGrantPermission(grant) => auth_done(self.auth.role_grant_permission(grant))?,
            Request::RoleRevokePermission(revoke) => auth_done(self.auth.role_revoke_permission(revoke))?,
        })
    }
}

fn auth_done(done: Result<(), AuthError>) -> Result<Response, Refusal> {
    done.map(|()| Response::Done(Default::default()))
        .map_err(Refusal::Auth)
}

/// Whether any branch of a transaction writes (a read-only txn is allowed on a full store).
pub fn txn_writes(txn: &crate::pb::etcdserverpb::TxnRequest) -> bool {
    use crate::pb::etcdserverpb::request_op::Request as Op;
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(Op::RequestPut(_)) => true,
            Some(Op::RequestTxn(nested)) => txn_writes(nested),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::cairnpb::MemberRemoved;
    use crate::pb::etcdserverpb::{AlarmRequest, PutRequest};

    fn put(key: &str) -> RaftRequest {
        RaftRequest {
            request: Some(Request::Put(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
            caller: None,
        }
    }

    #[test]
    fn nospace_alarm_blocks_writes_until_disarmed() {
        let mut state = AppState::default();
        let alarm = |action: AlarmAction| RaftRequest {
            request: Some(Request::Alarm(AlarmRequest {
                action: action as i32,
                member_id: 7,
                alarm: AlarmType::Nospace as i32,
            })),
            caller: None,
        };
        state.apply(&alarm(AlarmAction::Activate));
        let refused = state.apply(&put("k"));
        assert_eq!(refused.response, Some(Response::Error(MvccError::NoSpace.code())));
        state.apply(&alarm(AlarmAction::Deactivate));
        assert!(matches!(state.apply(&put("k")).response, Some(Response::Put(_))));
        assert_eq!(state.mvcc.revision(), 2);
    }

    #[test]
    fn a_removed_member_cannot_be_brought_back_by_a_late_attribute_update() {
        let mut state = AppState::default();
        state.apply(&RaftRequest {
            request: Some(Request::MemberRemoved(MemberRemoved { id: 3 })),
            caller: None,
        });
        state.apply(&RaftRequest {
            request: Some(Request::MemberAttributes(crate::pb::cairnpb::MemberAttributes {
                id: 3,
                name: "ghost".into(),
                client_urls: vec![],
            })),
            caller: None,
        });
        assert!(state.members.is_empty());
        assert!(state.removed.contains(&3));
    }

    fn as_caller(request: Request, caller: Option<Caller>) -> RaftRequest {
        RaftRequest {
            request: Some(request),
            caller,
        }
    }

    fn user(name: &str, auth_revision: u64) -> Option<Caller> {
        Some(Caller {
            user: name.into(),
            auth_revision,
            internal: false,
        })
    }

    /// Auth on, with root and alice, who may write `a`; through the log, as members apply it.
    fn secured() -> AppState {
        use crate::pb::authpb::Permission;
        use crate::pb::etcdserverpb::{
            AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
            AuthUserGrantRoleRequest,
        };
        let mut state = AppState::default();
        let user_add = |name: &str| {
            Request::UserAdd(AuthUserAddRequest {
                name: name.into(),
                hashed_password: "hash".into(),
                ..Default::default()
            })
        };
        let grant = |user: &str, role: &str| {
            Request::UserGrantRole(AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.into(),
            })
        };
        for request in [
            user_add("root"),
            grant("root", "root"),
            user_add("alice"),
            Request::RoleAdd(AuthRoleAddRequest { name: "w".into() }),
            Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "w".into(),
                perm: Some(Permission {
                    perm_type: 1,
                    key: b"a".to_vec(),
                    range_end: vec![],
                }),
            }),
            grant("alice", "w"),
            Request::AuthEnable(AuthEnableRequest {}),
        ] {
            let applied = state.apply(&as_caller(request, None));
            assert!(matches!(applied.response, Some(Response::Done(_))), "{applied:?}");
        }
        state
    }

    #[test]
    fn entries_apply_with_their_callers_rights_of_the_moment() {
        let mut state = secured();
        let current = state.auth.revision;
        let put = |key: &str| {
            Request::Put(PutRequest {
                key: key.into(),
                ..Default::default()
            })
        };
        let refused = |code: AuthError| Some(Response::Error(code.code()));
        assert!(matches!(
            state.apply(&as_caller(put("a"), user("alice", current))).response,
            Some(Response::Put(_))
        ));
        assert_eq!(
            state.apply(&as_caller(put("b"), user("alice", current))).response,
            refused(AuthError::PermissionDenied)
        );
        // Checked before the store changed: refused, whatever the rights were.
        assert_eq!(
            state
                .apply(&as_caller(put("a"), user("alice", current - 1)))
                .response,
            refused(AuthError::AuthOldRevision)
        );
        // A caller without credentials, and alice trying root's work.
        assert_eq!(
            state
                .apply(&as_caller(put("a"), Some(Caller::default())))
                .response,
            refused(AuthError::UserEmpty)
        );
        let raise = Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 7,
            alarm: AlarmType::Nospace as i32,
        });
        assert_eq!(
            state
                .apply(&as_caller(raise.clone(), user("alice", current)))
                .response,
            refused(AuthError::PermissionDenied)
        );
        assert!(!state.has_alarm(AlarmType::Nospace));
        state.apply(&as_caller(raise, user("root", current)));
        assert!(state.has_alarm(AlarmType::Nospace));
        assert_eq!(
            state.mvcc.revision(),
            2,
            "only alice's one permitted put was applied (the store starts at revision 1)"
        );
    }

    #[test]
    fn a_token_is_issued_only_against_the_users_of_the_password_check() {
        let mut state = secured();
        let authenticate = |name: &str| {
            Request::Authenticate(crate::pb::cairnpb::Authenticate {
                name: name.into(),
                token: "t".into(),
            })
        };
        let current = state.auth.revision;
        assert!(matches!(
            state
                .apply(&as_caller(authenticate("alice"), user("alice", current)))
                .response,
            Some(Response::Done(_))
        ));
        assert_eq!(
            state
                .apply(&as_caller(authenticate("alice"), user("alice", current - 1)))
                .response,
            Some(Response::Error(AuthError::AuthOldRevision.code()))
        );
        assert_eq!(
            state
                .apply(&as_caller(authenticate("bob"), user("bob", current)))
                .response,
            Some(Response::Error(AuthError::AuthFailed.code()))
        );
    }
}
