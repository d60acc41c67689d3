//! Carrying out the membership steps that go through the cluster's own API (MemberAdd,
//! MemberPromote, MoveLeader, MemberRemove). They are sent to the leader: MoveLeader must be, and
//! the others then need no forwarding.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, MemberAddOptions};

use crate::build::names::CLIENT_PORT;
use crate::membership::Step;

#[derive(Debug, thiserror::Error)]
#[error("{action} through {endpoint}: {source}")]
pub struct ChangeError {
    action: String,
    endpoint: String,
    #[source]
    source: etcd_client::Error,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `step` to the leader at `leader_ip`; steps that are not cluster calls do nothing.
pub async fn send(step: &Step, leader_ip: &str) -> Result<(), ChangeError> {
    let endpoint = format!("http://{leader_ip}:{CLIENT_PORT}");
    let failed = |source| ChangeError {
        action: step.describe(),
        endpoint: endpoint.clone(),
        source,
    };
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(TIMEOUT);
    let connect = || Client::connect([endpoint.as_str()], Some(options.clone()));
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
        Step::Settled
        | Step::Wait(_)
        | Step::WriteEntry { .. }
        | Step::DropEntry { .. }
        | Step::RestartPod { .. }
        | Step::Roll { .. }
        | Step::ForceNewCluster { .. }
        | Step::DeleteClaim { .. } => {}
    }
    Ok(())
}
