//! cairnctl's command line: etcdctl's verbs, flags and defaults, so etcdctl habits carry over.

use std::path::PathBuf;
use std::time::Duration;

use cairn::duration::parse_duration;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cairnctl",
    version,
    about = "A command line client for Cairn (and any etcd v3 server)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// gRPC endpoints, comma separated (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        env = "CAIRNCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Dial timeout for client connections.
    #[arg(long, global = true, env = "CAIRNCTL_DIAL_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    pub dial_timeout: Duration,
    /// Timeout for short running commands (excluding dial timeout).
    #[arg(long, global = true, env = "CAIRNCTL_COMMAND_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub command_timeout: Duration,
    /// Output format.
    #[arg(short = 'w', long, global = true, value_enum, default_value = "simple")]
    pub write_out: Format,
    /// Verify the servers' certificates with this CA bundle (PEM); turns TLS on.
    #[arg(long, global = true, env = "CAIRNCTL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) to identify with over TLS; needs --key.
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "CAIRNCTL_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,
    /// Key of --cert (PEM).
    // Its own id: commands have a positional `key` argument.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "CAIRNCTL_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,
    /// The user to authenticate as: `name:password`, or `name` with --password.
    #[arg(long, global = true, env = "CAIRNCTL_USER")]
    pub user: Option<String>,
    /// The password of --user, when it does not carry one.
    #[arg(long, global = true, env = "CAIRNCTL_PASSWORD")]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Simple,
    Json,
    Table,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Puts the given key into the store (the value is read from stdin when not given).
    Put(PutArgs),
    /// Gets the key or a range of keys.
    Get(GetArgs),
    /// Removes the specified key or range of keys [key, range_end).
    Del(DelArgs),
    /// Txn processes all the requests in one transaction, read from stdin.
    Txn(TxnArgs),
    /// Compacts the event history in the store up to a revision.
    Compaction(CompactionArgs),
    /// Lease related commands.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Membership related commands.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Endpoint related commands.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Transfers leadership to another member.
    MoveLeader(MoveLeaderArgs),
    /// Manages snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Backups kept in a directory or an S3-compatible bucket: save (verified, with retention), list, fetch.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Watches events stream on keys or prefixes.
    Watch(WatchArgs),
    /// Acquires a named lock.
    Lock(LockArgs),
    /// Observes and participates in leader election.
    Elect(ElectArgs),
    /// Makes a mirror at the destination etcd cluster.
    MakeMirror(MirrorArgs),
    /// User related commands.
    #[command(subcommand)]
    User(UserCommand),
    /// Role related commands.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Enables or disables authentication.
    #[command(subcommand)]
    Auth(AuthCommand),
}

