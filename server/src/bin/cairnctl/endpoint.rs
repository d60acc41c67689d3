//! Per-endpoint verbs: endpoint health and status, move-leader and snapshot save.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, StatusResponse};
use serde_json::{Value, json};

use crate::cli::{EndpointArgs, EndpointCommand, Format, MoveLeaderArgs, parse_hex_id};
use crate::output;
use crate::{Rpc, Session, connect, describe};
use cairn::backup::file::TrailerCheck;

/// The endpoints to visit: the given ones, or with `--cluster` every member's client URLs.
async fn endpoints(session: &mut Session, cluster: bool) -> anyhow::Result<Vec<String>> {
    if !cluster {
        return Ok(session.global.endpoints.clone());
    }
    let response = session.client.member_list().await.rpc()?;
    let urls: Vec<String> = response
        .members()
        .iter()
        .flat_map(|m| m.client_urls().iter().cloned())
        .collect();
    if urls.is_empty() {
        bail!("no member of the cluster has published client URLs yet");
    }
    Ok(urls)
}

pub async fn run(session: &mut Session, command: EndpointCommand) -> anyhow::Result<()> {
    match command {
        EndpointCommand::Health(args) => health(session, args).await,
        EndpointCommand::Status(args) => status(session, args).await,
    }
}

struct Health {
    endpoint: String,
    healthy: bool,
    took: String,
    error: String,
}

/// Healthy means a linearizable read commits through Raft and no alarm is raised (as etcdctl checks).
async fn check_health(session: &Session, endpoint: &str) -> Health {
    let started = Instant::now();
    let outcome = async {
        let mut client = connect(&[endpoint.to_owned()], &session.global).await?;
        match client.get("health", None).await {
            Ok(_) => {}
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::PermissionDenied => {}
            Err(error) => bail!("failed to commit proposal: {}", describe(&error)),
        }
        let alarms = client
            .alarm(AlarmAction::Get, AlarmType::None, Some(AlarmOptions::new()))
            .await
            .rpc()?;
        if !alarms.alarms().is_empty() {
            let names: Vec<String> = alarms
                .alarms()
                .iter()
                .map(|a| {
                    format!(
                        "memberID:{} alarm:{}",
                        a.member_id(),
                        format!("{:?}", a.alarm()).to_uppercase()
                    )
                })
                .collect();
            bail!("Active Alarm(s): {}", names.join(", "));
        }
        Ok(())
    }
    .await;
    Health {
        endpoint: endpoint.to_owned(),
        healthy: outcome.is_ok(),
        took: output::go_duration(started.elapsed()),
        error: outcome.err().map(|e| format!("{e:#}")).unwrap_or_default(),
    }
}

