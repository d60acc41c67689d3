//! `cairn-operator`: `run` reconciles KVClusters (kubeconfig or in-cluster credentials), `crd`
//! prints the KVCluster CustomResourceDefinition (what `crds/` holds).

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use std::io::IsTerminal;

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
    Run,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", crd_yaml().context("cannot render the CRD")?),
        Command::Run => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .with_ansi(std::io::stdout().is_terminal())
                .init();
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("no Kubernetes credentials (KUBECONFIG or in-cluster)")?;
                let instance = std::env::var("POD_NAME").unwrap_or_else(|_| "cairn-operator".into());
                let context = cairn_operator::controller::Context::new(client, &instance)
                    .await
                    .context("cannot read the API server's version")?;
                tracing::info!(pdb = context.pdb_api.api_version(), "reconciling KVClusters");
                cairn_operator::controller::run(context).await;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}

fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&cairn_operator::crd::KVCluster::crd())
}
