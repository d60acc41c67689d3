//! HTTP endpoints beside gRPC on the client port (and on --listen-metrics-urls): /health (etcd's
//! JSON), /livez, /readyz, /version and /metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

use crate::node::{ETCD_API_VERSION, Node};

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/readyz", get(readyz))
        .route("/livez", get(livez))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    match node.health().await {
        Ok(()) => (StatusCode::OK, Json(json!({"health": "true", "reason": ""}))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"health": "false", "reason": reason})),
        ),
    }
}

async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    match node.readiness().await {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]{reason}\nreadyz check failed\n"),
        ),
    }
}

/// Liveness does not depend on quorum: a member waiting for its peers is alive and must not be
/// restarted for it.
async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn version() -> impl IntoResponse {
    Json(
        json!({"etcdserver": ETCD_API_VERSION, "etcdcluster": ETCD_API_VERSION, "cairn": env!("CARGO_PKG_VERSION")}),
    )
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        node.render_metrics(),
    )
}
