//! The CRDs in deploy/ describe exactly the fields the agents read: a field
//! the schema lacks would be pruned by the API server before any agent saw
//! it; one the parser lacks would be refused by every agent.

use serde_json::Value;
use std::collections::BTreeSet;
use strake_bgp::model::{CONFIG_FIELDS, PEER_FIELDS};

fn spec_fields(kind: &str) -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/strake/crds.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let crd = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| v["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    assert_eq!(crd["spec"]["group"], "bgp.strake.dev");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    let v1 = &crd["spec"]["versions"][0];
    assert_eq!(v1["name"], "v1");
    v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_crd_schemas_list_the_fields_the_parser_reads() {
    let set = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(spec_fields("BGPConfiguration"), set(CONFIG_FIELDS));
    assert_eq!(spec_fields("BGPPeer"), set(PEER_FIELDS));
}
