//! The write-ahead log on disk: checksummed records in numbered segment files, each opening with
//! its format version. One writer thread batches whatever is queued, writes it, fsyncs once and
//! only then reports the batch durable (group commit). Replay stops at a torn tail left by a crash,
//! refuses real corruption, and refuses a segment written in a format newer than this build reads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// Segments roll over at this size; whole segments are deleted once every entry in them is purged.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const FRAME_HEADER: usize = 8;

/// Every segment this build writes opens with this magic and the format version, as a u32.
const SEGMENT_MAGIC: &[u8; 8] = b"CAIRNWAL";
const SEGMENT_HEADER: usize = SEGMENT_MAGIC.len() + 4;
/// The segment format this build writes. Version 1 is the first release's: segments with no
/// header, records from the first byte. Both are read; the records inside are the same.
pub const WAL_FORMAT_VERSION: u32 = 2;

fn segment_header() -> [u8; SEGMENT_HEADER] {
    let mut header = [0; SEGMENT_HEADER];
    header[..SEGMENT_MAGIC.len()].copy_from_slice(SEGMENT_MAGIC);
    header[SEGMENT_MAGIC.len()..].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    header
}

/// Creates segment `path` with its header, durably.
fn create_segment(path: &Path) -> io::Result<BufWriter<File>> {
    let mut file = BufWriter::with_capacity(1 << 20, File::create(path)?);
    file.write_all(&segment_header())?;
    file.flush()?;
    file.get_ref().sync_data()?;
    Ok(file)
}

/// A record to persist: its encoded bytes and, for entry records, the highest log index it holds.
pub struct Record {
    pub payload: Vec<u8>,
    pub max_index: Option<u64>,
    /// Log indexes at or below this are purged: segments holding only such entries can go.
    pub purged_through: Option<u64>,
}

/// Called with the outcome once the batch holding the record is durable.
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

enum Job {
    Write {
        record: Record,
        done: Option<Done>,
    },
    /// Records to put at the head of every new segment so deleting old segments loses nothing.
    SetPreamble(Vec<Vec<u8>>),
}

/// Where fsync timings go (the WAL fsync histogram).
pub type FsyncObserver = Box<dyn Fn(std::time::Duration) + Send>;

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Wal {
    jobs: mpsc::Sender<Job>,
}

struct Segment {
    seq: u64,
    max_index: Option<u64>,
}

struct Writer {
    dir: PathBuf,
    file: BufWriter<File>,
    size: u64,
    segments: Vec<Segment>,
    preamble: Vec<Vec<u8>>,
    purged_through: Option<u64>,
    observe_fsync: FsyncObserver,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(payload.len() + FRAME_HEADER);
    framed.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    framed.extend_from_slice(payload);
    framed
}

/// The records found on disk, in write order, and what replay had to repair.
pub struct Replayed {
    pub records: Vec<Vec<u8>>,
    pub torn_tail_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "write-ahead log {path} is corrupt at byte {offset}: checksum mismatch before later valid records; \
         refusing to start rather than lose acknowledged writes"
    )]
    Corrupt { path: PathBuf, offset: u64 },
    #[error(
        "write-ahead log {path} is corrupt at byte {offset}: its last record is whole but fails its \
         checksum, which is damage, not a write cut short by a crash; refusing to start rather than \
         lose an acknowledged write"
    )]
    CorruptLast { path: PathBuf, offset: u64 },
    #[error(
        "write-ahead log {path} is in format version {version}, newer than this cairn reads (versions 1 to \
         {WAL_FORMAT_VERSION}); start the member with the cairn release that wrote it, or a newer one"
    )]
    NewerFormat { path: PathBuf, version: u32 },
    #[error("write-ahead log {path} has an unknown format version {version}")]
    UnknownFormat { path: PathBuf, version: u32 },
}

/// Whether `data` is a segment cut short while its header was being written.
fn torn_header(data: &[u8]) -> bool {
    !data.is_empty() && data.len() < SEGMENT_HEADER && SEGMENT_MAGIC.starts_with(&data[..data.len().min(8)])
}

