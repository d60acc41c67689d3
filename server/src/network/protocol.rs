//! The peer plane's contract beyond its messages: protocol versions, the metadata every call
//! carries, size limits, and the admission check a member runs on a call before decoding it.

use tonic::codegen::http::HeaderMap;

/// Protocol versions this build speaks, inclusive. Version 1 is the typed protobuf peer plane;
/// version 2 adds the AppendStream call (the same messages on one long-lived stream), which a
/// leader uses only with peers that agreed on it, so members one release apart still replicate.
pub const MIN_VERSION: u32 = 1;
pub const MAX_VERSION: u32 = 2;
/// The first version with AppendStream.
pub const APPEND_STREAM_VERSION: u32 = 2;

pub const CLUSTER_ID_HEADER: &str = "cairn-cluster-id";
pub const MEMBER_ID_HEADER: &str = "cairn-member-id";
pub const VERSION_HEADER: &str = "cairn-peer-version";

/// Snapshots travel in chunks of this size, so no single message grows with the store.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// How a member refuses ClusterInfo to a caller that is not in its cluster (and was not added).
pub const NOT_A_MEMBER: &str = "only members of this cluster may ask who is in it";

/// The largest peer message a member sends or decodes: room for one maximal client request plus
/// Raft's framing, and never less than 16 MiB so batches of small entries travel in one message.
pub fn message_limit(max_request_bytes: usize) -> usize {
    (max_request_bytes + (1 << 20)).max(16 << 20)
}

/// The highest version two ranges share, if any.
pub fn agree(their_min: u32, their_max: u32) -> Option<u32> {
    let version = their_max.min(MAX_VERSION);
    (version >= their_min.max(MIN_VERSION)).then_some(version)
}

/// Who sent an admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub member_id: u64,
    /// Zero when the caller has not joined a cluster yet.
    pub cluster_id: u64,
}

/// Why a call was refused before its message was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "cluster ID mismatch: this member belongs to cluster {local:x}, the request came from cluster {remote:x}"
    )]
    OtherCluster { local: u64, remote: u64 },
    #[error("peer call without a valid {0} header")]
    MissingHeader(&'static str),
    #[error("member {member:x} has been removed from the cluster")]
    Removed { member: u64 },
    #[error(
        "peer protocol version {given} is not spoken here (this member speaks {MIN_VERSION} to {MAX_VERSION})"
    )]
    Version { given: u32 },
}

fn header<T: std::str::FromStr>(headers: &HeaderMap, name: &'static str) -> Result<T, Refusal> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or(Refusal::MissingHeader(name))
}

/// Checks a call to `path` against this member's cluster: a member of another cluster is refused,
/// one that has not joined any may only say Hello and ask who is in the cluster, a member removed
/// from the cluster only who is in it (which tells it so), and every call but Hello names a
/// protocol version this member speaks.
pub fn admit(
    path: &str,
    headers: &HeaderMap,
    local_cluster: u64,
    removed: impl Fn(u64) -> bool,
) -> Result<Caller, Refusal> {
    let caller = Caller {
        cluster_id: header(headers, CLUSTER_ID_HEADER)?,
        member_id: header(headers, MEMBER_ID_HEADER)?,
    };
    let method = path.rsplit('/').next().unwrap_or_default();
    let may_be_anonymous = matches!(method, "Hello" | "ClusterInfo");
    if caller.cluster_id != local_cluster && !(caller.cluster_id == 0 && may_be_anonymous) {
        return Err(Refusal::OtherCluster {
            local: local_cluster,
            remote: caller.cluster_id,
        });
    }
    if caller.cluster_id == local_cluster && method != "ClusterInfo" && removed(caller.member_id) {
        return Err(Refusal::Removed {
            member: caller.member_id,
        });
    }
    if method != "Hello" {
        let given: u32 = header(headers, VERSION_HEADER)?;
        if !(MIN_VERSION..=MAX_VERSION).contains(&given) {
            return Err(Refusal::Version { given });
        }
    }
    Ok(caller)
}

/// What a joining member learns of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    /// Every member with its peer URLs.
    pub members: Vec<(u64, Vec<String>)>,
    pub removed: Vec<u64>,
    /// Members that have started (published their name): each has a data dir of its own.
    pub started: Vec<u64>,
}

