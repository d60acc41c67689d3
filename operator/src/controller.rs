//! The reconcile pipeline for one KVCluster: validate the spec once → latch the cluster token →
//! observe everything (the API's objects and the members themselves, one `Observed`) → plan
//! purely (`plan`) → apply the desired objects with server-side apply under one field manager →
//! take at most one membership step → write status. Status is written on every pass, failed
//! ones included. An invalid spec waits for an edit (a condition says why); API errors requeue
//! quickly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::access::MemberAddress;
use crate::build::backup_job::backup_job;
use crate::build::bootstrap::bootstrap_files;
use crate::build::names::{MEMBER_PODS, Names, cluster_of_member};
use crate::build::network_policy::{ClientNamespaces, network_policy};
use crate::build::pdb::{PdbApi, pod_disruption_budget};
use crate::build::services::{client_service, peer_service};
use crate::build::statefulset::{LISTEN_CLIENT_URLS_ENV, LISTEN_PEER_URLS_ENV, statefulset};
use crate::build::{FIELD_MANAGER, owner_reference};
use crate::certificates::{TlsError, ensure_tls};
use crate::crd::{BackupStatus, KVCluster, KVClusterStatus, MemberStatus};
use crate::membership::{ClaimSeen, PodSeen, Step};
use crate::metrics::Metrics;
use crate::observe::{ClusterView, listed_in, observe};
use crate::plan::{Observed, Plan, plan};
use crate::status::{
    Observation, cluster_token, for_failed_pass, for_invalid_spec, for_restore, for_valid_spec,
};
use crate::storage;
use crate::storage::StorageDecision;
use crate::validate::{BackupPlan, RestorePlan, ValidSpec, validate};
use crate::{access, backup, change, deletion, peer_move, quorum, restore};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("the KVCluster has no {0} yet")]
    Incomplete(&'static str),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl ReconcileError {
    /// A short fixed name of the kind of error, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Api { .. } => "api",
            ReconcileError::Incomplete(_) => "incomplete",
            ReconcileError::Tls(_) => "tls",
        }
    }
}

fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    move |source| ReconcileError::Api { action, source }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// Read once at start: which PodDisruptionBudget API the server has.
    pub pdb_api: PdbApi,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    /// Set when every cluster gets a NetworkPolicy, with who may reach its client port.
    network_policies: Option<ClientNamespaces>,
}

impl Context {
    /// `instance` tells this operator replica's events apart from another's (its pod name).
    pub async fn new(client: Client, instance: &str) -> Result<Context, kube::Error> {
        let version = client.apiserver_version().await?;
        let number = |text: &str| text.trim_end_matches('+').parse::<u32>().unwrap_or(0);
        let pdb_api = PdbApi::for_server(number(&version.major), number(&version.minor));
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(instance.to_owned()),
        };
        Ok(Context {
            metrics: Arc::default(),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            pdb_api,
            network_policies: None,
        })
    }

    /// Gives every cluster a NetworkPolicy (see `build::network_policy`).
    pub fn with_network_policies(mut self, clients: ClientNamespaces) -> Context {
        self.network_policies = Some(clients);
        self
    }

    /// Records a Kubernetes Event on the KVCluster; a failure to record is logged, not fatal.
    /// `about` names the member pod or claim it concerns: events are aggregated by reason and
    /// related object, so without it a step on kv-2 would only count up kv-1's event.
    async fn publish(
        &self,
        cluster: &KVCluster,
        type_: EventType,
        reason: &str,
        note: String,
        about: Option<ObjectReference>,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: about,
        };
        if let Err(error) = self.recorder.publish(&event, &cluster.object_ref(&())).await {
            tracing::warn!(%error, reason, "cannot record an event");
        }
    }
}

/// A member's pod (or, `claim`, a member's claim) as an Event's related object.
fn member_object(namespace: &str, name: &str, claim: bool) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some(if claim { "PersistentVolumeClaim" } else { "Pod" }.to_owned()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
    }
}

/// The member pod or claim a step concerns.
fn subject(step: &Step, namespace: &str) -> Option<ObjectReference> {
    let (name, claim) = match step {
        Step::AddLearner { member, .. }
        | Step::Promote { member, .. }
        | Step::Remove { member, .. }
        | Step::Replace { member, .. }
        | Step::Roll { member }
        | Step::WriteEntry { member, .. }
        | Step::DropEntry { member }
        | Step::MoveLeader { from: member, .. }
        | Step::UpdatePeerUrl { member, .. }
        | Step::ForceNewCluster { survivor: member, .. } => (member, false),
        Step::RestartPod { pod } => (pod, false),
        Step::DeleteClaim { claim } => (claim, true),
        Step::Settled | Step::Wait(_) | Step::EnableAuth | Step::DisableAuth | Step::PeersOnTls => {
            return None;
        }
    };
    Some(member_object(namespace, name, claim))
}

