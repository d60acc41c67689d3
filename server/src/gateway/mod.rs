//! The JSON gateway on the client port, as etcd serves it: `POST /v3/<service>/<method>` with the
//! request as proto3 JSON (proto field names, int64 as strings, bytes as base64), answered by the
//! same service code as gRPC. Errors are `{"error","code","message"}` with the gRPC code; streams
//! (`/v3/watch`, `/v3/lease/keepalive`, observe, snapshot) answer one `{"result": ...}` line per
//! message. `/v3beta/` is the same as `/v3/`, as in etcd. A token from `/v3/auth/authenticate`
//! goes in the `Authorization` header.

mod stream;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

use crate::node::Node;
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3lockpb::lock_server::Lock;
use crate::service::auth::AuthService;
use crate::service::caller::TOKEN;
use crate::service::cluster::ClusterService;
use crate::service::election::ElectionService;
use crate::service::kv::KvService;
use crate::service::lease::LeaseService;
use crate::service::lock::LockService;
use crate::service::maintenance::MaintenanceService;
use crate::tls::TlsPeer;

/// Routes one unary path to a service method: the JSON body becomes the request, the answer JSON.
macro_rules! unary {
    ($router:expr, $path:literal, $service:ident, $method:ident) => {
        $router.route(
            $path,
            post(
                |State(node): State<Arc<Node>>, parts: Parts, body: Bytes| async move {
                    let service = $service { node };
                    call(
                        body,
                        &parts,
                        |request| async move { service.$method(request).await },
                    )
                    .await
                },
            ),
        )
    };
}

pub fn router(node: Arc<Node>) -> Router {
    let mut v3 = Router::new();
    v3 = unary!(v3, "/kv/range", KvService, range);
    v3 = unary!(v3, "/kv/put", KvService, put);
    v3 = unary!(v3, "/kv/deleterange", KvService, delete_range);
    v3 = unary!(v3, "/kv/txn", KvService, txn);
    v3 = unary!(v3, "/kv/compaction", KvService, compact);
    v3 = unary!(v3, "/lease/grant", LeaseService, lease_grant);
    v3 = unary!(v3, "/lease/revoke", LeaseService, lease_revoke);
    v3 = unary!(v3, "/kv/lease/revoke", LeaseService, lease_revoke);
    v3 = unary!(v3, "/lease/timetolive", LeaseService, lease_time_to_live);
    v3 = unary!(v3, "/kv/lease/timetolive", LeaseService, lease_time_to_live);
    v3 = unary!(v3, "/lease/leases", LeaseService, lease_leases);
    v3 = unary!(v3, "/kv/lease/leases", LeaseService, lease_leases);
    v3 = unary!(v3, "/cluster/member/add", ClusterService, member_add);
    v3 = unary!(v3, "/cluster/member/remove", ClusterService, member_remove);
    v3 = unary!(v3, "/cluster/member/update", ClusterService, member_update);
    v3 = unary!(v3, "/cluster/member/list", ClusterService, member_list);
    v3 = unary!(v3, "/cluster/member/promote", ClusterService, member_promote);
    v3 = unary!(v3, "/maintenance/alarm", MaintenanceService, alarm);
    v3 = unary!(v3, "/maintenance/status", MaintenanceService, status);
    v3 = unary!(v3, "/maintenance/defragment", MaintenanceService, defragment);
    v3 = unary!(v3, "/maintenance/hash", MaintenanceService, hash);
    v3 = unary!(
        v3,
        "/maintenance/transfer-leadership",
        MaintenanceService,
        move_leader
    );
    v3 = unary!(v3, "/auth/enable", AuthService, auth_enable);
    v3 = unary!(v3, "/auth/disable", AuthService, auth_disable);
    v3 = unary!(v3, "/auth/status", AuthService, auth_status);
    v3 = unary!(v3, "/auth/authenticate", AuthService, authenticate);
    v3 = unary!(v3, "/auth/user/add", AuthService, user_add);
    v3 = unary!(v3, "/auth/user/get", AuthService, user_get);
    v3 = unary!(v3, "/auth/user/list", AuthService, user_list);
    v3 = unary!(v3, "/auth/user/delete", AuthService, user_delete);
    v3 = unary!(v3, "/auth/user/changepw", AuthService, user_change_password);
    v3 = unary!(v3, "/auth/user/grant", AuthService, user_grant_role);
    v3 = unary!(v3, "/auth/user/revoke", AuthService, user_revoke_role);
    v3 = unary!(v3, "/auth/role/add", AuthService, role_add);
    v3 = unary!(v3, "/auth/role/get", AuthService, role_get);
    v3 = unary!(v3, "/auth/role/list", AuthService, role_list);
    v3 = unary!(v3, "/auth/role/delete", AuthService, role_delete);
    v3 = unary!(v3, "/auth/role/grant", AuthService, role_grant_permission);
    v3 = unary!(v3, "/auth/role/revoke", AuthService, role_revoke_permission);
    v3 = unary!(v3, "/lock/lock", LockService, lock);
    v3 = unary!(v3, "/lock/unlock", LockService, unlock);
    v3 = unary!(v3, "/election/campaign", ElectionService, campaign);
    v3 = unary!(v3, "/election/proclaim", ElectionService, proclaim);
    v3 = unary!(v3, "/election/leader", ElectionService, leader);
    v3 = unary!(v3, "/election/resign", ElectionService, resign);
    let v3 = v3
        .route("/watch", post(stream::watch))
        .route("/lease/keepalive", post(stream::lease_keep_alive))
        .route("/election/observe", post(stream::observe))
        .route("/maintenance/snapshot", post(stream::snapshot))
        .with_state(node);
    Router::new().nest("/v3", v3.clone()).nest("/v3beta", v3)
}

