//! `cairn-operator`: `run` reconciles KVClusters (kubeconfig or in-cluster credentials) while it
//! holds the leader lease, and serves `/metrics` and `/healthz`; `crd` prints the KVCluster
//! CustomResourceDefinition (what `crds/` holds).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use cairn_operator::election::{Elector, LeaseSettings};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;

#[derive(Debug, Parser)]
#[command(
    name = "cairn-operator",
    version,
    about = "The Kubernetes operator for Cairn clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the KVCluster CustomResourceDefinition as YAML.
    Crd,
    /// Reconciles every KVCluster of the cluster until SIGTERM or Ctrl-C, while this replica
    /// holds the leader lease (other replicas stand by).
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Where `/metrics` and `/healthz` are served.
    #[arg(long, env = "CAIRN_OPERATOR_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// This replica's name in the leader lease and in the Events it records (its pod name).
    /// Defaults to `<hostname>-<pid>`.
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Reconcile only while holding the leader lease, so that several replicas are safe.
    /// `--leader-elect=false` reconciles at once; run a single replica then.
    #[arg(long, env = "CAIRN_OPERATOR_LEADER_ELECT", action = ArgAction::Set, default_value_t = true)]
    leader_elect: bool,
    /// The namespace of the leader lease. Defaults to the operator's own namespace (in a pod) or
    /// the kubeconfig's.
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// The name of the leader lease (a `coordination.k8s.io/v1` Lease).
    #[arg(long, default_value = "cairn-operator")]
    leader_election_lease: String,
    /// Seconds a leader's lease lasts without renewal before a standby replica takes over.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds a leader keeps trying to renew before it stops (shorter than the lease duration).
    #[arg(long, default_value_t = 10)]
    renew_deadline_seconds: u64,
    /// Seconds between renewals, and between a standby replica's attempts.
    #[arg(long, default_value_t = 2)]
    retry_period_seconds: u64,
    /// Log output format.
    #[arg(long, env = "CAIRN_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Give every cluster a NetworkPolicy: its peer port open to its own members only, its
    /// client port to its own namespace, the operator's, and --client-namespaces.
    #[arg(long, env = "CAIRN_OPERATOR_NETWORK_POLICIES", action = ArgAction::Set, default_value_t = false)]
    network_policies: bool,
    /// Namespaces (comma separated) whose pods may reach every cluster's client port, with
    /// --network-policies.
    #[arg(long, env = "CAIRN_OPERATOR_CLIENT_NAMESPACES", value_delimiter = ',')]
    client_namespaces: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", crd_yaml().context("cannot render the CRD")?),
        Command::Run(args) => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into());
            let logs = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::stdout().is_terminal());
            match args.log_format {
                LogFormat::Text => logs.init(),
                LogFormat::Json => logs.json().init(),
            }
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(run(args))?;
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let instance = args.instance.clone().unwrap_or_else(default_instance);
    let listener = cairn_operator::http::bind(args.metrics_address)
        .await
        .with_context(|| format!("cannot listen on --metrics-address {}", args.metrics_address))?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes credentials (KUBECONFIG or in-cluster)")?;
    let lease = LeaseSettings {
        namespace: args
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        name: args.leader_election_lease.clone(),
        identity: instance.clone(),
        duration: Duration::from_secs(args.lease_duration_seconds),
        renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
        retry_period: Duration::from_secs(args.retry_period_seconds),
    };
    if args.leader_elect {
        lease.validate().context("invalid leader election timing")?;
    }
    let mut context = cairn_operator::controller::Context::new(client.clone(), &instance)
        .await
        .context("cannot read the API server's version")?;
    if args.network_policies {
        let clients = cairn_operator::build::network_policy::ClientNamespaces {
            operator: std::env::var("POD_NAMESPACE")
                .unwrap_or_else(|_| client.default_namespace().to_owned()),
            listed: args
                .client_namespaces
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect(),
        };
        tracing::info!(?clients, "every cluster gets a NetworkPolicy");
        context = context.with_network_policies(clients);
    }
    let metrics = context.metrics.clone();
    tokio::spawn({
        let metrics = metrics.clone();
        async move {
            if let Err(error) = cairn_operator::http::serve(listener, metrics).await {
                tracing::error!(%error, "the metrics endpoint stopped");
            }
        }
    });
    tracing::info!(
        %instance,
        pdb = context.pdb_api.api_version(),
        metrics = %args.metrics_address,
        "started"
    );
    if !args.leader_elect {
        tracing::info!("leader election is off: reconciling KVClusters");
        metrics.set_leading(true);
        cairn_operator::controller::run(context).await;
        return Ok(());
    }

    let mut elector = Elector::new(client, lease);
    let lease = elector.lease();
    tracing::info!(%lease, "waiting for the leader lease");
    let since = tokio::select! {
        since = elector.acquire() => since,
        () = stop_requested() => {
            tracing::info!("asked to stop while standing by");
            return Ok(());
        }
    };
    tracing::info!(%lease, "leading: reconciling KVClusters");
    metrics.set_leading(true);
    tokio::select! {
        () = cairn_operator::controller::run(context) => {
            // Asked to stop: hand the lease over now rather than after it expires.
            match elector.release().await {
                Ok(()) => tracing::info!(%lease, "released the leader lease"),
                Err(error) => tracing::warn!(%error, "cannot release the leader lease"),
            }
            Ok(())
        }
        lost = elector.hold(since) => {
            metrics.set_leading(false);
            // Exiting drops every reconcile under way; the restarted process stands by.
            Err(anyhow::Error::new(lost).context("stopped reconciling"))
        }
    }
}

/// `<hostname>-<pid>`: unique enough for replicas that were not given their pod name.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "cairn-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

/// SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn stop_requested() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot watch for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&cairn_operator::crd::KVCluster::crd())
}