/// The Event a membership step is announced with.
fn event_for(step: &Step) -> Option<(&'static str, String)> {
    let reason = match step {
        Step::AddLearner { .. } => "MemberAdded",
        Step::Promote { .. } => "MemberPromoted",
        Step::MoveLeader { .. } => "LeaderMoved",
        Step::Remove { .. } => "MemberRemoved",
        Step::Replace { .. } => "MemberReplaced",
        Step::ForceNewCluster { .. } => "QuorumRecovery",
        Step::DeleteClaim { .. } => "ClaimDeleted",
        Step::Roll { .. } => "MemberRestarted",
        Step::EnableAuth => "AuthEnabled",
        Step::DisableAuth => "AuthDisabled",
        Step::UpdatePeerUrl { .. } => "PeerURLUpdated",
        Step::PeersOnTls => "PeerTLSOn",
        Step::Settled
        | Step::Wait(_)
        | Step::WriteEntry { .. }
        | Step::DropEntry { .. }
        | Step::RestartPod { .. } => return None,
    };
    Some((reason, step.describe()))
}

/// Events for what changed in the cluster by itself: a new leader, quorum lost and regained.
async fn announce_transitions(
    context: &Context,
    cluster: &KVCluster,
    previous: &KVClusterStatus,
    status: &KVClusterStatus,
) {
    if let (Some(before), Some(now)) = (&previous.leader, &status.leader)
        && before != now
    {
        let note = format!("{now} leads (was {before})");
        let namespace = cluster.namespace().unwrap_or_default();
        let leader = Some(member_object(&namespace, now, false));
        context
            .publish(cluster, EventType::Normal, "LeaderChanged", note, leader)
            .await;
    }
    let available = |s: &KVClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Available")
            .map(|c| (c.status == "True", c.message.clone()))
    };
    match (available(previous), available(status)) {
        (Some((true, _)), Some((false, message))) => {
            context
                .publish(cluster, EventType::Warning, "QuorumLost", message, None)
                .await;
        }
        (Some((false, _)), Some((true, message))) if previous.cluster_id.is_some() => {
            context
                .publish(cluster, EventType::Normal, "QuorumRegained", message, None)
                .await;
        }
        _ => {}
    }
}

/// Runs the controller until the process is asked to stop.
pub async fn run(context: Context) {
    let client = context.client.clone();
    let clusters: Api<KVCluster> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    // Only spec changes, requests by annotation (and first sight) trigger a reconcile: the
    // operator's own status writes change the object all the time (members' applied indexes),
    // and must not loop it.
    let spec_changes = watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_request, Default::default());
    Controller::for_stream(spec_changes, reader)
        .owns(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default())
        // A backup Job that ends is recorded at once.
        .owns(
            Api::<Job>::all(client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=cairn-operator"),
        )
        // Member pods belong to the StatefulSet, not the KVCluster, but their comings and goings
        // are what status reports: a deleted member pod is back within seconds, faster than the
        // periodic refresh, and status must still show it was away.
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(MEMBER_PODS),
            |pod| {
                let namespace = pod.namespace()?;
                let cluster = cluster_of_member(pod.labels())?;
                Some(ObjectRef::new(cluster).within(&namespace))
            },
        )
        .shutdown_on_signal()
        .run(measured_reconcile, error_policy, Arc::new(context))
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

/// What a reconcile is triggered by: a new generation of the spec, or a new value of an
/// annotation that asks for something now (a backup, a quorum recovery).
fn spec_or_request(cluster: &KVCluster) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    cluster.meta().generation.hash(&mut hasher);
    for annotation in [backup::REQUEST_ANNOTATION, quorum::ANNOTATION] {
        cluster.annotations().get(annotation).hash(&mut hasher);
    }
    Some(hasher.finish())
}

fn error_policy(cluster: Arc<KVCluster>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(cluster = %cluster.name_any(), %error, "will retry");
    Action::requeue(Duration::from_secs(5))
}

async fn measured_reconcile(
    cluster: Arc<KVCluster>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile(cluster, context.clone()).await;
    let error = result.as_ref().err().map(ReconcileError::kind);
    context.metrics.reconciled(started.elapsed(), error);
    result
}

