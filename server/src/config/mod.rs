//! Server flags (also `CAIRN_<FLAG>` environment variables, or a YAML `--config-file`) and their
//! validation into a `Config` the rest of the server trusts.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

mod tls;
pub use tls::{TlsArgs, TlsConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompactionMode {
    Periodic,
    Revision,
}

/// What the leader compacts automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep at least this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revisions(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags mirror etcd's names and defaults; every flag can also be set as `CAIRN_<FLAG>`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cairn",
    version,
    about = "An etcd-v3-compatible, durable Raft key-value server"
)]
pub struct Args {
    /// Human-readable name of this member; must appear in --initial-cluster.
    #[arg(long, env = "CAIRN_NAME", default_value = "default")]
    pub name: String,
    /// Directory for the write-ahead log and snapshots (default: <name>.cairn).
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic (gRPC and HTTP).
    #[arg(
        long,
        env = "CAIRN_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// Comma-separated client URLs published to the cluster and clients.
    #[arg(
        long,
        env = "CAIRN_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// Comma-separated URLs to listen on for peer (Raft) traffic.
    #[arg(long, env = "CAIRN_LISTEN_PEER_URLS", default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// This member's peer URLs as told to the rest of the cluster.
    #[arg(
        long,
        env = "CAIRN_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial members as name=peerURL,... (default: this member alone).
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER", default_value = "")]
    pub initial_cluster: String,
    /// `new` to bootstrap a cluster, `existing` to join one (after `member add`).
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// Bootstrap from the DNS SRV records `_cairn-server._tcp.<domain>` instead of --initial-cluster.
    #[arg(long, env = "CAIRN_DISCOVERY_SRV")]
    pub discovery_srv: Option<String>,
    /// Suffix of the SRV service name: `_cairn-server-<name>._tcp.<domain>`.
    #[arg(long, env = "CAIRN_DISCOVERY_SRV_NAME")]
    pub discovery_srv_name: Option<String>,
    /// DNS server (ip:port) to ask for SRV records instead of the system resolver.
    #[arg(long, env = "CAIRN_DISCOVERY_SRV_RESOLVER")]
    pub discovery_srv_resolver: Option<SocketAddr>,
    /// How many members the new cluster starts with. With --discovery-srv the member waits until
    /// the SRV records list exactly this many (records of peers that start later appear late);
    /// with --initial-cluster it must match the list.
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER_SIZE")]
    pub initial_cluster_size: Option<usize>,
    /// Token unique to this cluster; members with another token are another cluster.
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "CAIRN_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Raft election timeout in milliseconds.
    #[arg(long, env = "CAIRN_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Committed entries between snapshots (the log before a snapshot is then discarded).
    #[arg(long, env = "CAIRN_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// How --auto-compaction-retention is counted: `periodic` (time) or `revision` (revisions).
    #[arg(
        long,
        env = "CAIRN_AUTO_COMPACTION_MODE",
        value_enum,
        default_value = "periodic"
    )]
    pub auto_compaction_mode: CompactionMode,
    /// History the leader keeps when it compacts automatically; 0 turns auto-compaction off.
    /// Periodic: a duration (`30m`, `1h30m`, `90s`) or a whole number of hours; the leader
    /// compacts every retention (at most hourly). Revision: revisions to keep, checked every
    /// 5 minutes.
    #[arg(long, env = "CAIRN_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Size at which the store raises the NOSPACE alarm (0 = 2 GiB).
    #[arg(long, env = "CAIRN_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "CAIRN_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Largest number of operations in one transaction.
    #[arg(long, env = "CAIRN_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// How often watchers that ask for progress notifications hear the revision they are synced
    /// to (a duration such as 10m or 500ms; at least 100ms).
    #[arg(
        long,
        env = "CAIRN_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m"
    )]
    pub experimental_watch_progress_notify_interval: String,
    /// Extra comma-separated URLs serving /metrics and the health endpoints over plain HTTP.
    #[arg(long, env = "CAIRN_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// debug, info, warn or error.
    #[arg(long, env = "CAIRN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log output format.
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Starts this member as the only member of its cluster, keeping its data: the way back from
    /// losing a quorum for good (as etcd's flag). Every other member is dropped from the
    /// membership and must start over empty; remove the flag once the member runs.
    #[arg(
        long,
        env = "CAIRN_FORCE_NEW_CLUSTER",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub force_new_cluster: bool,
    /// How clients' passwords become tokens. `simple` (etcd's default): random tokens that every
    /// member learns from the log, valid until unused for --auth-token-ttl.
    #[arg(long, env = "CAIRN_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token stays valid after its last use on a member.
    #[arg(long, env = "CAIRN_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of the password hashes kept for users (4 to 31; each step doubles the work).
    #[arg(long, env = "CAIRN_BCRYPT_COST", default_value_t = crate::auth::DEFAULT_BCRYPT_COST)]
    pub bcrypt_cost: u32,
    /// YAML file of flag-name: value pairs; when given, other flags and variables are ignored (as in etcd).
    #[arg(long, env = "CAIRN_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid URL {url:?} in --{flag}: {reason}")]
    Url {
        flag: &'static str,
        url: String,
        reason: String,
    },
    #[error("--{flag} must list at least one URL")]
    NoUrls { flag: &'static str },
    #[error("--initial-cluster entry {entry:?} is not of the form name=http://host:port")]
    ClusterEntry { entry: String },
    #[error("--name {name:?} is not listed in --initial-cluster ({cluster})")]
    NameNotInCluster { name: String, cluster: String },
    #[error(
        "--initial-cluster lists {listed:?} for {name:?} but --initial-advertise-peer-urls is {advertised:?}; \
         they must be the same"
    )]
    AdvertisedMismatch {
        name: String,
        listed: Vec<String>,
        advertised: Vec<String>,
    },
    #[error("--initial-cluster and --discovery-srv are both set; use one way to find the initial members")]
    TwoBootstraps,
    #[error("--initial-cluster lists {listed} members but --initial-cluster-size is {size}")]
    SizeMismatch { listed: usize, size: usize },
    #[error("--initial-cluster-token must not be empty")]
    EmptyToken,
    #[error(
        "--election-timeout ({election} ms) must be at least 5 times --heartbeat-interval ({heartbeat} ms)"
    )]
    Timeouts { election: u64, heartbeat: u64 },
    #[error("--{flag} must be greater than zero")]
    Zero { flag: &'static str },
    #[error(
        "--auto-compaction-retention {value:?} is not valid with --auto-compaction-mode {mode}: \
         expected {expected}"
    )]
    Retention {
        value: String,
        mode: &'static str,
        expected: &'static str,
    },
    #[error("--{flag} {value:?} is not valid: {reason}")]
    Duration {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--{flag} {value:?} is not valid: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot read --config-file {path}: {reason}")]
    ConfigFile { path: PathBuf, reason: String },
    #[error("{0}")]
    Tls(String),
}

