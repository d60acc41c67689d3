//! Generated protobuf code: the etcd v3 API (`etcdserverpb`, `mvccpb`, `authpb`, `v3lockpb`,
//! `v3electionpb`), Cairn's internal messages (`cairnpb`: log entries) and the peer plane
//! (`peerpb`), plus serde for the two internal messages that travel inside Raft entries.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}
pub mod peerpb {
    tonic::include_proto!("peerpb");
}
pub mod cairnpb {
    tonic::include_proto!("cairnpb");
}

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Raft entries are serialized with serde; these messages ride inside them as their protobuf bytes,
/// so the log stores exactly what the wire carried.
macro_rules! serde_as_protobuf {
    ($($message:ty),*) => {$(
        impl Serialize for $message {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(&self.encode_to_vec())
            }
        }
        impl<'de> Deserialize<'de> for $message {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let bytes = bytes::Bytes::deserialize(deserializer)?;
                <$message>::decode(bytes).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_protobuf!(cairnpb::RaftRequest, cairnpb::RaftResponse);

impl std::fmt::Display for cairnpb::RaftRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use cairnpb::raft_request::Request;
        let kind = match &self.request {
            None => "empty",
            Some(Request::Put(_)) => "put",
            Some(Request::DeleteRange(_)) => "delete-range",
            Some(Request::Txn(_)) => "txn",
            Some(Request::Compaction(_)) => "compaction",
            Some(Request::LeaseGrant(_)) => "lease-grant",
            Some(Request::LeaseRevoke(_)) => "lease-revoke",
            Some(Request::Alarm(_)) => "alarm",
            Some(Request::MemberAttributes(_)) => "member-attributes",
            Some(Request::MemberPeerUrls(_)) => "member-peer-urls",
            Some(Request::AuthEnable(_)) => "auth-enable",
            Some(Request::AuthDisable(_)) => "auth-disable",
            Some(Request::Authenticate(_)) => "authenticate",
            Some(Request::UserAdd(_)) => "user-add",
            Some(Request::UserDelete(_)) => "user-delete",
            Some(Request::UserChangePassword(_)) => "user-change-password",
            Some(Request::UserGrantRole(_)) => "user-grant-role",
            Some(Request::UserRevokeRole(_)) => "user-revoke-role",
            Some(Request::RoleAdd(_)) => "role-add",
            Some(Request::RoleDelete(_)) => "role-delete",
            Some(Request::RoleGrantPermission(_)) => "role-grant-permission",
            Some(Request::RoleRevokePermission(_)) => "role-revoke-permission",
            Some(Request::MemberRemoved(_)) => "member-removed",
        };
        f.write_str(kind)
    }
}