pub async fn reconcile(cluster: Arc<KVCluster>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = cluster.name_any();
    let namespace = cluster
        .namespace()
        .ok_or(ReconcileError::Incomplete("namespace"))?;
    let clusters: Api<KVCluster> = Api::namespaced(context.client.clone(), &namespace);
    // The cache can lag behind this operator's own last status write (an owned object's event
    // may come first), and status holds what is latched once (the token, the backup a restore
    // chose, the backup that is running): a pass starts from the API's copy.
    let cluster = match clusters
        .get_opt(&name)
        .await
        .map_err(api_error(format!("read the KVCluster {name}")))?
    {
        Some(fresh) if fresh.uid() == cluster.uid() => Arc::new(fresh),
        _ => return Ok(Action::await_change()),
    };
    let uid = cluster.uid().ok_or(ReconcileError::Incomplete("uid"))?;
    let previous = cluster.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = cluster.meta().generation;

    // The finalizer first: a deleted KVCluster's claims follow its deletion policy, and only
    // then may it go; a live one holds the finalizer before it has any claims.
    if let Some(finalizers) = deletion::finalizers_to_write(&cluster) {
        if cluster.meta().deletion_timestamp.is_some() {
            let claims = Api::<PersistentVolumeClaim>::namespaced(context.client.clone(), &namespace);
            let claims_done = deletion::release_claims(&claims, &cluster)
                .await
                .map_err(api_error("release the member claims"))?;
            let secrets = Api::<Secret>::namespaced(context.client.clone(), &namespace);
            let secrets_done = deletion::release_secrets(&secrets, &cluster)
                .await
                .map_err(api_error("delete the auth Secrets"))?;
            let done = format!("{claims_done}{secrets_done}");
            tracing::info!(cluster = %name, %done, "KVCluster deleted");
            context
                .publish(&cluster, EventType::Normal, "Deleted", done, None)
                .await;
        }
        deletion::write_finalizers(&clusters, &cluster, finalizers)
            .await
            .map_err(api_error("write the finalizers"))?;
    }
    if cluster.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    let spec = match validate(&name, &namespace, &cluster.spec) {
        Ok(spec) => spec,
        Err(error) => {
            tracing::info!(cluster = %name, %error, "invalid spec; waiting for an edit");
            let status = for_invalid_spec(&error, &unobserved(generation, &previous, now));
            write_status(&clusters, &name, &status).await?;
            return Ok(Action::await_change());
        }
    };

    // The token and the peers' scheme are latched in status before anything uses them, and
    // never change after. A cluster that has a token but no scheme was made before peer TLS
    // existed, without it.
    let (token, peer_tls) = match (&previous.cluster_token, previous.peer_tls) {
        (Some(token), Some(peer_tls)) => (token.clone(), peer_tls),
        (token, _) => {
            let peer_tls = token.is_none() && spec.peer_tls;
            let token = token
                .clone()
                .unwrap_or_else(|| cluster_token(&namespace, &name, &uid));
            let latched = KVClusterStatus {
                cluster_token: Some(token.clone()),
                peer_tls: Some(peer_tls),
                ..previous.clone()
            };
            write_status(&clusters, &name, &latched).await?;
            (token, peer_tls)
        }
    };
    let spec = spec.with_latched_peer_tls(peer_tls, previous.peer_tls_move.is_some());

    let observed = match observe_all(&context.client, &cluster, &spec, &previous, &now).await {
        Ok(observed) => observed,
        Err(error) => {
            let status = for_failed_pass(&error.to_string(), &unobserved(generation, &previous, now));
            write_status_after_error(&clusters, &name, &status).await;
            return Err(error);
        }
    };
    let owner = owner_reference(&name, &uid);

    // A cluster made from a backup: nothing of it is made before the backup is chosen.
    let spec = spec.with_restore_chosen(previous.restored_from.as_ref().map(|r| r.backup.as_str()));
    if let Some(restore_plan) = &spec.restore
        && restore_plan.chosen.is_none()
        && !observed.formed_before
        && observed.statefulset_replicas.is_none()
    {
        let choosing = RestoreChoice {
            cluster: &cluster,
            spec: &spec,
            plan: restore_plan,
            owner: &owner,
            previous: &previous,
            generation,
            now,
        };
        return choosing.pass(&context, &clusters).await;
    }

    let plan = plan(&spec, &observed);
    let outcome = match apply_plan(&context, &spec, &owner, &token, &observed, &plan).await {
        Ok(()) if plan.clear_approval && observed.approval.is_some() => {
            match clear_approval(&clusters, &name).await {
                Ok(()) => act(&context, &cluster, &spec, &observed, &plan.step).await,
                Err(error) => Err(error),
            }
        }
        Ok(()) => act(&context, &cluster, &spec, &observed, &plan.step).await,
        Err(error) => Err(error),
    };
    // The last step of a move to peer TLS is to say the peers are on it, which the next pass
    // acts on (members roll onto TLS only).
    let spec = match (&plan.step, &outcome) {
        (Step::PeersOnTls, Ok(_)) => spec.with_peers_on_tls(),
        _ => spec,
    };
    let (backup, backup_requeue) = match &spec.backup {
        Some(backup_plan) => {
            let backups = Backups {
                cluster: &cluster,
                spec: &spec,
                plan: backup_plan,
                owner: &owner,
                members: &observed.view.members,
                previous: previous.backup.as_ref(),
                now: now.0,
            };
            backups.run(&context).await
        }
        None => (None, None),
    };
    let refused_growth = grow_claims(&context.client, &spec, &plan.storage).await;
    let storage = storage_report(&plan.storage, refused_growth);
    let (change, error) = match outcome {
        Ok(change) => (change, None),
        Err(error) => (Some(plan.step.describe()), Some(error)),
    };

    let seen = Observation {
        generation,
        previous: &previous,
        view: &observed.view,
        pods: observed.pods.len() as i32,
        change: change.clone(),
        error: error.as_ref().map(ToString::to_string),
        storage,
        outdated: observed
            .pods
            .iter()
            .filter(|(_, pod)| pod.outdated && !pod.terminating)
            .map(|(name, _)| name.clone())
            .collect(),
        backup,
        now,
    };
    let status = for_valid_spec(&spec, &token, &seen);
    announce_transitions(&context, &cluster, &previous, &status).await;
    if let Some(error) = error {
        write_status_after_error(&clusters, &name, &status).await;
        return Err(error);
    }
    let settled = status.phase.as_deref() == Some("Running") && change.is_none();
    write_status(&clusters, &name, &status).await?;
    // Health is refreshed periodically as well as on events; faster while things change, and
    // in time for the next backup.
    let refresh = Duration::from_secs(if settled { 15 } else { 2 });
    Ok(Action::requeue(
        backup_requeue.map_or(refresh, |due| due.min(refresh)),
    ))
}

