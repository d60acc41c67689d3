//! A container's environment and command line the way kubelet builds them: `envFrom` first, then
//! `env` in order, with downward-API fields, ConfigMap/Secret keys and `$(VAR)` expansion.
//! Pure: the ConfigMaps and Secrets a container names are fetched beforehand.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{kind} \"{name}\" not found")]
    Missing { kind: &'static str, name: String },
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldPath {0:?}")]
    FieldPath(String),
    #[error("unsupported resource {0:?}")]
    Resource(String),
    #[error("invalid quantity {0:?}")]
    Quantity(String),
    #[error("env var {0} has neither value nor valueFrom")]
    NoSource(String),
}

/// What the kubelet knows beyond the pod object itself.
#[derive(Debug, Clone, Default)]
pub struct EnvContext {
    pub pod_ip: String,
    pub host_ip: String,
    /// Variables every container starts with (KUBERNETES_SERVICE_HOST, ...), before its own.
    pub base: Vec<(String, String)>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Used for resource fields of containers without a limit, as kubelet does.
    pub node_cpu_cores: f64,
    pub node_memory_bytes: f64,
}

/// The ConfigMaps and Secrets (by name) the container's environment reads.
pub fn referenced_objects(container: &Container) -> (Vec<String>, Vec<String>) {
    let mut maps = Vec::new();
    let mut secrets = Vec::new();
    for source in container.env_from.iter().flatten() {
        if let Some(cm) = &source.config_map_ref {
            maps.push(cm.name.clone());
        }
        if let Some(secret) = &source.secret_ref {
            secrets.push(secret.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else { continue };
        if let Some(key) = &from.config_map_key_ref {
            maps.push(key.name.clone());
        }
        if let Some(key) = &from.secret_key_ref {
            secrets.push(key.name.clone());
        }
    }
    maps.sort();
    maps.dedup();
    secrets.sort();
    secrets.dedup();
    (maps, secrets)
}

/// The container's environment, in the order kubelet sets it.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    context: &EnvContext,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = context.base.clone();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(existing) = env.iter_mut().find(|(n, _)| *n == name) {
            existing.1 = value;
        } else {
            env.push((name, value));
        }
    };

    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, optional) = if let Some(cm) = &source.config_map_ref {
            (
                lookup(&context.config_maps, "configmap", &cm.name),
                cm.optional.unwrap_or(false),
            )
        } else if let Some(secret) = &source.secret_ref {
            (
                lookup(&context.secrets, "secret", &secret.name),
                secret.optional.unwrap_or(false),
            )
        } else {
            continue;
        };
        match data {
            Ok(data) => {
                for (key, value) in data {
                    let name = format!("{prefix}{key}");
                    // kubelet skips keys that are not valid variable names (and reports an event).
                    if is_env_name(&name) {
                        set(&mut env, name, value.clone());
                    }
                }
            }
            Err(_) if optional => {}
            Err(error) => return Err(error),
        }
    }

    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            expand(value, &|name| lookup_var(&env, name))
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_value(pod, context, &field.field_path)?
            } else if let Some(resource) = &from.resource_field_ref {
                let target = resource
                    .container_name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .and_then(|n| pod.spec.as_ref()?.containers.iter().find(|c| c.name == n))
                    .unwrap_or(container);
                resource_value(target, context, &resource.resource, resource.divisor.as_ref())?
            } else if let Some(key) = &from.config_map_key_ref {
                match key_value(&context.config_maps, "configmap", &namespace, &key.name, &key.key) {
                    Ok(value) => value,
                    Err(_) if key.optional == Some(true) => continue,
                    Err(error) => return Err(error),
                }
            } else if let Some(key) = &from.secret_key_ref {
                match key_value(&context.secrets, "secret", &namespace, &key.name, &key.key) {
                    Ok(value) => value,
                    Err(_) if key.optional == Some(true) => continue,
                    Err(error) => return Err(error),
                }
            } else {
                return Err(EnvError::NoSource(var.name.clone()));
            }
        } else {
            String::new()
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// The command line: `command` (else the image's entrypoint, which is the program itself) and
/// `args`, each expanded against the final environment.
pub fn command_line(container: &Container, env: &[(String, String)]) -> (Option<String>, Vec<String>) {
    let lookup = |name: &str| lookup_var(env, name);
    let mut words: Vec<String> = container
        .command
        .iter()
        .flatten()
        .map(|w| expand(w, &lookup))
        .collect();
    let args = container.args.iter().flatten().map(|w| expand(w, &lookup));
    let program = if words.is_empty() {
        None
    } else {
        Some(words.remove(0))
    };
    words.extend(args);
    (program, words)
}

fn lookup_var(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

/// kubelet's `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`, and a
/// reference to an undefined variable stays as written.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().unwrap_or_default();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn lookup<'a>(
    objects: &'a BTreeMap<String, BTreeMap<String, String>>,
    kind: &'static str,
    name: &str,
) -> Result<&'a BTreeMap<String, String>, EnvError> {
    objects.get(name).ok_or_else(|| EnvError::Missing {
        kind,
        name: name.to_owned(),
    })
}

fn key_value(
    objects: &BTreeMap<String, BTreeMap<String, String>>,
    kind: &'static str,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, EnvError> {
    lookup(objects, kind, name)?
        .get(key)
        .cloned()
        .ok_or_else(|| EnvError::MissingKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        })
}

/// A downward-API field of the pod.
pub fn field_value(pod: &Pod, context: &EnvContext, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let from_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    let bracketed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['"))
            .and_then(|rest| rest.strip_suffix("']"))
            .map(str::to_owned)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => context.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => context.host_ip.clone(),
        _ => {
            if let Some(key) = bracketed("metadata.labels") {
                from_map(&meta.labels, &key)
            } else if let Some(key) = bracketed("metadata.annotations") {
                from_map(&meta.annotations, &key)
            } else {
                return Err(EnvError::FieldPath(path.to_owned()));
            }
        }
    })
}

