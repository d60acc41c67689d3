//! A pod's volumes as directories on this machine: emptyDir, configMap, secret, downwardAPI and
//! projected volumes under the pod's directory (Secret and ConfigMap volumes kept up to date
//! while the pod runs, as kubelet does); a PersistentVolumeClaim as one directory per claim
//! (by UID, so a re-created claim starts empty) that outlives the pod; the pod's /etc/hosts and
//! /etc/resolv.conf; and the ServiceAccount kubeconfig its processes use.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolumeClaim, Pod, Secret,
    ServiceAccount,
};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use super::env::{EnvContext, field_value, resource_value};
use crate::podexec::BindMount;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{kind} \"{name}\" not found")]
    Missing { kind: &'static str, name: String },
    #[error("volume {volume:?}: {reason}")]
    Unsupported { volume: String, reason: String },
    #[error("volume {volume:?}: {source}")]
    Env {
        volume: String,
        source: super::env::EnvError,
    },
    #[error("container {container:?} mounts volume {volume:?}, which the pod does not define")]
    UnknownVolume { container: String, volume: String },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot get a token for service account {account:?}: {source}")]
    Token { account: String, source: kube::Error },
    #[error(transparent)]
    Api(#[from] kube::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_owned();
    move |source| VolumeError::Io { path, source }
}

/// Where pods and claims live, and what the pods' files point at.
#[derive(Debug, Clone)]
pub struct VolumeContext {
    pub claims_dir: PathBuf,
    pub dns_ip: String,
    pub api_server: String,
    pub ca_cert: PathBuf,
}

/// A pod's volumes, prepared: volume name → directory (or file) on this machine.
#[derive(Debug, Clone, Default)]
pub struct PodVolumes {
    pub dirs: BTreeMap<String, PathBuf>,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub kubeconfig: PathBuf,
}

pub fn claim_dir(claims_dir: &Path, namespace: &str, claim: &str, uid: &str) -> PathBuf {
    claims_dir.join(namespace).join(format!("{claim}.{uid}"))
}

/// Writes everything the pod's containers mount; run again before each container start so that
/// ConfigMaps and Secrets are current.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
    pod_ip: &str,
    env: &EnvContext,
    context: &VolumeContext,
) -> Result<PodVolumes, VolumeError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let volumes_dir = pod_dir.join("volumes");
    let mut prepared = PodVolumes::default();
    for volume in spec.volumes.iter().flatten() {
        let dir = volumes_dir.join(&volume.name);
        let path = if volume.empty_dir.is_some() {
            create_dir(&dir)?;
            dir
        } else if let Some(source) = &volume.config_map {
            let data = config_map(client, &namespace, &source.name, source.optional.unwrap_or(false)).await?;
            write_items(&dir, &data, source.items.as_deref(), source.default_mode)?;
            dir
        } else if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.clone().unwrap_or_default();
            let data = secret(client, &namespace, &secret_name, source.optional.unwrap_or(false)).await?;
            write_items(&dir, &data, source.items.as_deref(), source.default_mode)?;
            dir
        } else if let Some(source) = &volume.downward_api {
            let data = downward(pod, env, source.items.as_deref().unwrap_or_default()).map_err(|source| {
                VolumeError::Env {
                    volume: volume.name.clone(),
                    source,
                }
            })?;
            write_items(&dir, &data, None, source.default_mode)?;
            dir
        } else if let Some(projected) = &volume.projected {
            let mut files = BTreeMap::new();
            for source in projected.sources.iter().flatten() {
                if let Some(token) = &source.service_account_token {
                    let account = spec
                        .service_account_name
                        .clone()
                        .unwrap_or_else(|| "default".into());
                    let issued = service_account_token(
                        client,
                        pod,
                        &account,
                        token.audience.clone().into_iter().collect(),
                        token.expiration_seconds,
                    )
                    .await?;
                    files.insert(token.path.clone(), issued.into_bytes());
                }
                if let Some(cm) = &source.config_map {
                    let data = config_map(client, &namespace, &cm.name, cm.optional.unwrap_or(false)).await?;
                    files.extend(select(&data, cm.items.as_deref()));
                }
                if let Some(secret_source) = &source.secret {
                    let data = secret(
                        client,
                        &namespace,
                        &secret_source.name,
                        secret_source.optional.unwrap_or(false),
                    )
                    .await?;
                    files.extend(select(&data, secret_source.items.as_deref()));
                }
                if let Some(downward_source) = &source.downward_api {
                    let data = downward(pod, env, downward_source.items.as_deref().unwrap_or_default())
                        .map_err(|source| VolumeError::Env {
                            volume: volume.name.clone(),
                            source,
                        })?;
                    files.extend(data);
                }
            }
            write_items(&dir, &files, None, projected.default_mode)?;
            dir
        } else if let Some(claim) = &volume.persistent_volume_claim {
            claim_volume(client, &namespace, &claim.claim_name, &context.claims_dir).await?
        } else if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            if host.type_.as_deref() == Some("DirectoryOrCreate") {
                create_dir(&path)?;
            }
            path
        } else {
            return Err(VolumeError::Unsupported {
                volume: volume.name.clone(),
                reason: "the sandbox supports emptyDir, configMap, secret, downwardAPI, projected, \
                         persistentVolumeClaim and hostPath volumes"
                    .into(),
            });
        };
        prepared.dirs.insert(volume.name.clone(), path);
    }

    let etc = pod_dir.join("etc");
    create_dir(&etc)?;
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
    let fqdn = spec
        .subdomain
        .as_ref()
        .map(|sub| format!("{hostname}.{sub}.{namespace}.svc.cluster.local\t"))
        .unwrap_or_default();
    prepared.hosts = etc.join("hosts");
    write_file(
        &prepared.hosts,
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{fqdn}{hostname}\n"
        )
        .as_bytes(),
        0o644,
    )?;
    prepared.resolv_conf = etc.join("resolv.conf");
    write_file(
        &prepared.resolv_conf,
        format!(
            "nameserver {}\nsearch {namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
            context.dns_ip
        )
        .as_bytes(),
        0o644,
    )?;

    let account = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let token = service_account_token(client, pod, &account, Vec::new(), Some(86400)).await?;
    prepared.kubeconfig = pod_dir.join("kubeconfig");
    write_file(
        &prepared.kubeconfig,
        service_account_kubeconfig(
            &context.api_server,
            &context.ca_cert,
            &namespace,
            &account,
            &token,
        )
        .as_bytes(),
        0o600,
    )?;
    Ok(prepared)
}

