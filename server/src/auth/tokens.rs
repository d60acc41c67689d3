//! Simple tokens (etcd's default `--auth-token simple`): random strings that every member learns
//! from the log when a password check succeeds, kept in memory only, each valid until it goes
//! unused for the TTL on the member it is presented to.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

use crate::pb::cairnpb::{RaftRequest, RaftResponse, raft_request::Request, raft_response::Response};

struct Issued {
    user: String,
    last_used: Instant,
}

pub struct Tokens {
    ttl: Duration,
    issued: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    tokens: HashMap<String, Issued>,
    /// When tokens unused for the TTL were last dropped.
    swept: Option<Instant>,
}

/// Unused tokens are looked for at most this often: a burst of logins does not scan the table
/// once per login.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Random characters in a token: guessing one is as hard as guessing a 190-bit key.
const TOKEN_LENGTH: usize = 32;

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            issued: Mutex::new(Table::default()),
        }
    }

    /// A new token, not yet valid anywhere: it goes into the log with the user's name.
    pub fn generate() -> String {
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(TOKEN_LENGTH)
            .map(char::from)
            .collect()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.issued.lock().expect("token table lock poisoned")
    }

    /// The log issued `token` to `user`. Tokens nobody used for the TTL are dropped meanwhile
    /// (once a second at most), so the table holds little more than the tokens of one TTL.
    pub fn assign(&self, token: &str, user: &str) {
        let now = Instant::now();
        let mut table = self.table();
        if table
            .swept
            .is_none_or(|at| now.duration_since(at) >= SWEEP_INTERVAL)
        {
            table.swept = Some(now);
            let ttl = self.ttl;
            table.tokens.retain(|_, t| now.duration_since(t.last_used) < ttl);
        }
        table.tokens.insert(
            token.to_owned(),
            Issued {
                user: user.to_owned(),
                last_used: now,
            },
        );
    }

    /// The user a token was issued to, if it is still valid; using it keeps it valid.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut table = self.table();
        let entry = table.tokens.get_mut(token)?;
        if now.duration_since(entry.last_used) >= self.ttl {
            table.tokens.remove(token);
            return None;
        }
        entry.last_used = now;
        Some(entry.user.clone())
    }

    /// Keeps the table in step with an entry every member applied.
    pub fn follow(&self, request: &RaftRequest, response: &RaftResponse) {
        if matches!(response.response, Some(Response::Error(_))) {
            return;
        }
        match &request.request {
            Some(Request::Authenticate(authenticate)) => self.assign(&authenticate.token, &authenticate.name),
            Some(Request::UserDelete(delete)) => self.invalidate_user(&delete.name),
            Some(Request::UserChangePassword(change)) => self.invalidate_user(&change.name),
            Some(Request::AuthDisable(_)) => self.clear(),
            _ => {}
        }
    }

    /// A user was deleted or its password changed: its tokens end.
    pub fn invalidate_user(&self, user: &str) {
        self.table().tokens.retain(|_, t| t.user != user);
    }

    /// Auth was disabled, or the whole state replaced: every token ends.
    pub fn clear(&self) {
        self.table().tokens.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_end_with_their_user_or_their_ttl() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let (a, b) = (Tokens::generate(), Tokens::generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_LENGTH);
        tokens.assign(&a, "alice");
        tokens.assign(&b, "bob");
        assert_eq!(tokens.user(&a).as_deref(), Some("alice"));
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user(&a), None);
        assert_eq!(tokens.user(&b).as_deref(), Some("bob"));
        tokens.clear();
        assert_eq!(tokens.user(&b), None);

        let expiring = Tokens::new(Duration::ZERO);
        expiring.assign(&a, "alice");
        assert_eq!(expiring.user(&a), None);
    }

    #[test]
    fn unused_tokens_are_dropped_by_later_logins() {
        let tokens = Tokens::new(Duration::from_millis(1));
        for i in 0..1000 {
            tokens.assign(&format!("t{i}"), "alice");
        }
        std::thread::sleep(SWEEP_INTERVAL);
        tokens.assign("last", "alice");
        assert_eq!(tokens.table().tokens.len(), 1, "only the newest token is left");
    }
}
