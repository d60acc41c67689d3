//! Spec validation, done once per reconcile: a `KVCluster` either becomes a `ValidSpec` with every
//! default resolved and every quantity parsed, or a `SpecError` that names the field and the
//! problem (reported in a condition; nothing is changed until the spec is edited).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};

use crate::build::names::Names;

use crate::crd::{
    Backup, BootstrapMode, ClientService, ClientTls, CompactionMode, DeletionPolicy, KVClusterSpec,
    PullPolicy, QuorumLossPolicy, Restore, S3Destination, VolumeDestination,
};

/// The image repository members run when the spec names none.
pub const DEFAULT_REPOSITORY: &str = "ghcr.io/cairn-dev/cairn";
/// The version members run when the spec names none: the operator's own.
pub const DEFAULT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Claims are this big unless the spec says otherwise.
pub const DEFAULT_STORAGE: &str = "1Gi";
/// StatefulSet pods are named `<name>-<ordinal>`, and the controller labels them with
/// `<name>-<10-character hash>`, which must stay a 63-character label value.
pub const MAX_NAME_LENGTH: usize = 52;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "metadata.name {0:?} cannot name a cluster: it must be at most {MAX_NAME_LENGTH} characters of \
         lowercase letters, digits and '-', starting with a letter and ending with a letter or digit \
         (it becomes the members' host names)"
    )]
    Name(String),
    #[error("spec.replicas is {0}; it must be between 1 and 9")]
    Replicas(i32),
    #[error("spec.version {0:?} is not an image tag (letters, digits, '_', '.', '-'; at most 128)")]
    Version(String),
    #[error("spec.image {0:?} is not an image reference")]
    Image(String),
    #[error("{field} {value:?} is not a quantity of bytes: {reason}")]
    Quantity {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("spec.storage.ephemeral is true, so spec.storage.{0} cannot be used (there is no claim)")]
    EphemeralWithClaim(&'static str),
    #[error(
        "spec.server.electionTimeoutMs ({election} ms) must be at least 5 times \
         spec.server.heartbeatIntervalMs ({heartbeat} ms)"
    )]
    Timing { heartbeat: u32, election: u32 },
    #[error(
        "spec.server.autoCompaction.retention {0:?} must be a whole number of revisions in mode \
         Revision"
    )]
    RevisionRetention(String),
    #[error(
        "{field} {value:?} is not a Secret name (lowercase letters, digits, '-' and '.', starting \
         and ending with a letter or digit; at most 253)"
    )]
    SecretName { field: String, value: String },
    #[error("{field} {value:?} is the name of a Secret the operator keeps for the cluster; pick another")]
    ReservedSecret { field: String, value: String },
    #[error("{field} {value:?} is issued twice; each certificate needs its own Secret")]
    DuplicateSecret { field: String, value: String },
    #[error(
        "{field} {value:?} cannot be a certificate's common name: it must be 1 to 64 characters \
         without control characters"
    )]
    CertificateUser { field: String, value: String },
    #[error(
        "spec.tls.client.secretName and spec.tls.client.operatorSecretName go together: members \
         with your certificate trust only your CA, so the operator needs a client certificate \
         from it too"
    )]
    SuppliedClientTlsHalf,
    #[error(
        "spec.tls.client.certificates cannot be issued with spec.tls.client.secretName: the \
         operator does not hold the CA of your certificates; issue them where you got that one"
    )]
    CertificatesWithSuppliedCa,
    #[error(
        "spec.tls.certificateLifetime {0:?} is not a lifetime: hours, minutes and seconds as Go \
         writes them (8760h, 720h30m, 90s), from 1m to 876000h"
    )]
    CertificateLifetime(String),
    #[error("{field} {value:?} {reason}")]
    Backup {
        field: String,
        value: String,
        reason: &'static str,
    },
    #[error("{field} needs exactly one of {field}.s3 and {field}.volume; it has {has}")]
    BackupLocation { field: &'static str, has: &'static str },
    #[error(
        "spec.bootstrap.restore needs spec.bootstrap.mode Static: a restore gives every initial \
         member the list of all of them, which DnsSrv discovers only as they start"
    )]
    RestoreWithDnsSrv,
}

/// Something the spec allows but a user should hear about (as a condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// An even size tolerates no more failures than the odd size below it.
    EvenSize(i32),
    /// Members keep their data in emptyDir.
    Ephemeral,
    /// spec.tls.peer.enabled differs from what the cluster was created with (the value kept).
    PeerTlsFixed(bool),
    /// spec.tls.peer.enabled is no longer true, but the move of the peers to TLS has begun.
    PeerTlsMoveGoesOn,
}

