//! Snapshot files: an etcd backend database followed by the SHA-256 of its bytes, the layout etcd's
//! `Maintenance.Snapshot` streams and its tools check. Opening one checks the hash before any page
//! is trusted; files of Cairn's first snapshot format (`CAIRNSN1`) are still read, converted.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::BackupError;
use super::backend::Backend;
use super::bolt::{self, Database, Item};
use crate::store::Machine;

/// Bytes of the SHA-256 trailer.
pub const HASH_LEN: u64 = 32;
/// Cairn's first snapshot format: this magic, the state's length, the state, zeros to a multiple of
/// 512 bytes, then the SHA-256 of all that.
const FIRST_FORMAT_MAGIC: &[u8; 8] = b"CAIRNSN1";

/// etcd's snapshot status hash: CRC-32C over bucket names, keys and values.
const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Hashes what passes through on its way to `inner`.
struct Hashing<'a> {
    inner: &'a mut dyn Write,
    hasher: Sha256,
}

impl Write for Hashing<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the snapshot file of `machine` to `out`: the database, then its SHA-256. `sized` learns
/// the file's size before the first byte is written (a stream announces it).
pub fn write_snapshot(machine: &Machine, sized: impl FnOnce(u64), out: &mut dyn Write) -> io::Result<()> {
    let backend = Backend::new(machine);
    let layout = bolt::plan(&backend)?;
    sized(layout.size() + HASH_LEN);
    let mut hashing = Hashing {
        inner: out,
        hasher: Sha256::new(),
    };
    bolt::write(&backend, &layout, &mut hashing)?;
    let digest = hashing.hasher.finalize();
    hashing.inner.write_all(&digest)?;
    hashing.inner.flush()
}

/// A snapshot file opened for reading, its hash checked when it has one.
pub struct SnapshotFile {
    pub db: Database,
    pub hash_checked: bool,
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> BackupError + '_ {
    move |error| BackupError::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// The SHA-256 of the first `len` bytes of `file`, read in bounded pieces.
fn sha256_of(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let mut hasher = Sha256::new();
    let mut reader = io::BufReader::with_capacity(1 << 20, file.take(len));
    io::copy(&mut reader, &mut hasher)?;
    Ok(hasher.finalize().to_vec())
}

impl SnapshotFile {
    /// Opens `path`. A file whose size is a multiple of 512 plus 32 carries a SHA-256 trailer (as
    /// etcd decides) that must match; one without may be opened only when `require_hash` is off.
    pub fn open(path: &Path, require_hash: bool) -> Result<SnapshotFile, BackupError> {
        let io = io_error(path);
        let file = File::open(path).map_err(&io)?;
        let len = file.metadata().map_err(&io)?.len();
        let mut magic = [0; 8];
        if len >= 8 {
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).map_err(&io)?;
        }
        let has_hash = len % 512 == HASH_LEN && len >= HASH_LEN;
        if has_hash {
            let mut trailer = vec![0; HASH_LEN as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut trailer, len - HASH_LEN).map_err(&io)?;
            if sha256_of(&file, len - HASH_LEN).map_err(&io)? != trailer {
                return Err(BackupError::HashMismatch {
                    path: path.display().to_string(),
                });
            }
        }
        if &magic == FIRST_FORMAT_MAGIC {
            return convert_first_format(path, &file, len);
        }
        let db_len = if has_hash { len - HASH_LEN } else { len };
        // A file that is no database at all is named as such before its missing trailer.
        let db = Database::open(file, db_len)?;
        if !has_hash && require_hash {
            return Err(BackupError::MissingHash {
                path: path.display().to_string(),
            });
        }
        Ok(SnapshotFile {
            db,
            hash_checked: has_hash,
        })
    }
}

/// Reads a file of Cairn's first snapshot format and rewrites it as a database in a temporary
/// file, so that one path reads every snapshot.
fn convert_first_format(path: &Path, file: &File, len: u64) -> Result<SnapshotFile, BackupError> {
    let io = io_error(path);
    let mut header = [0; 16];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut header, 0).map_err(&io)?;
    let state_len = u64::from_le_bytes(header[8..].try_into().expect("eight bytes"));
    if state_len > len.saturating_sub(16 + HASH_LEN) {
        return Err(BackupError::Restore(format!(
            "snapshot {}: its header claims {state_len} bytes of state, more than the file holds",
            path.display()
        )));
    }
    let mut state = vec![0; state_len as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut state, 16).map_err(&io)?;
    let machine = Machine::decode(&state).map_err(|e| {
        BackupError::Restore(format!(
            "snapshot {}: the state does not decode: {e}",
            path.display()
        ))
    })?;
    drop(state);
    let mut converted = tempfile::tempfile().map_err(&io)?;
    let mut size = 0;
    let mut out = io::BufWriter::new(&mut converted);
    write_snapshot(&machine, |s| size = s, &mut out).map_err(&io)?;
    drop(out);
    Ok(SnapshotFile {
        db: Database::open(converted, size - HASH_LEN)?,
        hash_checked: true,
    })
}

