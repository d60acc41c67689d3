//! Where backups go: a directory (a mounted volume) or an S3-compatible bucket, both through the
//! `object_store` crate. A backup is uploaded whole or not at all, named by the time it was taken
//! and its revision, read back to verify its size and SHA-256, and pruned by a retention policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};

use super::file::TrailerCheck;

/// Parts of a multipart upload: S3's minimum is 5 MiB.
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once; bounds the memory an upload holds to a few parts.
const PARTS_IN_FLIGHT: usize = 2;
const NAME_PREFIX: &str = "snapshot-";
const NAME_SUFFIX: &str = ".db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bad backup location {location:?}: {reason}")]
    Location { location: String, reason: String },
    #[error("backup storage {location}: {source}")]
    Storage {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{0}")]
    Snapshot(String),
    #[error("backup {location} did not verify: {reason}; it was removed and the backup failed")]
    Verify { location: String, reason: String },
    #[error("backup {location}: {reason}")]
    Io { location: String, reason: String },
}

/// Where backups are kept, as a user writes it: `s3://bucket/prefix` or a directory path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Directory(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    pub fn parse(text: &str) -> Result<Location, StoreError> {
        let bad = |reason: &str| StoreError::Location {
            location: text.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket after s3://"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if text.contains("://") {
            return Err(bad("expected s3://bucket/prefix or a directory path"));
        }
        if text.is_empty() {
            return Err(bad("empty"));
        }
        Ok(Location::Directory(PathBuf::from(text)))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Directory(dir) => write!(f, "{}", dir.display()),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// How to reach an S3-compatible service; credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), as every S3 tool reads them.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint` (MinIO, most
    /// self-hosted services).
    pub path_style: bool,
}

/// How many backups to keep: the newest `count`, and none older than `age`. The newest backup is
/// never pruned, whatever the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub count: Option<usize>,
    pub age: Option<Duration>,
}

/// One backup in a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub name: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch at which it was taken, from its name.
    pub taken_at_ms: i64,
    pub revision: i64,
}

/// What an upload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// A backup's name: sortable by time, and carrying its revision.
pub fn backup_name(taken_at_ms: i64, revision: i64) -> String {
    let time = jiff::Timestamp::from_millisecond(taken_at_ms)
        .map(|t| t.strftime("%Y%m%dT%H%M%S").to_string())
        .unwrap_or_else(|_| "00000000T000000".into());
    let millis = taken_at_ms.rem_euclid(1000);
    format!("{NAME_PREFIX}{time}.{millis:03}Z-r{revision}{NAME_SUFFIX}")
}

/// The time and revision in a backup's name; `None` for any other file.
pub fn parse_backup_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    let (time, revision) = stem.split_once("Z-r")?;
    let (seconds, millis) = time.split_once('.')?;
    let civil = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%S", seconds).ok()?;
    let at = civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    let millis: i64 = millis.parse().ok().filter(|m| (0..1000).contains(m))?;
    Some((at.as_millisecond() + millis, revision.parse().ok()?))
}

/// Which backups a retention policy removes, given all of them oldest first and the time now.
pub fn to_prune(backups: &[Backup], retention: Retention, now_ms: i64) -> Vec<String> {
    let Some(newest) = backups.last() else {
        return Vec::new();
    };
    let beyond_count = retention
        .count
        .map_or(0, |keep| backups.len().saturating_sub(keep.max(1)));
    backups
        .iter()
        .enumerate()
        .filter(|(index, backup)| {
            let too_many = *index < beyond_count;
            let too_old = retention
                .age
                .is_some_and(|age| now_ms - backup.taken_at_ms > age.as_millis() as i64);
            backup.name != newest.name && (too_many || too_old)
        })
        .map(|(_, backup)| backup.name.clone())
        .collect()
}

/// A location opened for reading and writing backups.
pub struct BackupStore {
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjectPath>,
    location: Location,
}

