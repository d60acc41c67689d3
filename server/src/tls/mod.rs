//! TLS for the client and peer ports (etcd's `--cert-file` family of flags): certificates read from
//! files and read again whenever a file changes, so a rotated certificate takes effect on the next
//! connection without a restart, as etcd reloads per handshake.

mod connector;
mod identity;
mod listener;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

pub use connector::PeerConnector;
pub use identity::{CertificateRules, certificate_common_name};
pub use listener::{Plaintext, TlsListener, TlsPeer};

/// The oldest TLS version a port accepts (`--tls-min-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    #[value(name = "TLS1.2")]
    Tls12,
    #[value(name = "TLS1.3")]
    Tls13,
}

static ONLY_TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

impl TlsVersion {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        match self {
            TlsVersion::Tls12 => rustls::ALL_VERSIONS,
            TlsVersion::Tls13 => &ONLY_TLS13,
        }
    }
}

/// The files and rules of one port's TLS, as the flags give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificates of the CAs whose certificates this side trusts from the other side.
    pub trusted_ca: Option<PathBuf>,
    /// Whether a connecting side must present a certificate signed by `trusted_ca`.
    pub client_cert_auth: bool,
    pub min_version: TlsVersion,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("the TLS settings cannot be used: {0}")]
    Settings(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        what,
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "certificate",
        });
    }
    Ok(certificates)
}

fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "private key",
        },
        other => TlsError::Read {
            what,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

fn read_roots(what: &'static str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(what, path)? {
        roots.add(certificate).map_err(|e| TlsError::Read {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// What a file looked like when last read: a rotation (Kubernetes swaps a Secret volume's symlinks)
/// changes the inode, the size or the modification time.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec()))
}

/// A configuration built from files, built again when they change. A change that cannot be read
/// (a rotation caught half-written) keeps the previous configuration until the files are whole.
struct Reloading<T> {
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    current: Mutex<(Vec<Stamp>, Arc<T>)>,
}

impl<T> Reloading<T> {
    fn new(
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let first = build()?;
        Ok(Reloading {
            paths,
            build: Box::new(build),
            current: Mutex::new((stamps, Arc::new(first))),
        })
    }

    fn get(&self) -> Arc<T> {
        let stamps: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
        let mut current = self.current.lock().expect("TLS configuration lock poisoned");
        if current.0 != stamps {
            match (self.build)() {
                Ok(rebuilt) => {
                    tracing::info!(files = ?self.paths, "TLS certificates changed; using the new ones");
                    *current = (stamps, Arc::new(rebuilt));
                }
                Err(error) => {
                    tracing::warn!(%error, "TLS certificates changed but cannot be read; keeping the previous ones");
                    current.0 = stamps;
                }
            }
        }
        current.1.clone()
    }
}

fn watched_paths(files: &TlsFiles) -> Vec<PathBuf> {
    let mut paths = vec![files.cert.clone(), files.key.clone()];
    paths.extend(files.trusted_ca.clone());
    paths
}

/// A port's server side: the configuration every new connection is handshaken with.
pub struct ServerTls {
    config: Reloading<rustls::ServerConfig>,
}

impl ServerTls {
    pub fn new(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let owned = files.clone();
        let config = Reloading::new(watched_paths(files), move || server_config(&owned))?;
        Ok(ServerTls { config })
    }

    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.get()
    }
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let settings = |e: rustls::Error| TlsError::Settings(e.to_string());
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(files.min_version.versions())
        .map_err(settings)?;
    let builder = match (&files.trusted_ca, files.client_cert_auth) {
        (Some(ca), true) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(read_roots("trusted CA file", ca)?, provider())
                    .build()
                    .map_err(|e| TlsError::Settings(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => {
            return Err(TlsError::Settings(
                "client certificate authentication needs a trusted CA file".into(),
            ));
        }
        (_, false) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(
            read_certificates("certificate file", &files.cert)?,
            read_key("key file", &files.key)?,
        )
        .map_err(settings)?;
    // gRPC needs HTTP/2; the JSON gateway and /health also answer HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The client side of peer connections: trusts the peer CA and presents this member's certificate.
pub struct ClientTls {
    config: Reloading<rustls::ClientConfig>,
}

impl ClientTls {
    pub fn new(files: &TlsFiles) -> Result<ClientTls, TlsError> {
        let owned = files.clone();
        let config = Reloading::new(watched_paths(files), move || client_config(&owned))?;
        Ok(ClientTls { config })
    }

    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.get()
    }
}

fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let settings = |e: rustls::Error| TlsError::Settings(e.to_string());
    let roots = match &files.trusted_ca {
        Some(ca) => read_roots("trusted CA file", ca)?,
        None => {
            return Err(TlsError::Settings(
                "connecting to peers over TLS needs a trusted CA file to check their certificates".into(),
            ));
        }
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(files.min_version.versions())
        .map_err(settings)?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            read_certificates("certificate file", &files.cert)?,
            read_key("key file", &files.key)?,
        )
        .map_err(settings)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
