//! Snapshot files: the serialized state machine with its Raft metadata, written atomically (temp
//! file, fsync, rename, fsync of the directory) and checksummed, newest one kept.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::SnapshotMeta;

const SUFFIX: &str = ".snap";

/// A snapshot as stored: Raft metadata plus the state machine bytes.
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

fn file_name(meta: &SnapshotMeta) -> String {
    let index = meta.last_log_id.as_ref().map_or(0, |l| l.index);
    format!("{index:016x}{SUFFIX}")
}

/// Writes `snapshot` durably and removes older snapshot files.
pub fn save(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let meta_bytes = postcard::to_stdvec(meta).map_err(io::Error::other)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&meta_bytes);
    hasher.update(data);
    let name = file_name(meta);
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut file = File::create(&tmp)?;
        file.write_all(&(meta_bytes.len() as u64).to_le_bytes())?;
        file.write_all(&meta_bytes)?;
        file.write_all(data)?;
        file.write_all(&hasher.finalize().to_le_bytes())?;
        file.sync_all()?;
    }
    let target = dir.join(&name);
    fs::rename(&tmp, &target)?;
    File::open(dir)?.sync_all()?;
    for old in list(dir)? {
        if old != target {
            fs::remove_file(old)?;
        }
    }
    Ok(())
}

fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if !dir.exists() {
        return Ok(files);
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(SUFFIX) {
            files.push(path);
        } else if name.ends_with(".tmp") {
            // Left by a crash during save: never renamed, so never relied upon.
            fs::remove_file(&path)?;
        }
    }
    files.sort();
    Ok(files)
}

/// Loads the newest snapshot, if any. A damaged snapshot is an error, never silently skipped.
pub fn load_latest(dir: &Path) -> io::Result<Option<SnapshotFile>> {
    let Some(path) = list(dir)?.pop() else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    File::open(&path)?.read_to_end(&mut bytes)?;
    let corrupt = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot {}: {what}", path.display()),
        )
    };
    if bytes.len() < 12 {
        return Err(corrupt("truncated"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let meta_len = u64::from_le_bytes(body[..8].try_into().map_err(|_| corrupt("truncated"))?) as usize;
    let Some(meta_bytes) = body.get(8..8 + meta_len) else {
        return Err(corrupt("truncated metadata"));
    };
    let data = &body[8 + meta_len..];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(meta_bytes);
    hasher.update(data);
    if hasher.finalize().to_le_bytes() != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let meta = postcard::from_bytes(meta_bytes).map_err(|e| corrupt(&e.to_string()))?;
    Ok(Some(SnapshotFile {
        meta,
        data: data.to_vec(),
    }))
}