/// A pass of a cluster made from a backup while the backup is being chosen: only the choice and
/// status, nothing of the cluster itself.
struct RestoreChoice<'a> {
    cluster: &'a KVCluster,
    spec: &'a ValidSpec,
    plan: &'a RestorePlan,
    owner: &'a OwnerReference,
    previous: &'a KVClusterStatus,
    generation: Option<i64>,
    now: Time,
}

impl RestoreChoice<'_> {
    async fn pass(&self, context: &Context, clusters: &Api<KVCluster>) -> Result<Action, ReconcileError> {
        let name = &self.spec.name;
        let seen = unobserved(self.generation, self.previous, self.now.clone());
        let choice = match restore::choose(&context.client, self.spec, self.plan, self.owner, &self.now).await
        {
            Ok(choice) => choice,
            Err(source) => {
                let error = api_error("choose the backup to restore")(source);
                let status = for_failed_pass(&error.to_string(), &seen);
                write_status_after_error(clusters, name, &status).await;
                return Err(error);
            }
        };
        let (status, requeue) = match choice {
            restore::Choice::Choosing(message) => (
                for_restore(&seen, ("Unknown", "Choosing", &message), None),
                Duration::from_secs(3),
            ),
            restore::Choice::Unreadable(reason) => {
                let status = for_restore(&seen, ("False", "SourceUnreadable", &reason), None);
                let said_before = self
                    .previous
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "RestoreSource" && c.message == reason);
                if !said_before {
                    let note = format!("the backup to restore cannot be read: {reason}");
                    context
                        .publish(
                            self.cluster,
                            EventType::Warning,
                            "RestoreSourceUnreadable",
                            note,
                            None,
                        )
                        .await;
                }
                (status, Duration::from_secs(15))
            }
            restore::Choice::Chosen(from) => {
                let message = restore::chosen_message(&from);
                tracing::info!(cluster = %name, %message, "backup to restore chosen");
                context
                    .publish(
                        self.cluster,
                        EventType::Normal,
                        "RestoreSourceChosen",
                        message.clone(),
                        None,
                    )
                    .await;
                let status = for_restore(&seen, ("True", "Chosen", &message), Some(from));
                (status, Duration::from_secs(1))
            }
        };
        write_status(clusters, name, &status).await?;
        Ok(Action::requeue(requeue))
    }
}

/// One pass over a cluster's backups: what its Jobs did, and what starts now.
struct Backups<'a> {
    cluster: &'a KVCluster,
    spec: &'a ValidSpec,
    plan: &'a BackupPlan,
    owner: &'a OwnerReference,
    members: &'a [MemberStatus],
    previous: Option<&'a BackupStatus>,
    now: k8s_openapi::jiff::Timestamp,
}

