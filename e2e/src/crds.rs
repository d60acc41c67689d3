//! CustomResourceDefinitions from YAML files, installed with server-side apply before the
//! controller manager starts (its garbage collector then knows their types from the beginning), and
//! waited for until they are Established and their schemas published (what `kubectl explain` reads).
//! A server that runs no CEL (before 1.25) gets them without their CEL rules, which it would refuse
//! as an unknown field, as the operator's chart does.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;

/// Applies every CRD in the `*.yaml` files of `dir` and waits until each is Established.
pub async fn install(client: &Client, dir: &Path) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let version = client.apiserver_version().await.map_err(|e| e.to_string())?;
    let runs_cel = version.minor.trim_end_matches('+').parse::<u32>().unwrap_or(0) >= 25;
    let mut names = Vec::new();
    let mut schemas = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut crd = serde_json::Value::deserialize(document)
                .map_err(|e| format!("{}: not YAML: {e}", file.display()))?;
            if !runs_cel {
                drop_cel_rules(&mut crd);
            }
            let crd = CustomResourceDefinition::deserialize(crd)
                .map_err(|e| format!("{}: not a CustomResourceDefinition: {e}", file.display()))?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            schemas.extend(schema_names(&crd));
            api.patch(&name, &PatchParams::apply("sandbox").force(), &Patch::Apply(&crd))
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            names.push(name);
        }
    }
    for name in names {
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| format!("{name} was not Established within 30s"))?
            .map_err(|e| format!("{name}: {e}"))?;
    }
    // kubectl explain reads the published OpenAPI document, which follows Established a little later.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let request = hyper::Request::get("/openapi/v2")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let document = client.request_text(request).await.unwrap_or_default();
        let missing: Vec<&String> = schemas
            .iter()
            .filter(|name| !document.contains(&format!("\"{name}\"")))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("the OpenAPI document lacks {missing:?} after 30s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes every `x-kubernetes-validations` (CEL rules) from a CRD.
fn drop_cel_rules(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(drop_cel_rules);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_cel_rules),
        _ => {}
    }
}

/// The OpenAPI definition names of a CRD's served versions (`dev.cairn.v1alpha1.KVCluster`).
fn schema_names(crd: &CustomResourceDefinition) -> Vec<String> {
    let group: Vec<&str> = crd.spec.group.split('.').rev().collect();
    crd.spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| format!("{}.{}.{}", group.join("."), v.name, crd.spec.names.kind))
        .collect()
}
