//! The `KVCluster` resource (`cairn.dev/v1alpha1`): its spec, its status, and the CRD generated
//! from them. Doc comments here become `kubectl explain kvcluster.spec...`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A strongly-consistent key-value cluster of `cairn` members that speaks the etcd v3 API.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "KVCluster",
    plural = "kvclusters",
    shortname = "kvc",
    namespaced,
    status = "KVClusterStatus",
    scale = r#"{"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}"#,
    printcolumn = r#"{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}"#,
    printcolumn = r#"{"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"}"#,
    printcolumn = r#"{"name": "Leader", "type": "string", "jsonPath": ".status.leader"}"#,
    printcolumn = r#"{"name": "Available", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name": "Version", "type": "string", "jsonPath": ".status.version"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name": "Last Backup", "type": "date", "jsonPath": ".status.backup.lastSuccessful.time", "priority": 1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterSpec {
    /// How many members the cluster has. Odd sizes are the useful ones: 3 members survive the loss
    /// of 1, 5 of 2; an even size survives no more failures than the odd size below it (a condition
    /// says so). Membership changes one member at a time.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,

    /// The Cairn version to run: the tag of the default image (`ghcr.io/cairn-dev/cairn:<version>`).
    /// Defaults to the operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// A complete image reference for the members; when set, `version` only labels the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// When the kubelet pulls the image: Always, IfNotPresent or Never (Kubernetes decides by the
    /// tag when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_pull_policy")]
    pub image_pull_policy: Option<PullPolicy>,

    /// How the first members find each other.
    #[serde(default)]
    pub bootstrap: Bootstrap,

    /// Where members keep their data.
    #[serde(default)]
    pub storage: Storage,

    /// CPU and memory requests and limits of each member's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Placement and metadata of the member pods.
    #[serde(default)]
    pub pod: PodOverrides,

    /// Raft and storage settings passed to every member.
    #[serde(default)]
    pub server: ServerOptions,

    /// The Service clients connect to (port 2379).
    #[serde(default)]
    pub client_service: ClientService,

    /// Stops reconciling: the operator changes nothing (status keeps being observed) until this is
    /// false again.
    #[serde(default)]
    pub paused: bool,

    /// How members that fail are replaced.
    #[serde(default)]
    pub recovery: Recovery,

    /// What happens to the members' claims (their data) when the KVCluster is deleted: `Retain`
    /// (the default) keeps them, `Delete` deletes them with the cluster.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// etcd's role-based authentication on the cluster's API.
    #[serde(default)]
    pub auth: Auth,

    /// TLS on the members' ports.
    #[serde(default)]
    pub tls: Tls,

    /// Backups of the cluster's data on a schedule, to object storage or a volume. Annotate the
    /// KVCluster `cairn.dev/backup-now=<any new value>` for one now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,
}

/// Backups on a schedule: each is a Job that streams a snapshot from a healthy member (a
/// follower where there is one) to the destination, reads it back to verify its size and
/// checksum, then prunes what retention no longer keeps.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    /// When to take one: a cron schedule of five fields (minute, hour, day of month, month, day
    /// of week) in UTC, as a CronJob takes it (`0 */6 * * *`, `@daily`). Missed times (the
    /// operator was down) make one backup, not one each.
    pub schedule: String,

    /// Which backups the destination keeps; the newest always stays.
    #[serde(default)]
    pub retention: BackupRetention,

    /// S3-compatible object storage (AWS, MinIO, Ceph, ...). Exactly one of `s3` and `volume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,

    /// A PersistentVolumeClaim of the cluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeDestination>,

    /// Takes no scheduled backups while true (on-demand ones still run).
    #[serde(default)]
    pub suspend: bool,
}

/// Which backups the destination keeps.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRetention {
    /// Keep at most this many (default 7 when `maxAge` is unset too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub count: Option<u32>,

    /// Remove backups older than this: hours, minutes and seconds as Go writes them (`168h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// A bucket of S3-compatible object storage.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// The service's URL (`https://minio.storage:9000`); AWS for `region` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The bucket, which must exist.
    pub bucket: String,

    /// The key prefix backups go under (default `<namespace>/<cluster>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,

    /// The bucket's region (default us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// A Secret of the cluster's namespace with the keys `accessKeyID` and `secretAccessKey`.
    pub credentials_secret: String,

    /// Address the bucket as a path of the endpoint rather than a host name (MinIO and most
    /// self-hosted services).
    #[serde(default)]
    pub path_style: bool,
}

