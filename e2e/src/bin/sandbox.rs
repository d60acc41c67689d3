//! `sandbox up | down | status | env | logs | exec`: a real Kubernetes control plane with a local
//! kubelet and cluster DNS on this machine, in the background, for kubectl, helm and Cairn's tests.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, bail};
use cairn_e2e::controlplane::{Ports, Store};
use cairn_e2e::podexec::{ContainerSpec, exec_in_pod};
use cairn_e2e::sandbox::{DEFAULT_POD_OCTET, Sandbox};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sandbox",
    about = "A real Kubernetes control plane on loopback, with a local kubelet and cluster DNS, for Cairn"
)]
struct Cli {
    /// The sandbox's directory (kubeconfig, logs, state).
    #[arg(long, global = true, env = "CAIRN_SANDBOX_DIR")]
    dir: Option<PathBuf>,
    /// kube-apiserver's port on 127.0.0.1.
    #[arg(long, global = true, env = "CAIRN_SANDBOX_API_PORT", default_value_t = Ports::default().apiserver)]
    api_port: u16,
    /// etcd's client port on 127.0.0.1 (the peer port is 10 above).
    #[arg(long, global = true, env = "CAIRN_SANDBOX_ETCD_PORT", default_value_t = Ports::default().etcd_client)]
    etcd_port: u16,
    /// Pods get addresses 127.<N>.0.2 and up; cluster DNS is 127.<N>.255.53 port 53.
    #[arg(long, global = true, env = "CAIRN_SANDBOX_POD_OCTET", default_value_t = DEFAULT_POD_OCTET, value_parser = clap::value_parser!(u8).range(1..=254))]
    pod_octet: u8,
    /// An extra image: NAME=BINARY runs BINARY for image NAME (any registry or tag).
    #[arg(long = "image", global = true, value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
    /// A directory of CRD YAML files to install before the controller manager starts.
    #[arg(long, global = true, env = "CAIRN_SANDBOX_CRDS")]
    crds: Option<PathBuf>,
    /// Run in this process's private network namespace (start it under `unshare -n`): pods'
    /// connections then come from their own addresses, and faults between pods can be injected
    /// with nftables.
    #[arg(long, global = true)]
    private_network: bool,
    /// What stores the API objects: Debian's etcd, or a Cairn member (the `cairn` built beside
    /// this program).
    #[arg(
        long,
        global = true,
        env = "CAIRN_SANDBOX_STORE",
        value_enum,
        default_value = "etcd"
    )]
    store: Store,
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Starts the sandbox (nothing happens when it is up already).
    Up,
    /// Stops the sandbox and everything it started.
    Down,
    /// Says whether the sandbox is up.
    Status,
    /// Prints KUBECONFIG=<path>, for `export $(sandbox env)`.
    Env,
    /// Prints a container's log (the kubelet keeps one per container, and the one before).
    Logs {
        /// NAMESPACE/POD
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        /// The log of the previous run of the container.
        #[arg(short, long)]
        previous: bool,
    },
    /// Runs a command inside a pod: its mounts, hostname, /etc/hosts, DNS and environment.
    Exec {
        /// NAMESPACE/POD
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Runs the sandbox in the foreground (what `up` starts in the background).
    Run,
    /// Used by the kubelet: enters a container's namespaces and runs its program.
    #[command(hide = true)]
    PodExec {
        #[arg(long)]
        spec: PathBuf,
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
}

fn parse_image(text: &str) -> Result<(String, PathBuf), String> {
    let (name, binary) = text
        .split_once('=')
        .ok_or_else(|| format!("--image {text:?}: expected NAME=BINARY"))?;
    Ok((name.to_owned(), PathBuf::from(binary)))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut sandbox = Sandbox::default();
    if let Some(dir) = cli.dir {
        sandbox.dir = dir;
    }
    sandbox.ports = Ports {
        etcd_client: cli.etcd_port,
        etcd_peer: cli.etcd_port + 10,
        apiserver: cli.api_port,
    };
    sandbox.pod_octet = cli.pod_octet;
    sandbox.images = cli.images;
    sandbox.crds = cli.crds;
    sandbox.private_network = cli.private_network;
    sandbox.store = cli.store;
    match cli.command {
        Action::Up => {
            let me = std::env::current_exe().context("cannot find the sandbox binary itself")?;
            sandbox.up(&me, &|line| eprintln!("sandbox: {line}"))?;
            println!("KUBECONFIG={}", sandbox.kubeconfig().display());
        }
        Action::Down => {
            sandbox.down()?;
            eprintln!("sandbox: down");
        }
        Action::Status => {
            if sandbox.is_up() {
                println!(
                    "up: kube-apiserver https://127.0.0.1:{}, cluster DNS {}, {}",
                    sandbox.ports.apiserver,
                    sandbox.dns_address(),
                    sandbox.dir.display()
                );
            } else {
                println!("down");
                std::process::exit(3);
            }
        }
        Action::Env => println!("KUBECONFIG={}", sandbox.kubeconfig().display()),
        Action::Logs {
            pod,
            container,
            previous,
        } => {
            let (namespace, name) = split_pod(&pod)?;
            let log = sandbox.container_log(namespace, name, container.as_deref(), previous)?;
            let text = std::fs::read(&log).with_context(|| format!("cannot read {}", log.display()))?;
            use std::io::Write;
            std::io::stdout().write_all(&text)?;
        }
        Action::Exec {
            pod,
            container,
            command,
        } => {
            let (namespace, name) = split_pod(&pod)?;
            let spec_file = sandbox.container_spec(namespace, name, container.as_deref())?;
            let spec = ContainerSpec::read(&spec_file)?;
            return Err(exec_in_pod(&spec, &command).into());
        }
        Action::Run => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init();
            sandbox.run()?;
        }
        Action::PodExec { spec, command } => {
            let spec = ContainerSpec::read(&spec)?;
            return Err(exec_in_pod(&spec, &command).into());
        }
    }
    Ok(())
}

fn split_pod(pod: &str) -> anyhow::Result<(&str, &str)> {
    match pod.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok((namespace, name)),
        _ => bail!("expected NAMESPACE/POD, got {pod:?}"),
    }
}
