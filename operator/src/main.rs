//! `cairn-operator`: `run` reconciles KVClusters (kubeconfig or in-cluster credentials) and serves
//! `/metrics` and `/healthz`; `crd` prints the KVCluster CustomResourceDefinition (what `crds/`
//! holds).

use std::io::IsTerminal;
use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
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
    /// Reconciles every KVCluster of the cluster until SIGTERM or Ctrl-C.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Where `/metrics` and `/healthz` are served.
    #[arg(long, env = "CAIRN_OPERATOR_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// This replica's name in the Events it records (its pod name).
    #[arg(long, env = "POD_NAME", default_value = "cairn-operator")]
    instance: String,
    /// Log output format.
    #[arg(long, env = "CAIRN_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
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
    let listener = cairn_operator::http::bind(args.metrics_address)
        .await
        .with_context(|| format!("cannot listen on --metrics-address {}", args.metrics_address))?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes credentials (KUBECONFIG or in-cluster)")?;
    let context = cairn_operator::controller::Context::new(client, &args.instance)
        .await
        .context("cannot read the API server's version")?;
    let metrics = context.metrics.clone();
    tokio::spawn(async move {
        if let Err(error) = cairn_operator::http::serve(listener, metrics).await {
            tracing::error!(%error, "the metrics endpoint stopped");
        }
    });
    tracing::info!(
        pdb = context.pdb_api.api_version(),
        metrics = %args.metrics_address,
        "reconciling KVClusters"
    );
    cairn_operator::controller::run(context).await;
    Ok(())
}

fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&cairn_operator::crd::KVCluster::crd())
}