impl Backups<'_> {
    /// The backup status to write and when backups next need a pass. An API error leaves the
    /// previous status, to be tried again soon: a backup is never a reason to fail a pass.
    async fn run(&self, context: &Context) -> (Option<BackupStatus>, Option<Duration>) {
        match self.try_run(context).await {
            Ok(done) => done,
            Err(error) => {
                tracing::warn!(cluster = %self.spec.name, %error, "backups: will retry");
                (self.previous.cloned(), Some(Duration::from_secs(5)))
            }
        }
    }

    async fn try_run(
        &self,
        context: &Context,
    ) -> Result<(Option<BackupStatus>, Option<Duration>), kube::Error> {
        let names = Names::of(self.spec);
        let client = &context.client;
        let jobs = backup::jobs::observe(client, &names).await?;
        let seen = backup::Seen {
            cluster: &self.spec.name,
            previous: self.previous,
            jobs: &jobs,
            request: self
                .cluster
                .annotations()
                .get(backup::REQUEST_ANNOTATION)
                .map(String::as_str),
            members: self.members,
            created: self
                .cluster
                .creation_timestamp()
                .map_or_else(k8s_openapi::jiff::Timestamp::now, |t| t.0),
            now: self.now,
        };
        let decision = backup::decide(self.plan, &seen);
        if let Some(start) = &decision.start {
            let job = backup_job(self.spec, self.plan, self.owner, &start.job, &start.member);
            backup::jobs::start(client, &self.spec.namespace, &job).await?;
            tracing::info!(cluster = %self.spec.name, job = %start.job, member = %start.member, trigger = ?start.trigger, "backup started");
        }
        for outcome in &decision.outcomes {
            self.announce(context, outcome).await;
        }
        for job in &decision.delete {
            backup::jobs::delete(client, &self.spec.namespace, job).await?;
        }
        Ok((Some(decision.status), decision.requeue))
    }

    async fn announce(&self, context: &Context, outcome: &backup::Outcome) {
        let (namespace, cluster) = (&self.spec.namespace, &self.spec.name);
        // Each backup's Event names its Job: Events of one reason and related object are
        // aggregated into one, and every backup deserves its own.
        let about = |job: &str| ObjectReference {
            api_version: Some("batch/v1".to_owned()),
            kind: Some("Job".to_owned()),
            name: Some(job.to_owned()),
            namespace: Some(namespace.clone()),
            ..ObjectReference::default()
        };
        match outcome {
            backup::Outcome::Succeeded { job, backup } => {
                let note = format!(
                    "{job}: backup {} of revision {} ({} bytes) saved and verified at {}{}",
                    backup.name,
                    backup.revision,
                    backup.size,
                    backup.location,
                    match backup.pruned {
                        0 => String::new(),
                        n => format!("; {n} older pruned"),
                    }
                );
                tracing::info!(%cluster, %note, "backup succeeded");
                context.metrics.backup_succeeded(
                    namespace,
                    cluster,
                    backup.size,
                    backup.seconds,
                    backup.taken_at,
                );
                context
                    .publish(
                        self.cluster,
                        EventType::Normal,
                        "BackupSucceeded",
                        note,
                        Some(about(job)),
                    )
                    .await;
            }
            backup::Outcome::Failed { job, reason } => {
                let note = match job {
                    Some(job) => format!("{job}: {reason}"),
                    None => reason.clone(),
                };
                tracing::warn!(%cluster, %note, "backup failed");
                context.metrics.backup_failed(namespace, cluster);
                context
                    .publish(
                        self.cluster,
                        EventType::Warning,
                        "BackupFailed",
                        note,
                        job.as_deref().map(about),
                    )
                    .await;
            }
        }
    }
}

/// Grows the claims the plan says to; what the API refuses (a storage class that cannot expand
/// claims, for one) is returned, in its words, for status.
async fn grow_claims(client: &Client, spec: &ValidSpec, storage: &StorageDecision) -> Vec<String> {
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &spec.namespace);
    let mut refused = Vec::new();
    for (claim, bytes) in &storage.grow {
        let patch = json!({"spec": {"resources": {"requests": {"storage": bytes.to_string()}}}});
        match claims
            .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(cluster = %spec.name, %claim, bytes, "claim grown"),
            Err(error) => {
                tracing::info!(cluster = %spec.name, %claim, %error, "claim cannot grow");
                refused.push(format!(
                    "{claim} cannot grow to {bytes} bytes: {}",
                    api_words(&error)
                ));
            }
        }
    }
    refused
}

/// The API's own message for an error it answered, else the error.
fn api_words(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// The `StorageChange` condition's reason and message; None when the claims are as the spec asks.
fn storage_report(storage: &StorageDecision, refused_growth: Vec<String>) -> Option<(&'static str, String)> {
    if let Some(refused) = &storage.refused {
        return Some(("Refused", refused.clone()));
    }
    if !refused_growth.is_empty() {
        return Some(("GrowthRefused", refused_growth.join("; ")));
    }
    let mut claims: Vec<&str> = storage.grow.iter().map(|(c, _)| c.as_str()).collect();
    claims.extend(storage.growing.iter().map(String::as_str));
    claims.sort_unstable();
    claims.dedup();
    (!claims.is_empty()).then(|| {
        let message = format!(
            "waiting for claims to be provisioned at their new size: {}",
            claims.join(", ")
        );
        ("Growing", message)
    })
}

/// What a status computation sees when the cluster could not be observed.
fn unobserved(generation: Option<i64>, previous: &KVClusterStatus, now: Time) -> Observation<'_> {
    static NOTHING: std::sync::LazyLock<ClusterView> = std::sync::LazyLock::new(ClusterView::default);
    Observation {
        generation,
        previous,
        view: &NOTHING,
        pods: previous.replicas,
        change: previous.membership_change.clone(),
        error: None,
        storage: None,
        outdated: Vec::new(),
        backup: previous.backup.clone(),
        now,
    }
}

