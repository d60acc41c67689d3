//! `podtool`: the small program the sandbox's own tests run in pods (image `podtool`). It serves
//! HTTP for probes, and resolves names the way programs in a pod do (the pod's /etc/resolv.conf).

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::Context;
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "podtool", about = "A test workload for the sandbox")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves GET /healthz (200) and GET /status/<code> (that code) until SIGTERM.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Prints the addresses of a host name (through the system resolver: /etc/hosts, then DNS).
    Resolve { name: String },
    /// Prints the SRV records of a name as `priority weight port target`, one per line.
    Srv { name: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { listen } => {
            let app = Router::new().route("/healthz", get(|| async { "ok\n" })).route(
                "/status/{code}",
                get(|Path(code): Path<u16>| async move {
                    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
                }),
            );
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("serving on {listen}");
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    term.recv().await;
                    println!("SIGTERM: stopping");
                })
                .await?;
        }
        Command::Resolve { name } => {
            let addresses = (name.as_str(), 0)
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {name}"))?;
            let mut ips: Vec<String> = addresses.map(|a| a.ip().to_string()).collect();
            ips.sort();
            ips.dedup();
            println!("{}", ips.join("\n"));
        }
        Command::Srv { name } => {
            let resolver = hickory_resolver::Resolver::builder_tokio()
                .context("cannot read the system resolver configuration")?
                .build()
                .context("cannot build a resolver")?;
            let records = resolver
                .srv_lookup(name.as_str())
                .await
                .with_context(|| format!("no SRV records for {name}"))?;
            let mut lines: Vec<String> = records
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::SRV(srv) => Some(format!(
                        "{} {} {} {}",
                        srv.priority, srv.weight, srv.port, srv.target
                    )),
                    _ => None,
                })
                .collect();
            lines.sort();
            println!("{}", lines.join("\n"));
        }
    }
    Ok(())
}
