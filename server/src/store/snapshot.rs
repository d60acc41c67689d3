//! Snapshot files: the serialized state machine with its Raft metadata, opening with the file's
//! format version, written atomically (temp file, fsync, rename, fsync of the directory) and
//! checksummed, newest one kept.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::SnapshotMeta;

const SUFFIX: &str = ".snap";

/// Every snapshot file this build writes opens with this magic and the format version, as a u32.
const MAGIC: &[u8; 8] = b"CAIRNSNP";
/// The snapshot format this build writes. Version 1 is the first release's: no header, the
/// metadata length first. Both are read; what follows is the same.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;

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
    save_with(dir, meta, &mut |out| out.write_all(data))
}

/// Checksums what passes through on its way to the file.
struct Checksummed<W: Write> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// As `save`, with the state written by `write_data` straight into the file, so a state never has
/// to be held encoded in memory beside itself (a restore of a large backup writes this way).
pub fn save_with(
    dir: &Path,
    meta: &SnapshotMeta,
    write_data: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let meta_bytes = postcard::to_stdvec(meta).map_err(io::Error::other)?;
    let name = file_name(meta);
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut file = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        file.write_all(MAGIC)?;
        file.write_all(&SNAPSHOT_FORMAT_VERSION.to_le_bytes())?;
        file.write_all(&(meta_bytes.len() as u64).to_le_bytes())?;
        let mut body = Checksummed {
            inner: file,
            hasher: crc32fast::Hasher::new(),
        };
        body.write_all(&meta_bytes)?;
        write_data(&mut body)?;
        let crc = body.hasher.finalize();
        let mut file = body.inner;
        file.write_all(&crc.to_le_bytes())?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
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
    let start = if bytes.starts_with(MAGIC) {
        let version = bytes
            .get(MAGIC.len()..MAGIC.len() + 4)
            .map(|v| u32::from_le_bytes(v.try_into().expect("four bytes")))
            .ok_or_else(|| corrupt("truncated header"))?;
        match version {
            2 => MAGIC.len() + 4,
            v if v > SNAPSHOT_FORMAT_VERSION => {
                return Err(corrupt(&format!(
                    "format version {v} is newer than this cairn reads (versions 1 to \
                     {SNAPSHOT_FORMAT_VERSION}); start the member with the cairn release that wrote it, or a \
                     newer one"
                )));
            }
            v => return Err(corrupt(&format!("unknown format version {v}"))),
        }
    } else {
        0
    };
    let bytes = &bytes[start..];
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LogId, StoredMembership};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId {
                leader_id: openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 },
                index,
            }),
            last_membership: StoredMembership::default(),
        }
    }

    #[test]
    fn files_open_with_their_format_version_and_first_release_files_still_load() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &meta(5), b"state").unwrap();
        let written = fs::read(dir.path().join(file_name(&meta(5)))).unwrap();
        assert_eq!(&written[..8], MAGIC);
        assert_eq!(written[8..12], SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        let loaded = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!((loaded.meta, loaded.data), (meta(5), b"state".to_vec()));
        // The same snapshot as the first release laid it out: no header.
        let legacy = dir.path().join(file_name(&meta(6)));
        fs::write(&legacy, &written[12..]).unwrap();
        let loaded = load_latest(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.data, b"state".to_vec());
    }

    #[test]
    fn a_file_from_a_newer_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &meta(5), b"state").unwrap();
        let path = dir.path().join(file_name(&meta(5)));
        let mut bytes = fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let error = load_latest(dir.path()).err().expect("a newer format is refused");
        assert!(
            error
                .to_string()
                .contains("format version 3 is newer than this cairn reads"),
            "{error}"
        );
    }
}
