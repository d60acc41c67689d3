//! Maintenance.Snapshot's file, streamed: the applied state of one moment (a copy-on-write clone
//! taken under the lock, so apply waits only for the clone) is encoded on a blocking thread into
//! chunks that go through a bounded channel. However large the store, the member holds a few
//! chunks beyond it, and a client that reads slowly slows only its own encoder.

use std::io::Write;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{Node, NodeError};
use crate::store::Machine;

/// Marks a Cairn snapshot file; followed by the length of the state it holds.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"CAIRNSN1";
/// Chunks encoded ahead of the client.
const CHUNKS_AHEAD: usize = 4;

/// A snapshot on its way: its revision, its size in bytes, and its chunks in order.
pub struct SnapshotStream {
    pub revision: i64,
    pub size: u64,
    pub chunks: mpsc::Receiver<Result<Vec<u8>, NodeError>>,
}

/// The file's size for a state of `state_len` bytes: magic and length, the state, zeros up to a
/// multiple of 512 bytes, then the SHA-256 of all that (the layout etcdctl checks).
pub fn snapshot_size(state_len: u64) -> u64 {
    (16 + state_len).div_ceil(512) * 512 + 32
}

/// Cuts what is written into chunks of `chunk` bytes and hashes it on the way.
struct Chunker<F: FnMut(Vec<u8>) -> std::io::Result<()>> {
    chunk: usize,
    pending: Vec<u8>,
    hasher: Sha256,
    emit: F,
}

impl<F: FnMut(Vec<u8>) -> std::io::Result<()>> Write for Chunker<F> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(bytes);
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
        Ok(())
    }
}

/// The encoded size of `state` (one pass over it, without keeping the bytes).
fn state_len(state: &Machine) -> std::io::Result<u64> {
    postcard::experimental::serialized_size(state)
        .map(|len| len as u64)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Writes the snapshot file of `state`, whose encoding is `state_len` bytes, as chunks of `chunk`
/// bytes (the last one shorter).
pub fn encode_snapshot(
    state: &Machine,
    state_len: u64,
    chunk: usize,
    emit: impl FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let invalid = |e: postcard::Error| std::io::Error::other(e.to_string());
    let mut out = Chunker {
        chunk,
        pending: Vec::with_capacity(chunk),
        hasher: Sha256::new(),
        emit,
    };
    out.write_all(SNAPSHOT_MAGIC)?;
    out.write_all(&state_len.to_le_bytes())?;
    let mut out = postcard::to_io(state, out).map_err(invalid)?;
    let padding = snapshot_size(state_len) - 32 - 16 - state_len;
    out.write_all(&vec![0; padding as usize])?;
    let digest = std::mem::take(&mut out.hasher).finalize();
    let mut last = std::mem::take(&mut out.pending);
    last.extend_from_slice(&digest);
    for piece in last.chunks(chunk) {
        (out.emit)(piece.to_vec())?;
    }
    Ok(())
}

impl Node {
    /// Starts streaming a snapshot of the applied state in chunks of `chunk` bytes. Sizing and
    /// encoding the state are passes over the whole store, so both run on a blocking thread.
    pub async fn snapshot_stream(&self, chunk: usize) -> Result<SnapshotStream, NodeError> {
        let state = self.raft.read(Machine::clone);
        let revision = state.app.mvcc.revision();
        let internal = |e: &dyn std::fmt::Display| NodeError::Internal(e.to_string());
        let (state, state_len) =
            tokio::task::spawn_blocking(move || state_len(&state).map(|len| (state, len)))
                .await
                .map_err(|e| internal(&e))?
                .map_err(|e| internal(&e))?;
        let (send, chunks) = mpsc::channel(CHUNKS_AHEAD);
        tokio::task::spawn_blocking(move || {
            let encoded = encode_snapshot(&state, state_len, chunk, |piece| {
                send.blocking_send(Ok(piece))
                    .map_err(|_| std::io::Error::other("the client stopped reading the snapshot"))
            });
            if let Err(error) = encoded {
                tracing::debug!(%error, "snapshot stream ended early");
                let _ = send.blocking_send(Err(NodeError::Internal(error.to_string())));
            }
        });
        Ok(SnapshotStream {
            revision,
            size: snapshot_size(state_len),
            chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file as one buffer, laid out by hand: what the streamed chunks must add up to.
    fn whole_file(state: &Machine) -> Vec<u8> {
        let encoded = postcard::to_stdvec(state).unwrap();
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&encoded);
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        bytes
    }

    #[test]
    fn streamed_chunks_add_up_to_the_file_etcdctl_checks() {
        let mut state = Machine::default();
        for round in 0..3 {
            let file = whole_file(&state);
            let state_len = state_len(&state).unwrap();
            assert_eq!(snapshot_size(state_len), file.len() as u64);
            assert_eq!(file.len() % 512, 32);
            for chunk in [1, 7, 512, 4096, 1 << 20] {
                let mut chunks = Vec::new();
                encode_snapshot(&state, state_len, chunk, |piece| {
                    chunks.push(piece);
                    Ok(())
                })
                .unwrap();
                assert!(
                    chunks.iter().all(|c| c.len() <= chunk && !c.is_empty()),
                    "chunk {chunk}"
                );
                assert!(chunks[..chunks.len() - 1].iter().all(|c| c.len() == chunk));
                assert_eq!(chunks.concat(), file, "round {round}, chunk {chunk}");
            }
            // Grow the state so the next round crosses more 512-byte boundaries.
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
        let ended = encode_snapshot(&state, state_len(&state).unwrap(), 8, |_| {
            sent += 1;
            if sent > 2 {
                Err(std::io::Error::other("gone"))
            } else {
                Ok(())
            }
        });
        assert!(ended.is_err());
        assert_eq!(sent, 3);
    }
}