async fn health(session: &mut Session, args: EndpointArgs) -> anyhow::Result<()> {
    let endpoints = endpoints(session, args.cluster).await?;
    let checks = futures::future::join_all(endpoints.iter().map(|e| check_health(session, e))).await;
    match session.format {
        Format::Json => output::print_json(&Value::Array(
            checks
                .iter()
                .map(|c| {
                    output::object(&[
                        ("endpoint", json!(c.endpoint)),
                        ("health", json!(c.healthy)),
                        ("took", json!(c.took)),
                        ("error", json!(c.error)),
                    ])
                })
                .collect(),
        )),
        Format::Table => {
            let rows: Vec<Vec<String>> = checks
                .iter()
                .map(|c| {
                    vec![
                        c.endpoint.clone(),
                        c.healthy.to_string(),
                        c.took.clone(),
                        c.error.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"], &rows)
            );
        }
        Format::Simple => {
            for check in &checks {
                if check.healthy {
                    println!(
                        "{} is healthy: successfully committed proposal: took = {}",
                        check.endpoint, check.took
                    );
                } else {
                    println!("{} is unhealthy: {}", check.endpoint, check.error);
                }
            }
        }
    }
    if checks.iter().any(|c| !c.healthy) {
        bail!("unhealthy cluster");
    }
    Ok(())
}

async fn endpoint_status(session: &Session, endpoint: &str) -> anyhow::Result<StatusResponse> {
    let mut client = connect(&[endpoint.to_owned()], &session.global).await?;
    client.status().await.rpc()
}

fn status_row(endpoint: &str, status: &StatusResponse) -> Vec<String> {
    let id = status.header().map_or(0, |h| h.member_id());
    vec![
        endpoint.to_owned(),
        format!("{id:x}"),
        status.version().to_owned(),
        output::human_bytes(status.db_size().max(0) as u64),
        (status.leader() == id).to_string(),
        status.is_learner().to_string(),
        status.raft_term().to_string(),
        status.raft_index().to_string(),
        status.raft_applied_index().to_string(),
        status.errors().join(", "),
    ]
}

fn status_json(endpoint: &str, status: &StatusResponse) -> Value {
    json!({
        "Endpoint": endpoint,
        "Status": output::object(&[
            ("header", output::header(status.header())),
            ("version", json!(status.version())),
            ("dbSize", json!(status.db_size())),
            ("leader", json!(status.leader())),
            ("raftIndex", json!(status.raft_index())),
            ("raftTerm", json!(status.raft_term())),
            ("raftAppliedIndex", json!(status.raft_applied_index())),
            ("errors", json!(status.errors())),
            ("dbSizeInUse", json!(status.raft_used_db_size())),
            ("isLearner", json!(status.is_learner())),
        ]),
    })
}

async fn status(session: &mut Session, args: EndpointArgs) -> anyhow::Result<()> {
    let endpoints = endpoints(session, args.cluster).await?;
    let results = futures::future::join_all(endpoints.iter().map(|e| endpoint_status(session, e))).await;
    let mut answered = Vec::new();
    let mut failed = 0;
    for (endpoint, result) in endpoints.iter().zip(results) {
        match result {
            Ok(status) => answered.push((endpoint.as_str(), status)),
            Err(error) => {
                failed += 1;
                eprintln!("Failed to get the status of endpoint {endpoint} ({error:#})");
            }
        }
    }
    match session.format {
        Format::Json => output::print_json(&Value::Array(
            answered.iter().map(|(e, s)| status_json(e, s)).collect(),
        )),
        Format::Table => {
            let rows: Vec<Vec<String>> = answered.iter().map(|(e, s)| status_row(e, s)).collect();
            let headers = [
                "ENDPOINT",
                "ID",
                "VERSION",
                "DB SIZE",
                "IS LEADER",
                "IS LEARNER",
                "RAFT TERM",
                "RAFT INDEX",
                "RAFT APPLIED INDEX",
                "ERRORS",
            ];
            print!("{}", output::table(&headers, &rows));
        }
        Format::Simple => {
            for (endpoint, status) in &answered {
                println!("{}", status_row(endpoint, status).join(", "));
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} endpoints did not answer", endpoints.len());
    }
    Ok(())
}

/// Sends MoveLeader to whichever given endpoint leads, as leadership can only be handed over there.
pub async fn move_leader(session: &mut Session, args: MoveLeaderArgs) -> anyhow::Result<()> {
    session.require_format("move-leader", &[Format::Simple, Format::Json])?;
    let target = parse_hex_id("member", &args.target)?;
    let endpoints = session.global.endpoints.clone();
    for endpoint in &endpoints {
        let mut client = connect(std::slice::from_ref(endpoint), &session.global).await?;
        let Ok(status) = client.status().await else {
            continue;
        };
        let id = status.header().map_or(0, |h| h.member_id());
        if status.leader() != id {
            continue;
        }
        let response = client.move_leader(target).await.rpc()?;
        if session.format == Format::Json {
            output::print_json(&json!({ "header": output::header(response.header()) }));
        } else {
            println!("Leadership transferred from {id:x} to {target:x}");
        }
        return Ok(());
    }
    bail!("no leader endpoint given at {}", endpoints.join(","))
}

/// Streams a snapshot from one endpoint into `<file>.part`, checks etcd's SHA-256 trailer, fsyncs
/// and renames, so a snapshot file either is complete or does not exist.
pub async fn snapshot_save(session: &mut Session, filename: std::path::PathBuf) -> anyhow::Result<()> {
    if session.global.endpoints.len() != 1 {
        bail!(
            "snapshot must be requested from one selected endpoint, not {} ({})",
            session.global.endpoints.len(),
            session.global.endpoints.join(",")
        );
    }
    let mut partial = filename.clone().into_os_string();
    partial.push(".part");
    let partial = std::path::PathBuf::from(partial);
    let result = stream_snapshot(session, &partial).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    let size = result?;
    std::fs::rename(&partial, &filename)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), filename.display()))?;
    eprintln!(
        "Snapshot of {} saved: {}",
        session.global.endpoints[0],
        output::human_bytes(size)
    );
    println!("Snapshot saved at {}", filename.display());
    Ok(())
}

async fn stream_snapshot(session: &mut Session, path: &Path) -> anyhow::Result<u64> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut stream = session.client.snapshot().await.rpc()?;
    let mut trailer = TrailerCheck::default();
    while let Some(message) = stream.message().await.rpc()? {
        let blob = message.blob();
        file.write_all(blob)
            .with_context(|| format!("cannot write {}", path.display()))?;
        trailer.update(blob);
    }
    let Some((size, _)) = trailer.finish() else {
        bail!(
            "the snapshot stream ended early or is corrupt (SHA-256 trailer does not match); nothing saved"
        );
    };
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))?;
    Ok(size)
}