/// A PersistentVolumeClaim backups are written to.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDestination {
    /// The claim, in the cluster's namespace; it must allow the backup Job's pod to mount it
    /// while it is mounted elsewhere (ReadWriteMany) or be free when backups run.
    pub claim_name: String,

    /// The directory within the claim (default `<cluster>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// TLS on the members' ports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// Traffic between members (port 2380).
    #[serde(default)]
    pub peer: PeerTls,

    /// Traffic from clients (port 2379).
    #[serde(default)]
    pub client: ClientTls,

    /// How long the certificates the operator issues are valid, as a Go duration of hours,
    /// minutes and seconds (`8760h`, `720h30m`); at least `1m`, default `8760h` (a year). Each is
    /// renewed, with a new key, once a third of its lifetime is left; members pick the new files
    /// up without a restart. The cluster's CA is valid for ten years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_lifetime: Option<String>,
}

/// Traffic from clients (port 2379).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    /// Members serve clients over TLS only, with a certificate from the cluster's CA (Secret
    /// `<cluster>-ca`) valid for the client Service and every member's name, and take only
    /// clients with a certificate from that CA (etcd's `--client-cert-auth`); with auth on, the
    /// certificate's common name is the user. Probes move to a plain port (2381) that serves
    /// only health, version and metrics. Turning it on or off restarts members one at a time.
    #[serde(default)]
    pub enabled: bool,

    /// Client certificates the operator issues from the cluster's CA, each into a Secret of the
    /// cluster's namespace (`tls.crt`, `tls.key`, `ca.crt`), made once when missing. They are
    /// issued whether or not `enabled` is on yet, so clients can hold theirs before the switch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<ClientCertificate>,

    /// A Secret you keep (cert-manager's, for one) with the members' client-port certificate,
    /// its key and the CA clients must be from (`tls.crt`, `tls.key`, `ca.crt`), used instead of
    /// the operator's CA. The certificate must be valid for the client Service and every
    /// member's name under the peer Service. Needs `operatorSecretName`; the operator then
    /// issues no `certificates` (it does not hold that CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// With `secretName`: a Secret you keep with the operator's own client certificate (from a
    /// CA in `secretName`'s `ca.crt`), its key and that CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_secret_name: Option<String>,
}

/// One client certificate the operator issues.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificate {
    /// The Secret to issue it into.
    pub secret_name: String,
    /// Its common name: the user a client presenting it is while auth is on.
    pub user: String,
}

/// Traffic between members (port 2380).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerTls {
    /// Members talk to each other over TLS and refuse any peer without a certificate from the
    /// cluster's own CA, which the operator makes (Secret `<cluster>-ca`) and issues the members'
    /// certificate from (Secret `<cluster>-peer-tls`). Decided when the cluster is created
    /// (`status.peerTLS`); default true. Set to true on a cluster created without it (or before
    /// this setting existed), it moves the running cluster's peers to TLS one member at a time
    /// (`status.peerTLSMove`); peers never move back to plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// A Secret you keep (cert-manager's, for one) with the members' peer certificate, its key
    /// and the CA peers must be from (`tls.crt`, `tls.key`, `ca.crt`), used instead of the
    /// operator's CA. The certificate must be valid for `*.<cluster>-peer.<namespace>.svc.cluster.local`
    /// and for both server and client authentication; the operator checks it before members
    /// mount it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// etcd's role-based authentication on the cluster's API. With it on, clients log in
/// (`etcdctl --user root:<password>`) or present a certificate, and get what their roles grant.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// Turns auth on once every member is healthy: the operator makes the `root` user (with the
    /// `root` role) with the password of `rootPasswordSecret`, its own user `cairn-operator` (with
    /// the `root` role; its password is in the Secret `<cluster>-operator-credentials`, which
    /// only the operator needs), then enables auth. Setting it back to false disables auth; the
    /// users and roles stay.
    #[serde(default)]
    pub enabled: bool,

    /// A Secret in the cluster's namespace whose `password` key is root's password, set when
    /// auth is turned on. When unset, the operator makes `<cluster>-root-password` with a random
    /// password (kept when the cluster is deleted with its claims retained, as the data is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_secret: Option<String>,
}

