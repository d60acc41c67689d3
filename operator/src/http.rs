//! The operator's HTTP endpoints: `/metrics` (Prometheus text) and `/healthz` (the process
//! answers).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::metrics::Metrics;

/// Serves the endpoints on `listener` until the process stops.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics);
    axum::serve(listener, app).await
}

/// Binds `address` first, so that a port already in use is an error at start.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

async fn render(State(metrics): State<Arc<Metrics>>) -> String {
    metrics.render()
}
