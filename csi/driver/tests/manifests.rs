//! Every Kubernetes manifest under deploy/ (all *.yaml / *.yml, multi-document) must
//! parse into its typed Kubernetes object, and round-trip: a field the type does not
//! know (a typo, a wrong indent) is an error, not silently dropped. A kind this test
//! does not know is an error too: add it to `KINDS` below.
//!
//! Also checks that the CSI manifests agree with the driver: the CSIDriver name, the
//! StorageClass provisioner and its parameters as CreateVolume would validate them.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::{apps, core, networking, policy, rbac, storage};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

/// VolumeSnapshotClass (snapshot.storage.k8s.io/v1) is a CRD, not in k8s-openapi.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VolumeSnapshotClass {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    driver: String,
    deletion_policy: DeletionPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameters: Option<BTreeMap<String, String>>,
}

/// VolumeGroupSnapshotClass (groupsnapshot.storage.k8s.io/v1beta1): a CRD too.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VolumeGroupSnapshotClass {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    driver: String,
    deletion_policy: DeletionPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameters: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, Deserialize)]
enum DeletionPolicy {
    Delete,
    Retain,
}

type Check = fn(&Value) -> Result<Value, String>;

fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

/// (apiVersion, kind) → typed parser. Add new kinds here.
const KINDS: &[(&str, &str, Check)] = &[
    ("v1", "Namespace", typed::<core::v1::Namespace>),
    ("v1", "ServiceAccount", typed::<core::v1::ServiceAccount>),
    ("v1", "ConfigMap", typed::<core::v1::ConfigMap>),
    ("v1", "Secret", typed::<core::v1::Secret>),
    ("v1", "Service", typed::<core::v1::Service>),
    ("apps/v1", "Deployment", typed::<apps::v1::Deployment>),
    ("apps/v1", "DaemonSet", typed::<apps::v1::DaemonSet>),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        typed::<rbac::v1::ClusterRole>,
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        typed::<rbac::v1::ClusterRoleBinding>,
    ),
    ("rbac.authorization.k8s.io/v1", "Role", typed::<rbac::v1::Role>),
    (
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        typed::<rbac::v1::RoleBinding>,
    ),
    ("storage.k8s.io/v1", "StorageClass", typed::<storage::v1::StorageClass>),
    ("storage.k8s.io/v1", "CSIDriver", typed::<storage::v1::CSIDriver>),
    (
        "storage.k8s.io/v1",
        "VolumeAttributesClass",
        typed::<storage::v1::VolumeAttributesClass>,
    ),
    (
        "networking.k8s.io/v1",
        "NetworkPolicy",
        typed::<networking::v1::NetworkPolicy>,
    ),
    (
        "policy/v1",
        "PodDisruptionBudget",
        typed::<policy::v1::PodDisruptionBudget>,
    ),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        typed::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
    ),
    (
        "snapshot.storage.k8s.io/v1",
        "VolumeSnapshotClass",
        typed::<VolumeSnapshotClass>,
    ),
    (
        "groupsnapshot.storage.k8s.io/v1beta1",
        "VolumeGroupSnapshotClass",
        typed::<VolumeGroupSnapshotClass>,
    ),
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// Drops nulls and empty objects the typed form omits, so the comparison is about fields.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Finds the first path where `a` (the file) has something `b` (typed) lacks or differs.
fn diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.iter().find_map(|(k, v)| match y.get(k) {
            None => Some(format!(
                "{path}.{k}: not a field of this kind (typo or wrong indentation?)"
            )),
            Some(w) => diff(v, w, &format!("{path}.{k}")),
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| diff(v, w, &format!("{path}[{i}]"))),
        // Secret.stringData is write-only: the typed Secret keeps it as string_data.
        // Schema bounds are floats in the API types: 1 and 1.0 are one number.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

struct Doc {
    file: PathBuf,
    value: Value,
}

fn all_docs() -> Vec<Doc> {
    let mut files = vec![];
    yaml_files(&deploy_dir(), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no manifests found under {}", deploy_dir().display());
    let mut docs = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", f.display()));
            if !v.is_null() {
                docs.push(Doc {
                    file: f.clone(),
                    value: v,
                });
            }
        }
    }
    docs
}