/// How members that fail are replaced.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// Seconds a member may be unhealthy with its pod not Ready (crash-looping, Pending, stuck)
    /// before it is replaced by a new member with an empty claim under the same name, one member
    /// at a time and only while the others keep a quorum (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub member_timeout_seconds: Option<u32>,

    /// What happens when a majority of members is lost for good. `Manual` (the default): status
    /// says which member would carry on and what could be lost, and recovery starts when the
    /// KVCluster is annotated `cairn.dev/recover-quorum=true` (or `=<member>` to choose the
    /// survivor). `Automatic`: recovery starts after `quorumLossSeconds`, unless another member's
    /// pod is Ready (it may serve a majority the operator cannot reach). Recovery restarts the
    /// surviving member with the most applied entries as a cluster of one with its data
    /// (`--force-new-cluster`) and replaces the others with empty members.
    #[serde(default)]
    pub quorum_loss: QuorumLossPolicy,

    /// Seconds without a quorum before `Automatic` recovery starts (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub quorum_loss_seconds: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum QuorumLossPolicy {
    #[default]
    Manual,
    Automatic,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

fn default_replicas() -> i32 {
    3
}

/// An optional enum without `null` among its values: schemars lists `null` in the enum of an
/// `Option<enum>`, and a 1.20 apiserver then refuses the whole CRD (its schema comparison fails).
fn optional_pull_policy(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Always", "IfNotPresent", "Never"],
        "nullable": true,
    })
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// How the first members find each other.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// `Static`: every initial member is given the full list of initial members
    /// (`--initial-cluster`) by their stable DNS names. `DnsSrv`: members discover each other
    /// through the SRV records of the cluster's headless Service (`--discovery-srv`).
    #[serde(default)]
    pub mode: BootstrapMode,

    /// Start the new cluster with the data of a backup: each initial member restores the same
    /// backup into its data directory before it first starts, and the cluster gets its own
    /// token and ID. Needs `mode: Static`. Acted on only while the cluster is being created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Restore>,
}

/// The backup a new cluster starts from.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Restore {
    /// A backup's name as `cairnctl backup list` shows it, or `latest` (the default): the
    /// newest when the cluster is created, chosen once for every member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,

    /// Object storage the backup is in, as `spec.backup.s3` takes it (the prefix defaults to
    /// `<namespace>/<this cluster's name>`, where a cluster of this name kept its backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,

    /// A claim the backup is in; mounted read-only by every member, so it must allow that
    /// (ReadOnlyMany or ReadWriteMany where members run on several nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeDestination>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BootstrapMode {
    #[default]
    Static,
    DnsSrv,
}

/// Where members keep their data.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Where the apiserver runs CEL (1.25 and later), edits no claim can follow are refused on
// update; elsewhere the operator refuses them in the StorageChange condition. A smaller size is
// refused there only: comparing quantities needs a CEL library older servers lack, and a rule
// they cannot compile would keep the CRD from installing at all.
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.ephemeral == oldSelf.ephemeral",
        "message": "spec.storage.ephemeral cannot change: the members' data cannot move between claims and emptyDirs"
    },
    {
        "rule": "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
        "message": "spec.storage.storageClassName cannot change: the members' claims keep the class they were made with"
    }
]))]
pub struct Storage {
    /// The size of each member's PersistentVolumeClaim (default 1Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,

    /// The StorageClass of the claims; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// Keep data in an emptyDir instead of a claim: a member's data dies with its pod, and the
    /// member has to be replaced. For tests and throw-away clusters only (a condition warns).
    #[serde(default)]
    pub ephemeral: bool,
}

/// Placement and metadata of the member pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra labels on every member pod (the operator's own labels win on a clash).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations on every member pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Scheduling constraints of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Taints the member pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Node labels a member's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// The PriorityClass of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Raft and storage settings passed to every member; unset ones keep cairn's defaults.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerOptions {
    /// Milliseconds between leader heartbeats (cairn's default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_interval_ms: Option<u32>,

    /// Milliseconds without a heartbeat before a follower calls an election (default 1000); at
    /// least 5 times the heartbeat interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 50000))]
    pub election_timeout_ms: Option<u32>,

    /// Applied entries between Raft snapshots, after which the log is compacted (default 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub snapshot_count: Option<u64>,

    /// The space quota of each member's keyspace (e.g. 2Gi); writes beyond it raise the NOSPACE
    /// alarm. Unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<Quantity>,

    /// How the leader compacts old history by itself; off when unset (clients compact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction: Option<AutoCompaction>,
}

/// Automatic compaction of the key history, decided by the leader.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoCompaction {
    /// `Periodic` keeps history of at least `retention` time; `Revision` keeps the last
    /// `retention` revisions.
    #[serde(default)]
    pub mode: CompactionMode,

    /// Periodic: a duration such as "30m", "1h30m" or "90s", or a whole number of hours ("1");
    /// Revision: the number of revisions to keep ("10000"). A string either way.
    #[schemars(regex(pattern = r"^([0-9]+|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$"))]
    pub retention: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CompactionMode {
    #[default]
    Periodic,
    Revision,
}