/// Where the records of a segment begin, after checking its format version.
fn records_start(path: &Path, data: &[u8]) -> Result<usize, WalError> {
    if !data.starts_with(SEGMENT_MAGIC) {
        // Version 1: no header.
        return Ok(0);
    }
    let version = u32::from_le_bytes(
        data[SEGMENT_MAGIC.len()..SEGMENT_HEADER]
            .try_into()
            .expect("header length checked"),
    );
    match version {
        2 => Ok(SEGMENT_HEADER),
        v if v > WAL_FORMAT_VERSION => Err(WalError::NewerFormat {
            path: path.to_owned(),
            version,
        }),
        _ => Err(WalError::UnknownFormat {
            path: path.to_owned(),
            version,
        }),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Parses one frame at `offset`; `None` if what is there is not a whole, valid frame.
fn parse_frame(data: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header = data.get(offset..offset + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let payload = data.get(offset + FRAME_HEADER..offset + FRAME_HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, offset + FRAME_HEADER + len))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name.strip_suffix(".wal")
            && let Ok(seq) = u64::from_str_radix(hex, 16)
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

impl Wal {
    /// Reads every record in `dir` (creating it if needed), repairs a torn tail, and starts the writer
    /// on a fresh segment. `max_index_of` tells which log index a replayed record holds, so old
    /// segments can be deleted once purged.
    pub fn open(
        dir: &Path,
        max_index_of: impl Fn(&[u8]) -> Option<u64>,
        observe_fsync: FsyncObserver,
    ) -> Result<(Wal, Replayed), WalError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let seqs = list_segments(dir)?;
        let mut records = Vec::new();
        let mut segments = Vec::new();
        let mut torn_tail_bytes = 0;
        for (position, seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, *seq);
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io_at(&path))?;
            let is_last = position + 1 == seqs.len();
            if is_last && torn_header(&data) {
                // Created by a crash before it held anything: start it over as empty.
                data.clear();
                let file = OpenOptions::new().write(true).open(&path).map_err(io_at(&path))?;
                file.set_len(0).map_err(io_at(&path))?;
                file.sync_all().map_err(io_at(&path))?;
            }
            let mut offset = records_start(&path, &data)?;
            let mut max_index = None;
            while offset < data.len() {
                match parse_frame(&data, offset) {
                    Some((payload, next)) => {
                        max_index = max_index.max(max_index_of(payload));
                        records.push(payload.to_vec());
                        offset = next;
                    }
                    None => break,
                }
            }
            if offset < data.len() {
                if !is_last || tail_has_valid_frame(&data, offset) {
                    return Err(WalError::Corrupt {
                        path,
                        offset: offset as u64,
                    });
                }
                if !cut_short(&data, offset) {
                    return Err(WalError::CorruptLast {
                        path,
                        offset: offset as u64,
                    });
                }
                // A write the crash interrupted: it was never acknowledged, so drop it.
                torn_tail_bytes = (data.len() - offset) as u64;
                let file = OpenOptions::new().write(true).open(&path).map_err(io_at(&path))?;
                file.set_len(offset as u64).map_err(io_at(&path))?;
                file.sync_all().map_err(io_at(&path))?;
            }
            segments.push(Segment { seq: *seq, max_index });
        }
        let next_seq = seqs.last().map_or(0, |s| s + 1);
        let path = segment_path(dir, next_seq);
        let file = create_segment(&path).map_err(io_at(&path))?;
        sync_dir(dir).map_err(io_at(dir))?;
        segments.push(Segment {
            seq: next_seq,
            max_index: None,
        });
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            size: SEGMENT_HEADER as u64,
            segments,
            preamble: Vec::new(),
            purged_through: None,
            observe_fsync,
        };
        writer.note_synced();
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_at(dir))?;
        Ok((
            Wal { jobs },
            Replayed {
                records,
                torn_tail_bytes,
            },
        ))
    }

    /// Queues a record; `done` runs once it is on disk (fsynced).
    pub fn write(&self, record: Record, done: Option<Done>) {
        let done = match done {
            Some(done) if crate::planted::active(crate::planted::Bug::AckBeforeSync) => {
                done(Ok(()));
                None
            }
            done => done,
        };
        if let Err(mpsc::SendError(Job::Write { done: Some(done), .. })) =
            self.jobs.send(Job::Write { record, done })
        {
            done(Err(io::Error::other("write-ahead log writer has stopped")));
        }
    }

    /// Queues a record and waits until it is durable.
    pub async fn write_durable(&self, record: Record) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write(record, Some(Box::new(move |result| drop(tx.send(result)))));
        rx.await
            .map_err(|_| io::Error::other("write-ahead log writer has stopped"))?
    }

    /// Records every new segment starts with (latest vote, commit point, purge point).
    pub fn set_preamble(&self, records: Vec<Vec<u8>>) {
        let _ = self.jobs.send(Job::SetPreamble(records));
    }
}

