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

/// The restore's target, or `None` when `--skip-if-initialized` finds a member in the data dir
/// or `--bootstrap-file` says the member joins a running cluster.
pub fn target(mut flags: RestoreFlags) -> anyhow::Result<Option<RestoreTarget>> {
    if let Some(file) = flags.bootstrap_file.take() {
        match from_bootstrap_file(&file, &flags.name)? {
            Some((initial_cluster, peer_urls)) => {
                flags.initial_cluster = initial_cluster;
                flags.initial_advertise_peer_urls = peer_urls;
            }
            None => {
                eprintln!(
                    "{} joins a running cluster ({}); nothing restored",
                    flags.name,
                    file.display()
                );
                return Ok(None);
            }
        }
    }
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

/// From a member's bootstrap file: `--initial-cluster` and the member's peer URLs when it forms a
/// new cluster, None when it joins a running one.
fn from_bootstrap_file(file: &std::path::Path, name: &str) -> anyhow::Result<Option<(String, Vec<String>)>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let keys: std::collections::BTreeMap<String, serde_yaml::Value> = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a bootstrap file (YAML of flag names)", file.display()))?;
    let text_of = |key: &str| keys.get(key).and_then(|v| v.as_str().map(str::to_owned));
    if text_of("initial-cluster-state").as_deref() != Some("new") {
        return Ok(None);
    }
    let initial_cluster = text_of("initial-cluster").with_context(|| {
        format!(
            "{} forms a new cluster without initial-cluster: a restore needs every member's peer URL \
             (discovery through DNS SRV cannot be restored into)",
            file.display()
        )
    })?;
    let peer_urls: Vec<String> = parse_initial_cluster(&initial_cluster)
        .context("initial-cluster")?
        .remove(name)
        .unwrap_or_default();
    anyhow::ensure!(
        !peer_urls.is_empty(),
        "{} has no entry for {name} in initial-cluster {initial_cluster}",
        file.display()
    );
    Ok(Some((initial_cluster, peer_urls)))
}