/// The Service clients connect to.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientService {
    /// The Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Annotations of the client Service (load balancer settings, for example).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// What the operator last saw of the cluster, and what it is doing.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Available` (a leader and a quorum of healthy members), `Progressing` (a change is under
    /// way), `Degraded` (a member is unhealthy, or the spec cannot be acted on), plus warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Member pods that exist.
    #[serde(default)]
    pub replicas: i32,

    /// Members that are healthy voters.
    #[serde(default)]
    pub ready_replicas: i32,

    /// The label selector of the member pods (for the /scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// The cluster's members as the cluster itself reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,

    /// The name of the leading member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,

    /// The cluster ID (hex), latched at first contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,

    /// The `--initial-cluster-token` of this cluster: unique to this resource, set once at
    /// creation and never changed, so no two clusters can ever exchange traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_token: Option<String>,

    /// The Cairn version the members report running (several, comma-separated, while they
    /// differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// A one-word summary: Creating, Running, Scaling, Upgrading, Degraded, Invalid or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    /// The membership change under way (members are added and removed one at a time), or why a
    /// change the spec asks for waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_change: Option<String>,

    /// Whether the cluster's auth is on, as its leader reports (unset while no leader answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_enabled: Option<bool>,

    /// Whether members talk to each other over TLS: decided when the cluster is created, from
    /// `spec.tls.peer.enabled`; a cluster created without it becomes true once its peers have
    /// moved to TLS (`peerTLSMove`), and never goes back.
    #[serde(default, rename = "peerTLS", skip_serializing_if = "Option::is_none")]
    pub peer_tls: Option<bool>,

    /// A move of this cluster's peers to TLS, under way (`spec.tls.peer.enabled: true` on a
    /// cluster created without it): members restart listening under both schemes, their peer
    /// URLs change to https:// one at a time, then they restart on TLS only.
    #[serde(default, rename = "peerTLSMove", skip_serializing_if = "Option::is_none")]
    pub peer_tls_move: Option<PeerTlsMove>,

    /// The backups `spec.backup` asks for: the last that succeeded and the last that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,

    /// The backup the cluster was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<RestoreStatus>,
}

/// The backup a cluster was created from (`spec.bootstrap.restore`), chosen once.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// Its name.
    pub backup: String,
    /// Where it is.
    pub location: String,
    /// The revision of the data it holds.
    pub revision: i64,
    pub size_bytes: u64,
}

/// Where the cluster's backups stand.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The newest backup that was taken and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<SuccessfulBackup>,

    /// The newest backup that failed, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed: Option<FailedBackup>,

    /// The Job taking a backup now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,

    /// When the schedule last started a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the schedule starts the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// The value of the `cairn.dev/backup-now` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
}

/// A backup that was taken and verified.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuccessfulBackup {
    /// The Job that took it.
    pub job: String,
    /// Its name in the destination (`cairnctl backup list` shows it).
    pub name: String,
    /// Where it is: `s3://bucket/prefix/name` or its path in the claim.
    pub location: String,
    /// The cluster's revision it holds.
    pub revision: i64,
    pub size_bytes: u64,
    /// When its snapshot was taken.
    pub time: Time,
    /// How long taking, uploading and verifying it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// A backup that failed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedBackup {
    /// The Job that tried (none when no Job could start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub time: Time,
    /// Why, in the words of what failed.
    pub reason: String,
}

/// Where a move of the peers to TLS stands.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerTlsMove {
    /// When the member list last showed a member's peer URL newly on https://. The next change
    /// waits a while after it, until that member has shown its peers reach it over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_url_change: Option<Time>,
}

/// One member as the cluster reports it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The member's name (its pod's name).
    pub name: String,
    /// The member ID, in hex as etcdctl prints it.
    pub id: String,
    pub peer_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
    #[serde(default)]
    pub is_leader: bool,
    #[serde(default)]
    pub is_learner: bool,
    /// Whether the member answers, reports the cluster's ID, and has applied all but at most a
    /// few thousand of the entries the leader has.
    #[serde(default)]
    pub healthy: bool,
    /// The Raft index the member has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// How many entries the member has applied fewer than the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// The cluster ID (hex) the member reports, when it is not the cluster's: a member of another
    /// cluster answering at this member's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_cluster_id: Option<String>,
    /// The Cairn version the member reports running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}
