//! Planted bugs and disk faults, for the robustness suite: switches that break a guarantee on
//! purpose so the suite can show it notices, and a write-ahead log that tells the suite how far it
//! has synced (so a simulated power loss drops exactly what was not) and fails its syncs on
//! request. They exist only in builds with the `planted-bugs` feature (the suite's own build); a
//! server built without it has none, whatever its environment or files. With the feature,
//! `CAIRN_PLANTED_BUG` names the bug to turn on, and `CAIRN_DISK_FAULTS=1` turns on the log's
//! side of disk faults: the file `SYNCED` in the log's directory names the newest segment and how
//! many of its bytes are synced, and a file `FAIL-FSYNC` there makes the next syncs fail.

/// A guarantee a planted bug breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Linearizable reads are served from the member's own state, without ReadIndex.
    StaleReads,
    /// The write-ahead log acknowledges a record when it is queued, before it is written and
    /// synced (and holds it back a little, so that a crash loses it).
    AckBeforeSync,
}

impl Bug {
    pub fn name(self) -> &'static str {
        match self {
            Bug::StaleReads => "stale-reads",
            Bug::AckBeforeSync => "ack-before-sync",
        }
    }
}

/// Whether `bug` is planted in this process.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: Bug) -> bool {
    static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| std::env::var("CAIRN_PLANTED_BUG").ok())
        .as_deref()
        == Some(bug.name())
}

/// Whether `bug` is planted in this process: never, in a build without the feature.
#[cfg(not(feature = "planted-bugs"))]
pub const fn active(_bug: Bug) -> bool {
    false
}

/// The planted bug this process runs with, for a warning at start-up.
pub fn planted() -> Option<Bug> {
    [Bug::StaleReads, Bug::AckBeforeSync]
        .into_iter()
        .find(|bug| active(*bug))
}

/// The file whose presence in a log directory makes syncs there fail.
pub const FAIL_FSYNC: &str = "FAIL-FSYNC";
/// The file in a log directory that says how far the newest segment is synced:
/// `<segment file name> <bytes>`.
pub const SYNCED: &str = "SYNCED";

#[cfg(feature = "planted-bugs")]
fn disk_faults() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CAIRN_DISK_FAULTS").is_some_and(|v| v == "1"))
}

/// Whether a sync of the log in `dir` is to fail now (an injected disk fault).
#[cfg(feature = "planted-bugs")]
pub fn sync_fails(dir: &std::path::Path) -> bool {
    disk_faults() && dir.join(FAIL_FSYNC).exists()
}

/// Records that `segment` in `dir` is synced through `len` bytes.
#[cfg(feature = "planted-bugs")]
pub fn note_synced(dir: &std::path::Path, segment: &std::path::Path, len: u64) {
    if disk_faults() {
        let name = segment.file_name().unwrap_or_default().to_string_lossy();
        // Written aside and renamed, so that a kill never leaves the note half written.
        let aside = dir.join(format!("{SYNCED}.new"));
        let noted = std::fs::write(&aside, format!("{name} {len}\n"))
            .and_then(|()| std::fs::rename(&aside, dir.join(SYNCED)));
        if let Err(error) = noted {
            tracing::warn!(%error, "cannot note how far the log is synced");
        }
    }
}

/// Whether a sync of the log in `dir` is to fail now: never, in a build without the feature.
#[cfg(not(feature = "planted-bugs"))]
pub fn sync_fails(_dir: &std::path::Path) -> bool {
    false
}

/// Nothing to note, in a build without the feature.
#[cfg(not(feature = "planted-bugs"))]
pub fn note_synced(_dir: &std::path::Path, _segment: &std::path::Path, _len: u64) {}