impl Warning {
    pub fn reason(&self) -> &'static str {
        match self {
            Warning::EvenSize(_) => "EvenSize",
            Warning::Ephemeral => "EphemeralStorage",
            Warning::PeerTlsFixed(_) => "PeerTLSFixed",
            Warning::PeerTlsMoveGoesOn => "PeerTLSMoveGoesOn",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Warning::EvenSize(n) => format!(
                "{n} members tolerate {} failure(s), as {} would; odd sizes use members better",
                (n - 1) / 2,
                n - 1
            ),
            Warning::Ephemeral => {
                "members keep data in emptyDir: a member whose pod is deleted loses its data and is replaced"
                    .to_owned()
            }
            Warning::PeerTlsFixed(true) => "spec.tls.peer.enabled is false, but this cluster's peers \
                 speak TLS, which they keep: peers never move back to plaintext"
                .to_owned(),
            Warning::PeerTlsFixed(false) => "peer TLS is on by default, but this cluster was created \
                 without it and keeps plaintext peers until spec.tls.peer.enabled is set to true, which \
                 moves them to TLS one member at a time"
                .to_owned(),
            Warning::PeerTlsMoveGoesOn => "spec.tls.peer.enabled is no longer true, but the move of \
                 this cluster's peers to TLS has begun and goes on to its end: a cluster half way \
                 is safe only on the way forward"
                .to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoragePlan {
    Claim { bytes: u64, class: Option<String> },
    Ephemeral,
}

/// Server flags, resolved (None keeps cairn's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFlags {
    pub heartbeat_interval_ms: Option<u32>,
    pub election_timeout_ms: Option<u32>,
    pub snapshot_count: Option<u64>,
    pub quota_backend_bytes: Option<u64>,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`.
    pub auto_compaction: Option<(&'static str, String)>,
}

/// Auth as the spec asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPlan {
    /// The Secret with root's password.
    pub root_secret: String,
    /// The spec names no Secret: the operator makes this one.
    pub made_by_operator: bool,
}

/// Backups as the spec asks for them.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupPlan {
    pub schedule: croner::Cron,
    pub destination: BackupDestination,
    pub retain_count: Option<u32>,
    pub retain_age: Option<Duration>,
    /// No scheduled backups (requested ones still run).
    pub suspend: bool,
}

/// The backup a new cluster starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    pub source: BackupDestination,
    /// A backup's name, or `latest`.
    pub backup: String,
    /// The backup chosen for every member (latched in status), once it is.
    pub chosen: Option<String>,
}

/// Where backups go (or a restore finds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupDestination {
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
        path_style: bool,
        /// Holds `accessKeyID` and `secretAccessKey`.
        credentials_secret: String,
    },
    Volume {
        claim: String,
        /// The directory within the claim.
        path: String,
    },
}

/// A spec the builders can use as is.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    pub name: String,
    pub namespace: String,
    pub replicas: i32,
    pub image: String,
    pub version: String,
    pub pull_policy: Option<PullPolicy>,
    pub bootstrap: BootstrapMode,
    pub storage: StoragePlan,
    pub resources: Option<ResourceRequirements>,
    pub pod_labels: BTreeMap<String, String>,
    pub pod_annotations: BTreeMap<String, String>,
    pub affinity: Option<Affinity>,
    pub tolerations: Vec<Toleration>,
    pub node_selector: BTreeMap<String, String>,
    pub priority_class_name: Option<String>,
    pub server: ServerFlags,
    pub client_service: ClientService,
    pub paused: bool,
    pub deletion_policy: DeletionPolicy,
    /// Seconds a member may fail before it is replaced.
    pub member_timeout_seconds: u64,
    pub quorum_loss: QuorumLossPolicy,
    /// Seconds without a quorum before automatic recovery.
    pub quorum_loss_seconds: u64,
    /// None while auth is to be off.
    pub auth: Option<AuthPlan>,
    /// Peers speak TLS with certificates from the cluster's CA. The spec asks; what the cluster
    /// was created with (latched in status) decides, see `with_latched_peer_tls`.
    pub peer_tls: bool,
    /// The spec says `tls.peer.enabled: true` in so many words (not by default): what moves a
    /// cluster created without peer TLS onto it.
    pub peer_tls_explicit: bool,
    /// The peers of a cluster created without TLS are moving onto it (`peer_move`).
    pub peer_move: bool,
    /// The members' peer certificate comes from this Secret of the user's, not the operator's CA.
    pub peer_tls_supplied: Option<String>,
    pub client_tls: ClientTlsPlan,
    /// How long the certificates the operator issues are valid.
    pub certificate_lifetime: Duration,
    /// None without `spec.backup`.
    pub backup: Option<BackupPlan>,
    /// None without `spec.bootstrap.restore`.
    pub restore: Option<RestorePlan>,
    pub warnings: Vec<Warning>,
}

/// How long issued certificates are valid unless the spec says.
const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The bounds of a lifetime the spec may ask for: a minute (renewed every 20 s or so, as
/// certificates are valid from a minute before they are made) and a century.
const CERTIFICATE_LIFETIME_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(876_000 * 3600));

/// A Go duration of hours, minutes and seconds (`8760h`, `1h30m`, `90s`), the form cert-manager
/// and kubectl users write lifetimes in.
fn go_duration(text: &str) -> Option<Duration> {
    let (mut total, mut digits, mut spans) = (0u64, String::new(), 0);
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let count: u64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(count.checked_mul(unit)?)?;
        spans += 1;
    }
    (digits.is_empty() && spans > 0).then_some(Duration::from_secs(total))
}

/// Client TLS: members take only clients with a certificate from the cluster's CA (or the
/// user's).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientTlsPlan {
    /// Members serve clients over TLS only.
    pub enabled: bool,
    /// The Secrets of the user's that hold the members' and the operator's certificates.
    pub supplied: Option<SuppliedClientTls>,
    /// The client certificates the spec asks the operator to issue.
    pub certificates: Vec<IssuedCertificate>,
}

/// Certificates for client TLS the user keeps, by Secret name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppliedClientTls {
    pub server: String,
    pub operator: String,
}

/// A client certificate for `user`, issued into the Secret `secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub secret: String,
    pub user: String,
}

/// How long a member may fail before it is replaced, unless the spec says.
const DEFAULT_MEMBER_TIMEOUT_SECONDS: u64 = 300;

/// How long a quorum may be lost before automatic recovery, unless the spec says.
const DEFAULT_QUORUM_LOSS_SECONDS: u64 = 300;

/// Cairn's defaults, used to check the timing rule when only one of the two is set.
const CAIRN_HEARTBEAT_MS: u32 = 100;
const CAIRN_ELECTION_MS: u32 = 1000;

pub fn validate(name: &str, namespace: &str, spec: &KVClusterSpec) -> Result<ValidSpec, SpecError> {
    if !is_cluster_name(name) {
        return Err(SpecError::Name(name.to_owned()));
    }
    if !(1..=9).contains(&spec.replicas) {
        return Err(SpecError::Replicas(spec.replicas));
    }
    let version = match &spec.version {
        Some(version) if !is_tag(version) => return Err(SpecError::Version(version.clone())),
        Some(version) => version.clone(),
        None => DEFAULT_VERSION.to_owned(),
    };
    let image = match &spec.image {
        Some(image) if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(SpecError::Image(image.clone()));
        }
        Some(image) => image.clone(),
        None => format!("{DEFAULT_REPOSITORY}:{version}"),
    };

