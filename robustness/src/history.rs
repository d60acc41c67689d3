//! What clients did: every operation with the time it was invoked, the time it returned (none
//! when its outcome is unknown), what was asked and what came back. Plain data, saved as JSON
//! so that a failing run can be read and checked again.

use serde::{Deserialize, Serialize};

/// A key's state as a read returns it (etcd's `mvccpb.KeyValue`, the fields the model checks).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// One operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnOp {
    Put { key: String, value: String },
    Delete { key: String },
    Get { key: String },
}

/// A transaction's guard: the key's `mod_revision` equals `expected` (0: the key does not exist,
/// which is how a create-if-absent is written).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub mod_revision: i64,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Request {
    /// A single-key read; `serializable` ones are served from the member's own state.
    Get {
        key: String,
        serializable: bool,
    },
    /// Every key starting with `prefix`, linearizable.
    List {
        prefix: String,
    },
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    Delete {
        key: String,
    },
    Txn {
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    LeaseGrant {
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
}

impl Request {
    /// Whether the request can change the store (so an unknown outcome matters).
    pub fn writes(&self) -> bool {
        !matches!(self, Request::Get { .. } | Request::List { .. })
    }
}

/// What came back. `Unknown` is a call that failed or timed out: it may or may not have taken
/// effect.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Response {
    Unknown,
    Get {
        revision: i64,
        kv: Option<KeyValue>,
    },
    List {
        revision: i64,
        kvs: Vec<KeyValue>,
    },
    Put {
        revision: i64,
    },
    Delete {
        revision: i64,
        deleted: i64,
    },
    Txn {
        revision: i64,
        succeeded: bool,
        /// One entry per `Get` of the branch taken, in order.
        gets: Vec<Option<KeyValue>>,
    },
    LeaseGrant {
        id: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
    /// etcd's `lease not found`, for a put with a lease or a revoke: a definite failure.
    LeaseNotFound,
}

/// One operation as a client saw it. Times are nanoseconds since the run began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub client: usize,
    /// The member the client talked to.
    pub member: usize,
    pub invoked: u64,
    /// `None` when the outcome is unknown: the operation may take effect at any time after it was
    /// invoked, or never.
    pub returned: Option<u64>,
    pub request: Request,
    pub response: Response,
}

/// A run's operations, in the order they were recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub operations: Vec<Operation>,
}

impl History {
    /// Operations whose outcome is unknown.
    pub fn unknown(&self) -> usize {
        self.operations
            .iter()
            .filter(|op| op.response == Response::Unknown)
            .count()
    }
}
