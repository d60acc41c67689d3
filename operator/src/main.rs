//! `cairn-operator`: `crd` prints the KVCluster CustomResourceDefinition (what `crds/` holds).

use anyhow::Context;
use clap::{Parser, Subcommand};
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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", crd_yaml().context("cannot render the CRD")?),
    }
    Ok(())
}

fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&cairn_operator::crd::KVCluster::crd())
}
