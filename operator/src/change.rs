//! Carrying out the steps that go through the cluster's own API (MemberAdd, MemberPromote,
//! MoveLeader, MemberRemove, MemberUpdate, turning auth on and off). They are sent to the leader: MoveLeader
//! must be, and the others then need no forwarding.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, MemberAddOptions};

use crate::access::{self, Access, MemberAddress};
use crate::membership::Step;

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{action} through {endpoint}: {source}")]
    Refused {
        action: String,
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{action}: the operator does not have {missing}")]
    Missing { action: String, missing: &'static str },
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `step` to the `leader`, logged in with the operator's credentials while auth is on;
/// steps that are not cluster calls do nothing.
pub async fn send(step: &Step, leader: &MemberAddress, access: &Access) -> Result<(), ChangeError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(TIMEOUT);
    let (endpoint, options) = access.dial(leader, options).ok_or_else(|| ChangeError::Missing {
        action: step.describe(),
        missing: "its client certificate for the cluster",
    })?;
    let failed = |source| ChangeError::Refused {
        action: step.describe(),
        endpoint: endpoint.clone(),
        source,
    };
    let missing = |missing| ChangeError::Missing {
        action: step.describe(),
        missing,
    };
    let connect = || async {
        access::connect(&endpoint, options.clone(), access.operator.as_ref())
            .await
            .map(|(client, _)| client)
    };
    match step {
        Step::AddLearner { peer_url, .. } => {
            let mut client = connect().await.map_err(failed)?;
            client
                .member_add(
                    [peer_url.as_str()],
                    Some(MemberAddOptions::new().with_is_learner()),
                )
                .await
                .map_err(failed)?;
        }
        Step::Promote { id, .. } => {
            let mut client = connect().await.map_err(failed)?;
            client.member_promote(*id).await.map_err(failed)?;
        }
        Step::MoveLeader { to_id, .. } => {
            let mut client = connect().await.map_err(failed)?;
            client.move_leader(*to_id).await.map_err(failed)?;
        }
        Step::Remove { id, .. } | Step::Replace { id, .. } => {
            let mut client = connect().await.map_err(failed)?;
            client.member_remove(*id).await.map_err(failed)?;
        }
        Step::EnableAuth => {
            let root_password = access
                .root_password
                .as_deref()
                .ok_or_else(|| missing("root's password"))?;
            let operator = access
                .operator
                .as_ref()
                .ok_or_else(|| missing("its own credentials"))?;
            // Auth is off, so nobody logs in.
            let mut client = Client::connect([endpoint.as_str()], Some(options.clone()))
                .await
                .map_err(failed)?;
            access::enable(&mut client, root_password, operator)
                .await
                .map_err(failed)?;
        }
        Step::DisableAuth => {
            let mut client = connect().await.map_err(failed)?;
            client.auth_disable().await.map_err(failed)?;
        }
        Step::UpdatePeerUrl { id, peer_url, .. } => {
            let mut client = connect().await.map_err(failed)?;
            client
                .member_update(*id, vec![peer_url.clone()])
                .await
                .map_err(failed)?;
        }
        Step::Settled
        | Step::Wait(_)
        | Step::WriteEntry { .. }
        | Step::DropEntry { .. }
        | Step::RestartPod { .. }
        | Step::Roll { .. }
        | Step::ForceNewCluster { .. }
        | Step::DeleteClaim { .. }
        | Step::PeersOnTls => {}
    }
    Ok(())
}
