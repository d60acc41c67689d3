//! The Raft log store: entries, vote and commit point, kept in memory for reads and made durable in
//! the write-ahead log before openraft is told they are flushed.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{Membership, OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::wal::{FsyncObserver, Record, Wal, WalError};
use crate::{Entry, LogId, PeerNode, TypeConfig, Vote};

/// What one WAL record says happened to the log.
#[derive(Serialize, Deserialize)]
enum LogRecord {
    Vote(Vote),
    Committed(Option<LogId>),
    Entries(Vec<Entry>),
    TruncateAfter(Option<LogId>),
    Purge(LogId),
}

/// Serializes exactly like `LogRecord` (same variant order), without copying the entries.
#[derive(Serialize)]
enum LogRecordRef<'a> {
    #[allow(dead_code)]
    Vote(&'a Vote),
    #[allow(dead_code)]
    Committed(&'a Option<LogId>),
    Entries(&'a [Entry]),
}

#[derive(Default)]
struct LogContents {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
}

impl LogContents {
    fn replay(&mut self, record: LogRecord) {
        match record {
            LogRecord::Vote(vote) => self.vote = Some(vote),
            LogRecord::Committed(committed) => self.committed = committed,
            LogRecord::Entries(entries) => {
                for entry in entries {
                    self.entries.insert(entry.log_id.index, entry);
                }
            }
            LogRecord::TruncateAfter(last) => {
                let keep_through = last.map_or(0, |l| l.index + 1);
                self.entries.split_off(&keep_through);
            }
            LogRecord::Purge(log_id) => self.purge(log_id),
        }
    }

    fn purge(&mut self, log_id: LogId) {
        self.entries = self.entries.split_off(&(log_id.index + 1));
        if self.last_purged.is_none_or(|p| p.index < log_id.index) {
            self.last_purged = Some(log_id);
        }
    }

    /// Records that restate the log's durable metadata at the head of a new segment.
    fn preamble(&self) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        if let Some(vote) = &self.vote {
            records.push(encode(&LogRecord::Vote(*vote)));
        }
        if let Some(purged) = &self.last_purged {
            records.push(encode(&LogRecord::Purge(*purged)));
        }
        records.push(encode(&LogRecord::Committed(self.committed)));
        records
    }
}

fn encode(record: &LogRecord) -> Vec<u8> {
    postcard::to_stdvec(record).expect("log records always serialize")
}

fn max_index_of(payload: &[u8]) -> Option<u64> {
    match postcard::from_bytes::<LogRecord>(payload).ok()? {
        LogRecord::Entries(entries) => entries.last().map(|e| e.log_id.index),
        _ => None,
    }
}

/// Where the time from handing entries to the log to their being durable goes.
pub type AppendObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

#[derive(Clone)]
pub struct LogStore {
    contents: Arc<Mutex<LogContents>>,
    wal: Wal,
    observe_append: AppendObserver,
}

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("write-ahead log record {index} cannot be decoded: {source}")]
    Decode { index: usize, source: postcard::Error },
    #[error("failed to record the log state after replay: {0}")]
    Rewrite(io::Error),
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying what is on disk.
    pub async fn open(
        dir: &Path,
        observe_fsync: FsyncObserver,
        observe_append: AppendObserver,
    ) -> Result<LogStore, LogStoreError> {
        let (wal, replayed) = Wal::open(dir, max_index_of, observe_fsync)?;
        if replayed.torn_tail_bytes > 0 {
            tracing::warn!(
                bytes = replayed.torn_tail_bytes,
                "dropped an unfinished write at the end of the write-ahead log (it was never acknowledged)"
            );
        }
        let mut contents = LogContents::default();
        for (index, payload) in replayed.records.iter().enumerate() {
            let record =
                postcard::from_bytes(payload).map_err(|source| LogStoreError::Decode { index, source })?;
            contents.replay(record);
        }
        // The fresh segment starts with the current metadata, so older segments can be deleted later.
        let preamble = contents.preamble();
        for record in &preamble {
            wal.write_durable(Record {
                payload: record.clone(),
                max_index: None,
                purged_through: None,
            })
            .await
            .map_err(LogStoreError::Rewrite)?;
        }
        wal.set_preamble(preamble);
        Ok(LogStore {
            contents: Arc::new(Mutex::new(contents)),
            wal,
            observe_append,
        })
    }

    /// The log's newest entry ID (in the log or purged), its vote, and its newest membership.
    pub fn tail(&self) -> (Option<LogId>, Option<Vote>, Option<Membership<u64, PeerNode>>) {
        let contents = self.lock();
        let last = contents
            .entries
            .last_key_value()
            .map(|(_, entry)| entry.log_id)
            .or(contents.last_purged);
        let membership = contents
            .entries
            .values()
            .rev()
            .find_map(|entry| entry.get_membership());
        (last, contents.vote, membership)
    }

    /// Writes `vote` and then `entry` durably, before Raft starts (`--force-new-cluster`).
    pub async fn force(&self, vote: Vote, entry: Entry) -> Result<(), io::Error> {
        for record in [LogRecord::Vote(vote), LogRecord::Entries(vec![entry.clone()])] {
            self.wal
                .write_durable(Record {
                    payload: encode(&record),
                    max_index: Some(entry.log_id.index).filter(|_| matches!(record, LogRecord::Entries(_))),
                    purged_through: None,
                })
                .await?;
            self.lock().replay(record);
        }
        self.refresh_preamble();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogContents> {
        // A panic while holding this lock leaves the in-memory log unusable anyway.
        self.contents.lock().expect("log store lock poisoned")
    }

    fn refresh_preamble(&self) {
        let preamble = self.lock().preamble();
        self.wal.set_preamble(preamble);
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let contents = self.lock();
        let last_purged_log_id = contents.last_purged;
        let last_log_id = contents
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let payload = encode(&LogRecord::Vote(*vote));
        self.wal
            .write_durable(Record {
                payload,
                max_index: None,
                purged_through: None,
            })
            .await?;
        self.lock().vote = Some(*vote);
        self.refresh_preamble();
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not waited for: losing it only means re-applying from the last snapshot after a crash.
        let payload = encode(&LogRecord::Committed(committed));
        self.wal.write(
            Record {
                payload,
                max_index: None,
                purged_through: None,
            },
            None,
        );
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let handed = std::time::Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let max_index = entries.last().map(|e| e.log_id.index);
        let payload = postcard::to_stdvec(&LogRecordRef::Entries(&entries)).map_err(io::Error::other)?;
        {
            let mut contents = self.lock();
            for entry in entries {
                contents.entries.insert(entry.log_id.index, entry);
            }
        }
        self.wal.write(
            Record {
                payload,
                max_index,
                purged_through: None,
            },
            Some(Box::new({
                let observe = self.observe_append.clone();
                move |result| {
                    observe(handed.elapsed());
                    callback.io_completed(result)
                }
            })),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let payload = encode(&LogRecord::TruncateAfter(last_log_id));
        self.wal
            .write_durable(Record {
                payload,
                max_index: None,
                purged_through: None,
            })
            .await?;
        self.lock().replay(LogRecord::TruncateAfter(last_log_id));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let payload = encode(&LogRecord::Purge(log_id));
        let purged_through = Some(log_id.index);
        self.lock().purge(log_id);
        self.refresh_preamble();
        self.wal.write(
            Record {
                payload,
                max_index: None,
                purged_through,
            },
            None,
        );
        Ok(())
    }
}
