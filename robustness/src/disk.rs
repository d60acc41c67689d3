//! Disk faults on a stopped member's write-ahead log: a partial record at its end (a write cut
//! short by the crash), what was not synced lost (a power loss), or one bit flipped near the end
//! (damage the log must notice). The log's layout —
//! segments opening with a 12-byte header, then records framed as length, CRC32 and payload — is
//! the server's (`store::wal`); a partial record is written in it, and a flip spares the header.

use std::path::{Path, PathBuf};

use rand::Rng;

const SEGMENT_HEADER: u64 = 12;
const FRAME_HEADER: u64 = 8;
/// How far from the end a flipped byte lands: the records written last.
const TAIL: u64 = 4096;

/// The newest segment in `wal_dir`.
pub fn newest_segment(wal_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(wal_dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    segments.sort();
    Ok(segments.pop())
}

/// Ends the newest segment with part of a record, as a crash in the middle of writing one leaves
/// it: a frame header announcing more bytes than follow. Such a record was never synced, so never
/// acknowledged; replay must drop it and go on. Says what it did.
pub fn append_partial_record(wal_dir: &Path, rng: &mut impl Rng) -> std::io::Result<String> {
    use std::io::Write;
    let Some(segment) = newest_segment(wal_dir)? else {
        return Ok("no segment to write to".into());
    };
    let announced: u32 = rng.random_range(16..4096);
    let written = rng.random_range(0..announced) as usize;
    let mut partial = Vec::with_capacity(FRAME_HEADER as usize + written);
    partial.extend_from_slice(&announced.to_le_bytes());
    partial.extend_from_slice(&rng.random::<u32>().to_le_bytes());
    partial.extend((0..written).map(|_| rng.random::<u8>()));
    let cut = rng.random_range(1..=partial.len());
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)?
        .write_all(&partial[..cut])?;
    Ok(format!(
        "appended {cut} bytes of a {announced}-byte record to {}",
        segment.display()
    ))
}

/// What a power loss does to the log: everything written after its last sync is gone, cut at a
/// random point between what was synced and what was written (the server's suite build notes how
/// far it synced, `cairn::planted::SYNCED`). Says what it did.
pub fn lose_unsynced(wal_dir: &Path, rng: &mut impl Rng) -> std::io::Result<String> {
    let noted = std::fs::read_to_string(wal_dir.join(cairn::planted::SYNCED))?;
    let (name, synced) = noted
        .trim()
        .split_once(' ')
        .and_then(|(name, len)| Some((name.to_owned(), len.parse::<u64>().ok()?)))
        .ok_or_else(|| std::io::Error::other(format!("cannot read how far the log is synced: {noted:?}")))?;
    let segment = wal_dir.join(&name);
    let written = std::fs::metadata(&segment)?.len();
    if written <= synced {
        return Ok(format!("nothing unsynced in {}", segment.display()));
    }
    let keep = rng.random_range(synced..=written);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)?
        .set_len(keep)?;
    Ok(format!(
        "lost {} of {} unsynced bytes at the end of {}",
        written - keep,
        written - synced,
        segment.display()
    ))
}

/// Flips one byte of the newest segment's last few KiB. Says what it did.
pub fn flip_byte_near_end(wal_dir: &Path, rng: &mut impl Rng) -> std::io::Result<String> {
    let Some(segment) = newest_segment(wal_dir)? else {
        return Ok("no segment to damage".into());
    };
    let mut data = std::fs::read(&segment)?;
    let len = data.len() as u64;
    if len <= SEGMENT_HEADER {
        return Ok("no record to damage".into());
    }
    let at = rng.random_range(SEGMENT_HEADER.max(len.saturating_sub(TAIL))..len);
    data[at as usize] ^= 1 << rng.random_range(0..8);
    std::fs::write(&segment, &data)?;
    Ok(format!(
        "flipped a bit of {} at byte {at} of {len}",
        segment.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Where the last whole record of `data` starts, if there is one.
    fn last_record_start(data: &[u8]) -> Option<u64> {
        let mut offset = SEGMENT_HEADER;
        let mut last = None;
        while offset + FRAME_HEADER <= data.len() as u64 {
            let at = offset as usize;
            let len = u32::from_le_bytes(data[at..at + 4].try_into().ok()?) as u64;
            let end = offset + FRAME_HEADER + len;
            if end > data.len() as u64 {
                break;
            }
            last = Some(offset);
            offset = end;
        }
        last
    }

    fn segment(records: &[&[u8]]) -> Vec<u8> {
        let mut data = b"CAIRNWAL\x02\0\0\0".to_vec();
        for payload in records {
            data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            data.extend_from_slice(&crc32fast_like(payload).to_le_bytes());
            data.extend_from_slice(payload);
        }
        data
    }

    /// The checksum's value does not matter to where records start.
    fn crc32fast_like(payload: &[u8]) -> u32 {
        payload.len() as u32
    }

    #[test]
    fn a_partial_record_is_appended_after_the_whole_ones() {
        let data = segment(&[b"first", b"second record"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000000.wal");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20 {
            std::fs::write(&path, &data).unwrap();
            append_partial_record(dir.path(), &mut rng).unwrap();
            let after = std::fs::read(&path).unwrap();
            assert!(after.len() > data.len() && after.starts_with(&data));
            // The whole records are where they were, and nothing whole follows them.
            assert_eq!(last_record_start(&after), Some(12 + 8 + 5));
        }
    }

    #[test]
    fn a_power_loss_keeps_what_was_synced_and_drops_only_what_was_not() {
        let data = segment(&[b"first", b"second record", b"third"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000003.wal");
        let synced = 12 + 8 + 5;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut lengths = std::collections::BTreeSet::new();
        for _ in 0..50 {
            std::fs::write(&path, &data).unwrap();
            std::fs::write(
                dir.path().join(cairn::planted::SYNCED),
                format!("0000000000000003.wal {synced}\n"),
            )
            .unwrap();
            lose_unsynced(dir.path(), &mut rng).unwrap();
            let after = std::fs::read(&path).unwrap();
            assert!(after.len() >= synced && data.starts_with(&after));
            lengths.insert(after.len());
        }
        assert!(
            lengths.len() > 10,
            "cuts land all over the unsynced part: {lengths:?}"
        );
        std::fs::write(&path, &data[..synced]).unwrap();
        assert!(
            lose_unsynced(dir.path(), &mut rng)
                .unwrap()
                .starts_with("nothing unsynced")
        );
    }

    #[test]
    fn a_flip_changes_one_byte_after_the_header() {
        let data = segment(&[b"first", b"second record"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000000.wal");
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        for _ in 0..20 {
            std::fs::write(&path, &data).unwrap();
            flip_byte_near_end(dir.path(), &mut rng).unwrap();
            let after = std::fs::read(&path).unwrap();
            let changed: Vec<usize> = (0..data.len()).filter(|&i| data[i] != after[i]).collect();
            assert_eq!(changed.len(), 1);
            assert!(changed[0] >= 12);
        }
    }
}
