//! Listeners: the client port (etcd's gRPC services and the HTTP endpoints on one port), the peer
//! port (the peer service only), and optional metrics-only ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::config::Listen;
use crate::http;
use crate::node::Node;
use crate::pb::etcdserverpb::auth_server::AuthServer;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::pb::etcdserverpb::watch_server::WatchServer;
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;
use crate::service::auth::AuthService;
use crate::service::cluster::ClusterService;
use crate::service::election::ElectionService;
use crate::service::kv::KvService;
use crate::service::lease::LeaseService;
use crate::service::lock::LockService;
use crate::service::maintenance::MaintenanceService;
use crate::service::watch::WatchService;
use crate::tls::{CertificateRules, Plaintext, ServerTls, TlsFiles, TlsListener, TlsPeer};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{port} port TLS: {source}")]
    Tls {
        port: &'static str,
        source: crate::tls::TlsError,
    },
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })
}

/// A bound port, served over TLS when its URL was https://.
enum Bound {
    Plain(TcpListener),
    Tls(TlsListener),
}

/// Binds every address of one port kind; TLS ones handshake with `tls` and check `rules`.
async fn bind_all(
    listens: &[Listen],
    tls: Option<&TlsFiles>,
    rules: &CertificateRules,
    kind: &'static str,
) -> Result<Vec<Bound>, ListenError> {
    let tls = match tls {
        Some(files) if listens.iter().any(|l| l.tls) => Some(Arc::new(
            ServerTls::new(files).map_err(|source| ListenError::Tls { port: kind, source })?,
        )),
        _ => None,
    };
    // An address listed with both schemes is one port serving both (how peers move to TLS
    // without a moment apart: first both, then the URLs, then TLS only).
    let mut schemes: Vec<(SocketAddr, bool, bool)> = Vec::new();
    for listen in listens {
        match schemes.iter_mut().find(|(addr, _, _)| *addr == listen.addr) {
            Some((_, plain, tls)) => {
                *plain |= !listen.tls;
                *tls |= listen.tls;
            }
            None => schemes.push((listen.addr, !listen.tls, listen.tls)),
        }
    }
    let mut bound = Vec::new();
    for (addr, plain, wants_tls) in schemes {
        let listener = bind(addr).await?;
        let plaintext = if plain {
            Plaintext::Served
        } else {
            Plaintext::Refused
        };
        bound.push(match (&tls, wants_tls) {
            (Some(tls), true) => Bound::Tls(TlsListener::new(
                listener,
                tls.clone(),
                rules.clone(),
                kind,
                plaintext,
            )),
            // Validation made sure every https:// URL has its certificate.
            _ => Bound::Plain(listener),
        });
    }
    Ok(bound)
}

/// Answers leave at once: without TCP_NODELAY a response written in two parts waits for the
/// client's delayed ACK (40 ms on Linux) before its second part is sent.
fn no_delay(listener: TcpListener) -> axum::serve::TapIo<TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn set(stream: &mut tokio::net::TcpStream) {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on a connection");
        }
    }
    listener.tap_io(set as fn(&mut tokio::net::TcpStream))
}

/// gRPC decoding limit: the request limit plus etcd's allowance for gRPC overhead.
fn grpc_limit(max_request_bytes: usize) -> usize {
    max_request_bytes + 512 * 1024
}

fn client_router(node: &Arc<Node>) -> Router {
    let limit = grpc_limit(node.config.max_request_bytes);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
    });
    let routes =
        Routes::new(KvServer::new(KvService { node: node.clone() }).max_decoding_message_size(limit))
            .add_service(
                LeaseServer::new(LeaseService { node: node.clone() }).max_decoding_message_size(limit),
            )
            .add_service(
                ClusterServer::new(ClusterService { node: node.clone() }).max_decoding_message_size(limit),
            )
            .add_service(
                MaintenanceServer::new(MaintenanceService { node: node.clone() })
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                WatchServer::new(WatchService { node: node.clone() }).max_decoding_message_size(limit),
            )
            .add_service(AuthServer::new(AuthService { node: node.clone() }).max_decoding_message_size(limit))
            .add_service(LockServer::new(LockService { node: node.clone() }).max_decoding_message_size(limit))
            .add_service(
                ElectionServer::new(ElectionService { node: node.clone() }).max_decoding_message_size(limit),
            )
            .add_service(health_service);
    let metrics = node.clone();
    routes
        .into_axum_router()
        .layer(GrpcMetricsLayer { node: metrics })
        .merge(http::router(node.clone()))
        .merge(crate::gateway::router(node.clone()))
}

