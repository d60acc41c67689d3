//! Snapshot files without a server: `snapshot status` (etcdctl's columns and formats) and
//! `snapshot restore` (etcdctl's flags), for files Cairn or etcd wrote.

use anyhow::Context;
use serde_json::json;

use crate::cli::{Format, RestoreArgs, RestoreFlags, SnapshotCommand};
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
    restore_file(&args.filename, args.member)
}

/// Restores `file` into the member `flags` describe, unless `--skip-if-initialized` finds one
/// there already.
pub fn restore_file(file: &std::path::Path, flags: RestoreFlags) -> anyhow::Result<()> {
    let Some(target) = target(flags)? else {
        return Ok(());
    };
    let restored = backup::restore(file, &target)?;
    eprintln!(
        "Restored snapshot {} at revision {} into {}: member {:x} of cluster {:x}",
        file.display(),
        restored.revision,
        target.data_dir.display(),
        restored.member_id,
        restored.cluster_id
    );
    Ok(())
}

/// The restore's target, or `None` when `--skip-if-initialized` finds a member in the data dir.
pub fn target(flags: RestoreFlags) -> anyhow::Result<Option<RestoreTarget>> {
    let initial_cluster = parse_initial_cluster(&flags.initial_cluster).context("--initial-cluster")?;
    let data_dir = flags
        .data_dir
        .unwrap_or_else(|| format!("{}.cairn", flags.name).into());
    if flags.skip_if_initialized
        && let Some(member) = cairn::bootstrap::data_dir::load(&data_dir)?
    {
        eprintln!(
            "Data dir {} already holds member {} of cluster {:x}; nothing restored",
            data_dir.display(),
            member.name,
            member.cluster_id
        );
        return Ok(None);
    }
    Ok(Some(RestoreTarget {
        name: flags.name,
        data_dir,
        initial_cluster,
        token: flags.initial_cluster_token,
        advertise_peer_urls: flags.initial_advertise_peer_urls,
        skip_hash_check: flags.skip_hash_check,
    }))
}
