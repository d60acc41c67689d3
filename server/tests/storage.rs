//! Storage tests: openraft's conformance suite on Cairn's log and state-machine stores, and recovery
//! of the write-ahead log from disk (reopen, torn tail, corruption).

use std::io::Write;

use cairn::store::{LogStore, StateMachine, Unobserved, snap_dir, wal_dir};
use cairn::{Entry, TypeConfig, Vote};
use openraft::RaftLogReader;
use openraft::StorageError;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use tempfile::TempDir;

fn no_metrics() -> cairn::store::wal::FsyncObserver {
    Box::new(|_| {})
}

async fn open_stores(dir: &std::path::Path) -> (LogStore, StateMachine) {
    let log = LogStore::open(&wal_dir(dir), no_metrics(), std::sync::Arc::new(|_| {}))
        .await
        .expect("open log store");
    let sm = StateMachine::open(&snap_dir(dir), std::sync::Arc::new(Unobserved)).expect("open state machine");
    (log, sm)
}

struct DiskStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for DiskStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = open_stores(dir.path()).await;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(DiskStores).await.expect("openraft storage suite");
}

fn entry(term: u64, index: u64) -> Entry {
    openraft::testing::blank_ent::<TypeConfig>(term, 1, index)
}

async fn append_durably(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
    log.append(entries, IOFlushed::<TypeConfig>::signal(tx))
        .await
        .expect("append");
    rx.await.expect("flush callback").expect("flushed");
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    log.try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

#[tokio::test]
async fn log_survives_reopen_with_truncation_and_purge() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _) = open_stores(dir.path()).await;
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        append_durably(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
        log.truncate_after(Some(entry(1, 7).log_id)).await.unwrap();
        append_durably(&mut log, vec![entry(2, 8)]).await;
        log.purge(entry(1, 3).log_id).await.unwrap();
        // The purge is not waited for; a later durable write orders it onto disk.
        log.save_vote(&Vote::new(4, 1)).await.unwrap();
    }
    let (mut log, _) = open_stores(dir.path()).await;
    assert_eq!(indexes(&mut log).await, vec![4, 5, 6, 7, 8]);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
    assert_eq!(
        state.last_log_id.map(|l| (l.leader_id.term, l.index)),
        Some((2, 8))
    );
}

fn newest_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(wal_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    segments.sort();
    segments.pop().expect("a non-empty segment")
}

#[tokio::test]
async fn torn_final_write_is_dropped_and_everything_acknowledged_is_kept() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _) = open_stores(dir.path()).await;
        append_durably(&mut log, (1..=5).map(|i| entry(1, i)).collect()).await;
    }
    // A crash in the middle of the next write leaves half a frame behind.
    let segment = newest_segment(dir.path());
    let mut file = std::fs::OpenOptions::new().append(true).open(&segment).unwrap();
    file.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(file);
    let (mut log, _) = open_stores(dir.path()).await;
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
}

/// Writes `records` entries one record each, damages the newest segment with `damage`, and
/// returns why the log then refuses to open.
async fn refusal_after(records: u64, damage: impl FnOnce(&mut Vec<u8>)) -> String {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _) = open_stores(dir.path()).await;
        for index in 1..=records {
            append_durably(&mut log, vec![entry(1, index)]).await;
        }
    }
    let segment = newest_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    damage(&mut bytes);
    std::fs::write(&segment, &bytes).unwrap();
    LogStore::open(&wal_dir(dir.path()), no_metrics(), std::sync::Arc::new(|_| {}))
        .await
        .err()
        .expect("must refuse")
        .to_string()
}

#[tokio::test]
async fn corruption_before_valid_records_refuses_to_start() {
    // Damage the first entry's record while the second, acknowledged one follows it intact.
    let error = refusal_after(2, |bytes| {
        let damaged = second_to_last_frame(bytes) + 8;
        bytes[damaged] ^= 0xff;
    })
    .await;
    assert!(error.contains("is corrupt at byte"), "{error}");
}

#[tokio::test]
async fn a_whole_last_record_that_fails_its_checksum_refuses_to_start() {
    // One bit of the last, acknowledged record flips on disk: nothing follows it, but it is whole,
    // so this is damage, not a crash mid-write, and dropping it would lose an acknowledged entry.
    let error = refusal_after(2, |bytes| {
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
    })
    .await;
    assert!(
        error.contains("its last record is whole but fails its checksum"),
        "{error}"
    );
}

#[tokio::test]
async fn a_damaged_record_length_is_corruption_not_a_torn_tail() {
    // The length of an early record reads as far more than the segment holds: the records
    // after it were acknowledged, so dropping them as a torn tail would lose them.
    let error = refusal_after(3, |bytes| {
        let damaged = second_to_last_frame(bytes);
        bytes[damaged..damaged + 4].copy_from_slice(b"CORR");
    })
    .await;
    assert!(error.contains("is corrupt at byte"), "{error}");
}

/// Offset of the second-to-last frame in a segment, found by walking the frames after the
/// segment's header (magic and format version, 12 bytes).
fn second_to_last_frame(bytes: &[u8]) -> usize {
    assert!(
        bytes.starts_with(b"CAIRNWAL"),
        "a segment opens with its format header"
    );
    let mut offsets = vec![];
    let mut offset = 12;
    while offset + 8 <= bytes.len() {
        offsets.push(offset);
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + len;
    }
    offsets[offsets.len() - 2]
}
