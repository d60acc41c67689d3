//! The `cairn` server binary: flags → validated config → member start → serve until stopped.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn::config::{Args, LogFormat};
use cairn::node::Node;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(format!("{level},openraft=warn,h2=warn,hyper=warn,tower=warn"))
        .with_context(|| format!("invalid --log-level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never into log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let mut config = Args::parse().with_config_file()?.validate()?;
    init_logging(&config.log_level, config.log_format)?;
    if let Some(bug) = cairn::planted::planted() {
        tracing::warn!(
            bug = bug.name(),
            "a bug is planted on purpose (robustness self-test build): never use this member's data"
        );
    }
    let initialized = cairn::bootstrap::data_dir::load(&config.data_dir)?.is_some();
    // An initialized data dir knows its cluster; DNS is only asked on first start.
    if let (Some(srv), false) = (&config.discovery, initialized) {
        config.initial_cluster =
            cairn::bootstrap::srv::initial_cluster(srv, &config.name, &config.advertise_peer_urls).await?;
        tracing::info!(members = ?config.initial_cluster, "initial cluster found through DNS SRV");
    }
    let node = Node::open(config, Arc::default()).await?;
    let served = cairn::server::serve(node.clone()).await?;
    node.bootstrap().await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        reason = node.stopped() => anyhow::bail!("{reason}"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = terminate.recv() => tracing::info!("terminated; stopping"),
    }
    // A leader hands over first, so writes go on without an election; the client port then closes
    // after the requests in flight, which a former leader forwards to the new one.
    let election = node.config.election_timeout;
    match node.hand_over_leadership(election * 2).await {
        Ok(Some(leader)) => tracing::info!(leader = %format!("{leader:x}"), "handed leadership over"),
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "leadership hand-over failed; stopping anyway"),
    }
    served.clients.close(Duration::from_secs(2)).await;
    node.shutdown().await;
    // A member that has not heard from the new leader yet may still forward to this one: it gets
    // "not leader" (and retries elsewhere) for a few heartbeats, then calls in flight finish before
    // the peer port closes, so none is cut off with an unknown outcome.
    tokio::time::sleep(node.config.heartbeat * 3).await;
    served.peers.close(Duration::from_secs(1)).await;
    tracing::info!("member stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn: {error:#}");
            ExitCode::FAILURE
        }
    }
}
