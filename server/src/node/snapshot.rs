//! Maintenance.Snapshot's file, streamed: the applied state of one moment (a copy-on-write clone
//! taken under the lock, so apply waits only for the clone) is written as an etcd snapshot file on a
//! blocking thread, in chunks that go through a bounded channel. However large the store, the
//! member holds a few chunks beyond it, and a client that reads slowly slows only its own writer.

use std::io::Write;

use tokio::sync::{mpsc, oneshot};

use super::{Node, NodeError};
use crate::backup::write_snapshot;
use crate::store::Machine;

/// Chunks written ahead of the client.
const CHUNKS_AHEAD: usize = 4;

/// A snapshot on its way: its revision, its size in bytes, and its chunks in order.
pub struct SnapshotStream {
    pub revision: i64,
    pub size: u64,
    pub chunks: mpsc::Receiver<Result<Vec<u8>, NodeError>>,
}

/// Cuts what is written into chunks of `chunk` bytes; `flush` sends the last, shorter one.
struct Chunker<F: FnMut(Vec<u8>) -> std::io::Result<()>> {
    chunk: usize,
    pending: Vec<u8>,
    emit: F,
}

impl<F: FnMut(Vec<u8>) -> std::io::Result<()>> Write for Chunker<F> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = (self.chunk - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == self.chunk {
                let full = std::mem::replace(&mut self.pending, Vec::with_capacity(self.chunk));
                (self.emit)(full)?;
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let last = std::mem::take(&mut self.pending);
        (self.emit)(last)
    }
}

/// Writes the snapshot file of `state` as chunks of `chunk` bytes (the last one shorter), telling
/// `sized` the file's size first.
pub fn encode_snapshot(
    state: &Machine,
    chunk: usize,
    sized: impl FnOnce(u64),
    emit: impl FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut out = Chunker {
        chunk,
        pending: Vec::with_capacity(chunk),
        emit,
    };
    write_snapshot(state, sized, &mut out)
}

impl Node {
    /// Starts streaming a snapshot of the applied state in chunks of `chunk` bytes. Laying the
    /// database out and writing it are passes over the whole store, so both run on a blocking
    /// thread; the size is known after the first.
    pub async fn snapshot_stream(&self, chunk: usize) -> Result<SnapshotStream, NodeError> {
        let state = self.raft.read(Machine::clone);
        let revision = state.app.mvcc.revision();
        let (send, chunks) = mpsc::channel(CHUNKS_AHEAD);
        let (announce, sized) = oneshot::channel::<Result<u64, String>>();
        tokio::task::spawn_blocking(move || {
            let mut announce = Some(announce);
            let written = encode_snapshot(
                &state,
                chunk,
                |size| {
                    if let Some(announce) = announce.take() {
                        let _ = announce.send(Ok(size));
                    }
                },
                |piece| {
                    send.blocking_send(Ok(piece))
                        .map_err(|_| std::io::Error::other("the client stopped reading the snapshot"))
                },
            );
            if let Err(error) = written {
                tracing::debug!(%error, "snapshot stream ended early");
                match announce.take() {
                    Some(announce) => {
                        let _ = announce.send(Err(error.to_string()));
                    }
                    None => {
                        let _ = send.blocking_send(Err(NodeError::Internal(error.to_string())));
                    }
                }
            }
        });
        let size = sized
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(NodeError::Internal)?;
        Ok(SnapshotStream {
            revision,
            size,
            chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_chunks_add_up_to_the_snapshot_file() {
        let mut state = Machine::default();
        for round in 0..3 {
            let mut file = Vec::new();
            write_snapshot(&state, |_| {}, &mut file).unwrap();
            for chunk in [1, 7, 512, 4096, 1 << 20] {
                let mut chunks = Vec::new();
                let mut size = 0;
                encode_snapshot(
                    &state,
                    chunk,
                    |s| size = s,
                    |piece| {
                        chunks.push(piece);
                        Ok(())
                    },
                )
                .unwrap();
                assert_eq!(size, file.len() as u64);
                assert!(
                    chunks.iter().all(|c| c.len() <= chunk && !c.is_empty()),
                    "chunk {chunk}"
                );
                assert!(chunks[..chunks.len() - 1].iter().all(|c| c.len() == chunk));
                assert_eq!(chunks.concat(), file, "round {round}, chunk {chunk}");
            }
            // Grow the state so the next round spans more pages.
            for i in 0..(200 * (round + 1)) {
                let put = crate::pb::etcdserverpb::PutRequest {
                    key: format!("key-{round}-{i}").into_bytes(),
                    value: b"value".to_vec(),
                    ..Default::default()
                };
                state.app.mvcc.put(&put).unwrap();
            }
        }
    }

    #[test]
    fn a_client_that_stops_reading_ends_the_encoding() {
        let state = Machine::default();
        let mut sent = 0;
        let ended = encode_snapshot(
            &state,
            8,
            |_| {},
            |_| {
                sent += 1;
                if sent > 2 {
                    Err(std::io::Error::other("gone"))
                } else {
                    Ok(())
                }
            },
        );
        assert!(ended.is_err());
        assert_eq!(sent, 3);
    }
}
