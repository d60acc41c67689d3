//! A TLS listener for the HTTP server: connections are accepted and handshaken in the background,
//! each in its own task with a deadline, so a slow or silent client holds up no one else; only
//! connections whose handshake and certificate rules passed are handed to the server, with who
//! their certificate names (`TlsPeer`, which requests find among their extensions). A port that
//! serves both schemes (its address listed with http:// and https://, as while peers move to
//! TLS) tells them apart by the first byte a client sends.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use super::{CertificateRules, ServerTls, certificate_common_name};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether a TLS port also serves clients that do not speak TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    Refused,
    /// The address is listed with both schemes: plaintext clients are served beside TLS ones
    /// (the certificate rules apply to the TLS ones only).
    Served,
}

pub struct TlsListener {
    local: SocketAddr,
    handshaken: mpsc::Receiver<(Connection, TlsPeer)>,
}

/// An accepted connection: over TLS, or plaintext on a port that serves both.
pub enum Connection {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// Whether a client on a port serving both schemes speaks TLS: its first byte opens a TLS
/// handshake. None when it closed before sending one.
async fn speaks_tls(stream: &TcpStream) -> io::Result<Option<bool>> {
    let mut first = [0u8; 1];
    let read = stream.peek(&mut first).await?;
    Ok((read == 1).then_some(first[0] == TLS_HANDSHAKE_RECORD))
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
        plaintext: Plaintext,
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
                    if plaintext == Plaintext::Served {
                        match tokio::time::timeout(HANDSHAKE_DEADLINE, speaks_tls(&stream)).await {
                            Ok(Ok(Some(true))) => {}
                            Ok(Ok(Some(false))) => {
                                let peer = TlsPeer {
                                    addr: remote,
                                    common_name: None,
                                };
                                let _ = send.send((Connection::Plain(stream), peer)).await;
                                return;
                            }
                            // Closed, failed or silent before its first byte: nothing to serve.
                            _ => return,
                        }
                    }
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
                            Connection::Tls(Box::new(stream)),
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
    type Io = Connection;
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
