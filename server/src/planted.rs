//! Planted bugs, for the robustness suite's self-tests: switches that break a guarantee on
//! purpose so the suite can show it notices. They exist only in builds with the `planted-bugs`
//! feature (the suite's own build); a server built without it has none, whatever its environment.
//! With the feature, `CAIRN_PLANTED_BUG` names the one to turn on.

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