impl BackupStore {
    pub fn open(location: &Location, s3: &S3Options) -> Result<BackupStore, StoreError> {
        let bad = |reason: String| StoreError::Location {
            location: location.to_string(),
            reason,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match location {
            Location::Directory(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
                let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), String::new())
            }
            Location::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(!s3.path_style);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &s3.region {
                    builder = builder.with_region(region);
                }
                let store = builder.build().map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), prefix.clone())
            }
        };
        let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
        Ok(BackupStore {
            store,
            prefix,
            location: location.clone(),
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        match &self.prefix {
            Some(prefix) => prefix.child(name),
            None => ObjectPath::from(name),
        }
    }

    /// Where `name` is, as a user would write it.
    pub fn describe(&self, name: &str) -> String {
        format!("{}/{name}", self.location.to_string().trim_end_matches('/'))
    }

    fn storage(&self) -> impl Fn(object_store::Error) -> StoreError + '_ {
        move |source| StoreError::Storage {
            location: self.location.to_string(),
            source,
        }
    }

    /// Uploads a snapshot file arriving in `chunks` as `name`. It becomes visible only when the
    /// whole file arrived and its SHA-256 trailer matched; anything else aborts the upload.
    pub async fn upload<S, E>(&self, name: &str, mut chunks: S) -> Result<Uploaded, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.path(name);
        let upload = self.store.put_multipart(&path).await.map_err(self.storage())?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut trailer = TrailerCheck::default();
        let outcome: Result<(), StoreError> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk =
                    chunk.map_err(|e| StoreError::Snapshot(format!("the snapshot stream failed: {e}")))?;
                trailer.update(&chunk);
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(self.storage())?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        let digest = outcome.and_then(|()| {
            trailer.finish().ok_or_else(|| {
                StoreError::Snapshot(
                    "the snapshot stream ended early or is corrupt (SHA-256 trailer does not match); nothing stored"
                        .into(),
                )
            })
        });
        let (size, sha256) = match digest {
            Ok(done) => done,
            Err(error) => {
                let _ = writer.abort().await;
                return Err(error);
            }
        };
        writer.finish().await.map_err(self.storage())?;
        if let Location::Directory(dir) = &self.location {
            sync_file(&dir.join(name)).map_err(|e| StoreError::Io {
                location: self.describe(name),
                reason: e.to_string(),
            })?;
        }
        Ok(Uploaded {
            name: name.to_owned(),
            size,
            sha256,
        })
    }

    /// Reads `uploaded` back and checks its size and SHA-256; a backup that does not verify is
    /// deleted, so it is never mistaken for a good one.
    pub async fn verify(&self, uploaded: &Uploaded) -> Result<(), StoreError> {
        let checked = self.check(uploaded).await;
        if let Err(reason) = checked {
            let _ = self.store.delete(&self.path(&uploaded.name)).await;
            return Err(StoreError::Verify {
                location: self.describe(&uploaded.name),
                reason,
            });
        }
        Ok(())
    }

    async fn check(&self, uploaded: &Uploaded) -> Result<(), String> {
        let path = self.path(&uploaded.name);
        let meta = self.store.head(&path).await.map_err(|e| e.to_string())?;
        if meta.size != uploaded.size {
            return Err(format!("{} bytes stored, {} sent", meta.size, uploaded.size));
        }
        let mut stream = self
            .store
            .get(&path)
            .await
            .map_err(|e| e.to_string())?
            .into_stream();
        let mut trailer = TrailerCheck::default();
        while let Some(chunk) = stream.next().await {
            trailer.update(&chunk.map_err(|e| e.to_string())?);
        }
        match trailer.finish() {
            Some((_, sha256)) if sha256 == uploaded.sha256 => Ok(()),
            Some((_, sha256)) => Err(format!("SHA-256 {sha256} read back, {} sent", uploaded.sha256)),
            None => Err("what was read back does not end with its own SHA-256".into()),
        }
    }

    /// Every backup in the location, oldest first; other files are left out.
    pub async fn list(&self) -> Result<Vec<Backup>, StoreError> {
        let mut listing = self.store.list(self.prefix.as_ref());
        let mut backups = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(self.storage())?;
            let Some(name) = meta.location.filename() else {
                continue;
            };
            // Only the location's own files, not a deeper prefix's.
            if self.path(name) != meta.location {
                continue;
            }
            if let Some((taken_at_ms, revision)) = parse_backup_name(name) {
                backups.push(Backup {
                    name: name.to_owned(),
                    size: meta.size,
                    taken_at_ms,
                    revision,
                });
            }
        }
        backups.sort_by(|a, b| (a.taken_at_ms, &a.name).cmp(&(b.taken_at_ms, &b.name)));
        Ok(backups)
    }

    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.store.delete(&self.path(name)).await.map_err(self.storage())
    }

    /// Downloads backup `name` into the file `to` (written beside it, then renamed).
    pub async fn download(&self, name: &str, to: &std::path::Path) -> Result<u64, StoreError> {
        let io = |e: std::io::Error| StoreError::Io {
            location: to.display().to_string(),
            reason: e.to_string(),
        };
        let mut stream = self
            .store
            .get(&self.path(name))
            .await
            .map_err(self.storage())?
            .into_stream();
        let partial = to.with_extension("part");
        let mut file = std::fs::File::create(&partial).map_err(io)?;
        let mut size = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(self.storage())?;
            std::io::Write::write_all(&mut file, &chunk).map_err(io)?;
            size += chunk.len() as u64;
        }
        file.sync_all().map_err(io)?;
        std::fs::rename(&partial, to).map_err(io)?;
        Ok(size)
    }
}