/// An address to listen on, and whether its URL asked for TLS (`https://`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// Where to find the initial members through DNS.
#[derive(Debug, Clone)]
pub struct SrvDiscovery {
    pub domain: String,
    pub service_name: Option<String>,
    pub nameserver: Option<SocketAddr>,
    /// Wait until the records list this many members (`--initial-cluster-size`).
    pub expected_members: Option<usize>,
}

/// A validated configuration: everything here has been checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: Vec<Listen>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer: Vec<Listen>,
    pub advertise_peer_urls: Vec<String>,
    /// Initial members by name, each with its peer URLs (filled by SRV discovery when used).
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub discovery: Option<SrvDiscovery>,
    pub cluster_state: ClusterState,
    /// `--force-new-cluster`.
    pub force_new_cluster: bool,
    pub token: String,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub auto_compaction: Option<AutoCompaction>,
    pub quota_bytes: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub watch_progress_interval: Duration,
    pub listen_metrics: Vec<SocketAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
}

impl Config {
    /// A member that bootstraps (its data dir is empty) must be listed in `--initial-cluster`
    /// under the URLs it advertises, as etcd checks then, and only then: a member with data is
    /// known to its cluster by the member list, and restarts under a new scheme (its peers moving
    /// to TLS) with a `--initial-cluster` written before the move.
    pub fn verify_bootstrap_urls(&self) -> Result<(), ConfigError> {
        if self.discovery.is_some() {
            return Ok(());
        }
        let Some(listed) = self.initial_cluster.get(&self.name) else {
            return Ok(());
        };
        let (mut a, mut b) = (listed.clone(), self.advertise_peer_urls.clone());
        a.sort();
        b.sort();
        if a != b {
            return Err(ConfigError::AdvertisedMismatch {
                name: self.name.clone(),
                listed: listed.clone(),
                advertised: self.advertise_peer_urls.clone(),
            });
        }
        Ok(())
    }
}

