//! The multi-version key space: every key's history of versions and deletions, kept until compaction.

use std::ops::Bound;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::history::ChangeIndex;
use crate::pb::mvccpb::KeyValue;

/// One revision of one key: its content, or the fact that it was deleted at `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Live(Stored),
    Tombstone { mod_revision: i64 },
}

/// A key's content as of one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Bytes,
    pub lease: i64,
}

impl Record {
    pub fn mod_revision(&self) -> i64 {
        match self {
            Record::Live(stored) => stored.mod_revision,
            Record::Tombstone { mod_revision } => *mod_revision,
        }
    }

    /// Bytes this record holds, for the database-size figures.
    fn footprint(&self, key: &[u8]) -> u64 {
        let value = match self {
            Record::Live(stored) => stored.value.len(),
            Record::Tombstone { .. } => 0,
        };
        // Key, value and the fixed revision fields, as a bbolt-backed store would roughly count them.
        (key.len() + value + 32) as u64
    }
}

impl Stored {
    pub fn to_key_value(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }
}

/// A half-open key interval `[start, end)` in etcd's encoding: an empty `end` is the single key
/// `start`, and an `end` of `"\0"` means "every key from `start` on".
#[derive(Debug, Clone, Copy)]
pub struct KeyRange<'a> {
    pub start: &'a [u8],
    pub end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    pub fn new(start: &'a [u8], end: &'a [u8]) -> Self {
        KeyRange { start, end }
    }

    fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        if self.end.is_empty() {
            (Bound::Included(self.start), Bound::Included(self.start))
        } else if self.end == b"\0" {
            (Bound::Included(self.start), Bound::Unbounded)
        } else {
            (Bound::Included(self.start), Bound::Excluded(self.end))
        }
    }

    /// True when the interval is empty in the forward direction (start ≥ end).
    fn is_empty(&self) -> bool {
        !self.end.is_empty() && self.end != b"\0" && self.start >= self.end
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            key == self.start
        } else if self.end == b"\0" {
            key >= self.start
        } else {
            key >= self.start && key < self.end
        }
    }

    /// Whether two ranges share at least one key.
    pub fn overlaps(&self, other: &KeyRange<'_>) -> bool {
        let (a_start, a_end) = self.as_interval();
        let (b_start, b_end) = other.as_interval();
        let a_before_b_ends = match b_end {
            Some(end) => a_start < end,
            None => true,
        };
        let b_before_a_ends = match a_end {
            Some(end) => b_start < end,
            None => true,
        };
        a_before_b_ends && b_before_a_ends
    }

    /// The range as `[start, end)` with `None` for unbounded; single keys become `[k, k\0)`.
    fn as_interval(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        if self.end.is_empty() {
            let mut next = self.start.to_vec();
            next.push(0);
            (self.start.to_vec(), Some(next))
        } else if self.end == b"\0" {
            (self.start.to_vec(), None)
        } else {
            (self.start.to_vec(), Some(self.end.to_vec()))
        }
    }
}

/// Every key with its history, ordered by key; each history ordered by revision.
///
/// A persistent map: a clone shares all of its nodes with the original and costs O(1), so a
/// snapshot can be taken under a short lock and written out while writes go on.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(from = "StoredKeySpace")]
pub struct KeySpace {
    keys: imbl::OrdMap<Bytes, Vec<Record>>,
    /// Bytes held by all records, live and historic.
    footprint: u64,
    /// Which keys changed at each revision: derived from `keys`, so it is rebuilt on load rather
    /// than written into snapshots.
    #[serde(skip)]
    changes: ChangeIndex,
}

/// The key space as snapshots hold it (the same fields, in the same order, without the index).
#[derive(Deserialize)]
struct StoredKeySpace {
    keys: imbl::OrdMap<Bytes, Vec<Record>>,
    footprint: u64,
}

impl From<StoredKeySpace> for KeySpace {
    fn from(stored: StoredKeySpace) -> Self {
        let changes = ChangeIndex::rebuild(&stored.keys);
        KeySpace {
            keys: stored.keys,
            footprint: stored.footprint,
            changes,
        }
    }
}