/// Reads everything a plan is made from: the bootstrap ConfigMap, the StatefulSet's size, the
/// member pods and claims, and the members themselves.
async fn observe_all(
    client: &Client,
    cluster: &KVCluster,
    spec: &ValidSpec,
    previous: &KVClusterStatus,
    now: &Time,
) -> Result<Observed, ReconcileError> {
    let names = Names::of(spec);
    let namespace = &spec.namespace;
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&names.bootstrap_config_map())
        .await
        .map_err(api_error("read the bootstrap ConfigMap"))?;
    let statefulset = Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .get_opt(&names.statefulset())
        .await
        .map_err(api_error("read the StatefulSet"))?;
    let uid = cluster.uid().unwrap_or_default();
    let mut leftovers: Vec<String> = [
        config_map
            .as_ref()
            .filter(|map| owned_by_another(*map, &uid))
            .map(|_| "ConfigMap"),
        statefulset
            .as_ref()
            .filter(|set| owned_by_another(*set, &uid))
            .map(|_| "StatefulSet"),
    ]
    .into_iter()
    .flatten()
    .map(str::to_owned)
    .collect();
    let bootstrap = config_map.map(|map| map.data.unwrap_or_default());
    let selector = ListParams::default().labels(&names.selector());
    let listed_pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await
        .map_err(api_error("list the member pods"))?
        .items;
    // Pods of another StatefulSet (an earlier cluster's, gone or going) would answer for that
    // cluster: nothing is planned from them.
    let set_uid = statefulset
        .as_ref()
        .filter(|set| !owned_by_another(*set, &uid))
        .and_then(|set| set.metadata.uid.clone())
        .unwrap_or_default();
    let earlier_pods: Vec<String> = listed_pods
        .iter()
        .filter(|pod| owned_by_another(*pod, &set_uid))
        .map(ResourceExt::name_any)
        .collect();
    if !earlier_pods.is_empty() {
        leftovers.push(format!("pods {}", earlier_pods.join(", ")));
    }
    // The revision the StatefulSet makes pods from; pods of an older one are rolled onto it.
    let revision = statefulset
        .as_ref()
        .and_then(|set| set.status.as_ref()?.update_revision.clone());
    // Only this cluster's pods are observed: an earlier cluster's still answer while they are
    // garbage-collected, and what they say (their cluster ID, their members) must not be taken
    // for this cluster's, nor latched in its status.
    let pods: BTreeMap<String, PodSeen> = listed_pods
        .iter()
        .filter(|pod| !owned_by_another(*pod, &set_uid))
        .map(|pod| {
            let seen = PodSeen {
                terminating: pod.metadata.deletion_timestamp.is_some(),
                lost_data: said(pod, DATA_LOST),
                not_yet_member: said(pod, NOT_YET_MEMBER),
                unready_seconds: in_readiness(pod, now, false),
                ready_seconds: in_readiness(pod, now, true),
                address: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
                client_tls: serves_tls(pod, LISTEN_CLIENT_URLS_ENV),
                peer_tls: serves_tls(pod, LISTEN_PEER_URLS_ENV),
                outdated: outdated(pod, revision.as_deref()),
            };
            (pod.name_any(), seen)
        })
        .collect();
    let claims: BTreeMap<String, ClaimSeen> =
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
            .list(&selector)
            .await
            .map_err(api_error("list the member claims"))?
            .items
            .iter()
            .map(|claim| {
                let seen = ClaimSeen {
                    uid: claim.metadata.uid.clone(),
                    terminating: claim.metadata.deletion_timestamp.is_some(),
                    size: storage::of_claim(claim),
                };
                (claim.name_any(), seen)
            })
            .collect();
    let addresses: Vec<MemberAddress> = pods
        .iter()
        .filter(|(_, pod)| !pod.terminating)
        .filter_map(|(name, pod)| address_of(&names, name, pod))
        .collect();
    let access = access::read(client, spec).await.map_err(api_error(
        "read or make the Secrets the operator reaches members with",
    ))?;
    let view = observe(&addresses, listed_in(&previous.members), &access).await;
    let peer_urls_quiet_seconds =
        peer_move::last_url_change(previous, &view, now).map(|changed| seconds_between(&changed, now));
    Ok(Observed {
        bootstrap,
        statefulset_replicas: statefulset.as_ref().and_then(|set| set.spec.as_ref()?.replicas),
        statefulset_storage: statefulset.as_ref().and_then(storage::of_statefulset),
        pods,
        claims,
        view,
        formed_before: previous.cluster_id.is_some(),
        quorum_lost_seconds: quorum_lost_seconds(previous, now),
        approval: cluster.annotations().get(quorum::ANNOTATION).cloned(),
        last_seen: previous
            .members
            .iter()
            .filter_map(|m| Some((m.name.clone(), m.applied_index?)))
            .collect(),
        leftovers,
        access,
        peer_urls_quiet_seconds,
    })
}

/// Where the operator reaches the member `pod`, once it has an IP.
fn address_of(names: &Names, name: &str, pod: &PodSeen) -> Option<MemberAddress> {
    Some(MemberAddress {
        pod: name.to_owned(),
        ip: pod.address.clone()?,
        host: names.member_host(name),
        tls: pod.client_tls,
    })
}