/// Whether the frame at `offset` is a write a crash cut short: it runs past the end of the data,
/// or a disk sector it covers holds only zeros (a file system may grow a file before the data
/// reaches the disk). A whole frame that fails its checksum is damage instead (etcd draws the same
/// line: only a torn record is repaired).
fn cut_short(data: &[u8], offset: usize) -> bool {
    const SECTOR: usize = 512;
    let Some(header) = data.get(offset..offset + FRAME_HEADER) else {
        return true;
    };
    let len = u32::from_le_bytes(header[0..4].try_into().expect("four bytes")) as usize;
    let end = offset + FRAME_HEADER + len;
    if end > data.len() {
        return true;
    }
    let first = offset / SECTOR * SECTOR;
    (first..end).step_by(SECTOR).any(|sector| {
        data[sector.max(offset)..(sector + SECTOR).min(end)]
            .iter()
            .all(|&b| b == 0)
    })
}

fn tail_has_valid_frame(data: &[u8], bad_offset: usize) -> bool {
    // If a well-formed record follows the damaged one, the damage is not a torn final write.
    // The damaged frame's own length cannot be trusted to find it (a flipped length looks just
    // like a write cut short), so every later offset is tried.
    (bad_offset + 1..data.len().saturating_sub(FRAME_HEADER))
        .any(|offset| parse_frame(data, offset).is_some_and(|(payload, _)| !payload.is_empty()))
}

