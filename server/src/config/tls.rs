//! The TLS flags of both ports (etcd's names and meanings) and their validation into the files and
//! rules the listeners and the peer client use.

use std::path::PathBuf;

use super::ConfigError;
use crate::tls::{CertificateRules, TlsFiles, TlsVersion};

#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Certificate served on https:// client URLs (PEM).
    #[arg(long, env = "CAIRN_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Key of --cert-file (PEM).
    #[arg(long, env = "CAIRN_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must be signed by.
    #[arg(long, env = "CAIRN_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long, env = "CAIRN_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Certificate this member serves on https:// peer URLs and presents to peers (PEM).
    #[arg(long, env = "CAIRN_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Key of --peer-cert-file (PEM).
    #[arg(long, env = "CAIRN_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that peers' certificates must be signed by.
    #[arg(long, env = "CAIRN_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse peer connections without a certificate signed by --peer-trusted-ca-file.
    #[arg(long, env = "CAIRN_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Accept only peer certificates with this common name.
    #[arg(long, env = "CAIRN_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Accept only peer certificates valid for this hostname (a DNS or IP subject alternative name).
    #[arg(long, env = "CAIRN_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Oldest TLS version accepted on both ports and used towards peers.
    #[arg(long, env = "CAIRN_TLS_MIN_VERSION", value_enum, default_value = "TLS1.2")]
    pub tls_min_version: TlsVersion,
}

/// TLS as validated: what each port serves, and what peers' certificates must name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Served on https:// client URLs.
    pub client: Option<TlsFiles>,
    /// Served on https:// peer URLs, and used to connect to https:// peers.
    pub peer: Option<TlsFiles>,
    pub peer_rules: CertificateRules,
}

fn files(
    (cert_flag, cert): (&'static str, &Option<PathBuf>),
    (key_flag, key): (&'static str, &Option<PathBuf>),
    trusted_ca: &Option<PathBuf>,
    client_cert_auth: bool,
    (auth_flag, ca_flag): (&'static str, &'static str),
    min_version: TlsVersion,
) -> Result<Option<TlsFiles>, ConfigError> {
    let missing = |flag: &'static str, needed_by: &'static str| {
        ConfigError::Tls(format!("--{needed_by} needs --{flag}"))
    };
    if client_cert_auth && trusted_ca.is_none() {
        return Err(missing(ca_flag, auth_flag));
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            trusted_ca: trusted_ca.clone(),
            client_cert_auth,
            min_version,
        })),
        (Some(_), None) => Err(missing(key_flag, cert_flag)),
        (None, Some(_)) => Err(missing(cert_flag, key_flag)),
        (None, None) if client_cert_auth => Err(missing(cert_flag, auth_flag)),
        (None, None) => Ok(None),
    }
}

impl TlsArgs {
    /// `client_https` / `peer_https`: whether any client / peer URL this member serves or dials is
    /// https, which needs the matching certificate.
    pub fn validate(&self, client_https: bool, peer_https: bool) -> Result<TlsConfig, ConfigError> {
        let client = files(
            ("cert-file", &self.cert_file),
            ("key-file", &self.key_file),
            &self.trusted_ca_file,
            self.client_cert_auth,
            ("client-cert-auth", "trusted-ca-file"),
            self.tls_min_version,
        )?;
        let peer = files(
            ("peer-cert-file", &self.peer_cert_file),
            ("peer-key-file", &self.peer_key_file),
            &self.peer_trusted_ca_file,
            self.peer_client_cert_auth,
            ("peer-client-cert-auth", "peer-trusted-ca-file"),
            self.tls_min_version,
        )?;
        if client_https && client.is_none() {
            return Err(ConfigError::Tls(
                "an https:// client URL needs --cert-file and --key-file".into(),
            ));
        }
        if peer_https {
            match &peer {
                None => {
                    return Err(ConfigError::Tls(
                        "https:// peer URLs need --peer-cert-file and --peer-key-file".into(),
                    ));
                }
                Some(files) if files.trusted_ca.is_none() => {
                    return Err(ConfigError::Tls(
                        "https:// peer URLs need --peer-trusted-ca-file to check the other members' certificates"
                            .into(),
                    ));
                }
                Some(_) => {}
            }
        }
        let peer_rules = CertificateRules {
            allowed_cn: self.peer_cert_allowed_cn.clone(),
            allowed_hostname: self.peer_cert_allowed_hostname.clone(),
        };
        if peer_rules.allowed_cn.is_some() && peer_rules.allowed_hostname.is_some() {
            return Err(ConfigError::Tls(
                "--peer-cert-allowed-cn and --peer-cert-allowed-hostname cannot both be set".into(),
            ));
        }
        if !peer_rules.is_empty() && !self.peer_client_cert_auth {
            return Err(ConfigError::Tls(
                "--peer-cert-allowed-cn and --peer-cert-allowed-hostname need --peer-client-cert-auth".into(),
            ));
        }
        Ok(TlsConfig {
            client,
            peer,
            peer_rules,
        })
    }
}