/// How this member issues and checks credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthConfig {
    pub token_ttl: Duration,
    pub bcrypt_cost: u32,
}

const DEFAULT_QUOTA: u64 = 2 * 1024 * 1024 * 1024;

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads `--auto-compaction-retention` as etcd does; None when it is zero (off).
pub fn parse_retention(mode: CompactionMode, value: &str) -> Result<Option<AutoCompaction>, ConfigError> {
    let value = value.trim();
    match mode {
        CompactionMode::Revision => match value.parse::<i64>() {
            Ok(0) => Ok(None),
            Ok(n) if n > 0 => Ok(Some(AutoCompaction::Revisions(n))),
            _ => Err(ConfigError::Retention {
                value: value.to_owned(),
                mode: "revision",
                expected: "a whole number of revisions to keep",
            }),
        },
        CompactionMode::Periodic => {
            let retention = match value.parse::<u64>() {
                Ok(hours) => hours.checked_mul(3600).map(Duration::from_secs),
                Err(_) => crate::duration::parse_duration(value).ok(),
            };
            match retention {
                Some(d) if d.is_zero() => Ok(None),
                Some(d) => Ok(Some(AutoCompaction::Periodic(d))),
                None => Err(ConfigError::Retention {
                    value: value.to_owned(),
                    mode: "periodic",
                    expected: "a duration such as 30m, 1h30m or 90s, or a whole number of hours",
                }),
            }
        }
    }
}

/// Reads the watch progress interval: a duration of at least 100ms (etcd's floor).
fn parse_progress_interval(value: &str) -> Result<Duration, ConfigError> {
    let bad = |reason: String| ConfigError::Duration {
        flag: "experimental-watch-progress-notify-interval",
        value: value.to_owned(),
        reason,
    };
    let interval = crate::duration::parse_duration(value).map_err(bad)?;
    if interval < Duration::from_millis(100) {
        return Err(bad("must be at least 100ms".into()));
    }
    Ok(interval)
}

/// Checks a URL is `http://host:port` or `https://host:port` and normalizes it (no trailing slash).
fn check_url(flag: &'static str, raw: &str) -> Result<String, ConfigError> {
    let bad = |reason: &str| ConfigError::Url {
        flag,
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    let scheme = match url.scheme() {
        scheme @ ("http" | "https") => scheme,
        other => return Err(bad(&format!("unsupported scheme {other:?}; use http or https"))),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    let port = url.port().ok_or_else(|| bad("no port"))?;
    if url.path() != "/" && !url.path().is_empty() {
        return Err(bad("a path is not allowed"));
    }
    Ok(format!(
        "{scheme}://{}:{port}",
        url.host_str().unwrap_or_default()
    ))
}

fn urls(flag: &'static str, value: &str) -> Result<Vec<String>, ConfigError> {
    let list = split_list(value)
        .iter()
        .map(|u| check_url(flag, u))
        .collect::<Result<Vec<_>, _>>()?;
    if list.is_empty() {
        return Err(ConfigError::NoUrls { flag });
    }
    Ok(list)
}

fn listen_addrs(flag: &'static str, value: &str) -> Result<Vec<Listen>, ConfigError> {
    let mut addrs = Vec::new();
    for url in urls(flag, value)? {
        let (scheme, host_port) = url.split_once("://").unwrap_or(("http", &url));
        let tls = scheme == "https";
        let resolved = host_port.to_socket_addrs().map_err(|e| ConfigError::Url {
            flag,
            url: url.clone(),
            reason: e.to_string(),
        })?;
        // etcd binds IPs; localhost resolves to its loopback address(es).
        addrs.extend(
            resolved
                .filter(|a| a.is_ipv4())
                .take(1)
                .map(|addr| Listen { addr, tls }),
        );
    }
    Ok(addrs)
}

/// Parses `name=url,name=url2,other=url3` into members with their peer URLs.
pub fn parse_initial_cluster(value: &str) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in split_list(value) {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| ConfigError::ClusterEntry { entry: entry.clone() })?;
        if name.is_empty() {
            return Err(ConfigError::ClusterEntry { entry });
        }
        members
            .entry(name.to_owned())
            .or_default()
            .push(check_url("initial-cluster", url)?);
    }
    Ok(members)
}