/// Decodes the body (empty means the default request), calls, and encodes the answer.
async fn call<Req, Resp, F, Fut>(body: Bytes, parts: &Parts, method: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let request = match decode::<Req>(&body) {
        Ok(request) => request,
        Err(status) => return error(&status),
    };
    match method(with_credentials(request, parts)).await {
        Ok(response) => json(StatusCode::OK, &response.into_inner()),
        Err(status) => error(&status),
    }
}

/// A gRPC request carrying the HTTP request's credentials: the token in `Authorization` (as
/// etcd's gateway takes it) and the TLS connection's certificate.
fn with_credentials<T>(message: T, parts: &Parts) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    if let Some(token) = token {
        request.metadata_mut().insert(TOKEN, token);
    }
    if let Some(peer) = parts.extensions.get::<ConnectInfo<TlsPeer>>() {
        request.extensions_mut().insert(peer.clone());
    }
    request
}

/// A request from its JSON; a body that is not one answers InvalidArgument naming the problem.
fn decode<Req: DeserializeOwned + Default>(body: &[u8]) -> Result<Req, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(format!("invalid JSON request: {e}")))
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(&Status::internal(format!("cannot encode the answer: {e}"))),
    }
}

/// The HTTP status etcd's gateway answers a gRPC code with.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: i32,
    message: &'a str,
}

fn error(status: &Status) -> Response {
    let body = ErrorBody {
        error: status.message(),
        code: status.code() as i32,
        message: status.message(),
    };
    json(http_status(status.code()), &body)
}

/// An answer with a streamed body of JSON lines.
fn streamed(body: Body) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
    use crate::pb::mvccpb::KeyValue;

    #[test]
    fn requests_and_answers_use_etcds_json() {
        let request: RangeRequest =
            decode(br#"{"key":"Zm9v","range_end":"Zm9w","limit":"10","sort_order":"DESCEND"}"#).unwrap();
        assert_eq!(request.key, b"foo");
        assert_eq!(request.range_end, b"fop");
        assert_eq!(request.limit, 10);
        assert_eq!(request.sort_order, 2);
        let camel: RangeRequest = decode(br#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":10}"#).unwrap();
        assert_eq!(camel.range_end, b"fop");
        assert_eq!(decode::<RangeRequest>(b"").unwrap(), RangeRequest::default());
        let bad = decode::<RangeRequest>(br#"{"key": 5}"#).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);

        let answer = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 10276657743932975437,
                revision: 7,
                raft_term: 2,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                value: b"bar".to_vec(),
                create_revision: 7,
                mod_revision: 7,
                version: 1,
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"7","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"7","mod_revision":"7","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn errors_carry_the_grpc_code_and_etcds_message() {
        let response = error(&Status::invalid_argument("etcdserver: key is not provided"));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
    }
}
