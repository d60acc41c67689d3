//! A TLS listener for the HTTP server: connections are accepted and handshaken in the background,
//! each in its own task with a deadline, so a slow or silent client holds up no one else; only
//! connections whose handshake and certificate rules passed are handed to the server, with who
//! their certificate names (`TlsPeer`, which requests find among their extensions).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use super::{CertificateRules, ServerTls, certificate_common_name};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

pub struct TlsListener {
    local: SocketAddr,
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
}

/// The other side of a TLS connection (the listener's own address as its `local_addr`).
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    /// The common name of the certificate it presented, which the handshake verified against the
    /// trusted CA (none without `--client-cert-auth`, or without a certificate).
    pub common_name: Option<String>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl TlsListener {
    /// Serves TLS on `listener` with the port's configuration of the moment; `rules` are checked
    /// against the other side's certificate before any of its bytes reach the server. `kind` names
    /// the port in logs.
    pub fn new(
        listener: TcpListener,
        tls: Arc<ServerTls>,
        rules: CertificateRules,
        kind: &'static str,
    ) -> Self {
        let local = listener.local_addr().expect("a bound listener has an address");
        let (send, handshaken) = mpsc::channel(64);
        let rules = Arc::new(rules);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    // The server stopped listening: so does this task, closing the port.
                    () = send.closed() => return,
                };
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(%error, "{kind} port: cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::warn!(%error, "cannot set TCP_NODELAY on a connection");
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let (send, rules) = (send.clone(), rules.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await;
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::info!(%remote, %error, "{kind} port: rejected a connection (TLS handshake failed)");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "{kind} port: rejected a connection (no TLS handshake within {HANDSHAKE_DEADLINE:?})");
                            return;
                        }
                    };
                    let certificates = stream.get_ref().1.peer_certificates();
                    if let Err(reason) = rules.check(certificates) {
                        tracing::warn!(%remote, %reason, "{kind} port: rejected a connection");
                        return;
                    }
                    let common_name = certificates
                        .and_then(|chain| chain.first())
                        .and_then(certificate_common_name);
                    let _ = send
                        .send((
                            stream,
                            TlsPeer {
                                addr: remote,
                                common_name,
                            },
                        ))
                        .await;
                });
            }
        });
        TlsListener { local, handshaken }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accepting task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.local,
            common_name: None,
        })
    }
}
