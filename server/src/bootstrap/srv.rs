//! DNS SRV bootstrap (etcd's `--discovery-srv`): the initial members are the targets of
//! `_cairn-server._tcp.<domain>` (or `_cairn-server-<name>._tcp.<domain>` with
//! `--discovery-srv-name`); a member whose own peer URLs are https:// looks up
//! `_cairn-server-ssl._tcp` instead, or `_cairn-server._tcp` when that has no records (a Kubernetes
//! Service cannot publish the longer name), and reaches its peers over TLS. This member is the
//! target that resolves to its own advertised peer address. Peers that start later are published
//! later, so with `--initial-cluster-size` the member looks again until the
//! records list the whole initial cluster instead of bootstrapping from part of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::config::SrvDiscovery;

#[derive(Debug, thiserror::Error)]
pub enum SrvError {
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
    #[error("DNS SRV lookup of {name} failed: {reason}")]
    Lookup { name: String, reason: String },
    #[error("DNS SRV lookup of {name} returned no members")]
    Empty { name: String },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error(
        "cannot find local member {name:?} in SRV records {record} (advertised peer URLs {advertised:?})"
    )]
    SelfNotListed {
        name: String,
        record: String,
        advertised: Vec<String>,
    },
    #[error("SRV records {record} list {listed} members but --initial-cluster-size is {expected}")]
    Incomplete {
        record: String,
        listed: usize,
        expected: usize,
    },
    #[error("SRV records {record} list {listed} members, more than --initial-cluster-size {expected}")]
    TooMany {
        record: String,
        listed: usize,
        expected: usize,
    },
}

impl SrvError {
    /// Whether looking again later can give another answer (records still being published).
    fn may_change(&self) -> bool {
        !matches!(self, SrvError::Resolver(_) | SrvError::TooMany { .. })
    }
}

/// The SRV record name for a domain and optional service name suffix, of TLS peers or plain ones.
pub fn record_name(domain: &str, service_name: Option<&str>, tls: bool) -> String {
    let ssl = if tls { "-ssl" } else { "" };
    let suffix = service_name
        .filter(|s| !s.is_empty())
        .map(|s| format!("-{s}"))
        .unwrap_or_default();
    format!(
        "_cairn-server{ssl}{suffix}._tcp.{}.",
        domain.trim_end_matches('.')
    )
}

/// Whether this member's peers are reached over TLS: its own peer URLs say so.
fn tls_peers(advertised_peer_urls: &[String]) -> bool {
    advertised_peer_urls.iter().any(|u| u.starts_with("https://"))
}

fn resolver(nameserver: Option<SocketAddr>) -> Result<Resolver<TokioRuntimeProvider>, SrvError> {
    let failed = |e: &dyn std::fmt::Display| SrvError::Resolver(e.to_string());
    match nameserver {
        Some(addr) => {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut server.connections {
                connection.port = addr.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            )
            .build()
            .map_err(|e| failed(&e))
        }
        None => Resolver::builder_tokio()
            .map_err(|e| failed(&e))?
            .build()
            .map_err(|e| failed(&e)),
    }
}

async fn addresses(host_port: &str) -> Result<Vec<SocketAddr>, SrvError> {
    tokio::net::lookup_host(host_port)
        .await
        .map(Iterator::collect)
        .map_err(|e| SrvError::Resolve {
            host: host_port.to_owned(),
            reason: e.to_string(),
        })
}

/// The initial cluster from SRV records as configured: one look (as etcd does) or, with an
/// expected size, looks every few seconds until the records list exactly that many members,
/// this one among them. Waiting has no deadline: a pod waits for its peers' pods, and says so.
pub async fn initial_cluster(
    srv: &SrvDiscovery,
    name: &str,
    advertised_peer_urls: &[String],
) -> Result<BTreeMap<String, Vec<String>>, SrvError> {
    let look = || {
        discover(
            &srv.domain,
            srv.service_name.as_deref(),
            srv.nameserver,
            name,
            advertised_peer_urls,
        )
    };
    let Some(expected) = srv.expected_members else {
        return look().await;
    };
    let record = record_name(
        &srv.domain,
        srv.service_name.as_deref(),
        tls_peers(advertised_peer_urls),
    );
    let mut pause = Duration::from_millis(200);
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let error = match look().await {
            Ok(members) if members.len() == expected => return Ok(members),
            Ok(members) if members.len() > expected => {
                return Err(SrvError::TooMany {
                    record,
                    listed: members.len(),
                    expected,
                });
            }
            Ok(members) => SrvError::Incomplete {
                record: record.clone(),
                listed: members.len(),
                expected,
            },
            Err(error) => error,
        };
        if !error.may_change() {
            return Err(error);
        }
        tracing::info!(attempt, %error, "waiting for the SRV records to list the initial cluster");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Builds the initial cluster from SRV records: this member under `name`, the others under their
/// position in the answer. Member IDs depend only on URLs and token, so names of others do not matter.
pub async fn discover(
    domain: &str,
    service_name: Option<&str>,
    nameserver: Option<SocketAddr>,
    name: &str,
    advertised_peer_urls: &[String],
) -> Result<BTreeMap<String, Vec<String>>, SrvError> {
    let tls = tls_peers(advertised_peer_urls);
    let record = record_name(domain, service_name, tls);
    let resolver = resolver(nameserver)?;
    let answer = match resolver.lookup(record.as_str(), RecordType::SRV).await {
        Ok(answer) => answer,
        // Kubernetes names SRV records after Service ports, whose names are at most 15
        // characters: `cairn-server-ssl` cannot be one. TLS peers published under the plain
        // name are reached over TLS all the same.
        Err(ssl_error) if tls => {
            let plain = record_name(domain, service_name, false);
            resolver
                .lookup(plain.as_str(), RecordType::SRV)
                .await
                .map_err(|plain_error| SrvError::Lookup {
                    name: format!("{record} and {plain}"),
                    reason: format!("{ssl_error}; {plain_error}"),
                })?
        }
        Err(error) => {
            return Err(SrvError::Lookup {
                name: record.clone(),
                reason: error.to_string(),
            });
        }
    };
    let mut mine = Vec::new();
    for url in advertised_peer_urls {
        let host_port = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        mine.extend(addresses(host_port).await?);
    }
    let mut members = BTreeMap::new();
    let mut others = 0;
    for item in answer.answers() {
        let RData::SRV(srv) = &item.data else { continue };
        let target = srv.target.to_utf8();
        let host_port = format!("{}:{}", target.trim_end_matches('.'), srv.port);
        let url = format!("{}://{host_port}", if tls { "https" } else { "http" });
        let resolved = addresses(&host_port).await?;
        if resolved.iter().any(|a| mine.contains(a)) {
            members.insert(name.to_owned(), vec![url]);
        } else {
            members.insert(others.to_string(), vec![url]);
            others += 1;
        }
    }
    if members.is_empty() {
        return Err(SrvError::Empty { name: record });
    }
    if !members.contains_key(name) {
        return Err(SrvError::SelfNotListed {
            name: name.to_owned(),
            record,
            advertised: advertised_peer_urls.to_vec(),
        });
    }
    Ok(members)
}