impl Args {
    /// Reads `--config-file` (YAML, keys are flag names) into arguments, as etcd does: the file wins.
    pub fn with_config_file(self) -> Result<Args, ConfigError> {
        let Some(path) = self.config_file.clone() else {
            return Ok(self);
        };
        let failed = |reason: String| ConfigError::ConfigFile {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| failed(e.to_string()))?;
        let map: BTreeMap<String, serde_yaml::Value> =
            serde_yaml::from_str(&text).map_err(|e| failed(e.to_string()))?;
        let mut argv = vec!["cairn".to_owned()];
        for (key, value) in map {
            let value = match value {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(failed(format!(
                        "value of {key:?} must be a string or number, got {other:?}"
                    )));
                }
            };
            argv.push(format!("--{key}={value}"));
        }
        Args::try_parse_from(argv).map_err(|e| failed(e.to_string()))
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        if self.initial_cluster_token.is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        for (flag, value) in [
            ("heartbeat-interval", self.heartbeat_interval),
            ("snapshot-count", self.snapshot_count),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        if self.initial_cluster_size == Some(0) {
            return Err(ConfigError::Zero {
                flag: "initial-cluster-size",
            });
        }
        if self.max_txn_ops == 0 {
            return Err(ConfigError::Zero { flag: "max-txn-ops" });
        }
        let auth = self.auth_config()?;
        if self.max_request_bytes == 0 {
            return Err(ConfigError::Zero {
                flag: "max-request-bytes",
            });
        }
        if self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError::Timeouts {
                election: self.election_timeout,
                heartbeat: self.heartbeat_interval,
            });
        }
        let advertise_peer_urls = urls("initial-advertise-peer-urls", &self.initial_advertise_peer_urls)?;
        let discovery = self.discovery_srv.clone().map(|domain| SrvDiscovery {
            domain,
            service_name: self.discovery_srv_name.clone(),
            nameserver: self.discovery_srv_resolver,
            expected_members: self.initial_cluster_size,
        });
        if discovery.is_some() && !self.initial_cluster.is_empty() {
            return Err(ConfigError::TwoBootstraps);
        }
        let initial_cluster = if self.initial_cluster.is_empty() {
            BTreeMap::from([(self.name.clone(), advertise_peer_urls.clone())])
        } else {
            parse_initial_cluster(&self.initial_cluster)?
        };
        if let (Some(size), None) = (self.initial_cluster_size, &discovery)
            && size != initial_cluster.len()
        {
            return Err(ConfigError::SizeMismatch {
                listed: initial_cluster.len(),
                size,
            });
        }
        match initial_cluster.get(&self.name) {
            // With DNS discovery the member list is found later, and this member by address.
            _ if discovery.is_some() => {}
            None => {
                return Err(ConfigError::NameNotInCluster {
                    name: self.name,
                    cluster: self.initial_cluster,
                });
            }
            // Whether its URLs match the advertised ones matters only when bootstrapping
            // (`Config::verify_bootstrap_urls`): a member with data is known by its member list.
            Some(_) => {}
        }
        let auto_compaction = parse_retention(self.auto_compaction_mode, &self.auto_compaction_retention)?;
        let watch_progress_interval =
            parse_progress_interval(&self.experimental_watch_progress_notify_interval)?;
        let listen_metrics = if self.listen_metrics_urls.is_empty() {
            vec![]
        } else {
            let listens = listen_addrs("listen-metrics-urls", &self.listen_metrics_urls)?;
            if listens.iter().any(|l| l.tls) {
                return Err(ConfigError::Tls(
                    "--listen-metrics-urls serve plain HTTP only; use http:// URLs".into(),
                ));
            }
            listens.into_iter().map(|l| l.addr).collect()
        };
        let listen_client = listen_addrs("listen-client-urls", &self.listen_client_urls)?;
        let listen_peer = listen_addrs("listen-peer-urls", &self.listen_peer_urls)?;
        let https = |url: &String| url.starts_with("https://");
        let peer_https = listen_peer.iter().any(|l| l.tls)
            || advertise_peer_urls.iter().any(https)
            || initial_cluster.values().flatten().any(https);
        let tls = self
            .tls
            .validate(listen_client.iter().any(|l| l.tls), peer_https)?;
        Ok(Config {
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", self.name))),
            listen_client,
            advertise_client_urls: urls("advertise-client-urls", &self.advertise_client_urls)?,
            listen_peer,
            advertise_peer_urls,
            initial_cluster,
            discovery,
            cluster_state: self.initial_cluster_state,
            force_new_cluster: self.force_new_cluster,
            token: self.initial_cluster_token,
            heartbeat: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count,
            auto_compaction,
            quota_bytes: if self.quota_backend_bytes == 0 {
                DEFAULT_QUOTA
            } else {
                self.quota_backend_bytes
            },
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            watch_progress_interval,
            listen_metrics,
            log_level: self.log_level,
            log_format: self.log_format,
            tls,
            auth,
            name: self.name,
        })
    }

    fn auth_config(&self) -> Result<AuthConfig, ConfigError> {
        if self.auth_token != "simple" {
            return Err(ConfigError::Invalid {
                flag: "auth-token",
                value: self.auth_token.clone(),
                reason: "cairn issues simple tokens only (JWT is not supported); use --auth-token simple",
            });
        }
        if self.auth_token_ttl == 0 {
            return Err(ConfigError::Zero {
                flag: "auth-token-ttl",
            });
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            return Err(ConfigError::Invalid {
                flag: "bcrypt-cost",
                value: self.bcrypt_cost.to_string(),
                reason: "bcrypt's cost is between 4 and 31",
            });
        }
        Ok(AuthConfig {
            token_ttl: Duration::from_secs(self.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost,
        })
    }
}