/// The bind mounts of one container: its volumeMounts, then /etc/hosts and /etc/resolv.conf unless
/// it mounts something there itself.
pub fn container_mounts(
    container: &Container,
    volumes: &PodVolumes,
    pod: &Pod,
) -> Result<Vec<BindMount>, VolumeError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let read_only_kind = |name: &str| {
        spec.volumes.iter().flatten().any(|v| {
            v.name == name
                && (v.config_map.is_some()
                    || v.secret.is_some()
                    || v.projected.is_some()
                    || v.downward_api.is_some())
        })
    };
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let source = volumes
            .dirs
            .get(&mount.name)
            .ok_or_else(|| VolumeError::UnknownVolume {
                container: container.name.clone(),
                volume: mount.name.clone(),
            })?;
        let source = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let path = source.join(sub);
                if !path.exists() {
                    create_dir(&path)?;
                }
                path
            }
            None => source.clone(),
        };
        mounts.push(BindMount {
            source,
            target: PathBuf::from(&mount.mount_path),
            read_only: mount.read_only.unwrap_or(false) || read_only_kind(&mount.name),
        });
    }
    for (file, target) in [
        (&volumes.hosts, "/etc/hosts"),
        (&volumes.resolv_conf, "/etc/resolv.conf"),
    ] {
        if !mounts.iter().any(|m| m.target == Path::new(target)) {
            mounts.push(BindMount {
                source: file.clone(),
                target: PathBuf::from(target),
                read_only: false,
            });
        }
    }
    Ok(mounts)
}

