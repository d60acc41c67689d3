//! Which member of which cluster this is: from the data dir if initialized (it wins over flags),
//! from the flags for a new cluster, or from the running cluster when joining it — and why a
//! member refuses to start.

use std::sync::Arc;
use std::time::Duration;

use crate::bootstrap::{data_dir, identity};
use crate::config::{ClusterState, Config};
use crate::network::protocol::NOT_A_MEMBER;
use crate::network::{ClusterInfo, PeerClient, PeerError};
use crate::tls::ClientTls;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("peer TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    DataDir(#[from] data_dir::DataDirError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the Raft log: {0}")]
    Log(#[from] crate::store::LogStoreError),
    #[error("cannot open the state machine: {0}")]
    StateMachine(std::io::Error),
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Force(#[from] crate::store::force::ForceError),
    #[error("--force-new-cluster: cannot write the new membership: {0}")]
    ForceWrite(std::io::Error),
    #[error(
        "data dir {dir} belongs to cluster {cluster_id:x} (token {stored:?}), but --initial-cluster-token is {given:?}; \
         refusing to mix clusters"
    )]
    OtherCluster {
        dir: String,
        cluster_id: u64,
        stored: String,
        given: String,
    },
    #[error(
        "data dir {dir} belongs to member {stored:?}, not --name {given:?}; use the data dir of this member"
    )]
    OtherMember {
        dir: String,
        stored: String,
        given: String,
    },
    #[error("cannot join the existing cluster: {0}")]
    Join(String),
    #[error(
        "member {member_id:x} already started in cluster {cluster_id:x}, but its data dir {dir} is \
         empty: its data was lost. Refusing to rejoin with no log; remove the member \
         (`member remove {member_id:x}`) and add it again"
    )]
    DataLost {
        dir: String,
        member_id: u64,
        cluster_id: u64,
    },
}

/// Finds out which member of which cluster this is: from the data dir if initialized (it wins over
/// flags), from the flags for a new cluster, or from the running cluster when joining it.
pub(super) async fn resolve_identity(
    config: &Config,
    peer_tls: Option<Arc<ClientTls>>,
) -> Result<data_dir::MemberIdentity, StartError> {
    let dir = config.data_dir.display().to_string();
    if let Some(stored) = data_dir::load(&config.data_dir)? {
        if stored.token != config.token {
            return Err(StartError::OtherCluster {
                dir,
                cluster_id: stored.cluster_id,
                stored: stored.token,
                given: config.token.clone(),
            });
        }
        if stored.name != config.name {
            return Err(StartError::OtherMember {
                dir,
                stored: stored.name,
                given: config.name.clone(),
            });
        }
        tracing::info!(%dir, "data dir is initialized; --initial-cluster flags are ignored");
        return Ok(stored);
    }
    config.verify_bootstrap_urls()?;
    let identity = match config.cluster_state {
        ClusterState::New => {
            let ids: Vec<u64> = config
                .initial_cluster
                .values()
                .map(|urls| identity::member_id(urls, &config.token, None))
                .collect();
            data_dir::MemberIdentity {
                name: config.name.clone(),
                // The cluster's own spelling of this member's URLs (SRV gives host names).
                member_id: identity::member_id(&config.initial_cluster[&config.name], &config.token, None),
                cluster_id: identity::cluster_id(&ids),
                token: config.token.clone(),
            }
        }
        ClusterState::Existing => join_existing(config, peer_tls).await?,
    };
    data_dir::save(&config.data_dir, &identity)?;
    Ok(identity)
}

/// The client side of TLS towards peers, when this member has a peer certificate.
pub fn peer_tls(config: &Config) -> Result<Option<Arc<ClientTls>>, StartError> {
    match &config.tls.peer {
        Some(files) if files.trusted_ca.is_some() => Ok(Some(Arc::new(ClientTls::new(files)?))),
        _ => Ok(None),
    }
}

/// Asks the members listed in `--initial-cluster` who is in the cluster, and checks the list matches
/// what this member was started with (etcd's ValidateClusterAndAssignIDs).
async fn join_existing(
    config: &Config,
    peer_tls: Option<Arc<ClientTls>>,
) -> Result<data_dir::MemberIdentity, StartError> {
    let client = PeerClient::new(
        0,
        0,
        crate::network::protocol::message_limit(config.max_request_bytes),
        peer_tls,
    );
    let mut errors = Vec::new();
    for (name, urls) in &config.initial_cluster {
        if *name == config.name {
            continue;
        }
        for url in urls {
            match client
                .cluster_info(url, Duration::from_secs(3), &config.advertise_peer_urls)
                .await
            {
                Ok(info) => return identity_from_cluster(config, info),
                // Said in the words an operator looks for in a pod that started too early.
                Err(PeerError::Refused { url, reason }) if reason.contains(NOT_A_MEMBER) => {
                    return Err(StartError::Join(format!(
                        "this member's peer URLs {:?} are not in the cluster of {url}; run `member add` first",
                        config.advertise_peer_urls
                    )));
                }
                Err(error) => errors.push(error.to_string()),
            }
        }
    }
    Err(StartError::Join(format!(
        "no listed peer answered: {}",
        errors.join("; ")
    )))
}

fn identity_from_cluster(config: &Config, info: ClusterInfo) -> Result<data_dir::MemberIdentity, StartError> {
    let sorted = |urls: &[String]| {
        let mut urls = urls.to_vec();
        urls.sort();
        urls
    };
    if info.members.len() != config.initial_cluster.len() {
        return Err(StartError::Join(format!(
            "assign ids error: the member count is unequal (cluster has {}, --initial-cluster lists {})",
            info.members.len(),
            config.initial_cluster.len()
        )));
    }
    for urls in config.initial_cluster.values() {
        if !info
            .members
            .iter()
            .any(|(_, member_urls)| sorted(member_urls) == sorted(urls))
        {
            return Err(StartError::Join(format!(
                "unmatched member while checking PeerURLs: {urls:?} is not a member of cluster {:x}",
                info.cluster_id
            )));
        }
    }
    let mine = sorted(&config.initial_cluster[&config.name]);
    let Some((member_id, _)) = info.members.iter().find(|(_, urls)| sorted(urls) == mine) else {
        return Err(StartError::Join(format!(
            "this member's peer URLs {mine:?} are not in cluster {:x}; run `member add` first",
            info.cluster_id
        )));
    };
    if info.removed.contains(member_id) {
        return Err(StartError::Join(
            "this member has been permanently removed from the cluster".into(),
        ));
    }
    // A started member had a data dir; an empty one now means its data was lost. Coming back
    // under the same ID would let it vote with a log it no longer has, and undo committed writes.
    if info.started.contains(member_id) {
        return Err(StartError::DataLost {
            dir: config.data_dir.display().to_string(),
            member_id: *member_id,
            cluster_id: info.cluster_id,
        });
    }
    Ok(data_dir::MemberIdentity {
        name: config.name.clone(),
        member_id: *member_id,
        cluster_id: info.cluster_id,
        token: config.token.clone(),
    })
}