impl KeySpace {
    /// A key space made of whole histories (a backup's), with its footprint and index derived.
    pub fn from_histories(keys: imbl::OrdMap<Bytes, Vec<Record>>) -> KeySpace {
        let footprint = keys
            .iter()
            .flat_map(|(key, history)| history.iter().map(move |r| r.footprint(key)))
            .sum();
        KeySpace::from(StoredKeySpace { keys, footprint })
    }

    /// The key's content as of `revision`, or `None` if it did not exist then.
    pub fn get(&self, key: &[u8], revision: i64) -> Option<&Stored> {
        self.keys
            .get(key)
            .and_then(|history| visible_at(history, revision))
    }

    /// Keys in `range` that existed at `revision`, in key order.
    pub fn range(&self, range: KeyRange<'_>, revision: i64) -> impl Iterator<Item = (&Bytes, &Stored)> + '_ {
        let slice: Box<dyn Iterator<Item = (&Bytes, &Vec<Record>)>> = if range.is_empty() {
            Box::new(std::iter::empty())
        } else {
            let (lower, upper) = range.bounds();
            Box::new(self.keys.range::<_, [u8]>((lower, upper)))
        };
        slice.filter_map(move |(key, history)| visible_at(history, revision).map(|stored| (key, stored)))
    }

    /// Records a new version of `key` at `revision`.
    pub fn put(&mut self, key: &[u8], stored: Stored) {
        self.push(key, Record::Live(stored));
    }

    /// Records the deletion of `key` at `revision`.
    pub fn delete(&mut self, key: &[u8], revision: i64) {
        self.push(
            key,
            Record::Tombstone {
                mod_revision: revision,
            },
        );
    }

    fn push(&mut self, key: &[u8], record: Record) {
        self.footprint += record.footprint(key);
        let revision = record.mod_revision();
        // The index shares the map's copy of the key.
        let key = match self.keys.get_key_value(key) {
            Some((existing, _)) => existing.clone(),
            None => Bytes::copy_from_slice(key),
        };
        self.keys.entry(key.clone()).or_default().push(record);
        self.changes.record(revision, key);
    }

    /// The record `key` got at exactly `revision`, with the version it replaced (if it was live).
    pub fn change_at(&self, key: &[u8], revision: i64) -> Option<(&Record, Option<&Stored>)> {
        let history = self.keys.get(key)?;
        let at = history.partition_point(|r| r.mod_revision() < revision);
        let record = history.get(at).filter(|r| r.mod_revision() == revision)?;
        let previous = match at.checked_sub(1).map(|i| &history[i]) {
            Some(Record::Live(stored)) => Some(stored),
            _ => None,
        };
        Some((record, previous))
    }

    /// The change index: which keys changed at which revision.
    pub fn changes(&self) -> &ChangeIndex {
        &self.changes
    }

    /// Drops history that no read at or after `revision` can see.
    pub fn compact(&mut self, revision: i64) {
        let mut freed = 0;
        let mut changed = Vec::new();
        for (key, history) in self.keys.iter() {
            // Index of the newest record at or before the compaction point: the one reads at
            // `revision` still see. Everything before it is unreachable.
            let keep_from = history.partition_point(|r| r.mod_revision() <= revision);
            let mut drop_until = keep_from.saturating_sub(1);
            if keep_from > 0 && matches!(history[keep_from - 1], Record::Tombstone { .. }) {
                drop_until = keep_from;
            }
            if drop_until > 0 {
                freed += history[..drop_until]
                    .iter()
                    .map(|r| r.footprint(key))
                    .sum::<u64>();
                changed.push((key.clone(), history[drop_until..].to_vec()));
            }
        }
        for (key, kept) in changed {
            if kept.is_empty() {
                self.keys.remove(&key);
            } else {
                self.keys.insert(key, kept);
            }
        }
        self.footprint -= freed;
        self.changes.compact(revision);
    }

    pub fn footprint(&self) -> u64 {
        self.footprint
    }

    /// Every record with `mod_revision <= revision`, in key then revision order: the input of
    /// hashes that must agree across members.
    pub fn records_up_to(&self, revision: i64) -> impl Iterator<Item = (&Bytes, &Record)> + '_ {
        self.keys.iter().flat_map(move |(key, history)| {
            history
                .iter()
                .take_while(move |r| r.mod_revision() <= revision)
                .map(move |r| (key, r))
        })
    }
}

