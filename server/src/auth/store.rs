//! The replicated auth store (etcd's authStore): whether auth is on, its revision, users and roles.
//! Changes come from the log and every member applies them alike; permission checks read it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::ranges::{self, Interval};
use super::{AuthError, ROOT};
use crate::pb::authpb::{Permission, permission::Type as PermissionType};
use crate::pb::cairnpb::Caller;
use crate::pb::etcdserverpb::{
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The bcrypt hash; empty for a user who may only authenticate by certificate.
    pub password_hash: String,
    pub no_password: bool,
    pub roles: BTreeSet<String>,
}

/// One permission of a role, as etcd's authpb.Permission.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Grant {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub read: bool,
    pub write: bool,
}

impl Grant {
    pub fn from_pb(permission: &Permission) -> Grant {
        let kind = PermissionType::try_from(permission.perm_type).unwrap_or(PermissionType::Read);
        Grant {
            key: permission.key.clone(),
            range_end: permission.range_end.clone(),
            read: kind != PermissionType::Write,
            write: kind != PermissionType::Read,
        }
    }

    pub fn to_pb(&self) -> Permission {
        let kind = match (self.read, self.write) {
            (true, true) => PermissionType::Readwrite,
            (false, true) => PermissionType::Write,
            _ => PermissionType::Read,
        };
        Permission {
            perm_type: kind as i32,
            key: self.key.clone(),
            range_end: self.range_end.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStore {
    pub enabled: bool,
    /// Raised by every change to users or roles; requests checked before a change are refused
    /// after it (`AuthOldRevision`).
    pub revision: u64,
    users: BTreeMap<String, User>,
    /// Each role's permissions, ordered by key as etcd keeps them.
    roles: BTreeMap<String, Vec<Grant>>,
}

impl AuthStore {
    fn commit(&mut self) {
        self.revision += 1;
    }

    /// A store read back from a backup: each role's permissions are put in key order.
    pub fn restored(
        enabled: bool,
        revision: u64,
        users: BTreeMap<String, User>,
        mut roles: BTreeMap<String, Vec<Grant>>,
    ) -> AuthStore {
        for grants in roles.values_mut() {
            grants.sort();
            grants.dedup();
        }
        AuthStore {
            enabled,
            revision,
            users,
            roles,
        }
    }

    /// Every user and every role's grants, as a backup writes them.
    pub fn contents(&self) -> (&BTreeMap<String, User>, &BTreeMap<String, Vec<Grant>>) {
        (&self.users, &self.roles)
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn users(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn roles(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// A role's permissions; `root` has every key.
    pub fn role(&self, name: &str) -> Result<Vec<Permission>, AuthError> {
        let grants = self.roles.get(name).ok_or(AuthError::RoleNotFound)?;
        if name == ROOT {
            return Ok(vec![Permission {
                perm_type: PermissionType::Readwrite as i32,
                key: vec![],
                range_end: vec![0],
            }]);
        }
        Ok(grants.iter().map(Grant::to_pb).collect())
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(role))
    }

    pub fn enable(&mut self) -> Result<(), AuthError> {
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
        if !root.roles.contains(ROOT) {
            return Err(AuthError::RootRoleNotExist);
        }
        self.enabled = true;
        if self.revision == 0 {
            self.commit();
        }
        Ok(())
    }

    pub fn disable(&mut self) {
        if self.enabled {
            self.enabled = false;
            self.commit();
        }
    }

    /// Adds a user whose password was hashed by the member that took the request.
    pub fn user_add(&mut self, request: &AuthUserAddRequest) -> Result<(), AuthError> {
        if request.name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(&request.name) {
            return Err(AuthError::UserAlreadyExist);
        }
        let no_password = request.options.is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            String::new()
        } else {
            request.hashed_password.clone()
        };
        self.users.insert(
            request.name.clone(),
            User {
                password_hash,
                no_password,
                roles: BTreeSet::new(),
            },
        );
        self.commit();
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(AuthError::UserNotFound)?;
        self.commit();
        Ok(())
    }

    pub fn user_change_password(&mut self, request: &AuthUserChangePasswordRequest) -> Result<(), AuthError> {
        let user = self.users.get_mut(&request.name).ok_or(AuthError::UserNotFound)?;
        if !user.no_password {
            user.password_hash = request.hashed_password.clone();
        }
        self.commit();
        Ok(())
    }

    pub fn user_grant_role(&mut self, user: &str, role: &str) -> Result<(), AuthError> {
        if !self.users.contains_key(user) {
            return Err(AuthError::UserNotFound);
        }
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let user = self.users.get_mut(user).expect("checked above");
        if user.roles.insert(role.to_owned()) {
            self.commit();
        }
        Ok(())
    }

    pub fn user_revoke_role(&mut self, user: &str, role: &str) -> Result<(), AuthError> {
        if self.enabled && user == ROOT && role == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
        if !user.roles.remove(role) {
            return Err(AuthError::RoleNotGranted);
        }
        self.commit();
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<(), AuthError> {
        if name.is_empty() {
            return Err(AuthError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(AuthError::RoleAlreadyExist);
        }
        self.roles.insert(name.to_owned(), Vec::new());
        self.commit();
        Ok(())
    }

    pub fn role_delete(&mut self, name: &str) -> Result<(), AuthError> {
        if self.enabled && name == ROOT {
            return Err(AuthError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.remove(name);
        }
        self.commit();
        Ok(())
    }

    pub fn role_grant_permission(
        &mut self,
        request: &AuthRoleGrantPermissionRequest,
    ) -> Result<(), AuthError> {
        let permission = request.perm.as_ref().ok_or(AuthError::PermissionNotGiven)?;
        if !ranges::valid_permission_range(&permission.key, &permission.range_end) {
            return Err(AuthError::InvalidAuthMgmt);
        }
        let grants = self.roles.get_mut(&request.name).ok_or(AuthError::RoleNotFound)?;
        let grant = Grant::from_pb(permission);
        match grants
            .iter_mut()
            .find(|g| g.key == grant.key && g.range_end == grant.range_end)
        {
            Some(existing) => *existing = grant,
            None => {
                grants.push(grant);
                grants.sort();
            }
        }
        self.commit();
        Ok(())
    }

    pub fn role_revoke_permission(
        &mut self,
        request: &AuthRoleRevokePermissionRequest,
    ) -> Result<(), AuthError> {
        let grants = self.roles.get_mut(&request.role).ok_or(AuthError::RoleNotFound)?;
        let before = grants.len();
        grants.retain(|g| g.key != request.key || g.range_end != request.range_end);
        if grants.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        self.commit();
        Ok(())
    }

    /// Whether a token may be issued to `name` (etcd refuses users without a password).
    pub fn can_authenticate(&self, name: &str) -> Result<(), AuthError> {
        match self.users.get(name) {
            Some(user) if !user.no_password => Ok(()),
            _ => Err(AuthError::AuthFailed),
        }
    }

    /// Root-only requests: auth and membership changes, maintenance, alarms.
    pub fn check_admin(&self, caller: &Caller) -> Result<(), AuthError> {
        if !self.enabled || caller.internal {
            return Ok(());
        }
        if caller.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let user = self.users.get(&caller.user).ok_or(AuthError::UserNotFound)?;
        if !user.roles.contains(ROOT) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// Whether `caller` may read or write each of `keys` (single keys, such as a lease's); root
    /// may without looking at them.
    pub fn check_keys<'k>(
        &self,
        caller: &Caller,
        keys: impl IntoIterator<Item = &'k [u8]>,
        access: Access,
    ) -> Result<(), AuthError> {
        if self.check_admin(caller).is_ok() {
            return Ok(());
        }
        keys.into_iter()
            .try_for_each(|key| self.check(caller, key, b"", access))
    }

    /// Whether `caller` may read or write every key of `key`/`range_end` (etcd's isOpPermitted).
    pub fn check(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), AuthError> {
        if !self.enabled || caller.internal {
            return Ok(());
        }
        if caller.auth_revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if caller.auth_revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let user = self.users.get(&caller.user).ok_or(AuthError::PermissionDenied)?;
        if user.roles.contains(ROOT) {
            return Ok(());
        }
        let granted: Vec<Interval> = user
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .filter(|grant| match access {
                Access::Read => grant.read,
                Access::Write => grant.write,
            })
            .map(|grant| ranges::interval(&grant.key, &grant.range_end))
            .collect();
        if ranges::covers(&granted, &ranges::interval(key, range_end)) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(store: &AuthStore, user: &str) -> Caller {
        Caller {
            user: user.into(),
            auth_revision: store.revision,
            internal: false,
        }
    }

    fn add_user(store: &mut AuthStore, name: &str) {
        store
            .user_add(&AuthUserAddRequest {
                name: name.into(),
                hashed_password: "hash".into(),
                ..Default::default()
            })
            .unwrap();
    }

    fn grant(store: &mut AuthStore, role: &str, key: &str, end: &str, kind: PermissionType) {
        store
            .role_grant_permission(&AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(Permission {
                    perm_type: kind as i32,
                    key: key.into(),
                    range_end: end.into(),
                }),
            })
            .unwrap();
    }

    /// root with the root role, and `alice` with read/write on `a/`.
    fn secured() -> AuthStore {
        let mut store = AuthStore::default();
        assert_eq!(store.enable(), Err(AuthError::RootUserNotExist));
        add_user(&mut store, ROOT);
        assert_eq!(store.enable(), Err(AuthError::RootRoleNotExist));
        store.role_add(ROOT).unwrap();
        store.user_grant_role(ROOT, ROOT).unwrap();
        add_user(&mut store, "alice");
        store.role_add("a").unwrap();
        grant(&mut store, "a", "a/", "a0", PermissionType::Readwrite);
        store.user_grant_role("alice", "a").unwrap();
        store.enable().unwrap();
        store
    }

    #[test]
    fn disabled_auth_checks_nothing() {
        let store = AuthStore::default();
        let nobody = Caller::default();
        assert_eq!(store.check(&nobody, b"x", b"", Access::Write), Ok(()));
        assert_eq!(store.check_admin(&nobody), Ok(()));
    }

    #[test]
    fn users_reach_their_ranges_only_and_root_reaches_all() {
        let store = secured();
        let alice = caller(&store, "alice");
        assert_eq!(store.check(&alice, b"a/1", b"", Access::Read), Ok(()));
        assert_eq!(store.check(&alice, b"a/", b"a0", Access::Write), Ok(()));
        assert_eq!(
            store.check(&alice, b"b", b"", Access::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(store.check_admin(&alice), Err(AuthError::PermissionDenied));
        let root = caller(&store, ROOT);
        assert_eq!(store.check(&root, b"\0", b"\0", Access::Write), Ok(()));
        assert_eq!(store.check_admin(&root), Ok(()));
        assert_eq!(
            store.check(&Caller::default(), b"a/1", b"", Access::Read),
            Err(AuthError::UserEmpty)
        );
    }

    #[test]
    fn every_key_of_a_set_must_be_reachable_unless_the_caller_is_root() {
        let store = secured();
        let keys: [&[u8]; 2] = [b"a/1", b"a/2"];
        let alice = caller(&store, "alice");
        assert_eq!(store.check_keys(&alice, keys, Access::Write), Ok(()));
        let one_outside: [&[u8]; 2] = [b"a/1", b"b"];
        assert_eq!(
            store.check_keys(&alice, one_outside, Access::Write),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            store.check_keys(&caller(&store, ROOT), one_outside, Access::Write),
            Ok(())
        );
    }

    #[test]
    fn a_read_grant_does_not_write_and_a_write_grant_does_not_read() {
        let mut store = secured();
        grant(&mut store, "a", "r", "", PermissionType::Read);
        grant(&mut store, "a", "w", "", PermissionType::Write);
        let alice = caller(&store, "alice");
        assert_eq!(store.check(&alice, b"r", b"", Access::Read), Ok(()));
        assert_eq!(
            store.check(&alice, b"r", b"", Access::Write),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(store.check(&alice, b"w", b"", Access::Write), Ok(()));
        assert_eq!(
            store.check(&alice, b"w", b"", Access::Read),
            Err(AuthError::PermissionDenied)
        );
    }

    #[test]
    fn a_check_made_before_a_change_is_stale_after_it() {
        let mut store = secured();
        let alice = caller(&store, "alice");
        store
            .role_revoke_permission(&AuthRoleRevokePermissionRequest {
                role: "a".into(),
                key: b"a/".to_vec(),
                range_end: b"a0".to_vec(),
            })
            .unwrap();
        assert_eq!(
            store.check(&alice, b"a/1", b"", Access::Read),
            Err(AuthError::AuthOldRevision)
        );
        assert_eq!(
            store.check(&caller(&store, "alice"), b"a/1", b"", Access::Read),
            Err(AuthError::PermissionDenied)
        );
    }

    #[test]
    fn root_stays_root_while_auth_is_on() {
        let mut store = secured();
        assert_eq!(store.user_delete(ROOT), Err(AuthError::InvalidAuthMgmt));
        assert_eq!(
            store.user_revoke_role(ROOT, ROOT),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(store.role_delete(ROOT), Err(AuthError::InvalidAuthMgmt));
        store.disable();
        store.user_revoke_role(ROOT, ROOT).unwrap();
        assert_eq!(store.enable(), Err(AuthError::RootRoleNotExist));
    }

    #[test]
    fn management_refusals_carry_etcds_errors() {
        let mut store = secured();
        assert_eq!(store.role_add("a"), Err(AuthError::RoleAlreadyExist));
        assert_eq!(store.role_add(""), Err(AuthError::RoleEmpty));
        assert_eq!(
            store.user_grant_role("alice", "nope"),
            Err(AuthError::RoleNotFound)
        );
        assert_eq!(store.user_grant_role("bob", "a"), Err(AuthError::UserNotFound));
        assert_eq!(
            store.user_revoke_role("alice", ROOT),
            Err(AuthError::RoleNotGranted)
        );
        let revision = store.revision;
        store.user_grant_role("alice", "a").unwrap();
        assert_eq!(store.revision, revision, "granting a role twice changes nothing");
        let no_range = AuthRoleGrantPermissionRequest {
            name: "a".into(),
            perm: None,
        };
        assert_eq!(
            store.role_grant_permission(&no_range),
            Err(AuthError::PermissionNotGiven)
        );
        let backwards = AuthRoleGrantPermissionRequest {
            name: "a".into(),
            perm: Some(Permission {
                perm_type: 0,
                key: b"b".to_vec(),
                range_end: b"a".to_vec(),
            }),
        };
        assert_eq!(
            store.role_grant_permission(&backwards),
            Err(AuthError::InvalidAuthMgmt)
        );
        store.role_delete("a").unwrap();
        assert!(
            !store.has_role("alice", "a"),
            "deleting a role takes it from its users"
        );
    }
}
