//! `backup save | list | fetch`: snapshots kept in a directory or an S3-compatible bucket. Save
//! streams a snapshot from one endpoint straight into the location (never whole in memory or on
//! local disk), reads it back to verify it, then applies the retention policy.

use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use crate::cli::{
    BackupCommand, BackupFetchArgs, BackupListArgs, BackupRestoreArgs, BackupSaveArgs, Format, S3Args,
};
use crate::{Rpc, Session, output};
use cairn::backup::store::{BackupStore, Location, Retention, S3Options, backup_name, to_prune};

/// Progress is reported on stderr each time this many more bytes went up.
const PROGRESS_EVERY: u64 = 256 << 20;

/// Runs `list`, `fetch` or `restore`, which need no server; `save` streams from one and runs
/// through `save`.
pub async fn run_offline(command: BackupCommand, format: Format) -> anyhow::Result<()> {
    match command {
        BackupCommand::List(args) => list(format, args).await,
        BackupCommand::Fetch(args) => fetch(args).await,
        BackupCommand::Restore(args) => restore(args).await,
        BackupCommand::Save(_) => unreachable!("backup save streams from a server"),
    }
}

fn open(location: &str, s3: &S3Args) -> anyhow::Result<BackupStore> {
    let options = S3Options {
        endpoint: s3.s3_endpoint.clone(),
        region: s3.s3_region.clone(),
        path_style: s3.s3_path_style,
    };
    Ok(BackupStore::open(&Location::parse(location)?, &options)?)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

pub async fn save(session: &mut Session, args: BackupSaveArgs) -> anyhow::Result<()> {
    if session.global.endpoints.len() != 1 {
        bail!(
            "a backup must be taken from one selected endpoint, not {} ({})",
            session.global.endpoints.len(),
            session.global.endpoints.join(",")
        );
    }
    let store = open(&args.to, &args.s3)?;
    let started = Instant::now();
    let taken_at = now_ms();
    let mut stream = session.client.snapshot().await.rpc()?;
    let first = stream
        .message()
        .await
        .rpc()?
        .context("the endpoint sent an empty snapshot")?;
    let revision = first.header().map_or(0, |h| h.revision());
    let total = first.remaining_bytes() + first.blob().len() as u64;
    let name = backup_name(taken_at, revision);
    let first = Bytes::copy_from_slice(first.blob());
    let mut sent = first.len() as u64;
    let mut reported = 0;
    let rest = futures::stream::unfold(stream, |mut stream| async move {
        match stream.message().await {
            Ok(Some(message)) => Some((Ok(Bytes::copy_from_slice(message.blob())), stream)),
            Ok(None) => None,
            Err(error) => Some((Err(crate::describe(&error)), stream)),
        }
    });
    let chunks = futures::stream::once(async move { Ok::<Bytes, String>(first) })
        .chain(rest)
        .inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                sent += chunk.len() as u64;
                if sent - reported >= PROGRESS_EVERY {
                    reported = sent;
                    eprintln!(
                        "uploaded {} of {}",
                        output::human_bytes(sent),
                        output::human_bytes(total)
                    );
                }
            }
        });
    let uploaded = store.upload(&name, Box::pin(chunks)).await?;
    store.verify(&uploaded).await?;
    let retention = Retention {
        count: args.retain_count,
        age: args.retain_age,
    };
    let mut pruned = 0;
    if retention != Retention::default() {
        let backups = store.list().await?;
        for old in to_prune(&backups, retention, now_ms()) {
            store.delete(&old).await?;
            pruned += 1;
        }
    }
    let result = json!({
        "location": store.describe(&uploaded.name),
        "name": uploaded.name,
        "revision": revision,
        "size": uploaded.size,
        "sha256": uploaded.sha256,
        "takenAt": jiff::Timestamp::from_millisecond(taken_at)?.to_string(),
        "seconds": started.elapsed().as_secs_f64(),
        "pruned": pruned,
    });
    if let Some(path) = &args.result_file {
        std::fs::write(path, result.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    match session.format {
        Format::Json => output::print_json(&result),
        _ => println!(
            "Backup saved at {} (revision {}, {}, verified; {pruned} pruned)",
            store.describe(&uploaded.name),
            revision,
            output::human_bytes(uploaded.size)
        ),
    }
    Ok(())
}

async fn list(format: Format, args: BackupListArgs) -> anyhow::Result<()> {
    let store = open(&args.from, &args.s3)?;
    let backups = store.list().await?;
    if let Some(path) = &args.result_file {
        let newest = match args.backup.as_deref() {
            None | Some("latest") => backups
                .last()
                .with_context(|| format!("no backups in {}", args.from))?,
            Some(name) => backups
                .iter()
                .find(|b| b.name == name)
                .with_context(|| format!("no backup {name} in {}", args.from))?,
        };
        let result = json!({
            "name": newest.name,
            "revision": newest.revision,
            "size": newest.size,
            "location": store.describe(&newest.name),
            "count": backups.len(),
        });
        std::fs::write(path, result.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let rows: Vec<Vec<String>> = backups
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.revision.to_string(),
                output::human_bytes(b.size),
            ]
        })
        .collect();
    match format {
        Format::Json => output::print_json(&json!(
            backups
                .iter()
                .map(|b| json!({ "name": b.name, "revision": b.revision, "size": b.size, "location": store.describe(&b.name) }))
                .collect::<Vec<_>>()
        )),
        Format::Table => print!("{}", output::table(&["NAME", "REVISION", "SIZE"], &rows)),
        Format::Simple => {
            for row in rows {
                println!("{}", row.join(", "));
            }
        }
    }
    Ok(())
}

/// The backup `name` stands for: itself, or the newest one for `latest`.
async fn resolve(store: &BackupStore, location: &str, name: &str) -> anyhow::Result<String> {
    if name != "latest" {
        return Ok(name.to_owned());
    }
    store
        .list()
        .await?
        .pop()
        .map(|b| b.name)
        .with_context(|| format!("no backups in {location}"))
}

async fn fetch(args: BackupFetchArgs) -> anyhow::Result<()> {
    let store = open(&args.from, &args.s3)?;
    let name = resolve(&store, &args.from, &args.name).await?;
    let size = store.download(&name, &args.file).await?;
    println!(
        "Fetched {} into {} ({})",
        store.describe(&name),
        args.file.display(),
        output::human_bytes(size)
    );
    Ok(())
}

/// Downloads the backup beside the data dir, restores it, and removes the download.
async fn restore(args: BackupRestoreArgs) -> anyhow::Result<()> {
    let Some(target) = crate::snapshot::target(args.member)? else {
        return Ok(());
    };
    target.check()?;
    let store = open(&args.from, &args.s3)?;
    let name = resolve(&store, &args.from, &args.backup).await?;
    let download = target
        .data_dir
        .with_file_name(format!(".{name}.download-{}", std::process::id()));
    if let Some(parent) = download.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let fetched = store.download(&name, &download).await;
    let restored = fetched
        .map_err(anyhow::Error::from)
        .and_then(|_| cairn::backup::restore(&download, &target).map_err(anyhow::Error::from));
    let _ = std::fs::remove_file(&download);
    let restored = restored?;
    eprintln!(
        "Restored backup {} at revision {} into {}: member {:x} of cluster {:x}",
        store.describe(&name),
        restored.revision,
        target.data_dir.display(),
        restored.member_id,
        restored.cluster_id
    );
    Ok(())
}
