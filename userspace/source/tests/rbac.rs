//! The agent's ClusterRole grants exactly what the Kubernetes source asks
//! of the API server (a missing verb would leave a watcher failing forever).

use serde_json::Value;
use strake_source::kube::ACCESS;

#[test]
fn the_cluster_role_grants_every_list_and_watch_the_source_makes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/strake/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let role = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| v["kind"] == "ClusterRole")
        .expect("a ClusterRole in deploy/strake/rbac.yaml");
    let grants = |group: &str, resource: &str, verb: &str| {
        role["rules"].as_array().unwrap().iter().any(|r| {
            let has = |k: &str, want: &str| {
                r[k].as_array()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(want)))
            };
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    for (group, resource, verbs) in ACCESS {
        for verb in verbs {
            assert!(
                grants(group, resource, verb),
                "deploy/strake/rbac.yaml does not grant {verb} on {resource} in group {group:?}"
            );
        }
    }
}
