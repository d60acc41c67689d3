//! `cairnctl`: etcdctl's verbs for Cairn (and any etcd v3 server), built on the `etcd-client` crate.

mod auth;
mod backup;
mod cli;
mod concurrency;
mod endpoint;
mod kv;
mod lease;
mod member;
mod mirror;
mod output;
mod snapshot;
mod txn;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use etcd_client::{Client, ConnectOptions};

use cli::{Cli, Command, Format, Global};

/// What every command works with: a client over all endpoints and how to print.
pub struct Session {
    pub client: Client,
    pub format: Format,
    pub global: Global,
}

impl Session {
    async fn connect(global: Global) -> anyhow::Result<Session> {
        let client = connect(&global.endpoints, &global).await?;
        Ok(Session {
            client,
            format: global.write_out,
            global,
        })
    }

    /// Refuses a format that a command has no printer for, naming both.
    pub fn require_format(&self, command: &str, supported: &[Format]) -> anyhow::Result<()> {
        if supported.contains(&self.format) {
            return Ok(());
        }
        let names: Vec<String> = supported
            .iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect();
        anyhow::bail!(
            "{command} cannot print as {}; use -w {}",
            format!("{:?}", self.format).to_lowercase(),
            names.join(" or -w ")
        )
    }
}

/// Opens a client on `endpoints`; connections are made lazily, on the first request.
pub async fn connect(endpoints: &[String], global: &Global) -> anyhow::Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(global.dial_timeout)
        .with_timeout(global.command_timeout);
    if let Some(tls) = tls_options(global)? {
        options = options.with_tls(tls);
    }
    if let Some((name, password)) = credentials(global)? {
        options = options.with_user(name, password);
    }
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| match classify(&e) {
            // A refused login says why in etcd's words, as etcdctl prints it.
            RpcError::Server(message) => anyhow::anyhow!(message),
            RpcError::Unreachable(why) => {
                anyhow::anyhow!("cannot use endpoints {}: {why}", endpoints.join(","))
            }
        })
}

/// `--user name:password`, or `--user name` with `--password`.
fn credentials(global: &Global) -> anyhow::Result<Option<(String, String)>> {
    let Some(user) = &global.user else {
        return Ok(None);
    };
    match (user.split_once(':'), &global.password) {
        (Some((name, password)), _) => Ok(Some((name.to_owned(), password.to_owned()))),
        (None, Some(password)) => Ok(Some((user.clone(), password.clone()))),
        (None, None) => Err(Exit::bad_args(&format!(
            "--user {user:?} has no password: give --user {user}:PASSWORD or --password"
        ))
        .into()),
    }
}

/// TLS as etcdctl's flags ask: on with a CA bundle or a client certificate.
fn tls_options(global: &Global) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
    use anyhow::Context;
    if global.cacert.is_none() && global.cert.is_none() {
        return Ok(None);
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &global.cacert {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca, "--cacert")?));
    }
    if let (Some(cert), Some(key)) = (&global.cert, &global.key) {
        tls = tls.identity(etcd_client::Identity::from_pem(
            read(cert, "--cert")?,
            read(key, "--key")?,
        ));
    }
    Ok(Some(tls))
}

/// An error that ends cairnctl with one of etcdctl's exit codes rather than 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn invalid_input(message: &str) -> Exit {
        Exit {
            code: 3,
            message: message.to_owned(),
        }
    }

    pub fn interrupted(message: &str) -> Exit {
        Exit {
            code: 5,
            message: message.to_owned(),
        }
    }

    pub fn bad_args(message: &str) -> Exit {
        Exit {
            code: 128,
            message: message.to_owned(),
        }
    }
}

/// Why a request failed: the server said no (its message is etcd's exact text, which scripts
/// match on), or no endpoint could be reached.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    Server(String),
    #[error("{0}")]
    Unreachable(String),
}

pub fn describe(error: &etcd_client::Error) -> String {
    classify(error).to_string()
}

fn classify(error: &etcd_client::Error) -> RpcError {
    match error {
        etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Unavailable => {
            RpcError::Unreachable(status.message().to_owned())
        }
        etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Cancelled => {
            RpcError::Unreachable(format!("context deadline exceeded ({})", status.message()))
        }
        etcd_client::Error::GRpcStatus(status) => RpcError::Server(status.message().to_owned()),
        etcd_client::Error::TransportError(error) => RpcError::Unreachable(error.to_string()),
        other => RpcError::Server(other.to_string()),
    }
}

/// Turns client errors into messages a user can act on.
pub trait Rpc<T> {
    fn rpc(self) -> anyhow::Result<T>;
}

impl<T> Rpc<T> for Result<T, etcd_client::Error> {
    fn rpc(self) -> anyhow::Result<T> {
        self.map_err(|e| classify(&e).into())
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let endpoints = cli.global.endpoints.join(",");
    // Snapshot files are read and restored here, without a server.
    if let Command::Snapshot(command) = cli.command {
        return match command {
            cli::SnapshotCommand::Save { filename } => {
                let mut session = Session::connect(cli.global).await?;
                let saved = endpoint::snapshot_save(&mut session, filename).await;
                saved.map_err(|error| unreachable_named(&endpoints, error))
            }
            offline => snapshot::run_offline(offline, cli.global.write_out),
        };
    }
    if let Command::Backup(command) = cli.command {
        return match command {
            cli::BackupCommand::Save(args) => {
                let mut session = Session::connect(cli.global).await?;
                let saved = backup::save(&mut session, args).await;
                saved.map_err(|error| unreachable_named(&endpoints, error))
            }
            offline => backup::run_offline(offline, cli.global.write_out).await,
        };
    }
    let mut session = Session::connect(cli.global).await?;
    let outcome = match cli.command {
        Command::Put(args) => kv::put(&mut session, args).await,
        Command::Get(args) => kv::get(&mut session, args).await,
        Command::Del(args) => kv::del(&mut session, args).await,
        Command::Txn(args) => kv::txn(&mut session, args).await,
        Command::Compaction(args) => kv::compaction(&mut session, args).await,
        Command::Lease(command) => lease::run(&mut session, command).await,
        Command::Member(command) => member::run(&mut session, command).await,
        Command::Endpoint(command) => endpoint::run(&mut session, command).await,
        Command::MoveLeader(args) => endpoint::move_leader(&mut session, args).await,
        Command::Snapshot(_) | Command::Backup(_) => unreachable!("run before connecting"),
        Command::Watch(args) => watch::run(&mut session, args).await,
        Command::Lock(args) => concurrency::lock(&mut session, args).await,
        Command::Elect(args) => concurrency::elect(&mut session, args).await,
        Command::MakeMirror(args) => mirror::run(&mut session, args).await,
        Command::User(command) => auth::user(&mut session, command).await,
        Command::Role(command) => auth::role(&mut session, command).await,
        Command::Auth(command) => auth::auth(&mut session, command).await,
    };
    outcome.map_err(|error| unreachable_named(&endpoints, error))
}

/// Names the endpoints in an error that says they could not be reached.
fn unreachable_named(endpoints: &str, error: anyhow::Error) -> anyhow::Error {
    match error.downcast_ref::<RpcError>() {
        Some(RpcError::Unreachable(why)) => anyhow::anyhow!("cannot reach {endpoints}: {why}"),
        _ => error,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:#}");
            match error.downcast_ref::<Exit>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}