/// What `snapshot status` reports, with etcd's JSON names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// etcd's snapshot status: a hash over every bucket name, key and value, the revision of the last
/// key record, the number of entries and the database's size. Every page is checked on the way.
pub fn snapshot_status(snapshot: &SnapshotFile) -> Result<Status, BackupError> {
    let mut digest = CASTAGNOLI.digest();
    let mut in_key_bucket = false;
    let mut revision = 0;
    let mut total_key = 0;
    snapshot.db.walk(&mut |item| -> Result<(), BackupError> {
        match item {
            Item::Bucket(name) => {
                digest.update(name);
                in_key_bucket = name == b"key";
            }
            Item::Entry { key, value } => {
                digest.update(key);
                digest.update(value);
                if in_key_bucket && key.len() >= 8 {
                    revision = i64::from_be_bytes(key[..8].try_into().expect("eight bytes"));
                }
                total_key += 1;
            }
        }
        Ok(())
    })?;
    Ok(Status {
        hash: digest.finalize(),
        revision,
        total_key,
        total_size: snapshot.db.size(),
    })
}

/// Follows a snapshot file as it passes: its size, and whether its last 32 bytes are the SHA-256
/// of everything before them.
#[derive(Default)]
pub struct TrailerCheck {
    hasher: Sha256,
    whole: Sha256,
    tail: Vec<u8>,
    size: u64,
}

impl TrailerCheck {
    pub fn update(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.whole.update(bytes);
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > HASH_LEN as usize {
            let spill = self.tail.len() - HASH_LEN as usize;
            self.hasher.update(&self.tail[..spill]);
            self.tail.drain(..spill);
        }
    }

    /// The size and the SHA-256 of the whole file (hex), if its trailer matched.
    pub fn finish(self) -> Option<(u64, String)> {
        let matches = self.tail.len() == HASH_LEN as usize && self.hasher.finalize().as_slice() == self.tail;
        matches.then(|| {
            let whole: String = self.whole.finalize().iter().map(|b| format!("{b:02x}")).collect();
            (self.size, whole)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::PutRequest;

    fn machine_with(keys: usize) -> Machine {
        let mut machine = Machine::default();
        for i in 0..keys {
            let put = PutRequest {
                key: format!("k{i}").into_bytes(),
                value: b"value".to_vec(),
                ..Default::default()
            };
            machine.app.mvcc.put(&put).unwrap();
        }
        machine
    }

    fn saved(machine: &Machine) -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut bytes = Vec::new();
        let mut size = 0;
        write_snapshot(machine, |s| size = s, &mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(size % 512, HASH_LEN, "etcd finds the trailer by this");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        (file, bytes)
    }

    #[test]
    fn status_counts_every_entry_and_names_the_last_revision() {
        let machine = machine_with(300);
        let (file, _) = saved(&machine);
        let status = snapshot_status(&SnapshotFile::open(file.path(), true).unwrap()).unwrap();
        assert_eq!(status.revision, machine.app.mvcc.revision());
        // 300 key records, auth's two settings, consistent index.
        assert_eq!(status.total_key, 303);
        assert_eq!(status.total_size % bolt::PAGE_SIZE as u64, 0);
    }

    #[test]
    fn damaged_truncated_and_unhashed_files_are_refused_by_name() {
        let (file, bytes) = saved(&machine_with(50));
        let write = |content: &[u8]| {
            let mut out = tempfile::NamedTempFile::new().unwrap();
            out.write_all(content).unwrap();
            out
        };
        let mut flipped = bytes.clone();
        flipped[5000] ^= 0x40;
        let error = SnapshotFile::open(write(&flipped).path(), true).err().unwrap();
        assert!(matches!(error, BackupError::HashMismatch { .. }), "{error}");
        let truncated = &bytes[..bytes.len() - 512];
        let error = SnapshotFile::open(write(truncated).path(), true).err().unwrap();
        assert!(matches!(error, BackupError::HashMismatch { .. }), "{error}");
        let unhashed = &bytes[..bytes.len() - HASH_LEN as usize];
        let error = SnapshotFile::open(write(unhashed).path(), true).err().unwrap();
        assert!(error.to_string().contains("--skip-hash-check"), "{error}");
        assert!(SnapshotFile::open(write(unhashed).path(), false).is_ok());
        let cut = &unhashed[..unhashed.len() - bolt::PAGE_SIZE];
        let error = SnapshotFile::open(write(cut).path(), false).err().unwrap();
        assert!(error.to_string().contains("truncated"), "{error}");
        assert!(SnapshotFile::open(file.path(), true).unwrap().hash_checked);
    }

    #[test]
    fn a_first_format_file_opens_as_the_same_database() {
        let machine = machine_with(40);
        let state = postcard::to_stdvec(&machine).unwrap();
        let mut bytes = FIRST_FORMAT_MAGIC.to_vec();
        bytes.extend_from_slice(&(state.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&state);
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        let mut old = tempfile::NamedTempFile::new().unwrap();
        old.write_all(&bytes).unwrap();
        let (new, _) = saved(&machine);
        let old_status = snapshot_status(&SnapshotFile::open(old.path(), true).unwrap()).unwrap();
        let new_status = snapshot_status(&SnapshotFile::open(new.path(), true).unwrap()).unwrap();
        assert_eq!(old_status, new_status);
    }
}