    let storage = if spec.storage.ephemeral {
        if spec.storage.size.is_some() {
            return Err(SpecError::EphemeralWithClaim("size"));
        }
        if spec.storage.storage_class_name.is_some() {
            return Err(SpecError::EphemeralWithClaim("storageClassName"));
        }
        StoragePlan::Ephemeral
    } else {
        let size = spec
            .storage
            .size
            .as_ref()
            .map_or(DEFAULT_STORAGE, |q| q.0.as_str());
        let bytes = parse_bytes(size).map_err(|reason| SpecError::Quantity {
            field: "spec.storage.size",
            value: size.to_owned(),
            reason,
        })?;
        if bytes == 0 {
            return Err(SpecError::Quantity {
                field: "spec.storage.size",
                value: size.to_owned(),
                reason: "a claim needs some space".into(),
            });
        }
        StoragePlan::Claim {
            bytes,
            class: spec.storage.storage_class_name.clone(),
        }
    };

    let options = &spec.server;
    let heartbeat = options.heartbeat_interval_ms.unwrap_or(CAIRN_HEARTBEAT_MS);
    let election = options.election_timeout_ms.unwrap_or(CAIRN_ELECTION_MS);
    if u64::from(election) < 5 * u64::from(heartbeat) {
        return Err(SpecError::Timing { heartbeat, election });
    }
    let quota_backend_bytes = match &options.quota_backend_bytes {
        Some(q) => Some(parse_bytes(&q.0).map_err(|reason| SpecError::Quantity {
            field: "spec.server.quotaBackendBytes",
            value: q.0.clone(),
            reason,
        })?),
        None => None,
    };

    // The schema checks the retention's form; only the mode decides whether units are allowed.
    let auto_compaction = match &options.auto_compaction {
        None => None,
        Some(auto) => match auto.mode {
            CompactionMode::Periodic => Some(("periodic", auto.retention.clone())),
            CompactionMode::Revision if auto.retention.parse::<u64>().is_ok() => {
                Some(("revision", auto.retention.clone()))
            }
            CompactionMode::Revision => {
                return Err(SpecError::RevisionRetention(auto.retention.clone()));
            }
        },
    };

    let root_secret = match &spec.auth.root_password_secret {
        Some(secret) => Some(secret_name("spec.auth.rootPasswordSecret".into(), secret)?),
        None => None,
    };
    let auth = match root_secret {
        _ if !spec.auth.enabled => None,
        Some(root_secret) => Some(AuthPlan {
            root_secret,
            made_by_operator: false,
        }),
        None => Some(AuthPlan {
            root_secret: Names::new(name, namespace).root_password_secret(),
            made_by_operator: true,
        }),
    };

    let client_tls = client_tls(name, namespace, &spec.tls.client)?;
    let certificate_lifetime = match &spec.tls.certificate_lifetime {
        None => DEFAULT_CERTIFICATE_LIFETIME,
        Some(text) => go_duration(text)
            .filter(|d| (CERTIFICATE_LIFETIME_BOUNDS.0..=CERTIFICATE_LIFETIME_BOUNDS.1).contains(d))
            .ok_or_else(|| SpecError::CertificateLifetime(text.clone()))?,
    };
    let peer_tls_supplied = match &spec.tls.peer.secret_name {
        Some(secret) => Some(secret_name("spec.tls.peer.secretName".into(), secret)?),
        None => None,
    };

    let backup = match &spec.backup {
        Some(backup) => Some(backup_plan(name, namespace, backup)?),
        None => None,
    };
    let restore = match &spec.bootstrap.restore {
        Some(_) if spec.bootstrap.mode == BootstrapMode::DnsSrv => return Err(SpecError::RestoreWithDnsSrv),
        Some(restore) => Some(restore_plan(name, namespace, restore)?),
        None => None,
    };

    let mut warnings = Vec::new();
    if spec.replicas % 2 == 0 {
        warnings.push(Warning::EvenSize(spec.replicas));
    }
    if storage == StoragePlan::Ephemeral {
        warnings.push(Warning::Ephemeral);
    }
    Ok(ValidSpec {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        replicas: spec.replicas,
        image,
        version,
        pull_policy: spec.image_pull_policy,
        bootstrap: spec.bootstrap.mode,
        storage,
        resources: spec.resources.clone(),
        pod_labels: spec.pod.labels.clone(),
        pod_annotations: spec.pod.annotations.clone(),
        affinity: spec.pod.affinity.clone(),
        tolerations: spec.pod.tolerations.clone(),
        node_selector: spec.pod.node_selector.clone(),
        priority_class_name: spec.pod.priority_class_name.clone(),
        server: ServerFlags {
            heartbeat_interval_ms: options.heartbeat_interval_ms,
            election_timeout_ms: options.election_timeout_ms,
            snapshot_count: options.snapshot_count,
            quota_backend_bytes,
            auto_compaction,
        },
        client_service: spec.client_service.clone(),
        paused: spec.paused,
        deletion_policy: spec.deletion_policy,
        member_timeout_seconds: spec
            .recovery
            .member_timeout_seconds
            .map_or(DEFAULT_MEMBER_TIMEOUT_SECONDS, u64::from),
        quorum_loss: spec.recovery.quorum_loss,
        quorum_loss_seconds: spec
            .recovery
            .quorum_loss_seconds
            .map_or(DEFAULT_QUORUM_LOSS_SECONDS, u64::from),
        auth,
        peer_tls: spec.tls.peer.enabled.unwrap_or(true),
        peer_tls_explicit: spec.tls.peer.enabled == Some(true),
        peer_move: false,
        peer_tls_supplied,
        client_tls,
        certificate_lifetime,
        backup,
        restore,
        warnings,
    })
}

