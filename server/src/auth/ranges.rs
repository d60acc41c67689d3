//! Which keys a set of granted permissions covers: etcd's key ranges (a single key, `[key, end)`,
//! or from `key` on when `end` is `\0`) and whether their union holds a requested range whole.

/// A half-open key interval; `end: None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

/// The keys `key`/`range_end` name, in etcd's conventions. An empty `range_end` is the key alone,
/// `\0` means every key from `key` on.
pub fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    let end = match range_end {
        [] => {
            let mut next = key.to_vec();
            next.push(0);
            Some(next)
        }
        [0] => None,
        end => Some(end.to_vec()),
    };
    Interval {
        start: key.to_vec(),
        end,
    }
}

/// Whether a permission's range is one etcd accepts: a key, and an end after it (or `\0`).
pub fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

/// Whether the union of `granted` holds every key of `wanted`. A request whose end is not after
/// its key reads nothing; it is judged by its first key alone.
pub fn covers(granted: &[Interval], wanted: &Interval) -> bool {
    let wanted_end = match &wanted.end {
        Some(end) if *end <= wanted.start => interval(&wanted.start, b"").end,
        end => end.clone(),
    };
    let mut sorted: Vec<&Interval> = granted.iter().collect();
    sorted.sort_by(|a, b| a.start.cmp(&b.start));
    // Every wanted key before `reached` is covered; the intervals, in order, must keep touching it.
    let mut reached = wanted.start.clone();
    for granted in sorted {
        if granted.start > reached {
            return false;
        }
        match &granted.end {
            None => return true,
            Some(end) if *end > reached => {
                reached = end.clone();
                if wanted_end
                    .as_ref()
                    .is_some_and(|wanted_end| reached >= *wanted_end)
                {
                    return true;
                }
            }
            Some(_) => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ivl(key: &str, end: &str) -> Interval {
        interval(key.as_bytes(), end.as_bytes())
    }

    #[test]
    fn a_prefix_grant_covers_its_keys_and_ranges_inside_only() {
        let granted = [ivl("a/", "a0")];
        assert!(covers(&granted, &ivl("a/x", "")));
        assert!(covers(&granted, &ivl("a/", "a0")));
        assert!(covers(&granted, &ivl("a/b", "a/c")));
        assert!(!covers(&granted, &ivl("b", "")));
        assert!(!covers(&granted, &ivl("a/", "b")));
        assert!(!covers(&granted, &ivl("a/", "\0")));
    }

    #[test]
    fn adjacent_grants_join_and_gaps_refuse() {
        let joined = [ivl("a", "c"), ivl("c", "e")];
        assert!(covers(&joined, &ivl("b", "d")));
        let gap = [ivl("a", "c"), ivl("d", "e")];
        assert!(!covers(&gap, &ivl("b", "d")));
        assert!(covers(&gap, &ivl("d", "")));
    }

    #[test]
    fn single_keys_and_open_ends() {
        let granted = [ivl("k", ""), ivl("m", "\0")];
        assert!(covers(&granted, &ivl("k", "")));
        assert!(!covers(&granted, &ivl("k", "l")));
        assert!(covers(&granted, &ivl("zzz", "\0")));
        assert!(!covers(&granted, &ivl("\0", "\0")));
        assert!(covers(&[ivl("\0", "\0")], &ivl("\0", "\0")));
        assert!(!covers(&[], &ivl("k", "")));
    }

    #[test]
    fn permission_ranges_etcd_accepts() {
        assert!(valid_permission_range(b"a", b""));
        assert!(valid_permission_range(b"a", b"b"));
        assert!(valid_permission_range(b"a", b"\0"));
        assert!(!valid_permission_range(b"", b""));
        assert!(!valid_permission_range(b"b", b"a"));
    }

    /// Keys over a tiny alphabet, so that random grants and requests overlap often.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..3, 1..3)
    }

    fn grant() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        (key(), prop_oneof![Just(vec![]), Just(vec![0]), key()])
            .prop_filter("a valid permission", |(k, e)| valid_permission_range(k, e))
    }

    fn contains(i: &Interval, key: &[u8]) -> bool {
        i.start.as_slice() <= key && i.end.as_deref().is_none_or(|end| key < end)
    }

    proptest! {
        /// Against brute force over every key of up to three letters (the request's keys, and
        /// the points between them, are all such keys): a covered request has no key outside the
        /// grants, and an uncovered one has.
        #[test]
        fn coverage_matches_brute_force(
            grants in proptest::collection::vec(grant(), 0..4),
            wanted in grant(),
        ) {
            let granted: Vec<Interval> = grants.iter().map(|(k, e)| interval(k, e)).collect();
            let wanted = interval(&wanted.0, &wanted.1);
            let mut all = vec![];
            for a in 0u8..3 {
                all.push(vec![a]);
                for b in 0u8..3 {
                    all.push(vec![a, b]);
                    for c in 0u8..3 {
                        all.push(vec![a, b, c]);
                    }
                }
            }
            let bounded_wanted = Interval {
                start: wanted.start.clone(),
                end: wanted.end.clone().or(Some(vec![3])),
            };
            let missing = all
                .iter()
                .filter(|k| contains(&bounded_wanted, k))
                .any(|k| !granted.iter().any(|g| contains(g, k)));
            let open_end_uncovered = wanted.end.is_none() && !granted.iter().any(|g| g.end.is_none());
            prop_assert_eq!(covers(&granted, &wanted), !missing && !open_end_uncovered);
        }
    }
}