/// Whether the pod's member serves TLS on the port whose listen URLs the variable `listen_env`
/// carries, as the pod's own spec says (while members roll onto TLS, some do and some do not).
fn serves_tls(pod: &Pod, listen_env: &str) -> bool {
    let listen = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .and_then(|container| container.env.as_ref())
        .and_then(|env| env.iter().find(|var| var.name == listen_env))
        .and_then(|var| var.value.as_deref());
    listen.is_some_and(|urls| urls.split(',').any(|url| url.starts_with("https://")))
}

/// Whether `pod` was made from another revision of the StatefulSet's pod template than
/// `revision`, the one it makes pods from now (unknown until its controller has seen it).
fn outdated(pod: &Pod, revision: Option<&str>) -> bool {
    let made_from = pod.labels().get("controller-revision-hash");
    matches!((made_from, revision), (Some(made_from), Some(revision)) if made_from != revision)
}

/// Whether `object` belongs to another owner than the KVCluster with `uid` (an earlier one of
/// the same name, its objects waiting for garbage collection).
fn owned_by_another<K: Resource>(object: &K, uid: &str) -> bool {
    let owners = object.owner_references();
    !owners.is_empty() && owners.iter().all(|owner| owner.uid != uid)
}

/// How long status has said the cluster has no quorum.
fn quorum_lost_seconds(previous: &KVClusterStatus, now: &Time) -> Option<u64> {
    let available = previous.conditions.iter().find(|c| c.type_ == "Available")?;
    let lost = available.status == "False" && matches!(available.reason.as_str(), "QuorumLost" | "NoLeader");
    lost.then(|| seconds_between(&available.last_transition_time, now))
}

/// Whole seconds from `earlier` to `now`; 0 when `earlier` is not earlier (clocks differ).
fn seconds_between(earlier: &Time, now: &Time) -> u64 {
    u64::try_from(now.0.duration_since(earlier.0).as_secs()).unwrap_or(0)
}

/// Removes the annotation that allowed a quorum recovery, once the recovery is done, so that a
/// later loss waits for a new decision.
async fn clear_approval(api: &Api<KVCluster>, name: &str) -> Result<(), ReconcileError> {
    let patch = json!({"metadata": {"annotations": {quorum::ANNOTATION: null}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(api_error(format!("remove the annotation {}", quorum::ANNOTATION)))
}

/// What cairn says when it refuses to start because its data dir was emptied under a member that
/// had started (see its `DataLost` error); the pod's termination message carries it.
const DATA_LOST: &str = "its data was lost";

/// What cairn says when it starts to join a cluster that has not added it yet.
const NOT_YET_MEMBER: &str = "run `member add` first";

/// Whether the member in this pod refused to start, now or last time, with these words.
fn said(pod: &Pod, words: &str) -> bool {
    let statuses = pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten());
    statuses
        .flat_map(|c| [c.state.as_ref(), c.last_state.as_ref()])
        .flatten()
        .filter_map(|state| state.terminated.as_ref()?.message.as_deref())
        .any(|message| message.contains(words))
}

/// How long the pod has been Ready (`ready`) or not: since its Ready condition last turned, or,
/// not Ready without one (Pending), since it was made. None while it is the other way.
fn in_readiness(pod: &Pod, now: &Time, ready: bool) -> Option<u64> {
    let condition = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"));
    let since = match condition {
        Some(c) if (c.status == "True") != ready => return None,
        Some(c) => c.last_transition_time.as_ref(),
        None if ready => return None,
        None => pod.metadata.creation_timestamp.as_ref(),
    }?;
    let seconds = now.0.duration_since(since.0).as_secs();
    Some(u64::try_from(seconds).unwrap_or(0))
}

/// Applies the planned objects: the bootstrap files first (a pod the StatefulSet adds finds its
/// file), the NetworkPolicy (before any pod can be reached), then the Services, the StatefulSet
/// and the disruption budget.
async fn apply_plan(
    context: &Context,
    spec: &ValidSpec,
    owner: &OwnerReference,
    token: &str,
    observed: &Observed,
    plan: &Plan,
) -> Result<(), ReconcileError> {
    let client = &context.client;
    let namespace = &spec.namespace;
    if let Some(files) = &plan.bootstrap
        && observed.bootstrap.as_ref() != Some(files)
    {
        let configs = Api::<ConfigMap>::namespaced(client.clone(), namespace);
        apply(&configs, &bootstrap_files(spec, owner, files.clone())).await?;
        tracing::info!(cluster = %spec.name, files = files.len(), "bootstrap files written");
    }
    let Some(members) = plan.members else {
        // A paused cluster is left alone, but not to let its certificates expire under it:
        // renewal only rewrites Secrets, which members re-read without a restart.
        if spec.paused {
            ensure_tls(client, spec, owner).await?;
        }
        return Ok(());
    };
    let names = Names::of(spec);
    if let Some(clients) = &context.network_policies {
        let policies = Api::<NetworkPolicy>::namespaced(client.clone(), namespace);
        apply(&policies, &network_policy(spec, owner, clients)).await?;
    }
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    apply(&services, &peer_service(spec, owner)).await?;
    apply(&services, &client_service(spec, owner)).await?;
    // Members cannot start without their certificates.
    ensure_tls(client, spec, owner).await?;
    // A StatefulSet's claim template cannot change: it keeps what its members were made with.
    let mut kept = spec.clone();
    kept.storage = plan.storage.template.clone();
    apply(
        &Api::<StatefulSet>::namespaced(client.clone(), namespace),
        &statefulset(&kept, owner, token, members),
    )
    .await?;
    let mut sized = spec.clone();
    sized.replicas = members;
    let pdb = pod_disruption_budget(&sized, owner, context.pdb_api);
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "policy",
            context.pdb_api.api_version().trim_start_matches("policy/"),
            "PodDisruptionBudget",
        ),
        "poddisruptionbudgets",
    );
    let pdbs: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    pdbs.patch(&names.pdb(), &apply_params(), &Patch::Apply(&pdb))
        .await
        .map_err(api_error("apply the PodDisruptionBudget"))?;
    Ok(())
}