#[test]
fn every_manifest_in_deploy_parses_into_its_kubernetes_type() {
    let mut errors = vec![];
    let docs = all_docs();
    for d in &docs {
        let api = d.value["apiVersion"].as_str().unwrap_or("");
        let kind = d.value["kind"].as_str().unwrap_or("");
        let name = d.value["metadata"]["name"].as_str().unwrap_or("?");
        let at = format!("{} ({kind} {name})", d.file.display());
        let Some((_, _, check)) = KINDS.iter().find(|(a, k, _)| *a == api && *k == kind) else {
            errors.push(format!(
                "{at}: unknown apiVersion/kind {api:?}/{kind:?}; add it to KINDS in csi/driver/tests/manifests.rs"
            ));
            continue;
        };
        match check(&d.value) {
            Err(e) => errors.push(format!("{at}: {e}")),
            Ok(typed) => {
                if let Some(problem) = diff(&normalize(&d.value), &normalize(&typed), "") {
                    errors.push(format!("{at}: {problem}"));
                }
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} manifest problem(s):\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(
        docs.len() >= 10,
        "expected the CSI manifests at least, found {} documents",
        docs.len()
    );
}

#[test]
fn a_typo_in_a_manifest_is_caught() {
    // The checker itself must fail on what it is meant to catch.
    let bad: Value = serde_yaml::from_str(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: x}\nprovisioner: p\nallowVolumeExpnasion: true\n",
    )
    .unwrap();
    let round_trip = typed::<storage::v1::StorageClass>(&bad).unwrap();
    assert!(diff(&normalize(&bad), &normalize(&round_trip), "")
        .unwrap()
        .contains("allowVolumeExpnasion"));
    let bad_snap: Value = serde_yaml::from_str(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: x}\ndriver: d\ndeletionPolicy: Sometimes\n",
    )
    .unwrap();
    assert!(typed::<VolumeSnapshotClass>(&bad_snap).is_err());
}

#[test]
fn csi_manifests_agree_with_the_driver() {
    let docs = all_docs();
    fn of_kind<'a>(docs: &'a [Doc], k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        docs.iter().filter(move |d| d.value["kind"] == k).map(|d| &d.value)
    }
    let driver: Vec<_> = of_kind(&docs, "CSIDriver")
        .filter(|v| v["metadata"]["name"] == strake_csi::DRIVER_NAME)
        .collect();
    assert_eq!(
        driver.len(),
        1,
        "deploy/ must register CSIDriver {}",
        strake_csi::DRIVER_NAME
    );
    assert_eq!(
        driver[0]["spec"]["attachRequired"], true,
        "strake-csi records and fences holders in ControllerPublish/Unpublish"
    );
    let classes: Vec<_> = of_kind(&docs, "StorageClass")
        .filter(|v| v["provisioner"] == strake_csi::DRIVER_NAME)
        .collect();
    assert!(!classes.is_empty(), "no StorageClass uses {}", strake_csi::DRIVER_NAME);
    for sc in classes {
        let params: std::collections::HashMap<String, String> =
            serde_json::from_value(sc["parameters"].clone()).unwrap();
        strake_csi::params::parse_volume_params(&params).unwrap_or_else(|e| {
            panic!(
                "StorageClass {} would be refused by CreateVolume: {}",
                sc["metadata"]["name"],
                e.message()
            )
        });
        for step in ["provisioner", "controller-publish", "node-stage", "controller-expand"] {
            assert!(
                params.contains_key(&format!("csi.storage.k8s.io/{step}-secret-name")),
                "StorageClass {} lacks the {step} secret: that RPC would fail with INVALID_ARGUMENT",
                sc["metadata"]["name"]
            );
        }
    }
    for vac in of_kind(&docs, "VolumeAttributesClass").filter(|v| v["driverName"] == strake_csi::DRIVER_NAME) {
        let params: std::collections::HashMap<String, String> =
            serde_json::from_value(vac["parameters"].clone()).unwrap();
        strake_csi::modify::parse(&params).unwrap_or_else(|e| {
            panic!(
                "VolumeAttributesClass {} would be refused by ControllerModifyVolume: {}",
                vac["metadata"]["name"],
                e.message()
            )
        });
    }
    for sc in of_kind(&docs, "VolumeSnapshotClass").filter(|v| v["driver"] == strake_csi::DRIVER_NAME) {
        assert!(sc["parameters"]["csi.storage.k8s.io/snapshotter-secret-name"].is_string());
    }
    // Every sidecar and the driver share the socket path the driver serves.
    for w in of_kind(&docs, "Deployment").chain(of_kind(&docs, "DaemonSet")) {
        for c in w["spec"]["template"]["spec"]["containers"].as_array().unwrap() {
            for a in c["args"].as_array().into_iter().flatten() {
                let a = a.as_str().unwrap();
                if let Some(addr) = a.strip_prefix("--csi-address=") {
                    assert_eq!(
                        addr, "/csi/csi.sock",
                        "{}: sidecar {} dials {addr}",
                        w["metadata"]["name"], c["name"]
                    );
                }
                if let Some(ep) = a.strip_prefix("--endpoint=") {
                    assert_eq!(ep, "unix:///csi/csi.sock");
                }
            }
        }
    }
}
