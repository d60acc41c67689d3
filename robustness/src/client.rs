//! The suite's etcd v3 client, through the `etcd-client` crate (a client Cairn did not write):
//! one request becomes one call, its answer a `Response`; any failure other than etcd's definite
//! `lease not found` is an unknown outcome.

use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn,
    TxnOp as EtcdTxnOp, TxnOpResponse,
};

use crate::history::{KeyValue, Request, Response, TxnOp};

/// How long one call may take before its outcome counts as unknown: a few election timeouts, so a
/// call survives a leader change but not a paused member.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of one member.
pub async fn connect(url: &str) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(CALL_TIMEOUT);
    Client::connect([url], Some(options)).await
}

/// Runs `request`; an error is `Err` with its text, except where etcd's answer is definite.
pub async fn call(client: &mut Client, request: &Request) -> Result<Response, String> {
    match run(client, request).await {
        Ok(response) => Ok(response),
        Err(error) => {
            let text = error.to_string();
            if text.contains("requested lease not found") {
                Ok(Response::LeaseNotFound)
            } else {
                Err(text)
            }
        }
    }
}

async fn run(client: &mut Client, request: &Request) -> Result<Response, etcd_client::Error> {
    Ok(match request {
        Request::Get { key, serializable } => {
            let options = serializable.then(|| GetOptions::new().with_serializable());
            let response = client.get(key.as_str(), options).await?;
            Response::Get {
                revision: revision(response.header()),
                kv: response.kvs().first().map(key_value),
            }
        }
        Request::List { prefix } => {
            let response = client
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await?;
            Response::List {
                revision: revision(response.header()),
                kvs: response.kvs().iter().map(key_value).collect(),
            }
        }
        Request::Put { key, value, lease } => {
            let options = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
            let response = client.put(key.as_str(), value.as_str(), options).await?;
            Response::Put {
                revision: revision(response.header()),
            }
        }
        Request::Delete { key } => {
            let response = client.delete(key.as_str(), None).await?;
            Response::Delete {
                revision: revision(response.header()),
                deleted: response.deleted(),
            }
        }
        Request::Txn {
            compares,
            success,
            failure,
        } => {
            let txn = Txn::new()
                .when(
                    compares
                        .iter()
                        .map(|c| EtcdCompare::mod_revision(c.key.as_str(), CompareOp::Equal, c.mod_revision))
                        .collect::<Vec<_>>(),
                )
                .and_then(success.iter().map(txn_op).collect::<Vec<_>>())
                .or_else(failure.iter().map(txn_op).collect::<Vec<_>>());
            let response = client.txn(txn).await?;
            let gets = response
                .op_responses()
                .into_iter()
                .filter_map(|op| match op {
                    TxnOpResponse::Get(get) => Some(get.kvs().first().map(key_value)),
                    _ => None,
                })
                .collect();
            Response::Txn {
                revision: revision(response.header()),
                succeeded: response.succeeded(),
                gets,
            }
        }
        Request::LeaseGrant { ttl } => {
            let response = client.lease_grant(*ttl, None).await?;
            Response::LeaseGrant { id: response.id() }
        }
        Request::LeaseRevoke { id } => {
            let response = client.lease_revoke(*id).await?;
            Response::LeaseRevoke {
                revision: revision(response.header()),
            }
        }
    })
}

fn txn_op(op: &TxnOp) -> EtcdTxnOp {
    match op {
        TxnOp::Put { key, value } => EtcdTxnOp::put(key.as_str(), value.as_str(), None),
        TxnOp::Delete { key } => EtcdTxnOp::delete(key.as_str(), None),
        TxnOp::Get { key } => EtcdTxnOp::get(key.as_str(), None),
    }
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(-1, |h| h.revision())
}

pub fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

/// The member's current revision, read linearizably (a health check that needs a quorum).
pub async fn linearizable_revision(url: &str) -> Result<i64, etcd_client::Error> {
    let mut client = connect(url).await?;
    let response = client.get("health", None).await?;
    Ok(revision(response.header()))
}

/// (the leader's ID, this member's ID) as the member at `url` sees them.
pub async fn leader_of(url: &str) -> Result<(u64, u64), etcd_client::Error> {
    let mut client = connect(url).await?;
    let status = client.status().await?;
    Ok((status.leader(), status.header().map_or(0, |h| h.member_id())))
}

/// A member as the cluster lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

fn listed(members: &[etcd_client::Member]) -> Vec<Listed> {
    members
        .iter()
        .map(|m| Listed {
            id: m.id(),
            name: m.name().to_owned(),
            peer_urls: m.peer_urls().to_vec(),
            is_learner: m.is_learner(),
        })
        .collect()
}

pub async fn member_list(url: &str) -> Result<Vec<Listed>, etcd_client::Error> {
    let mut client = connect(url).await?;
    Ok(listed(client.member_list().await?.members()))
}

pub async fn member_remove(url: &str, id: u64) -> Result<(), etcd_client::Error> {
    connect(url).await?.member_remove(id).await.map(drop)
}

/// Adds a member at `peer_url`; its new ID and the members after the change.
pub async fn member_add(
    url: &str,
    peer_url: &str,
    learner: bool,
) -> Result<(u64, Vec<Listed>), etcd_client::Error> {
    let options = learner.then(|| etcd_client::MemberAddOptions::new().with_is_learner());
    let response = connect(url).await?.member_add([peer_url], options).await?;
    let id = response.member().map_or(0, |m| m.id());
    Ok((id, listed(response.member_list())))
}

pub async fn member_promote(url: &str, id: u64) -> Result<(), etcd_client::Error> {
    connect(url).await?.member_promote(id).await.map(drop)
}