/// Takes the planned membership step (its file edits were applied with the plan); returns what
/// status should say is under way (None when settled). A step the cluster refuses (a learner
/// not caught up yet, an election under way) is retried at the next reconcile, with the refusal
/// in status.
async fn act(
    context: &Context,
    cluster: &KVCluster,
    spec: &ValidSpec,
    observed: &Observed,
    step: &Step,
) -> Result<Option<String>, ReconcileError> {
    let client = &context.client;
    let namespace = &spec.namespace;
    let described = step.describe();
    match step {
        Step::Settled => return Ok(None),
        Step::Wait(_) | Step::WriteEntry { .. } | Step::DropEntry { .. } | Step::PeersOnTls => {}
        Step::RestartPod { pod }
        | Step::Roll { member: pod }
        | Step::ForceNewCluster { survivor: pod, .. } => {
            let pods = Api::<Pod>::namespaced(client.clone(), namespace);
            delete_if_present(&pods, pod, "restart the pod").await?;
        }
        Step::DeleteClaim { claim } => {
            let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
            delete_if_present(&claims, claim, "delete the claim").await?;
        }
        Step::AddLearner { .. }
        | Step::Promote { .. }
        | Step::MoveLeader { .. }
        | Step::Remove { .. }
        | Step::Replace { .. }
        | Step::UpdatePeerUrl { .. }
        | Step::EnableAuth
        | Step::DisableAuth => {
            let leader = observed.view.leader.as_ref().and_then(|leader| {
                let pod = observed.pods.get(leader).filter(|pod| !pod.terminating)?;
                address_of(&Names::of(spec), leader, pod)
            });
            let Some(leader) = leader else {
                return Ok(Some(format!("{described}: waiting for the leader's pod address")));
            };
            if let Err(error) = change::send(step, &leader, &observed.access).await {
                tracing::info!(cluster = %spec.name, %error, "membership step refused; will retry");
                return Ok(Some(format!("{described}: {error}")));
            }
        }
    }
    if !matches!(step, Step::Wait(_)) {
        context.metrics.step_taken(step.kind());
        tracing::info!(cluster = %spec.name, step = %described, "membership step taken");
        if let Some((reason, note)) = event_for(step) {
            let about = subject(step, namespace);
            context
                .publish(cluster, EventType::Normal, reason, note, about)
                .await;
        }
    }
    Ok(Some(described))
}

/// Deletes `name`; one that is gone already is what was wanted.
async fn delete_if_present<K>(api: &Api<K>, name: &str, action: &str) -> Result<(), ReconcileError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(api_error(format!("{action} {name}"))(error)),
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<(), ReconcileError>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&Default::default()).to_string();
    api.patch(&name, &apply_params(), &Patch::Apply(object))
        .await
        .map(drop)
        .map_err(api_error(format!("apply {kind} {name}")))
}

/// Writes the status of a failed pass; the pass's own error is what is returned, so a failure
/// to write is only logged.
async fn write_status_after_error(api: &Api<KVCluster>, name: &str, status: &KVClusterStatus) {
    if let Err(error) = write_status(api, name, status).await {
        tracing::warn!(cluster = %name, %error, "cannot write the status of a failed pass");
    }
}

/// Server-side apply of the whole status: fields the operator no longer sets go away.
async fn write_status(
    api: &Api<KVCluster>,
    name: &str,
    status: &KVClusterStatus,
) -> Result<(), ReconcileError> {
    let patch = json!({
        "apiVersion": "cairn.dev/v1alpha1",
        "kind": "KVCluster",
        "status": status,
    });
    api.patch_status(name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map(drop)
        .map_err(api_error(format!("write the status of {name}")))
}