fn visible_at(history: &[Record], revision: i64) -> Option<&Stored> {
    let newer = history.partition_point(|r| r.mod_revision() <= revision);
    match history[..newer].last() {
        Some(Record::Live(stored)) => Some(stored),
        _ => None,
    }
}

/// Writes a record into a hasher in a fixed layout, so every member computes the same hash.
pub fn hash_record(hasher: &mut crc32fast::Hasher, key: &[u8], record: &Record) {
    hasher.update(&(key.len() as u64).to_be_bytes());
    hasher.update(key);
    match record {
        Record::Live(stored) => {
            hasher.update(&[1]);
            hasher.update(&stored.create_revision.to_be_bytes());
            hasher.update(&stored.mod_revision.to_be_bytes());
            hasher.update(&stored.version.to_be_bytes());
            hasher.update(&stored.lease.to_be_bytes());
            hasher.update(&(stored.value.len() as u64).to_be_bytes());
            hasher.update(&stored.value);
        }
        Record::Tombstone { mod_revision } => {
            hasher.update(&[0]);
            hasher.update(&mod_revision.to_be_bytes());
        }
    }
}

/// The end of the range that holds every key with `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(rev: i64, created: i64, version: i64, value: &str) -> Stored {
        Stored {
            create_revision: created,
            mod_revision: rev,
            version,
            value: Bytes::from(value.to_owned()),
            lease: 0,
        }
    }

    #[test]
    fn reads_see_the_version_current_at_their_revision() {
        let mut space = KeySpace::default();
        space.put(b"a", stored(2, 2, 1, "one"));
        space.put(b"a", stored(4, 2, 2, "two"));
        space.delete(b"a", 6);
        assert_eq!(space.get(b"a", 1), None);
        assert_eq!(space.get(b"a", 3).unwrap().value, "one");
        assert_eq!(space.get(b"a", 5).unwrap().value, "two");
        assert_eq!(space.get(b"a", 6), None);
    }

    #[test]
    fn ranges_follow_etcd_end_encoding() {
        let mut space = KeySpace::default();
        for (i, key) in ["a", "ab", "b", "c"].iter().enumerate() {
            space.put(key.as_bytes(), stored(i as i64 + 2, i as i64 + 2, 1, "v"));
        }
        let keys = |start: &[u8], end: &[u8]| -> Vec<String> {
            space
                .range(KeyRange::new(start, end), 10)
                .map(|(k, _)| String::from_utf8(k.to_vec()).unwrap())
                .collect()
        };
        assert_eq!(keys(b"a", b""), vec!["a"]);
        assert_eq!(keys(b"a", &prefix_end(b"a")), vec!["a", "ab"]);
        assert_eq!(keys(b"ab", b"\0"), vec!["ab", "b", "c"]);
        assert_eq!(keys(b"\0", b"\0"), vec!["a", "ab", "b", "c"]);
        assert!(keys(b"c", b"a").is_empty());
    }

    #[test]
    fn compaction_keeps_what_later_reads_can_see() {
        let mut space = KeySpace::default();
        space.put(b"k", stored(2, 2, 1, "old"));
        space.put(b"k", stored(3, 2, 2, "new"));
        space.put(b"gone", stored(4, 4, 1, "x"));
        space.delete(b"gone", 5);
        let before = space.footprint();
        space.compact(5);
        assert_eq!(space.get(b"k", 5).unwrap().value, "new");
        assert_eq!(space.get(b"gone", 5), None);
        assert_eq!(space.records_up_to(i64::MAX).count(), 1, "only k@3 survives");
        assert!(space.footprint() < before);
    }

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn overlapping_ranges() {
        let single = KeyRange::new(b"b", b"");
        assert!(single.overlaps(&KeyRange::new(b"a", b"c")));
        assert!(!single.overlaps(&KeyRange::new(b"c", b"\0")));
        assert!(KeyRange::new(b"a", b"\0").overlaps(&KeyRange::new(b"z", b"")));
        assert!(!KeyRange::new(b"a", b"b").overlaps(&KeyRange::new(b"b", b"c")));
    }
}
