//! `crds/` and the chart's copy hold exactly what `cairn-operator crd` prints: the CRD is generated
//! from the Rust types, never edited by hand. Regenerate both with
//! `cargo run -p cairn-operator -- crd | tee crds/kvclusters.cairn.dev.yaml > charts/cairn-operator/files/kvclusters.cairn.dev.yaml`.

use std::path::Path;
use std::process::Command;

const REGENERATE: &str = "cargo run -p cairn-operator -- crd | tee crds/kvclusters.cairn.dev.yaml \
                          > charts/cairn-operator/files/kvclusters.cairn.dev.yaml";

#[test]
fn generated_crds_match_the_types() {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn-operator"))
        .arg("crd")
        .output()
        .expect("run cairn-operator crd");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).unwrap();
    assert!(generated.contains("name: kvclusters.cairn.dev"));
    assert!(generated.contains("- kvc\n"), "the short name");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for copy in [
        "crds/kvclusters.cairn.dev.yaml",
        "charts/cairn-operator/files/kvclusters.cairn.dev.yaml",
    ] {
        let committed = std::fs::read_to_string(root.join(copy)).unwrap_or_default();
        assert!(
            committed == generated,
            "{copy} is out of date with the KVCluster types; regenerate it with\n  {REGENERATE}"
        );
    }
}

/// A 1.20 apiserver refuses a CRD whose schema lists `null` among an enum's values (what
/// schemars writes for an `Option<enum>`), with an unrelated-looking message about per-version
/// schemas; keep every optional enum's schema free of it.
#[test]
fn no_enum_lists_null() {
    let crd =
        serde_json::to_value(<cairn_operator::crd::KVCluster as kube::CustomResourceExt>::crd()).unwrap();
    fn walk(value: &serde_json::Value, path: &str, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(values)) = map.get("enum")
                    && values.iter().any(serde_json::Value::is_null)
                {
                    found.push(path.to_owned());
                }
                for (key, child) in map {
                    walk(child, &format!("{path}.{key}"), found);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, path, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(&crd, "", &mut found);
    assert!(found.is_empty(), "enums with null: {found:?}");
}

/// The schema's CEL rules, evaluated as an apiserver that runs CEL does on an update: storage
/// edits no claim can follow are refused with a message naming the field; growing, and edits
/// elsewhere, pass.
#[test]
fn storage_edits_no_claim_can_follow_are_refused_by_the_schema() {
    let crd =
        serde_json::to_value(<cairn_operator::crd::KVCluster as kube::CustomResourceExt>::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    // Objects as the apiserver validates them: with the schema's defaults filled in.
    let cluster = |storage: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1",
            "kind": "KVCluster",
            "metadata": {"name": "kv"},
            "spec": {"replicas": 3, "storage": storage},
        })
    };
    let refusals = |old: serde_json::Value, new: serde_json::Value| -> Vec<String> {
        match kube_cel::validate(schema, &cluster(new), Some(&cluster(old))) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_vec().into_iter().map(|e| e.message).collect(),
        }
    };
    use serde_json::json;
    let standard = json!({"ephemeral": false, "size": "1Gi", "storageClassName": "standard"});

    assert_eq!(refusals(standard.clone(), standard.clone()), Vec::<String>::new());
    let grown = json!({"ephemeral": false, "size": "4Gi", "storageClassName": "standard"});
    assert_eq!(refusals(standard.clone(), grown), Vec::<String>::new());

    let other_class = json!({"ephemeral": false, "size": "1Gi", "storageClassName": "fast"});
    let class_refused = "spec.storage.storageClassName cannot change: the members' claims keep the \
                         class they were made with";
    assert_eq!(refusals(standard.clone(), other_class), vec![class_refused]);
    let default_class = json!({"ephemeral": false, "size": "1Gi"});
    assert_eq!(
        refusals(standard.clone(), default_class.clone()),
        vec![class_refused]
    );
    assert_eq!(refusals(default_class, standard.clone()), vec![class_refused]);

    let ephemeral = json!({"ephemeral": true, "size": "1Gi", "storageClassName": "standard"});
    assert_eq!(
        refusals(standard, ephemeral.clone()),
        vec![
            "spec.storage.ephemeral cannot change: the members' data cannot move between claims \
              and emptyDirs"
        ]
    );
    // A new KVCluster has no earlier state: transition rules do not apply.
    let created = kube_cel::validate(schema, &cluster(ephemeral), None);
    assert!(created.is_ok(), "{created:?}");
}
