//! The map names userspace opens (shared.h's STRAKE_MAP_*) are exactly the
//! maps the programs define: a map renamed on one side only would fail at
//! the agent's start, or leave a map nobody sizes or reads.

use std::collections::BTreeSet;

fn shared_h_names() -> BTreeSet<String> {
    let h =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/shared.h")).unwrap();
    h.lines()
        .filter_map(|l| l.strip_prefix("#define STRAKE_MAP_"))
        .filter_map(|rest| rest.split_once('"'))
        .map(|(_, v)| v.trim_end_matches('"').to_string())
        .collect()
}

fn object_maps() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for bytes in [
        strake_ebpf::POD_OBJECT,
        strake_ebpf::UPLINK_OBJECT,
        strake_ebpf::XDP_OBJECT,
        strake_ebpf::SOCK_OBJECT,
    ] {
        let obj = aya_obj::Object::parse(bytes).expect("a program object parses");
        out.extend(obj.maps.keys().filter(|n| n.starts_with("st_")).cloned());
    }
    out
}

#[test]
fn shared_h_names_every_map_and_nothing_else() {
    let named = shared_h_names();
    let defined = object_maps();
    assert!(named.len() > 10, "parsed shared.h: {named:?}");
    assert_eq!(
        named, defined,
        "shared.h's STRAKE_MAP_* names against the maps the programs define"
    );
}

#[test]
fn the_bindings_carry_the_names() {
    assert_eq!(strake_ebpf::shared::STRAKE_MAP_CT, b"st_ct\0");
}
