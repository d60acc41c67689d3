//! Who a client request comes from, as the node establishes it: the `token` etcd clients send
//! after Authenticate (the gateway's `Authorization` header), or, with `--client-cert-auth`, the
//! common name of the client certificate the TLS handshake verified.

use axum::extract::ConnectInfo;
use tonic::{Request, Status};

use super::error::node_status;
use crate::node::Node;
use crate::pb::cairnpb::Caller;
use crate::tls::TlsPeer;

/// gRPC metadata carrying a token (etcd's `rpctypes.TokenFieldNameGRPC`).
pub const TOKEN: &str = "token";

/// The user a verified client certificate names, when certificates authenticate on this port.
pub fn certificate_user(node: &Node, peer: Option<&ConnectInfo<TlsPeer>>) -> Option<String> {
    let certificates_count = node
        .config
        .tls
        .client
        .as_ref()
        .is_some_and(|tls| tls.client_cert_auth);
    if !certificates_count {
        return None;
    }
    peer.and_then(|ConnectInfo(peer)| peer.common_name.clone())
}

/// The caller of a gRPC request.
pub async fn caller<T>(node: &Node, request: &Request<T>) -> Result<Caller, Status> {
    let token = request.metadata().get(TOKEN).and_then(|v| v.to_str().ok());
    let user = certificate_user(node, request.extensions().get::<ConnectInfo<TlsPeer>>());
    node.caller(token, user.as_deref()).await.map_err(node_status)
}