/// Backups keep this many when the spec sets no retention at all.
const DEFAULT_BACKUP_COUNT: u32 = 7;

fn refuse(field: impl Into<String>, value: &str, reason: &'static str) -> SpecError {
    SpecError::Backup {
        field: field.into(),
        value: value.to_owned(),
        reason,
    }
}

fn restore_plan(name: &str, namespace: &str, restore: &Restore) -> Result<RestorePlan, SpecError> {
    let field = "spec.bootstrap.restore";
    let source = location(field, name, namespace, &restore.s3, &restore.volume)?;
    let backup = restore.backup.clone().unwrap_or_else(|| "latest".to_owned());
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if backup.is_empty() || backup.len() > 255 || !backup.chars().all(plain) || backup.starts_with('.') {
        return Err(refuse(
            "spec.bootstrap.restore.backup",
            &backup,
            "is not a backup's name (as cairnctl backup list shows it) nor latest",
        ));
    }
    Ok(RestorePlan {
        source,
        backup,
        chosen: None,
    })
}

/// Where backups are, from the `s3` or `volume` under `field`.
fn location(
    field: &'static str,
    name: &str,
    namespace: &str,
    s3: &Option<S3Destination>,
    volume: &Option<VolumeDestination>,
) -> Result<BackupDestination, SpecError> {
    let destination = match (s3, volume) {
        (Some(_), Some(_)) => return Err(SpecError::BackupLocation { field, has: "both" }),
        (None, None) => {
            return Err(SpecError::BackupLocation {
                field,
                has: "neither",
            });
        }
        (Some(s3), None) => {
            if !is_bucket(&s3.bucket) {
                return Err(refuse(
                    format!("{field}.s3.bucket"),
                    &s3.bucket,
                    "is not a bucket name: 3 to 63 lowercase letters, digits, '.' and '-', \
                     starting and ending with a letter or digit",
                ));
            }
            let prefix = match &s3.prefix {
                Some(prefix) if !is_relative_path(prefix) => {
                    return Err(refuse(
                        format!("{field}.s3.prefix"),
                        prefix,
                        "is not a key prefix: '/'-separated names without empty, '.' or '..' \
                         parts, spaces or control characters",
                    ));
                }
                Some(prefix) => prefix.clone(),
                None => format!("{namespace}/{name}"),
            };
            let url = |e: &String| {
                (e.starts_with("http://") || e.starts_with("https://"))
                    && !e.chars().any(|c| c.is_whitespace() || c.is_control())
            };
            if s3.endpoint.as_ref().is_some_and(|e| !url(e)) {
                return Err(refuse(
                    format!("{field}.s3.endpoint"),
                    s3.endpoint.as_deref().unwrap_or_default(),
                    "is not a URL: it must start with http:// or https://",
                ));
            }
            BackupDestination::S3 {
                bucket: s3.bucket.clone(),
                prefix,
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone(),
                path_style: s3.path_style,
                credentials_secret: secret_name(
                    format!("{field}.s3.credentialsSecret"),
                    &s3.credentials_secret,
                )?,
            }
        }
        (None, Some(volume)) => {
            if !is_subdomain(&volume.claim_name) {
                return Err(refuse(
                    format!("{field}.volume.claimName"),
                    &volume.claim_name,
                    "is not a claim name (lowercase letters, digits, '-' and '.', starting and \
                     ending with a letter or digit)",
                ));
            }
            let path = match &volume.path {
                Some(path) if !is_relative_path(path) => {
                    return Err(refuse(
                        format!("{field}.volume.path"),
                        path,
                        "is not a directory within the claim: '/'-separated names without \
                         empty, '.' or '..' parts, spaces or control characters",
                    ));
                }
                Some(path) => path.clone(),
                None => name.to_owned(),
            };
            BackupDestination::Volume {
                claim: volume.claim_name.clone(),
                path,
            }
        }
    };
    Ok(destination)
}

fn backup_plan(name: &str, namespace: &str, backup: &Backup) -> Result<BackupPlan, SpecError> {
    let schedule = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(&backup.schedule)
        .map_err(|_| {
            refuse(
                "spec.backup.schedule",
                &backup.schedule,
                "is not a cron schedule: five fields (minute hour day-of-month month day-of-week),                  as in \"0 */6 * * *\", or a macro such as @daily",
            )
        })?;
    let destination = location("spec.backup", name, namespace, &backup.s3, &backup.volume)?;
    let retain_age = match &backup.retention.max_age {
        Some(text) => Some(
            go_duration(text)
                .filter(|age| *age >= Duration::from_secs(60))
                .ok_or_else(|| {
                    refuse(
                        "spec.backup.retention.maxAge",
                        text,
                        "is not an age: hours, minutes and seconds as Go writes them (168h, \
                         90m), at least 1m",
                    )
                })?,
        ),
        None => None,
    };
    let retain_count = match (backup.retention.count, retain_age) {
        (Some(0), _) => {
            return Err(refuse(
                "spec.backup.retention.count",
                "0",
                "keeps nothing; the newest backup always stays, so the least is 1",
            ));
        }
        (None, None) => Some(DEFAULT_BACKUP_COUNT),
        (count, _) => count,
    };
    Ok(BackupPlan {
        schedule,
        destination,
        retain_count,
        retain_age,
        suspend: backup.suspend,
    })
}

