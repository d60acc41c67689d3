//! Snapshot files without a server: `snapshot status` (etcdctl's columns and formats) and
//! `snapshot restore` (etcdctl's flags), for files Cairn or etcd wrote.

use anyhow::Context;
use serde_json::json;

use crate::cli::{Format, RestoreArgs, SnapshotCommand};
use crate::output;
use cairn::backup::{self, RestoreTarget, SnapshotFile};
use cairn::config::parse_initial_cluster;

/// Runs `status` or `restore`; `save` needs a server and runs elsewhere.
pub fn run_offline(command: SnapshotCommand, format: Format) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Status { filename } => status(&filename, format),
        SnapshotCommand::Restore(args) => restore(args),
        SnapshotCommand::Save { .. } => unreachable!("snapshot save streams from a server"),
    }
}

fn status(path: &std::path::Path, format: Format) -> anyhow::Result<()> {
    let file = SnapshotFile::open(path, false)?;
    let status = backup::snapshot_status(&file)?;
    let hash = format!("{:x}", status.hash);
    let size = output::human_bytes(status.total_size);
    match format {
        Format::Simple => println!("{hash}, {}, {}, {size}", status.revision, status.total_key),
        Format::Json => output::print_json(&json!(status)),
        Format::Table => print!(
            "{}",
            output::table(
                &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                &[vec![
                    hash,
                    status.revision.to_string(),
                    status.total_key.to_string(),
                    size
                ]],
            )
        ),
    }
    Ok(())
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let initial_cluster = parse_initial_cluster(&args.initial_cluster).context("--initial-cluster")?;
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| format!("{}.cairn", args.name).into());
    let target = RestoreTarget {
        name: args.name,
        data_dir,
        initial_cluster,
        token: args.initial_cluster_token,
        advertise_peer_urls: args.initial_advertise_peer_urls,
        skip_hash_check: args.skip_hash_check,
    };
    let restored = backup::restore(&args.filename, &target)?;
    eprintln!(
        "Restored snapshot {} at revision {} into {}: member {:x} of cluster {:x}",
        args.filename.display(),
        restored.revision,
        target.data_dir.display(),
        restored.member_id,
        restored.cluster_id
    );
    Ok(())
}