/// etcdctl's `--interactive`: on unless `--interactive=false`.
#[derive(Debug, Clone, Args)]
pub struct Interactive {
    /// Prompt for the password; with --interactive=false it is read from stdin.
    #[arg(
        long,
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub interactive: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Adds a new user (`name` or `name:password`).
    Add {
        // Not `user`: that id is the global --user.
        #[arg(value_name = "USER")]
        name: String,
        /// The new user's password, instead of a prompt.
        #[arg(long)]
        new_user_password: Option<String>,
        /// A user without a password, who authenticates with a client certificate.
        #[arg(long)]
        no_password: bool,
        #[command(flatten)]
        interactive: Interactive,
    },
    /// Deletes a user.
    Delete { name: String },
    /// Gets a user's roles.
    Get {
        name: String,
        /// Show the permissions of the user's roles too.
        #[arg(long)]
        detail: bool,
    },
    /// Lists all users.
    List,
    /// Changes a user's password.
    Passwd {
        name: String,
        #[command(flatten)]
        interactive: Interactive,
    },
    /// Grants a role to a user.
    GrantRole {
        #[arg(value_name = "USER")]
        name: String,
        role: String,
    },
    /// Revokes a role from a user.
    RevokeRole {
        #[arg(value_name = "USER")]
        name: String,
        role: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PermissionKind {
    Read,
    Write,
    Readwrite,
}

/// The keys a permission covers: one key, `[key, range_end)`, a prefix, or from a key on.
#[derive(Debug, Clone, Args)]
pub struct PermissionKeys {
    pub key: String,
    pub range_end: Option<String>,
    /// The permission covers every key with this prefix.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub prefix: Option<bool>,
    /// The permission covers every key from this one on.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub from_key: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Adds a new role.
    Add { name: String },
    /// Deletes a role.
    Delete { name: String },
    /// Gets a role's permissions.
    Get { name: String },
    /// Lists all roles.
    List,
    /// Grants a key permission to a role.
    GrantPermission {
        name: String,
        #[arg(value_enum)]
        kind: PermissionKind,
        #[command(flatten)]
        keys: PermissionKeys,
    },
    /// Revokes a key permission from a role.
    RevokePermission {
        name: String,
        #[command(flatten)]
        keys: PermissionKeys,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Enables authentication (adding the root role to root if it lacks it, as etcdctl does).
    Enable,
    /// Disables authentication.
    Disable,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The key, or prefix with --prefix.
    pub key: Option<String>,
    /// End of the watched range [key, range_end).
    pub range_end: Option<String>,
    /// Watch on a prefix if prefix is set.
    #[arg(long)]
    pub prefix: bool,
    /// Revision to start watching.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Get the previous key-value pair before the event happens.
    #[arg(long)]
    pub prev_kv: bool,
    /// Get periodic watch progress notifications from the server.
    #[arg(long)]
    pub progress_notify: bool,
    /// Interactive mode: read `watch ...` and `progress` lines from stdin.
    #[arg(short, long)]
    pub interactive: bool,
    /// A command to run for every event, with ETCD_WATCH_* variables describing it.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct LockArgs {
    pub name: String,
    /// Seconds the session lease lives without keep-alives.
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
    /// A command to run while holding the lock, with ETCD_LOCK_KEY and ETCD_LOCK_REV set.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ElectArgs {
    pub name: String,
    /// The value to campaign with.
    pub proposal: Option<String>,
    /// Observe the election instead of campaigning.
    #[arg(short, long)]
    pub listen: bool,
    /// Seconds the session lease lives without keep-alives.
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
}

#[derive(Debug, Clone, Args)]
pub struct MirrorArgs {
    /// The destination cluster's endpoint.
    pub destination: String,
    /// Key-value prefix to mirror.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Destination prefix to mirror a prefix to a different prefix in the destination cluster.
    #[arg(long)]
    pub dest_prefix: Option<String>,
    /// Mirror key-values to the root of the destination cluster.
    #[arg(long)]
    pub no_dest_prefix: bool,
    /// The user to write to the destination as (`name:password`, or `name` with
    /// --dest-password); --user is the source's.
    #[arg(long)]
    pub dest_user: Option<String>,
    /// The password of --dest-user, when it does not carry one.
    #[arg(long)]
    pub dest_password: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    pub key: String,
    pub value: Option<String>,
    /// Lease ID (in hexadecimal) to attach to the key.
    #[arg(long, default_value = "0")]
    pub lease: String,
    /// Return the previous key-value pair before modification.
    #[arg(long)]
    pub prev_kv: bool,
    /// Update the key using its current value.
    #[arg(long)]
    pub ignore_value: bool,
    /// Update the key using its current lease.
    #[arg(long)]
    pub ignore_lease: bool,
}

/// Which keys a get or del works on: one key, `[key, range_end)`, a prefix, or from a key on.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    pub key: String,
    pub range_end: Option<String>,
    /// Keys with matching prefix.
    #[arg(long)]
    pub prefix: bool,
    /// Keys that are greater than or equal to the given key using byte compare.
    #[arg(long)]
    pub from_key: bool,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub keys: KeysArgs,
    /// Specify the kv revision.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Maximum number of results.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Get only the keys.
    #[arg(long)]
    pub keys_only: bool,
    /// Get only the count.
    #[arg(long)]
    pub count_only: bool,
    /// Only write values when using the "simple" output format.
    #[arg(long)]
    pub print_value_only: bool,
    /// Linearizable(l) or Serializable(s).
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Order of results; ASCEND or DESCEND (ASCEND by default).
    #[arg(long, default_value = "")]
    pub order: String,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION.
    #[arg(long, default_value = "")]
    pub sort_by: String,
}

#[derive(Debug, Clone, Args)]
pub struct DelArgs {
    #[command(flatten)]
    pub keys: KeysArgs,
    /// Return deleted key-value pairs.
    #[arg(long)]
    pub prev_kv: bool,
}

#[derive(Debug, Args)]
pub struct TxnArgs {
    /// Input transaction in interactive mode (prompts for each section).
    #[arg(short, long)]
    pub interactive: bool,
}

#[derive(Debug, Args)]
pub struct CompactionArgs {
    pub revision: i64,
    /// Wait for the compaction to be physically applied.
    #[arg(long)]
    pub physical: bool,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Creates a lease with a TTL in seconds.
    Grant { ttl: i64 },
    /// Revokes a lease and deletes its keys.
    Revoke { id: String },
    /// Gets lease information.
    Timetolive {
        id: String,
        /// Get keys attached to this lease.
        #[arg(long)]
        keys: bool,
    },
    /// Lists all active leases.
    List,
    /// Keeps a lease alive (renews it).
    KeepAlive {
        id: String,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Adds a member into the cluster.
    Add {
        name: String,
        /// Comma separated peer URLs for the new member.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add as a learner (non-voting member).
        #[arg(long)]
        learner: bool,
    },
    /// Removes a member from the cluster.
    Remove { id: String },
    /// Updates a member's peer URLs.
    Update {
        id: String,
        /// Comma separated peer URLs for the member.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
    /// Lists all members in the cluster.
    List,
    /// Promotes a learner to a voting member.
    Promote { id: String },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Checks the health of the endpoints.
    Health(EndpointArgs),
    /// Prints the status of the endpoints.
    Status(EndpointArgs),
}

#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// Use all endpoints from the cluster member list.
    #[arg(long)]
    pub cluster: bool,
}

#[derive(Debug, Args)]
pub struct MoveLeaderArgs {
    /// Member ID (hexadecimal) of the transferee.
    pub target: String,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stores a snapshot of an endpoint's backend into a file.
    Save { filename: std::path::PathBuf },
    /// Checks a snapshot file and prints its hash, revision, total keys and size.
    Status { filename: std::path::PathBuf },
    /// Makes a new member's data directory from a snapshot file (Cairn's or etcd's).
    Restore(RestoreArgs),
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Streams a snapshot from one endpoint into a location, reads it back to verify it, then prunes
    /// backups the retention policy no longer keeps.
    Save(BackupSaveArgs),
    /// Lists the backups in a location, oldest first.
    List(BackupListArgs),
    /// Downloads one backup (by name, or `latest`) into a file.
    Fetch(BackupFetchArgs),
    /// Makes a new member's data directory from one backup (by name, or `latest`), in one step.
    Restore(BackupRestoreArgs),
}

#[derive(Debug, Args)]
pub struct BackupRestoreArgs {
    /// The location: `s3://bucket/prefix` or a directory.
    #[arg(long)]
    pub from: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// A backup's name as `backup list` prints it, or `latest`.
    pub backup: String,
    #[command(flatten)]
    pub member: RestoreFlags,
}

/// How to reach S3-compatible storage; credentials come from AWS_ACCESS_KEY_ID and
/// AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), as for every S3 tool.
#[derive(Debug, Args)]
pub struct S3Args {
    /// The service's URL (default: AWS for the region).
    #[arg(long, env = "CAIRN_BACKUP_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The bucket's region.
    #[arg(long, env = "CAIRN_BACKUP_S3_REGION")]
    pub s3_region: Option<String>,
    /// Address the bucket as a path of the endpoint instead of a host name (MinIO and most
    /// self-hosted services).
    #[arg(long, env = "CAIRN_BACKUP_S3_PATH_STYLE")]
    pub s3_path_style: bool,
}

#[derive(Debug, Args)]
pub struct BackupSaveArgs {
    /// Where to keep backups: `s3://bucket/prefix` or a directory.
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// Keep at most this many backups in the location (the newest always stays).
    #[arg(long)]
    pub retain_count: Option<usize>,
    /// Remove backups older than this (Go-style duration, e.g. `168h`); the newest always stays.
    #[arg(long, value_parser = parse_duration)]
    pub retain_age: Option<Duration>,
    /// Also write the JSON result into this file (a pod's termination message).
    #[arg(long)]
    pub result_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BackupListArgs {
    /// The location: `s3://bucket/prefix` or a directory.
    #[arg(long)]
    pub from: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// Also write the newest backup as JSON into this file (a pod's termination message); an
    /// empty location is then an error.
    #[arg(long)]
    pub result_file: Option<PathBuf>,
    /// With `--result-file`: write this backup instead of the newest; an error when the
    /// location does not hold it.
    #[arg(long, requires = "result_file")]
    pub backup: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupFetchArgs {
    /// The location: `s3://bucket/prefix` or a directory.
    #[arg(long)]
    pub from: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// A backup's name as `backup list` prints it, or `latest`.
    pub name: String,
    /// The file to write.
    pub file: PathBuf,
}

/// `snapshot restore`: a file and etcdctl's flags.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    pub filename: std::path::PathBuf,
    #[command(flatten)]
    pub member: RestoreFlags,
}

/// The member a restore makes, with etcdctl's `snapshot restore` flags and defaults.
#[derive(Debug, Args)]
pub struct RestoreFlags {
    /// Path to the data directory to create (default: `<name>.cairn`, the server's default).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Initial cluster configuration for restore bootstrap.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// Initial cluster token for the cluster during restore bootstrap.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, value_delimiter = ',', default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Ignore a missing SHA-256 trailer (a member's database file copied by hand).
    #[arg(long)]
    pub skip_hash_check: bool,
    /// Do nothing, successfully, when the data dir already holds a member (a pod that restarts
    /// runs its restore step again).
    #[arg(long)]
    pub skip_if_initialized: bool,
    /// A member's bootstrap file (keys are cairn's flag names, as `--config-file` takes it):
    /// restore only when it forms a new cluster (`initial-cluster-state: new`), with its
    /// `initial-cluster` and this member's peer URL from it; a member that joins a running
    /// cluster has nothing to restore.
    #[arg(long, conflicts_with_all = ["initial_cluster", "initial_advertise_peer_urls"])]
    pub bootstrap_file: Option<std::path::PathBuf>,
}

/// The requests a transaction may carry, parsed from each line with the same flags as the verbs.
#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
pub enum TxnRequest {
    Put(PutArgs),
    Get(GetArgs),
    Del(DelArgs),
}

/// Parses an ID given in hexadecimal, as etcdctl prints them.
pub fn parse_hex_id(what: &str, text: &str) -> anyhow::Result<u64> {
    u64::from_str_radix(text, 16)
        .map_err(|_| anyhow::anyhow!("bad {what} ID {text:?}: expected a hexadecimal number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hexadecimal() {
        assert_eq!(
            parse_hex_id("member", "8e9e05c52164694d").unwrap(),
            0x8e9e05c52164694d
        );
        assert!(
            parse_hex_id("lease", "xyz")
                .unwrap_err()
                .to_string()
                .contains("bad lease ID \"xyz\"")
        );
    }

    #[test]
    fn endpoints_default_and_split_on_commas() {
        let cli = Cli::try_parse_from(["cairnctl", "member", "list"]).unwrap();
        assert_eq!(cli.global.endpoints, vec!["127.0.0.1:2379"]);
        let cli = Cli::try_parse_from(["cairnctl", "--endpoints=a:1,b:2", "get", "k", "--prefix"]).unwrap();
        assert_eq!(cli.global.endpoints, vec!["a:1", "b:2"]);
    }
}