/// The listeners of one port kind, which a stopping member closes in order: clients before it
/// stops Raft, peers after (a former leader still answers forwarded calls meanwhile).
pub struct Listeners {
    kind: &'static str,
    stop: tokio::sync::watch::Sender<bool>,
    served: Vec<tokio::task::JoinHandle<()>>,
}

impl Listeners {
    /// Stops accepting connections and lets requests in flight finish, waiting at most `within`
    /// (long streams such as lease keep-alives are cut off then).
    pub async fn close(self, within: std::time::Duration) {
        self.stop.send_replace(true);
        let drained = futures::future::join_all(self.served);
        if tokio::time::timeout(within, drained).await.is_err() {
            tracing::info!(
                ?within,
                "{} requests still open after the grace period; closing them",
                self.kind
            );
        }
    }
}

/// Every port of a member, once bound.
pub struct Served {
    pub clients: Listeners,
    pub peers: Listeners,
}

/// Binds every listener, then serves in the background. Binding first means a port conflict fails
/// start-up with a clear error instead of a half-started member.
pub async fn serve(node: Arc<Node>) -> Result<Served, ListenError> {
    let tls = &node.config.tls;
    let peer_listeners = bind_all(
        &node.config.listen_peer,
        tls.peer.as_ref(),
        &tls.peer_rules,
        "peer",
    )
    .await?;
    let client_listeners = bind_all(
        &node.config.listen_client,
        tls.client.as_ref(),
        &CertificateRules::default(),
        "client",
    )
    .await?;
    let mut metrics_listeners = Vec::new();
    for addr in &node.config.listen_metrics {
        metrics_listeners.push(Bound::Plain(bind(*addr).await?));
    }
    // Scrapers are served until the process ends.
    let (_, never) = tokio::sync::watch::channel(false);
    spawn_all(metrics_listeners, http::router(node.clone()), "metrics", &never);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let served = spawn_all(
        peer_listeners,
        crate::service::peer::router(node.clone()),
        "peer",
        &stopping,
    );
    let peers = Listeners {
        kind: "peer",
        stop,
        served,
    };
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let served = spawn_all(client_listeners, client_router(&node), "client", &stopping);
    let clients = Listeners {
        kind: "client",
        stop,
        served,
    };
    Ok(Served { clients, peers })
}

/// Serves `router` on every listener of one kind until `stop` turns true or the process ends.
/// Requests over TLS carry the connection's `TlsPeer` (who its certificate names).
fn spawn_all(
    listeners: Vec<Bound>,
    router: Router,
    kind: &'static str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    listeners
        .into_iter()
        .map(|listener| {
            let router = router.clone();
            let stopped = stopped(stop.clone());
            tokio::spawn(async move {
                let served = match listener {
                    Bound::Plain(listener) => {
                        axum::serve(no_delay(listener), router)
                            .with_graceful_shutdown(stopped)
                            .await
                    }
                    Bound::Tls(listener) => {
                        let service = router.into_make_service_with_connect_info::<TlsPeer>();
                        axum::serve(listener, service)
                            .with_graceful_shutdown(stopped)
                            .await
                    }
                };
                if let Err(error) = served {
                    tracing::error!(%error, "{kind} listener stopped");
                }
            })
        })
        .collect()
}

/// Resolves once `stop` turns true; a dropped sender means "never".
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    while stop.changed().await.is_ok() {
        if *stop.borrow() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// Counts handled gRPC calls by method and status code (from the grpc-status header, which tonic
/// puts in the headers for errors returned before a response body).
#[derive(Clone)]
struct GrpcMetricsLayer {
    node: Arc<Node>,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            node: self.node.clone(),
        }
    }
}

#[derive(Clone)]
struct GrpcMetrics<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::response::Response> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let node = self.node.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from);
            // Unknown methods answer Unimplemented: label them alike to keep the label set bounded.
            let method = if code == tonic::Code::Unimplemented {
                "unknown"
            } else {
                method.as_str()
            };
            node.metrics().grpc_handled(method, code);
            Ok(response)
        })
    }
}