impl From<crate::pb::peerpb::ClusterInfoReply> for ClusterInfo {
    fn from(reply: crate::pb::peerpb::ClusterInfoReply) -> Self {
        ClusterInfo {
            cluster_id: reply.cluster_id,
            members: reply.members.into_iter().map(|m| (m.id, m.peer_urls)).collect(),
            removed: reply.removed,
            started: reply.started,
        }
    }
}

impl From<ClusterInfo> for crate::pb::peerpb::ClusterInfoReply {
    fn from(info: ClusterInfo) -> Self {
        crate::pb::peerpb::ClusterInfoReply {
            cluster_id: info.cluster_id,
            members: info
                .members
                .into_iter()
                .map(|(id, peer_urls)| crate::pb::peerpb::ClusterMember { id, peer_urls })
                .collect(),
            removed: info.removed,
            started: info.started,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cluster: u64, member: u64, version: Option<u32>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CLUSTER_ID_HEADER, cluster.into());
        headers.insert(MEMBER_ID_HEADER, member.into());
        if let Some(version) = version {
            headers.insert(VERSION_HEADER, version.into());
        }
        headers
    }

    fn admit_in_7(path: &str, headers: &HeaderMap, local: u64) -> Result<Caller, Refusal> {
        admit(path, headers, local, |member| member == 66)
    }

    #[test]
    fn removed_members_may_only_learn_that_they_were_removed() {
        assert_eq!(
            admit_in_7("/peerpb.Peer/PreVote", &headers(7, 66, Some(1)), 7),
            Err(Refusal::Removed { member: 66 })
        );
        assert_eq!(
            admit_in_7("/peerpb.Peer/Hello", &headers(7, 66, None), 7),
            Err(Refusal::Removed { member: 66 })
        );
        assert!(admit_in_7("/peerpb.Peer/ClusterInfo", &headers(7, 66, Some(1)), 7).is_ok());
    }

    #[test]
    fn members_of_the_cluster_are_admitted_with_a_spoken_version() {
        let caller = admit_in_7("/peerpb.Peer/AppendEntries", &headers(7, 2, Some(1)), 7).unwrap();
        assert_eq!(
            caller,
            Caller {
                member_id: 2,
                cluster_id: 7
            }
        );
        assert_eq!(
            admit_in_7("/peerpb.Peer/AppendEntries", &headers(7, 2, Some(9)), 7),
            Err(Refusal::Version { given: 9 })
        );
        assert_eq!(
            admit_in_7("/peerpb.Peer/Forward", &headers(7, 2, None), 7),
            Err(Refusal::MissingHeader(VERSION_HEADER))
        );
        assert!(admit_in_7("/peerpb.Peer/Hello", &headers(7, 2, None), 7).is_ok());
    }

    #[test]
    fn strangers_may_only_ask_who_is_in_the_cluster() {
        assert!(admit_in_7("/peerpb.Peer/ClusterInfo", &headers(0, 0, Some(1)), 7).is_ok());
        assert!(admit_in_7("/peerpb.Peer/Hello", &headers(0, 0, None), 7).is_ok());
        for method in ["AppendEntries", "Vote", "Forward", "InstallSnapshot"] {
            assert_eq!(
                admit_in_7(&format!("/peerpb.Peer/{method}"), &headers(0, 0, Some(1)), 7),
                Err(Refusal::OtherCluster { local: 7, remote: 0 }),
                "{method}"
            );
        }
        let other = admit_in_7("/peerpb.Peer/ClusterInfo", &headers(8, 1, Some(1)), 7).unwrap_err();
        assert_eq!(
            other.to_string(),
            "cluster ID mismatch: this member belongs to cluster 7, the request came from cluster 8"
        );
        assert_eq!(
            admit_in_7("/peerpb.Peer/Vote", &HeaderMap::new(), 7),
            Err(Refusal::MissingHeader(CLUSTER_ID_HEADER))
        );
    }

    #[test]
    fn versions_are_agreed_on_the_highest_shared() {
        assert_eq!(agree(1, 1), Some(1));
        assert_eq!(agree(1, 5), Some(MAX_VERSION));
        assert_eq!(agree(2, 3), Some(2));
        assert_eq!(agree(MAX_VERSION + 1, MAX_VERSION + 3), None);
        assert_eq!(agree(0, 0), None);
    }
}