pub fn service_account_kubeconfig(
    server: &str,
    ca: &Path,
    namespace: &str,
    account: &str,
    token: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {server}\n    \
         certificate-authority: {ca}\nusers:\n- name: {account}\n  user:\n    token: {token}\ncontexts:\n- name: sandbox\n  \
         context:\n    cluster: sandbox\n    user: {account}\n    namespace: {namespace}\ncurrent-context: sandbox\n",
        ca = ca.display(),
    )
}

async fn service_account_token(
    client: &kube::Client,
    pod: &Pod,
    account: &str,
    audiences: Vec<String>,
    expiration: Option<i64>,
) -> Result<String, VolumeError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences,
            expiration_seconds: expiration,
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued: TokenRequest = api
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .map_err(|source| VolumeError::Token {
            account: account.to_owned(),
            source,
        })?;
    Ok(issued.status.map(|s| s.token).unwrap_or_default())
}

/// Rewrites the files of the pod's Secret and ConfigMap volumes whose content changed in the
/// API since they were written, each by a rename (a reader sees the old file or the new one);
/// returns the paths rewritten. A source that is gone or unreadable leaves its files as they
/// are, as kubelet does.
pub async fn refresh(client: &kube::Client, pod: &Pod, pod_dir: &Path) -> Vec<PathBuf> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let volumes_dir = pod_dir.join("volumes");
    let mut rewritten = Vec::new();
    for volume in pod.spec.iter().flat_map(|spec| spec.volumes.iter().flatten()) {
        let (data, items, mode) = if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let data = secret(client, &namespace, &name, true).await;
            (data, source.items.as_deref(), source.default_mode)
        } else if let Some(source) = &volume.config_map {
            let data = config_map(client, &namespace, &source.name, true).await;
            (data, source.items.as_deref(), source.default_mode)
        } else {
            continue;
        };
        let Ok(data) = data else { continue };
        let dir = volumes_dir.join(&volume.name);
        let mode = mode.map_or(0o644, |m| m as u32);
        for (path, content) in select(&data, items) {
            let file = dir.join(&path);
            if std::fs::read(&file).is_ok_and(|current| current == content) {
                continue;
            }
            if write_file(&file, &content, mode).is_ok() {
                rewritten.push(file);
            }
        }
    }
    rewritten
}

async fn config_map(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await? {
        Some(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(data)
        }
        None if optional => Ok(BTreeMap::new()),
        None => Err(VolumeError::Missing {
            kind: "configmap",
            name: name.to_owned(),
        }),
    }
}

async fn secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await? {
        // stringData is write-only: the apiserver merges it into data, and reads never carry it.
        Some(secret) => Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()),
        None if optional => Ok(BTreeMap::new()),
        None => Err(VolumeError::Missing {
            kind: "secret",
            name: name.to_owned(),
        }),
    }
}

/// The claim's directory, created on first use; the claim is marked Bound, as a provisioner would.
async fn claim_volume(
    client: &kube::Client,
    namespace: &str,
    claim: &str,
    claims_dir: &Path,
) -> Result<PathBuf, VolumeError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvc = api.get_opt(claim).await?.ok_or_else(|| VolumeError::Missing {
        kind: "persistentvolumeclaim",
        name: claim.to_owned(),
    })?;
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let dir = claim_dir(claims_dir, namespace, claim, &uid);
    create_dir(&dir)?;
    let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
    if phase.as_deref() != Some("Bound") {
        let requested = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        let modes = pvc
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.clone())
            .unwrap_or_default();
        let status =
            serde_json::json!({"status": {"phase": "Bound", "capacity": requested, "accessModes": modes}});
        api.patch_status(claim, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(dir)
}