/// Checks a peer URL given at runtime (member add/update) the way flags are checked.
pub fn check_peer_url(url: &str) -> Result<String, ConfigError> {
    check_url("peer-urls", url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["cairn"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_make_a_single_member_on_localhost() {
        let config = args(&[]).validate().unwrap();
        assert_eq!(config.data_dir, PathBuf::from("default.cairn"));
        assert_eq!(config.initial_cluster.len(), 1);
        assert_eq!(config.listen_client[0].addr.port(), 2379);
        assert!(!config.listen_client[0].tls && config.tls == TlsConfig::default());
        assert_eq!(config.quota_bytes, DEFAULT_QUOTA);
    }

    #[test]
    fn name_missing_from_initial_cluster_is_refused() {
        let error = args(&["--name", "x", "--initial-cluster", "a=http://127.0.0.1:2380"])
            .validate()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--name \"x\" is not listed in --initial-cluster (a=http://127.0.0.1:2380)"
        );
    }

    #[test]
    fn dns_discovery_replaces_the_static_list() {
        let error = args(&[
            "--discovery-srv",
            "example.com",
            "--initial-cluster",
            "default=http://localhost:2380",
        ])
        .validate()
        .unwrap_err();
        assert!(matches!(error, ConfigError::TwoBootstraps), "{error}");
        let config = args(&[
            "--name",
            "x",
            "--discovery-srv",
            "example.com",
            "--discovery-srv-name",
            "blue",
        ])
        .validate()
        .unwrap();
        let discovery = config.discovery.expect("discovery configured");
        assert_eq!(
            crate::bootstrap::srv::record_name(&discovery.domain, discovery.service_name.as_deref(), false),
            "_cairn-server-blue._tcp.example.com."
        );
        assert_eq!(
            crate::bootstrap::srv::record_name("example.com.", None, false),
            "_cairn-server._tcp.example.com."
        );
        assert_eq!(
            crate::bootstrap::srv::record_name("example.com", Some("blue"), true),
            "_cairn-server-ssl-blue._tcp.example.com."
        );
    }

    #[test]
    fn auth_flags_are_etcds_and_refused_by_name_when_out_of_range() {
        let config = args(&[]).validate().unwrap();
        assert_eq!(
            config.auth,
            AuthConfig {
                token_ttl: Duration::from_secs(300),
                bcrypt_cost: 10,
            }
        );
        let config = args(&["--auth-token-ttl", "2", "--bcrypt-cost", "4"])
            .validate()
            .unwrap();
        assert_eq!(config.auth.token_ttl, Duration::from_secs(2));
        assert_eq!(config.auth.bcrypt_cost, 4);
        let refused = |flags: &[&str], expected: &str| {
            let error = args(flags).validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{flags:?}: {error}");
        };
        refused(
            &["--auth-token", "jwt,pub-key=k.pub"],
            "--auth-token \"jwt,pub-key=k.pub\" is not valid: cairn issues simple tokens only",
        );
        refused(
            &["--auth-token-ttl", "0"],
            "--auth-token-ttl must be greater than zero",
        );
        refused(&["--bcrypt-cost", "3"], "--bcrypt-cost \"3\" is not valid");
        refused(&["--bcrypt-cost", "32"], "bcrypt's cost is between 4 and 31");
    }

    #[test]
    fn https_urls_need_their_certificates_and_every_tls_flag_its_partners() {
        let refused = |flags: &[&str], expected: &str| {
            let error = args(flags).validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{flags:?}: {error}");
        };
        let client_https = ["--listen-client-urls", "https://127.0.0.1:2379"];
        refused(
            &client_https,
            "https:// client URL needs --cert-file and --key-file",
        );
        refused(&["--cert-file", "c.pem"], "--cert-file needs --key-file");
        refused(&["--key-file", "k.pem"], "--key-file needs --cert-file");
        refused(
            &[
                "--cert-file",
                "c.pem",
                "--key-file",
                "k.pem",
                "--client-cert-auth",
            ],
            "--client-cert-auth needs --trusted-ca-file",
        );
        let peer_https = [
            "--listen-peer-urls",
            "https://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "https://127.0.0.1:2380",
        ];
        refused(
            &peer_https,
            "https:// peer URLs need --peer-cert-file and --peer-key-file",
        );
        let peer_files = ["--peer-cert-file", "p.pem", "--peer-key-file", "pk.pem"];
        refused(
            &[&peer_https[..], &peer_files[..]].concat(),
            "https:// peer URLs need --peer-trusted-ca-file",
        );
        refused(
            &["--peer-cert-allowed-cn", "member"],
            "--peer-cert-allowed-cn and --peer-cert-allowed-hostname need --peer-client-cert-auth",
        );
        refused(
            &["--peer-cert-allowed-cn", "a", "--peer-cert-allowed-hostname", "b"],
            "cannot both be set",
        );
        refused(
            &["--listen-metrics-urls", "https://127.0.0.1:2381"],
            "--listen-metrics-urls serve plain HTTP only",
        );
        let old_tls = Args::try_parse_from(["cairn", "--tls-min-version", "TLS1.1"]).unwrap_err();
        assert!(old_tls.to_string().contains("TLS1.1"), "{old_tls}");

        let config = args(
            &[
                &client_https[..],
                &peer_https[..],
                &peer_files[..],
                &[
                    "--cert-file",
                    "c.pem",
                    "--key-file",
                    "k.pem",
                    "--trusted-ca-file",
                    "ca.pem",
                    "--client-cert-auth",
                    "--peer-trusted-ca-file",
                    "pca.pem",
                    "--peer-client-cert-auth=true",
                    "--peer-cert-allowed-cn",
                    "member",
                    "--tls-min-version",
                    "TLS1.3",
                ][..],
            ]
            .concat(),
        )
        .validate()
        .unwrap();
        assert!(config.listen_client[0].tls && config.listen_peer[0].tls);
        assert_eq!(config.advertise_peer_urls, ["https://127.0.0.1:2380"]);
        let client = config.tls.client.unwrap();
        assert_eq!(client.cert, PathBuf::from("c.pem"));
        assert!(client.client_cert_auth);
        assert_eq!(client.min_version, crate::tls::TlsVersion::Tls13);
        let peer = config.tls.peer.unwrap();
        assert_eq!(peer.trusted_ca, Some(PathBuf::from("pca.pem")));
        assert!(peer.client_cert_auth);
        assert_eq!(config.tls.peer_rules.allowed_cn.as_deref(), Some("member"));
    }

    #[test]
    fn initial_cluster_size_must_match_a_static_list() {
        let two = "a=http://127.0.0.1:2380,b=http://127.0.0.2:2380";
        let error = args(&[
            "--name",
            "a",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            two,
            "--initial-cluster-size",
            "3",
        ])
        .validate()
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--initial-cluster lists 2 members but --initial-cluster-size is 3"
        );
        let error = args(&["--discovery-srv", "example.com", "--initial-cluster-size", "0"])
            .validate()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--initial-cluster-size must be greater than zero"
        );
        let config = args(&["--discovery-srv", "example.com", "--initial-cluster-size", "3"])
            .validate()
            .unwrap();
        assert_eq!(config.discovery.unwrap().expected_members, Some(3));
    }

    #[test]
    fn bad_urls_and_timeouts_name_the_problem() {
        let error = args(&["--listen-client-urls", "ftp://1.2.3.4:1"])
            .validate()
            .unwrap_err();
        assert!(error.to_string().contains("--listen-client-urls"), "{error}");
        for bad in ["50ms", "soon", ""] {
            let error = args(&["--experimental-watch-progress-notify-interval", bad])
                .validate()
                .unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("--experimental-watch-progress-notify-interval"),
                "{error}"
            );
        }
        let config = args(&["--experimental-watch-progress-notify-interval", "1s"])
            .validate()
            .unwrap();
        assert_eq!(config.watch_progress_interval, Duration::from_secs(1));
        let error = args(&["--election-timeout", "300"]).validate().unwrap_err();
        assert!(error.to_string().contains("at least 5 times"), "{error}");
        let error = parse_initial_cluster("a=http://h:1,oops").unwrap_err();
        assert!(error.to_string().contains("\"oops\""), "{error}");
    }

    #[test]
    fn advertised_urls_must_match_the_cluster_entry_to_bootstrap() {
        let config = args(&[
            "--name",
            "a",
            "--initial-cluster",
            "a=http://127.0.0.1:1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2",
        ])
        .validate()
        .expect("a member with data may restart under other URLs");
        let error = config.verify_bootstrap_urls().unwrap_err();
        assert!(matches!(error, ConfigError::AdvertisedMismatch { .. }));
        let matching = args(&[
            "--name",
            "a",
            "--initial-cluster",
            "a=http://127.0.0.1:1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
        ])
        .validate()
        .unwrap();
        assert!(matching.verify_bootstrap_urls().is_ok());
    }

    #[test]
    fn config_file_keys_are_flag_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.yaml");
        std::fs::write(&path, "name: infra1\ninitial-cluster: infra1=http://127.0.0.1:3380\ninitial-advertise-peer-urls: http://127.0.0.1:3380\nsnapshot-count: 5\n").unwrap();
        let config = args(&["--config-file", path.to_str().unwrap(), "--name", "ignored"])
            .with_config_file()
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!((config.name.as_str(), config.snapshot_count), ("infra1", 5));
    }

    #[test]
    fn auto_compaction_retention_reads_as_etcd_does() {
        use AutoCompaction::{Periodic, Revisions};
        let periodic = |v| parse_retention(CompactionMode::Periodic, v);
        let revision = |v| parse_retention(CompactionMode::Revision, v);
        assert_eq!(periodic("0").unwrap(), None);
        assert_eq!(periodic("1").unwrap(), Some(Periodic(Duration::from_secs(3600))));
        assert_eq!(
            periodic("30m").unwrap(),
            Some(Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            periodic("1h30m").unwrap(),
            Some(Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            periodic("1.5s").unwrap(),
            Some(Periodic(Duration::from_millis(1500)))
        );
        assert_eq!(
            periodic("250ms").unwrap(),
            Some(Periodic(Duration::from_millis(250)))
        );
        assert_eq!(revision("0").unwrap(), None);
        assert_eq!(revision("1000").unwrap(), Some(Revisions(1000)));
        for bad in ["", "1d", "h", "-1", "30 m", "1h-5m"] {
            let error = periodic(bad).unwrap_err().to_string();
            assert!(error.contains("--auto-compaction-retention"), "{bad:?}: {error}");
            assert!(error.contains("periodic"), "{error}");
        }
        for bad in ["30m", "-5", "1.5"] {
            let error = revision(bad).unwrap_err().to_string();
            assert!(error.contains("revisions to keep"), "{bad:?}: {error}");
        }
        let config = args(&[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10",
        ])
        .validate()
        .unwrap();
        assert_eq!(config.auto_compaction, Some(Revisions(10)));
        assert_eq!(args(&[]).validate().unwrap().auto_compaction, None);
    }
}