/// Fsyncs a file and its directory, so a backup on a volume survives the node's crash.
fn sync_file(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn locations_parse_as_users_write_them() {
        assert_eq!(
            Location::parse("s3://backups/prod/kv/").unwrap(),
            Location::S3 {
                bucket: "backups".into(),
                prefix: "prod/kv".into()
            }
        );
        assert_eq!(
            Location::parse("/backups").unwrap(),
            Location::Directory("/backups".into())
        );
        assert!(Location::parse("s3://").is_err());
        assert!(
            Location::parse("gs://bucket")
                .unwrap_err()
                .to_string()
                .contains("s3://bucket/prefix")
        );
    }

    #[test]
    fn names_sort_by_time_and_read_back() {
        let name = backup_name(1_796_109_375_123, 4021);
        assert_eq!(name, "snapshot-20261201T071615.123Z-r4021.db");
        assert_eq!(parse_backup_name(&name), Some((1_796_109_375_123, 4021)));
        assert!(backup_name(1_000, 1) < backup_name(2_000, 1));
        assert_eq!(parse_backup_name("notes.txt"), None);
        assert_eq!(parse_backup_name("snapshot-garbage.db"), None);
    }

    fn backups(times: &[i64]) -> Vec<Backup> {
        times
            .iter()
            .map(|t| Backup {
                name: backup_name(*t, 1),
                size: 1,
                taken_at_ms: *t,
                revision: 1,
            })
            .collect()
    }

    proptest! {
        #[test]
        fn retention_keeps_the_newest_and_removes_only_what_the_policy_says(
            mut times in proptest::collection::btree_set(0i64..1_000_000, 0..30),
            count in proptest::option::of(0usize..10),
            age in proptest::option::of(0u64..1_000_000),
            now in 1_000_000i64..2_000_000,
        ) {
            let times: Vec<i64> = std::mem::take(&mut times).into_iter().collect();
            let all = backups(&times);
            let retention = Retention { count, age: age.map(Duration::from_millis) };
            let pruned = to_prune(&all, retention, now);
            if let Some(newest) = all.last() {
                prop_assert!(!pruned.contains(&newest.name));
            }
            let kept: Vec<&Backup> = all.iter().filter(|b| !pruned.contains(&b.name)).collect();
            if let Some(count) = count {
                prop_assert!(kept.len() <= count.max(1));
            }
            for backup in &all {
                let old = age.is_some_and(|age| now - backup.taken_at_ms > age as i64);
                let beyond = count.is_some_and(|count| {
                    all.iter().filter(|b| b.taken_at_ms > backup.taken_at_ms).count() >= count.max(1)
                });
                let newest = Some(backup) == all.last();
                prop_assert_eq!(pruned.contains(&backup.name), !newest && (old || beyond));
            }
        }
    }
}