fn select(data: &BTreeMap<String, Vec<u8>>, items: Option<&[KeyToPath]>) -> BTreeMap<String, Vec<u8>> {
    match items {
        None => data.clone(),
        Some(items) => items
            .iter()
            .filter_map(|item| Some((item.path.clone(), data.get(&item.key)?.clone())))
            .collect(),
    }
}

fn downward(
    pod: &Pod,
    env: &EnvContext,
    items: &[DownwardAPIVolumeFile],
) -> Result<BTreeMap<String, Vec<u8>>, super::env::EnvError> {
    let mut files = BTreeMap::new();
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            match field.field_path.as_str() {
                "metadata.labels" | "metadata.annotations" => {
                    let map = if field.field_path == "metadata.labels" {
                        &pod.metadata.labels
                    } else {
                        &pod.metadata.annotations
                    };
                    map.iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={v:?}\n"))
                        .collect::<String>()
                }
                path => field_value(pod, env, path)?,
            }
        } else if let Some(resource) = &item.resource_field_ref {
            let container = pod
                .spec
                .as_ref()
                .and_then(|s| {
                    s.containers
                        .iter()
                        .find(|c| Some(&c.name) == resource.container_name.as_ref())
                })
                .cloned()
                .unwrap_or_default();
            resource_value(&container, env, &resource.resource, resource.divisor.as_ref())?
        } else {
            continue;
        };
        files.insert(item.path.clone(), value.into_bytes());
    }
    Ok(files)
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: Option<i32>,
) -> Result<(), VolumeError> {
    create_dir(dir)?;
    let mode = mode.map_or(0o644, |m| m as u32);
    for (path, content) in select(data, items) {
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            create_dir(parent)?;
        }
        write_file(&file, &content, mode)?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), VolumeError> {
    // Write aside and rename, so a running process never reads half a file.
    let temporary = path.with_extension("writing");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io(&temporary))?;
    file.write_all(content).map_err(io(&temporary))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode)).map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))
}

/// Mount points the pods need that this machine lacks: created on demand (empty), remembered in a
/// file so that `sandbox down` and the next start can remove them even after a crash, and removed
/// at shutdown.
#[derive(Debug)]
pub struct MountPoints {
    record: PathBuf,
    created: Mutex<Vec<PathBuf>>,
}

impl MountPoints {
    pub fn new(record: PathBuf) -> MountPoints {
        MountPoints {
            record,
            created: Mutex::new(Vec::new()),
        }
    }

    /// Makes `target` exist, as a directory or (when `source` is a file) an empty file.
    pub fn ensure(&self, source: &Path, target: &Path) -> Result<(), VolumeError> {
        if target.exists() {
            return Ok(());
        }
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing = Vec::new();
        let mut cursor = target.parent();
        while let Some(dir) = cursor {
            if dir.exists() {
                break;
            }
            missing.push(dir.to_owned());
            cursor = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            std::fs::create_dir(&dir).map_err(io(&dir))?;
            created.push(dir);
        }
        if source.is_dir() {
            std::fs::create_dir(target).map_err(io(target))?;
        } else {
            std::fs::File::create(target).map_err(io(target))?;
        }
        created.push(target.to_owned());
        let listing: String = created.iter().map(|p| format!("{}\n", p.display())).collect();
        std::fs::write(&self.record, listing).map_err(io(&self.record))
    }

    /// Removes what `ensure` created (newest first; only while still empty).
    pub fn remove_all(&self) {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        let recorded = std::fs::read_to_string(&self.record).unwrap_or_default();
        let mut all: Vec<PathBuf> = recorded.lines().map(PathBuf::from).collect();
        all.extend(created.drain(..));
        all.dedup();
        for path in all.iter().rev() {
            if path.is_dir() {
                let _ = std::fs::remove_dir(path);
            } else if path.metadata().is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(path);
            }
        }
        let _ = std::fs::remove_file(&self.record);
    }
}
