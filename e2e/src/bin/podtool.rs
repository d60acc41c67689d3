//! `podtool`: the small program the sandbox's own tests run in pods (image `podtool`). It serves
//! HTTP for probes and for fault tests (who is calling), fetches from other pods with a deadline,
//! and resolves names the way programs in a pod do (the pod's /etc/resolv.conf).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Path};
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
    /// Serves GET /healthz (200), GET /status/<code> (that code) and GET /peer (the caller's
    /// address) until SIGTERM.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// GET http://<address><path> (HTTP/1.0) and print the body; fails after --timeout-ms.
    Fetch {
        /// HOST:PORT; the host goes through the system resolver.
        address: String,
        #[arg(default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
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
            let app =
                Router::new()
                    .route("/healthz", get(|| async { "ok\n" }))
                    .route(
                        "/status/{code}",
                        get(|Path(code): Path<u16>| async move {
                            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
                        }),
                    )
                    .route(
                        "/peer",
                        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                            format!("{}\n", peer.ip())
                        }),
                    );
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("serving on {listen}");
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    term.recv().await;
                    println!("SIGTERM: stopping");
                })
                .await?;
        }
        Command::Fetch {
            address,
            path,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let body = tokio::time::timeout(timeout, fetch(&address, &path))
                .await
                .with_context(|| format!("GET http://{address}{path}: no answer within {timeout:?}"))??;
            print!("{body}");
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

/// One HTTP/1.0 GET: the server closes the connection after the response, so the body is the rest.
async fn fetch(address: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(status.contains(" 200 "), "GET http://{address}{path}: {status}");
    Ok(body.to_owned())
}