/// An S3 bucket name as every S3 service takes it: a DNS subdomain of 3 to 63 characters.
fn is_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len()) && is_subdomain(name)
}

/// A relative path (or key prefix) that stays where it is put.
fn is_relative_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 512
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !path.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A Secret name the spec gives in `field`, checked.
fn secret_name(field: String, value: &str) -> Result<String, SpecError> {
    match is_subdomain(value) {
        true => Ok(value.to_owned()),
        false => Err(SpecError::SecretName {
            field,
            value: value.to_owned(),
        }),
    }
}

/// Client TLS as the spec asks for it: on or off, the certificates to issue (each into a Secret
/// of its own that is none of those the operator keeps), or the Secrets the user supplies.
fn client_tls(name: &str, namespace: &str, tls: &ClientTls) -> Result<ClientTlsPlan, SpecError> {
    let supplied = match (&tls.secret_name, &tls.operator_secret_name) {
        (None, None) => None,
        (Some(server), Some(operator)) => Some(SuppliedClientTls {
            server: secret_name("spec.tls.client.secretName".into(), server)?,
            operator: secret_name("spec.tls.client.operatorSecretName".into(), operator)?,
        }),
        _ => return Err(SpecError::SuppliedClientTlsHalf),
    };
    if supplied.is_some() && !tls.certificates.is_empty() {
        return Err(SpecError::CertificatesWithSuppliedCa);
    }
    let reserved = Names::new(name, namespace).operator_secrets();
    let mut seen = BTreeSet::new();
    let mut certificates = Vec::new();
    for (i, certificate) in tls.certificates.iter().enumerate() {
        let field = |key: &str| format!("spec.tls.client.certificates[{i}].{key}");
        let secret = secret_name(field("secretName"), &certificate.secret_name)?;
        if reserved.contains(&secret) {
            return Err(SpecError::ReservedSecret {
                field: field("secretName"),
                value: secret,
            });
        }
        if !seen.insert(secret.clone()) {
            return Err(SpecError::DuplicateSecret {
                field: field("secretName"),
                value: secret,
            });
        }
        let user = &certificate.user;
        // 64 characters is X.509's upper bound for a common name.
        if user.is_empty() || user.chars().count() > 64 || user.chars().any(char::is_control) {
            return Err(SpecError::CertificateUser {
                field: field("user"),
                value: user.clone(),
            });
        }
        certificates.push(IssuedCertificate {
            secret,
            user: user.clone(),
        });
    }
    Ok(ClientTlsPlan {
        enabled: tls.enabled,
        supplied,
        certificates,
    })
}

/// A DNS-1035 label short enough for the StatefulSet's pod labels.
fn is_cluster_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LENGTH
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

impl ValidSpec {
    /// The Secret the members' peer certificate is mounted from.
    pub fn peer_tls_secret(&self) -> String {
        (self.peer_tls_supplied.clone()).unwrap_or_else(|| Names::of(self).peer_tls_secret())
    }

    /// The Secret the members' client-port certificate is mounted from.
    pub fn server_tls_secret(&self) -> String {
        match &self.client_tls.supplied {
            Some(supplied) => supplied.server.clone(),
            None => Names::of(self).server_tls_secret(),
        }
    }

    /// The Secret holding the operator's own client certificate.
    pub fn operator_tls_secret(&self) -> String {
        match &self.client_tls.supplied {
            Some(supplied) => supplied.operator.clone(),
            None => Names::of(self).operator_tls_secret(),
        }
    }

    /// Members hold peer certificates: their peers speak TLS or are moving to it.
    pub fn peer_certificates(&self) -> bool {
        self.peer_tls || self.peer_move
    }

    /// The spec with peer TLS as the cluster has it (latched in status): members know each
    /// other by their peer URLs, so the scheme changes only by a move (`peer_move`), which a
    /// plaintext cluster makes when the spec asks for TLS explicitly and, once begun (`moving`),
    /// finishes. Other differences become warnings.
    pub fn with_latched_peer_tls(mut self, latched: bool, moving: bool) -> ValidSpec {
        let asked = self.peer_tls;
        self.peer_move = !latched && (moving || self.peer_tls_explicit);
        if self.peer_move && !asked {
            self.warnings.push(Warning::PeerTlsMoveGoesOn);
        } else if !self.peer_move && asked != latched {
            self.warnings.push(Warning::PeerTlsFixed(latched));
        }
        self.peer_tls = latched;
        self
    }

    /// The spec once the backup to restore is chosen (latched in status).
    pub fn with_restore_chosen(mut self, chosen: Option<&str>) -> ValidSpec {
        if let Some(restore) = &mut self.restore {
            restore.chosen = chosen.map(str::to_owned);
        }
        self
    }

    /// The spec once a move has brought every member's peers onto TLS.
    pub fn with_peers_on_tls(mut self) -> ValidSpec {
        self.peer_tls = true;
        self.peer_move = false;
        self
    }
}

/// A DNS-1123 subdomain, what Kubernetes accepts as a Secret's name.
fn is_subdomain(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
}

