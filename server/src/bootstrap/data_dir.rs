//! The data directory's identity file: which member of which cluster this directory belongs to.
//! Written once, atomically, before Raft writes anything; an initialized directory wins over flags.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIdentity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub token: String,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("identity.json")
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data dir {dir}: {reason}")]
    Io { dir: PathBuf, reason: String },
    #[error("data dir {dir} has an unreadable identity file: {reason}")]
    Unreadable { dir: PathBuf, reason: String },
}

pub fn load(data_dir: &Path) -> Result<Option<MemberIdentity>, DataDirError> {
    let file = path(data_dir);
    match fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DataDirError::Unreadable {
                dir: data_dir.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataDirError::Io {
            dir: data_dir.to_owned(),
            reason: e.to_string(),
        }),
    }
}

pub fn save(data_dir: &Path, identity: &MemberIdentity) -> Result<(), DataDirError> {
    let io = |e: std::io::Error| DataDirError::Io {
        dir: data_dir.to_owned(),
        reason: e.to_string(),
    };
    let file = path(data_dir);
    let dir = file.parent().expect("identity file has a parent directory");
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join("identity.json.tmp");
    let mut out = File::create(&tmp).map_err(io)?;
    out.write_all(&serde_json::to_vec_pretty(identity).expect("identity serializes"))
        .map_err(io)?;
    out.sync_all().map_err(io)?;
    fs::rename(&tmp, &file).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}