/// A resource field (`limits.cpu`, `requests.memory`, ...) divided by the divisor and rounded up;
/// a missing limit reads as the node's capacity, as in kubelet.
pub fn resource_value(
    container: &Container,
    context: &EnvContext,
    resource: &str,
    divisor: Option<&Quantity>,
) -> Result<String, EnvError> {
    let resources = container.resources.as_ref();
    let (table, name) = resource
        .split_once('.')
        .ok_or_else(|| EnvError::Resource(resource.to_owned()))?;
    let quantities = match table {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(EnvError::Resource(resource.to_owned())),
    };
    let node = match name {
        "cpu" => context.node_cpu_cores,
        "memory" | "ephemeral-storage" => context.node_memory_bytes,
        _ => return Err(EnvError::Resource(resource.to_owned())),
    };
    let value = match quantities.and_then(|q| q.get(name)) {
        Some(quantity) => parse_quantity(&quantity.0)?,
        // As the API defaults it, an unset request is the limit, or zero without one.
        None if table == "requests" => match resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(name))
        {
            Some(limit) => parse_quantity(&limit.0)?,
            None => 0.0,
        },
        None => node,
    };
    let divisor = match divisor {
        Some(q) => parse_quantity(&q.0)?,
        None => 1.0,
    };
    if divisor <= 0.0 {
        return Err(EnvError::Quantity(divisor.to_string()));
    }
    Ok(((value / divisor).ceil() as u64).to_string())
}

/// A Kubernetes quantity ("500m", "1Gi", "2e3") as a number.
pub fn parse_quantity(text: &str) -> Result<f64, EnvError> {
    cairn_quantity::parse(text).map_err(|_| EnvError::Quantity(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const POD: &str = r#"
metadata: {name: web-0, namespace: shop, uid: 1234, labels: {app: web}, annotations: {team: kv}}
spec:
  nodeName: sandbox
  serviceAccountName: robot
  containers:
  - name: main
    image: cairn
    command: ["cairn", "--name=$(POD_NAME)"]
    args: ["--listen=http://$(POD_IP):2379", "$$(POD_IP)", "$(UNDEFINED)", "cost: $5"]
    resources: {limits: {cpu: 1500m, memory: 1Gi}}
    envFrom:
    - configMapRef: {name: settings}
      prefix: CFG_
    - secretRef: {name: optional-secret, optional: true}
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: PEER, value: "http://$(POD_NAME).$(POD_NAMESPACE):2380"}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: CFG_mode, value: overridden}
"#;

    fn context() -> EnvContext {
        EnvContext {
            pod_ip: "127.10.0.7".into(),
            host_ip: "127.0.0.1".into(),
            base: vec![("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into())],
            config_maps: BTreeMap::from([(
                "settings".into(),
                BTreeMap::from([("mode".into(), "fast".into()), ("bad key".into(), "x".into())]),
            )]),
            secrets: BTreeMap::from([(
                "creds".into(),
                BTreeMap::from([("password".into(), "hunter2".into())]),
            )]),
            node_cpu_cores: 2.0,
            node_memory_bytes: 8e9,
        }
    }

    #[test]
    fn environment_and_command_line_follow_kubelet_rules() {
        let pod = pod(POD);
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            referenced_objects(container),
            (
                vec!["settings".into()],
                vec!["creds".into(), "optional-secret".into()]
            )
        );
        let env = container_env(&pod, container, &context()).unwrap();
        let get = |name: &str| lookup_var(&env, name).unwrap_or_else(|| panic!("{name} unset in {env:?}"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), "127.0.0.1");
        assert_eq!(get("POD_NAME"), "web-0");
        assert_eq!(get("POD_NAMESPACE"), "shop");
        assert_eq!(get("POD_UID"), "1234");
        assert_eq!(get("POD_IP"), "127.10.0.7");
        assert_eq!(get("NODE"), "sandbox");
        assert_eq!(get("APP"), "web");
        assert_eq!(get("PEER"), "http://web-0.shop:2380");
        assert_eq!(get("CPU"), "2", "1500m rounds up to whole cores");
        assert_eq!(get("MEM_MI"), "1024");
        assert_eq!(get("PASSWORD"), "hunter2");
        assert_eq!(get("CFG_mode"), "overridden", "env wins over envFrom");
        assert!(lookup_var(&env, "CFG_bad key").is_none());

        let (program, args) = command_line(container, &env);
        assert_eq!(program.as_deref(), Some("cairn"));
        assert_eq!(
            args,
            [
                "--name=web-0",
                "--listen=http://127.10.0.7:2379",
                "$(POD_IP)",
                "$(UNDEFINED)",
                "cost: $5"
            ]
        );
    }

    #[test]
    fn missing_sources_name_what_is_missing() {
        let pod = pod(POD);
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let mut context = context();
        context.secrets.clear();
        assert_eq!(
            container_env(&pod, container, &context).unwrap_err().to_string(),
            "secret \"creds\" not found"
        );
        context.secrets.insert("creds".into(), BTreeMap::new());
        assert_eq!(
            container_env(&pod, container, &context).unwrap_err().to_string(),
            "couldn't find key password in secret shop/creds"
        );
        context.config_maps.clear();
        assert_eq!(
            container_env(&pod, container, &context).unwrap_err().to_string(),
            "configmap \"settings\" not found"
        );
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("2Gi").unwrap(), 2.0 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(parse_quantity("3k").unwrap(), 3000.0);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        assert!(parse_quantity("12parsecs").is_err());
    }
}