fn is_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A Kubernetes quantity as a whole number of bytes: `1Gi`, `500M`, `2e9`, `1.5Ki`, `4096`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    cairn_quantity::parse_bytes(text).map_err(|e| e.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KVCluster;

    fn spec(yaml: &str) -> KVClusterSpec {
        let object: KVCluster = serde_yaml::from_str(&format!(
            "apiVersion: cairn.dev/v1alpha1\nkind: KVCluster\nmetadata: {{name: kv, namespace: ns}}\n{yaml}"
        ))
        .unwrap();
        object.spec
    }

    fn backup(yaml: &str) -> Result<BackupPlan, SpecError> {
        let spec = spec(&format!("spec:\n  backup:\n{yaml}"));
        validate("kv", "ns", &spec).map(|valid| valid.backup.expect("a plan"))
    }

    #[test]
    fn backups_default_to_a_prefix_of_the_cluster_and_seven_kept() {
        let plan =
            backup("    schedule: '@hourly'\n    s3: {bucket: my-backups, credentialsSecret: creds}\n")
                .unwrap();
        assert_eq!(plan.retain_count, Some(7));
        assert_eq!(plan.retain_age, None);
        assert!(matches!(
            &plan.destination,
            BackupDestination::S3 { prefix, .. } if prefix == "ns/kv"
        ));
        let plan = backup(
            "    schedule: '0 3 * * 1-5'\n    retention: {maxAge: 168h}\n    volume: {claimName: b}\n",
        )
        .unwrap();
        assert_eq!(plan.retain_count, None);
        assert_eq!(plan.retain_age, Some(Duration::from_secs(168 * 3600)));
        assert_eq!(
            plan.destination,
            BackupDestination::Volume {
                claim: "b".into(),
                path: "kv".into()
            }
        );
    }

    #[test]
    fn restores_take_the_newest_backup_of_a_cluster_of_this_name_unless_told() {
        let spec = spec("spec:\n  bootstrap:\n    restore:\n      s3: {bucket: b-1, credentialsSecret: c}\n");
        let plan = validate("kv", "ns", &spec).unwrap().restore.unwrap();
        assert_eq!(plan.backup, "latest");
        assert_eq!(plan.chosen, None);
        assert!(matches!(plan.source, BackupDestination::S3 { prefix, .. } if prefix == "ns/kv"));
        for (yaml, words) in [
            (
                "spec:\n  bootstrap:\n    mode: DnsSrv\n    restore:\n      volume: {claimName: b}\n",
                "spec.bootstrap.restore needs spec.bootstrap.mode Static",
            ),
            (
                "spec:\n  bootstrap:\n    restore:\n      backup: ../etc/passwd\n      volume: {claimName: b}\n",
                "spec.bootstrap.restore.backup \"../etc/passwd\" is not a backup's name",
            ),
            (
                "spec:\n  bootstrap:\n    restore: {}\n",
                "spec.bootstrap.restore needs exactly one of spec.bootstrap.restore.s3 and \
                 spec.bootstrap.restore.volume; it has neither",
            ),
            (
                "spec:\n  bootstrap:\n    restore:\n      s3: {bucket: x, credentialsSecret: c}\n",
                "spec.bootstrap.restore.s3.bucket \"x\" is not a bucket name",
            ),
        ] {
            let error = validate("kv", "ns", &self::spec(yaml))
                .expect_err(yaml)
                .to_string();
            assert!(error.contains(words), "{yaml}: {error}");
        }
    }

    #[test]
    fn backup_specs_that_cannot_work_are_refused_by_field() {
        let s3 = "    s3: {bucket: b-1, credentialsSecret: creds}\n";
        for (yaml, words) in [
            (
                format!("    schedule: '* * *'\n{s3}"),
                "spec.backup.schedule \"* * *\" is not a cron schedule",
            ),
            (
                format!("    schedule: '0 0 * * * *'\n{s3}"),
                "is not a cron schedule",
            ),
            (
                format!("    schedule: '61 * * * *'\n{s3}"),
                "is not a cron schedule",
            ),
            ("    schedule: '@daily'\n".to_owned(), "it has neither"),
            (
                format!("    schedule: '@daily'\n{s3}    volume: {{claimName: b}}\n"),
                "it has both",
            ),
            (
                "    schedule: '@daily'\n    s3: {bucket: B_1, credentialsSecret: creds}\n".to_owned(),
                "spec.backup.s3.bucket \"B_1\" is not a bucket name",
            ),
            (
                "    schedule: '@daily'\n    s3: {bucket: b-1, prefix: ../x, credentialsSecret: c}\n"
                    .to_owned(),
                "spec.backup.s3.prefix \"../x\" is not a key prefix",
            ),
            (
                "    schedule: '@daily'\n    s3: {bucket: b-1, endpoint: minio:9000, credentialsSecret: c}\n"
                    .to_owned(),
                "spec.backup.s3.endpoint \"minio:9000\" is not a URL",
            ),
            (
                "    schedule: '@daily'\n    s3: {bucket: b-1, credentialsSecret: Creds}\n".to_owned(),
                "spec.backup.s3.credentialsSecret \"Creds\" is not a Secret name",
            ),
            (
                "    schedule: '@daily'\n    volume: {claimName: b, path: /abs}\n".to_owned(),
                "spec.backup.volume.path \"/abs\" is not a directory within the claim",
            ),
            (
                format!("    schedule: '@daily'\n    retention: {{maxAge: 30s}}\n{s3}"),
                "spec.backup.retention.maxAge \"30s\" is not an age",
            ),
            (
                format!("    schedule: '@daily'\n    retention: {{count: 0}}\n{s3}"),
                "spec.backup.retention.count \"0\" keeps nothing",
            ),
        ] {
            let error = backup(&yaml).expect_err(&yaml).to_string();
            assert!(error.contains(words), "{yaml}: {error}");
        }
    }

    #[test]
    fn an_empty_spec_gets_every_default() {
        let valid = validate("kv", "ns", &spec("spec: {}")).unwrap();
        assert_eq!(valid.replicas, 3);
        assert_eq!(valid.image, format!("ghcr.io/cairn-dev/cairn:{DEFAULT_VERSION}"));
        assert_eq!(valid.bootstrap, BootstrapMode::Static);
        assert_eq!(
            valid.storage,
            StoragePlan::Claim {
                bytes: 1 << 30,
                class: None
            }
        );
        assert_eq!(valid.server, ServerFlags::default());
        assert!(valid.warnings.is_empty());
    }

    #[test]
    fn a_full_spec_is_resolved() {
        let valid = validate(
            "kv",
            "ns",
            &spec(
                r#"
spec:
  replicas: 4
  version: v1.2.3
  bootstrap: {mode: DnsSrv}
  storage: {size: 10Gi, storageClassName: fast}
  server: {heartbeatIntervalMs: 50, electionTimeoutMs: 500, snapshotCount: 1000, quotaBackendBytes: 2G}
  clientService: {type: LoadBalancer, annotations: {lb: internal}}
"#,
            ),
        )
        .unwrap();
        assert_eq!(valid.image, "ghcr.io/cairn-dev/cairn:v1.2.3");
        assert_eq!(valid.bootstrap, BootstrapMode::DnsSrv);
        assert_eq!(
            valid.storage,
            StoragePlan::Claim {
                bytes: 10 << 30,
                class: Some("fast".into())
            }
        );
        assert_eq!(valid.server.quota_backend_bytes, Some(2_000_000_000));
        assert_eq!(valid.warnings, vec![Warning::EvenSize(4)]);
        assert!(
            valid.warnings[0]
                .message()
                .contains("4 members tolerate 1 failure(s), as 3 would")
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("spec: {replicas: 0}", "spec.replicas is 0"),
            ("spec: {replicas: -1}", "spec.replicas is -1"),
            ("spec: {version: 'v1 2'}", "spec.version \"v1 2\""),
            ("spec: {image: ''}", "spec.image \"\""),
            ("spec: {storage: {size: lots}}", "spec.storage.size \"lots\""),
            ("spec: {storage: {size: 100m}}", "milli-units"),
            ("spec: {storage: {size: '0'}}", "a claim needs some space"),
            (
                "spec: {storage: {ephemeral: true, size: 1Gi}}",
                "spec.storage.size cannot be used",
            ),
            (
                "spec: {server: {quotaBackendBytes: 1.5.3Gi}}",
                "spec.server.quotaBackendBytes",
            ),
            ("spec: {server: {heartbeatIntervalMs: 300}}", "at least 5 times"),
            (
                "spec: {server: {autoCompaction: {mode: Revision, retention: 30m}}}",
                "spec.server.autoCompaction.retention \"30m\" must be a whole number",
            ),
            (
                "spec: {auth: {enabled: true, rootPasswordSecret: Root_Password}}",
                "spec.auth.rootPasswordSecret \"Root_Password\" is not a Secret name",
            ),
        ];
        for (yaml, expected) in cases {
            let error = validate("kv", "ns", &spec(yaml)).expect_err(yaml).to_string();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
    }

    #[test]
    fn client_tls_issues_each_certificate_into_a_secret_of_its_own() {
        let plan = validate(
            "kv",
            "ns",
            &spec(
                "spec: {tls: {client: {enabled: true, certificates: [\
                 {secretName: kv-admin, user: root}, {secretName: app.client, user: 'app one'}]}}}",
            ),
        )
        .unwrap()
        .client_tls;
        assert!(plan.enabled);
        assert_eq!(
            plan.certificates,
            [
                IssuedCertificate {
                    secret: "kv-admin".into(),
                    user: "root".into()
                },
                IssuedCertificate {
                    secret: "app.client".into(),
                    user: "app one".into()
                },
            ]
        );
        assert_eq!(
            validate("kv", "ns", &spec("spec: {}")).unwrap().client_tls,
            ClientTlsPlan::default()
        );
        // Certificates can be handed out before members switch.
        let early = validate(
            "kv",
            "ns",
            &spec("spec: {tls: {client: {certificates: [{secretName: a, user: b}]}}}"),
        )
        .unwrap();
        assert!(!early.client_tls.enabled);
        assert_eq!(early.client_tls.certificates.len(), 1);
        // Or the user supplies the certificates, and the operator issues none.
        let supplied = validate(
            "kv",
            "ns",
            &spec(
                "spec: {tls: {peer: {secretName: kv-peer-certs}, client: {enabled: true, \
                 secretName: kv-server-certs, operatorSecretName: kv-operator-certs}}}",
            ),
        )
        .unwrap();
        assert_eq!(supplied.peer_tls_secret(), "kv-peer-certs");
        assert_eq!(supplied.server_tls_secret(), "kv-server-certs");
        assert_eq!(supplied.operator_tls_secret(), "kv-operator-certs");
        let own = validate("kv", "ns", &spec("spec: {}")).unwrap();
        assert_eq!(
            (
                own.peer_tls_secret(),
                own.server_tls_secret(),
                own.operator_tls_secret()
            ),
            (
                "kv-peer-tls".into(),
                "kv-server-tls".into(),
                "kv-operator-tls".into()
            )
        );

        let refused = [
            (
                "spec: {tls: {client: {enabled: true, secretName: mine}}}",
                "spec.tls.client.secretName and spec.tls.client.operatorSecretName go together",
            ),
            (
                "spec: {tls: {client: {secretName: a, operatorSecretName: b, \
                 certificates: [{secretName: c, user: d}]}}}",
                "cannot be issued with spec.tls.client.secretName",
            ),
            (
                "spec: {tls: {peer: {secretName: Peer}}}",
                "spec.tls.peer.secretName \"Peer\" is not a Secret name",
            ),
            (
                "spec: {tls: {client: {enabled: true, certificates: [{secretName: A, user: b}]}}}",
                "spec.tls.client.certificates[0].secretName \"A\" is not a Secret name",
            ),
            (
                "spec: {tls: {client: {enabled: true, certificates: [{secretName: kv-ca, user: b}]}}}",
                "\"kv-ca\" is the name of a Secret the operator keeps",
            ),
            (
                "spec: {tls: {client: {enabled: true, certificates: \
                 [{secretName: a, user: b}, {secretName: a, user: c}]}}}",
                "spec.tls.client.certificates[1].secretName \"a\" is issued twice",
            ),
            (
                "spec: {tls: {client: {enabled: true, certificates: [{secretName: a, user: ''}]}}}",
                "spec.tls.client.certificates[0].user \"\" cannot be a certificate's common name",
            ),
        ];
        for (yaml, expected) in refused {
            let error = validate("kv", "ns", &spec(yaml)).expect_err(yaml).to_string();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
    }

    #[test]
    fn certificate_lifetimes_are_go_durations_within_bounds() {
        let lifetime = |yaml: &str| validate("kv", "ns", &spec(yaml)).map(|v| v.certificate_lifetime);
        assert_eq!(lifetime("spec: {}"), Ok(Duration::from_secs(365 * 24 * 3600)));
        for (text, seconds) in [
            ("90s", 90),
            ("1h30m", 5400),
            ("2h45m10s", 9910),
            ("8760h", 31_536_000),
        ] {
            let yaml = format!("spec: {{tls: {{certificateLifetime: {text}}}}}");
            assert_eq!(lifetime(&yaml), Ok(Duration::from_secs(seconds)), "{text}");
        }
        for text in [
            "59s",
            "1d",
            "h",
            "10",
            "1.5h",
            "-1h",
            "",
            "876001h",
            "99999999999999999999h",
        ] {
            let yaml = format!("spec: {{tls: {{certificateLifetime: '{text}'}}}}");
            let error = lifetime(&yaml).expect_err(text).to_string();
            assert!(error.contains("spec.tls.certificateLifetime"), "{text}: {error}");
        }
    }

    #[test]
    fn names_that_cannot_be_host_names_are_refused() {
        for name in ["kv.prod", "1kv", "kv-", "Kv", &"k".repeat(53)] {
            let error = validate(name, "ns", &spec("spec: {}")).expect_err(name);
            assert!(error.to_string().contains("cannot name a cluster"), "{error}");
        }
        assert!(validate(&"k".repeat(52), "ns", &spec("spec: {}")).is_ok());
    }

    #[test]
    fn auth_uses_the_named_secret_or_one_the_operator_makes() {
        let auth = |yaml: &str| validate("kv", "ns", &spec(yaml)).unwrap().auth;
        assert_eq!(auth("spec: {}"), None);
        assert_eq!(auth("spec: {auth: {rootPasswordSecret: mine}}"), None);
        assert_eq!(
            auth("spec: {auth: {enabled: true}}"),
            Some(AuthPlan {
                root_secret: "kv-root-password".into(),
                made_by_operator: true
            })
        );
        assert_eq!(
            auth("spec: {auth: {enabled: true, rootPasswordSecret: etcd-root.v2}}"),
            Some(AuthPlan {
                root_secret: "etcd-root.v2".into(),
                made_by_operator: false
            })
        );
    }

    #[test]
    fn peer_tls_is_what_the_cluster_has_and_moves_on_only_when_asked_in_so_many_words() {
        let asked = validate("kv", "ns", &spec("spec: {tls: {peer: {enabled: true}}}")).unwrap();
        assert!(asked.peer_tls && asked.peer_tls_explicit);
        let on = asked.clone().with_latched_peer_tls(true, false);
        assert!(on.peer_tls && !on.peer_move && on.warnings.is_empty());
        // A plaintext cluster asked for TLS explicitly moves there, without a warning.
        let moving = asked.with_latched_peer_tls(false, false);
        assert!(!moving.peer_tls && moving.peer_move && moving.warnings.is_empty());
        assert!(moving.peer_certificates());

        // On by default is not asking: an older plaintext cluster stays so, and says how to move.
        let by_default = validate("kv", "ns", &spec("spec: {}")).unwrap();
        let kept = by_default.with_latched_peer_tls(false, false);
        assert!(!kept.peer_tls && !kept.peer_move && !kept.peer_certificates());
        assert_eq!(kept.warnings, vec![Warning::PeerTlsFixed(false)]);
        assert!(
            kept.warnings[0]
                .message()
                .contains("spec.tls.peer.enabled is set to true")
        );

        // A move once begun goes on, whatever the spec says now.
        let off = validate("kv", "ns", &spec("spec: {tls: {peer: {enabled: false}}}")).unwrap();
        let going_on = off.clone().with_latched_peer_tls(false, true);
        assert!(going_on.peer_move);
        assert_eq!(going_on.warnings, vec![Warning::PeerTlsMoveGoesOn]);
        // And TLS peers never go back.
        let back = off.with_latched_peer_tls(true, false);
        assert!(back.peer_tls && !back.peer_move);
        assert_eq!(back.warnings, vec![Warning::PeerTlsFixed(true)]);
        assert!(
            validate("kv", "ns", &spec("spec: {}")).unwrap().peer_tls,
            "on by default"
        );
        let off = validate("kv", "ns", &spec("spec: {tls: {peer: {enabled: false}}}")).unwrap();
        assert!(!off.peer_tls);
    }

    #[test]
    fn ephemeral_storage_warns() {
        let valid = validate("kv", "ns", &spec("spec: {storage: {ephemeral: true}}")).unwrap();
        assert_eq!(valid.storage, StoragePlan::Ephemeral);
        assert_eq!(valid.warnings, vec![Warning::Ephemeral]);
    }
}
