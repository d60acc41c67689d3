//! Errors of the MVCC store, with etcd's exact client-facing messages and a stable numeric code so a
//! refusal can travel through the Raft log and the peer plane unchanged.

/// A request the store refuses. Messages are byte-identical to etcd's: clients match on the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MvccError {
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
}

impl MvccError {
    const ALL: [MvccError; 8] = [
        MvccError::KeyNotFound,
        MvccError::Compacted,
        MvccError::FutureRevision,
        MvccError::LeaseNotFound,
        MvccError::LeaseExists,
        MvccError::LeaseTtlTooLarge,
        MvccError::NoSpace,
        MvccError::Corrupt,
    ];

    /// The stable code stored in the log; never renumber a variant.
    pub fn code(self) -> u32 {
        match self {
            MvccError::KeyNotFound => 1,
            MvccError::Compacted => 2,
            MvccError::FutureRevision => 3,
            MvccError::LeaseNotFound => 4,
            MvccError::LeaseExists => 5,
            MvccError::LeaseTtlTooLarge => 6,
            MvccError::NoSpace => 7,
            MvccError::Corrupt => 8,
        }
    }

    pub fn from_code(code: u32) -> Option<MvccError> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for error in MvccError::ALL {
            assert_eq!(MvccError::from_code(error.code()), Some(error));
        }
        assert_eq!(MvccError::from_code(0), None);
    }
}
