//! The reconcile pipeline for one KVCluster: validate the spec once → latch the cluster token →
//! build the desired objects (`build`) → apply them with server-side apply under one field
//! manager, in a fixed order → observe the cluster through its own API → write status.
//! An invalid spec waits for an edit (a condition says why); API errors requeue quickly.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::build::bootstrap::{bootstrap_config_map, initial_members};
use crate::build::names::Names;
use crate::build::pdb::{PdbApi, pod_disruption_budget};
use crate::build::services::{client_service, peer_service};
use crate::build::statefulset::statefulset;
use crate::build::{FIELD_MANAGER, owner_reference};
use crate::crd::{KVCluster, KVClusterStatus};
use crate::observe::observe;
use crate::status::{Observation, cluster_token, for_invalid_spec, for_valid_spec};
use crate::validate::validate;

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
}

impl Context {
    pub async fn new(client: Client) -> Result<Context, kube::Error> {
        let version = client.apiserver_version().await?;
        let number = |text: &str| text.trim_end_matches('+').parse::<u32>().unwrap_or(0);
        let pdb_api = PdbApi::for_server(number(&version.major), number(&version.minor));
        Ok(Context { client, pdb_api })
    }
}

/// Runs the controller until the process is asked to stop.
pub async fn run(context: Context) {
    let client = context.client.clone();
    let clusters: Api<KVCluster> = Api::all(client.clone());
    Controller::new(clusters, watcher::Config::default())
        .owns(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, Arc::new(context))
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

fn error_policy(cluster: Arc<KVCluster>, error: &ReconcileError, _: Arc<Context>) -> Action {
    tracing::warn!(cluster = %cluster.name_any(), %error, "will retry");
    Action::requeue(Duration::from_secs(5))
}

pub async fn reconcile(cluster: Arc<KVCluster>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = cluster.name_any();
    let namespace = cluster
        .namespace()
        .ok_or(ReconcileError::Incomplete("namespace"))?;
    let uid = cluster.uid().ok_or(ReconcileError::Incomplete("uid"))?;
    let client = &context.client;
    let clusters: Api<KVCluster> = Api::namespaced(client.clone(), &namespace);
    let previous = cluster.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());

    let spec = match validate(&name, &namespace, &cluster.spec) {
        Ok(spec) => spec,
        Err(error) => {
            tracing::info!(cluster = %name, %error, "invalid spec; waiting for an edit");
            let view = Default::default();
            let seen = Observation {
                generation: cluster.meta().generation,
                previous: &previous,
                view: &view,
                pods: previous.replicas,
                now,
            };
            write_status(&clusters, &name, &for_invalid_spec(&error, &seen)).await?;
            return Ok(Action::await_change());
        }
    };

    // The token is latched in status before anything uses it, and never changes after.
    let token = match &previous.cluster_token {
        Some(token) => token.clone(),
        None => {
            let token = cluster_token(&namespace, &name, &uid);
            let latched = KVClusterStatus {
                cluster_token: Some(token.clone()),
                ..previous.clone()
            };
            write_status(&clusters, &name, &latched).await?;
            token
        }
    };

    let names = Names::new(&name, &namespace);
    let owner = owner_reference(&name, &uid);
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    // The members' bootstrap files are written once, for the initial members; membership
    // changes later edit them one member at a time.
    let members = match configs
        .get_opt(&names.bootstrap_config_map())
        .await
        .map_err(api_error("read the bootstrap ConfigMap"))?
    {
        Some(existing) => existing.data.unwrap_or_default().len() as i32,
        None if spec.paused => 0,
        None => {
            let plan = initial_members(&spec);
            apply(&configs, &bootstrap_config_map(&spec, &owner, &plan)).await?;
            plan.len() as i32
        }
    };

    if !spec.paused && members > 0 {
        apply(
            &Api::<Service>::namespaced(client.clone(), &namespace),
            &peer_service(&spec, &owner),
        )
        .await?;
        apply(
            &Api::<Service>::namespaced(client.clone(), &namespace),
            &client_service(&spec, &owner),
        )
        .await?;
        apply(
            &Api::<StatefulSet>::namespaced(client.clone(), &namespace),
            &statefulset(&spec, &owner, &token, members),
        )
        .await?;
        let mut sized = spec.clone();
        sized.replicas = members;
        let pdb = pod_disruption_budget(&sized, &owner, context.pdb_api);
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(
                "policy",
                context.pdb_api.api_version().trim_start_matches("policy/"),
                "PodDisruptionBudget",
            ),
            "poddisruptionbudgets",
        );
        let pdbs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
        pdbs.patch(&names.pdb(), &apply_params(), &Patch::Apply(&pdb))
            .await
            .map_err(api_error("apply the PodDisruptionBudget"))?;
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let listed = pods
        .list(&ListParams::default().labels(&names.selector()))
        .await
        .map_err(api_error("list the member pods"))?;
    let addresses: Vec<(String, String)> = listed
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?)))
        .collect();
    let view = observe(&addresses).await;
    let seen = Observation {
        generation: cluster.meta().generation,
        previous: &previous,
        view: &view,
        pods: listed.items.len() as i32,
        now,
    };
    let status = for_valid_spec(&spec, &token, &seen);
    let settled = status.phase.as_deref() == Some("Running");
    write_status(&clusters, &name, &status).await?;
    // Health is refreshed periodically as well as on events; faster while things change.
    Ok(Action::requeue(Duration::from_secs(if settled { 15 } else { 3 })))
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
