//! `cairnctl lock` and `cairnctl elect`: a lease kept alive for the session, the Lock and Election
//! services, and etcdctl's output (the key and value held, one pair per observed leader).

use std::time::Duration;

use etcd_client::{Client, LockOptions, ResignOptions};

use crate::cli::{ElectArgs, LockArgs};
use crate::output;
use crate::{Exit, Rpc, Session};

/// Resolves on SIGINT or SIGTERM: how a lock holder or candidate is told to let go.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// A lease of `ttl` seconds kept alive in the background until the process ends (etcd's session).
async fn session_lease(client: &mut Client, ttl: i64) -> anyhow::Result<i64> {
    let id = client.lease_grant(ttl, None).await.rpc()?.id();
    let (mut keeper, mut responses) = client.lease_keep_alive(id).await.rpc()?;
    tokio::spawn(async move {
        let pause = Duration::from_millis((ttl as u64 * 1000 / 3).max(500));
        loop {
            tokio::time::sleep(pause).await;
            if keeper.keep_alive().await.is_err() || !matches!(responses.message().await, Ok(Some(_))) {
                return;
            }
        }
    });
    Ok(id)
}

/// Prints the key and its current value, as etcdctl's `get` does.
async fn print_key(client: &mut Client, key: &[u8], missing: &str) -> anyhow::Result<()> {
    let got = client.get(key, None).await.rpc()?;
    let Some(kv) = got.kvs().first() else {
        anyhow::bail!("{missing}");
    };
    output::line(kv.key());
    output::line(kv.value());
    Ok(())
}

pub async fn lock(session: &mut Session, args: LockArgs) -> anyhow::Result<()> {
    let client = &mut session.client;
    let lease = session_lease(client, args.ttl).await?;
    let locked = tokio::select! {
        locked = client.lock(args.name.as_bytes(), Some(LockOptions::new().with_lease(lease))) => locked.rpc()?,
        _ = interrupted() => {
            let _ = client.lease_revoke(lease).await;
            anyhow::bail!("context canceled");
        }
    };
    let key = locked.key().to_vec();
    let outcome = if let Some((program, arguments)) = args.command.split_first() {
        let revision = locked.header().map_or(0, |h| h.revision());
        let status = tokio::process::Command::new(program)
            .args(arguments)
            .env("ETCD_LOCK_KEY", String::from_utf8_lossy(&key).as_ref())
            .env("ETCD_LOCK_REV", revision.to_string())
            .status()
            .await;
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(anyhow::anyhow!("{status}")),
            Err(error) => Err(error.into()),
        }
    } else {
        print_key(client, &key, "lock lost on init").await?;
        interrupted().await;
        Ok(())
    };
    client.unlock(key).await.rpc()?;
    let _ = client.lease_revoke(lease).await;
    outcome
}

pub async fn elect(session: &mut Session, args: ElectArgs) -> anyhow::Result<()> {
    let client = &mut session.client;
    match (args.proposal, args.listen) {
        (None, false) => Err(Exit::bad_args("no proposal argument but -l not set").into()),
        (Some(_), true) => Err(Exit::bad_args("proposal given but -l is set").into()),
        (None, true) => {
            let mut observed = client.observe(args.name.as_bytes()).await.rpc()?;
            loop {
                tokio::select! {
                    response = observed.message() => match response.rpc()? {
                        Some(response) => if let Some(kv) = response.kv() {
                            output::line(kv.key());
                            output::line(kv.value());
                        },
                        None => anyhow::bail!("elect: observer lost"),
                    },
                    _ = interrupted() => return Ok(()),
                }
            }
        }
        (Some(proposal), false) => {
            let lease = session_lease(client, args.ttl).await?;
            let elected = tokio::select! {
                elected = client.campaign(args.name.as_bytes(), proposal.as_bytes(), lease) => elected.rpc()?,
                _ = interrupted() => {
                    let _ = client.lease_revoke(lease).await;
                    anyhow::bail!("context canceled");
                }
            };
            let leader = elected
                .leader()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("the server answered the campaign without a leader key"))?;
            print_key(client, leader.key(), "elect: session expired").await?;
            interrupted().await;
            client
                .resign(Some(ResignOptions::new().with_leader(leader)))
                .await
                .rpc()?;
            let _ = client.lease_revoke(lease).await;
            Ok(())
        }
    }
}
