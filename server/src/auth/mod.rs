//! etcd's role-based access control: the replicated users and roles (`store`), which keys a
//! user's roles cover (`ranges`), the simple tokens clients authenticate with (`tokens`), and
//! etcd's refusals (`error`). Who asks for something is a `Caller` (cairnpb), which the member the
//! request reached establishes from a token or a client certificate and which travels with the
//! request into the log, where it is checked again at apply.

mod error;
mod ranges;
mod store;
mod tokens;

pub use error::AuthError;
pub use store::{Access, AuthStore, Grant, User};
pub use tokens::Tokens;

use base64::Engine;

use crate::pb::cairnpb::Caller;

/// The user and role that may do everything, and whose existence auth needs.
pub const ROOT: &str = "root";

/// etcd's default bcrypt cost.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

impl Caller {
    /// The members' own proposals (lease expiry, alarms they raise, compaction by policy).
    pub fn internal() -> Caller {
        Caller {
            internal: true,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("etcdserver: hashed password is not a base64-encoded bcrypt hash")]
    InvalidHash,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The bcrypt hash the log keeps for a new password: hashed here from `password`, or given by
/// the client already hashed (etcd's `hashedPassword`, base64 of the bcrypt string).
pub fn password_hash(password: &str, hashed_by_client: &str, cost: u32) -> Result<String, PasswordError> {
    if !hashed_by_client.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(hashed_by_client)
            .map_err(|_| PasswordError::InvalidHash)?;
        let hash = String::from_utf8(decoded).map_err(|_| PasswordError::InvalidHash)?;
        bcrypt::verify("", &hash).map_err(|_| PasswordError::InvalidHash)?;
        return Ok(hash);
    }
    bcrypt::hash(password, cost).map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` is the one `hash` was made from. Deliberately slow (bcrypt).
pub fn password_matches(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_kept_as_bcrypt_hashes() {
        let hash = password_hash("s3cret", "", 4).unwrap();
        assert!(hash.starts_with("$2"));
        assert!(password_matches("s3cret", &hash));
        assert!(!password_matches("S3cret", &hash));
        let given = base64::engine::general_purpose::STANDARD.encode(&hash);
        assert_eq!(password_hash("", &given, 4).unwrap(), hash);
        assert!(matches!(
            password_hash("", "bm90IGEgaGFzaA==", 4),
            Err(PasswordError::InvalidHash)
        ));
    }
}