impl Writer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            if crate::planted::active(crate::planted::Bug::AckBeforeSync) {
                // Hold what was acknowledged in memory for a while, so that a crash loses it.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let mut batch = vec![first];
            batch.extend(jobs.try_iter());
            let mut waiting = Vec::new();
            let mut result = Ok(());
            // A batch of records nobody waits for (the commit point) is written but not synced:
            // the next write that is waited for syncs it too. Without this every write would pay
            // a second fsync for the commit point it moves, before the next write could start.
            let mut must_sync = false;
            for job in batch {
                match job {
                    Job::SetPreamble(records) => self.preamble = records,
                    Job::Write { record, done } => {
                        if result.is_ok() {
                            result = self.append(&record);
                        }
                        // Segments are deleted after a purge, so the purge must be on disk first.
                        must_sync |= done.is_some() || record.purged_through.is_some();
                        if let Some(done) = done {
                            waiting.push(done);
                        }
                    }
                }
            }
            if result.is_ok() {
                result = if must_sync { self.sync() } else { self.flush() };
            }
            let failed = result.as_ref().err().map(|e| e.to_string());
            for done in waiting {
                done(match &failed {
                    None => Ok(()),
                    Some(message) => Err(io::Error::other(message.clone())),
                });
            }
            if let Some(message) = failed {
                // A log that cannot be written cannot promise durability: stop taking writes.
                tracing::error!(error = %message, "write-ahead log failed; refusing further writes");
                for job in jobs.iter() {
                    if let Job::Write { done: Some(done), .. } = job {
                        done(Err(io::Error::other(message.clone())));
                    }
                }
                return;
            }
            if let Err(error) = self.maybe_roll() {
                tracing::error!(%error, "write-ahead log segment roll failed");
            }
        }
    }

    fn append(&mut self, record: &Record) -> io::Result<()> {
        let framed = frame(&record.payload);
        self.file.write_all(&framed)?;
        self.size += framed.len() as u64;
        if let Some(index) = record.max_index {
            let current = self.segments.last_mut().expect("a current segment always exists");
            current.max_index = current.max_index.max(Some(index));
        }
        if record.purged_through.is_some() {
            self.purged_through = self.purged_through.max(record.purged_through);
        }
        Ok(())
    }

    /// Hands what is buffered to the kernel, without waiting for the disk.
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if crate::planted::sync_fails(&self.dir) {
            return Err(io::Error::other("fsync failed (injected fault)"));
        }
        let started = Instant::now();
        self.file.get_ref().sync_data()?;
        (self.observe_fsync)(started.elapsed());
        self.note_synced();
        Ok(())
    }

    fn note_synced(&self) {
        let seq = self.segments.last().map_or(0, |s| s.seq);
        crate::planted::note_synced(&self.dir, &segment_path(&self.dir, seq), self.size);
    }

    /// Starts a new segment when the current one is full, and deletes segments whose entries are all
    /// purged (their vote and purge records live on in every newer segment's preamble).
    fn maybe_roll(&mut self) -> io::Result<()> {
        if self.size >= SEGMENT_BYTES {
            let seq = self.segments.last().map_or(0, |s| s.seq + 1);
            let path = segment_path(&self.dir, seq);
            let mut file = create_segment(&path)?;
            for record in &self.preamble {
                file.write_all(&frame(record))?;
            }
            file.flush()?;
            file.get_ref().sync_data()?;
            sync_dir(&self.dir)?;
            self.size = file.get_ref().metadata()?.len();
            self.file = file;
            self.segments.push(Segment { seq, max_index: None });
            self.note_synced();
        }
        let Some(purged) = self.purged_through else {
            return Ok(());
        };
        let keep_from = self
            .segments
            .iter()
            .position(|s| s.max_index.is_some_and(|m| m > purged))
            .unwrap_or(self.segments.len() - 1);
        // Only segments older than the newest preamble-bearing one may go; the current one always stays.
        let removable = keep_from.min(self.segments.len() - 1);
        if removable > 0 && self.segments.len() > 1 {
            for segment in self.segments.drain(..removable) {
                fs::remove_file(segment_path(&self.dir, segment.seq))?;
            }
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Result<(Wal, Replayed), WalError> {
        Wal::open(dir, |_| None, Box::new(|_| {}))
    }

    #[test]
    fn only_a_frame_cut_short_or_with_a_zeroed_sector_counts_as_torn() {
        let mut data = segment_header().to_vec();
        let offset = data.len();
        data.extend(frame(&[7u8; 1500]));
        // Whole but failing its checksum: damage.
        let mut flipped = data.clone();
        flipped[offset + 700] ^= 1;
        assert!(!cut_short(&flipped, offset));
        // Running past the end of the data, or not even a whole header: a write cut short.
        assert!(cut_short(&data[..data.len() - 1], offset));
        assert!(cut_short(&data[..offset + 5], offset));
        // A whole sector of zeros inside it: the file grew before the data reached the disk.
        let mut zeroed = data.clone();
        zeroed[512..1024].fill(0);
        assert!(cut_short(&zeroed, offset));
    }

    #[test]
    fn segments_open_with_their_format_version_and_replay_across_versions() {
        let dir = tempfile::tempdir().unwrap();
        // A first-release segment: records from the first byte.
        let mut legacy = frame(b"old");
        legacy.extend(frame(b"older"));
        fs::write(segment_path(dir.path(), 0), &legacy).unwrap();
        let (wal, replayed) = open(dir.path()).unwrap();
        assert_eq!(replayed.records, vec![b"old".to_vec(), b"older".to_vec()]);
        futures::executor::block_on(wal.write_durable(Record {
            payload: b"new".to_vec(),
            max_index: None,
            purged_through: None,
        }))
        .unwrap();
        drop(wal);
        let written = fs::read(segment_path(dir.path(), 1)).unwrap();
        assert_eq!(&written[..SEGMENT_HEADER], &segment_header());
        let (_, replayed) = open(dir.path()).unwrap();
        assert_eq!(
            replayed.records,
            vec![b"old".to_vec(), b"older".to_vec(), b"new".to_vec()]
        );
    }

    #[test]
    fn a_segment_from_a_newer_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut newer = SEGMENT_MAGIC.to_vec();
        newer.extend(9u32.to_le_bytes());
        newer.extend(frame(b"from the future"));
        let path = segment_path(dir.path(), 0);
        fs::write(&path, &newer).unwrap();
        let error = open(dir.path()).err().expect("a newer format is refused");
        assert!(
            matches!(error, WalError::NewerFormat { version: 9, .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("format version 9, newer than this cairn reads"),
            "{error}"
        );
        // Nothing was changed or appended.
        assert_eq!(fs::read(&path).unwrap(), newer);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![0]);
    }

    #[test]
    fn a_segment_cut_short_inside_its_header_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(segment_path(dir.path(), 0), frame(b"kept")).unwrap();
        fs::write(segment_path(dir.path(), 1), &SEGMENT_MAGIC[..5]).unwrap();
        let (wal, replayed) = open(dir.path()).unwrap();
        assert_eq!(replayed.records, vec![b"kept".to_vec()]);
        drop(wal);
        // Once a newer segment follows it, the repaired one still reads as empty.
        let (_, replayed) = open(dir.path()).unwrap();
        assert_eq!(replayed.records, vec![b"kept".to_vec()]);
    }
}
