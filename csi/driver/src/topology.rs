//! Topology-aware provisioning: pools per failure domain (`topologyConstrainedPools`, as
//! ceph-csi spells it) and the node's own place (`--topology`, or the
//! `topology.kubernetes.io/*` labels a downward-API file gives it).
//!
//! Segments are keyed `topology.rbd.csi.strake.io/<domain label>` (e.g. `.../zone`).
//! CreateVolume picks the first pool whose segments match one of the request's
//! `preferred` topologies (in order), else one of its `requisite` ones, and answers the
//! pool's segments as the volume's `accessible_topology`, so the scheduler only puts
//! its pods on nodes of that domain. The volume's journal record stays in the
//! StorageClass's `pool`: its name is reserved in one place, whichever pool the image
//! lands in, so a retry that prefers another zone finds the same volume.
use std::collections::BTreeMap;
use std::path::Path;

use crate::errors::Error;
use serde::Deserialize;

use crate::csi::{Topology, TopologyRequirement};

pub const KEY_PREFIX: &str = "topology.rbd.csi.strake.io/";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainSegment {
    pub domain_label: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopologyPool {
    pub pool_name: String,
    #[serde(default)]
    pub data_pool: Option<String>,
    pub domain_segments: Vec<DomainSegment>,
}

fn label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses and checks the `topologyConstrainedPools` StorageClass parameter.
pub fn parse_pools(json: &str) -> Result<Vec<TopologyPool>, String> {
    let pools: Vec<TopologyPool> = serde_json::from_str(json).map_err(|e| {
        format!(
            "topologyConstrainedPools is not a list of {{\"poolName\", \"dataPool\", \"domainSegments\": [{{\"domainLabel\", \"value\"}}]}}: {e}"
        )
    })?;
    if pools.is_empty() {
        return Err("topologyConstrainedPools is empty".into());
    }
    for p in &pools {
        crate::validate::pool(&p.pool_name)?;
        if let Some(dp) = &p.data_pool {
            crate::validate::pool(dp)?;
        }
        if p.domain_segments.is_empty() {
            return Err(format!(
                "topologyConstrainedPools: pool {} has no domainSegments",
                p.pool_name
            ));
        }
        for s in &p.domain_segments {
            if !label_ok(&s.domain_label) || !label_ok(&s.value) {
                return Err(format!(
                    "topologyConstrainedPools: segment {}={} is not a label name and value",
                    s.domain_label, s.value
                ));
            }
        }
    }
    Ok(pools)
}

/// The segments a pool's volumes are reachable from, as CSI topology keys.
pub fn segments(p: &TopologyPool) -> BTreeMap<String, String> {
    p.domain_segments
        .iter()
        .map(|s| (format!("{KEY_PREFIX}{}", s.domain_label), s.value.clone()))
        .collect()
}

fn matches(p: &TopologyPool, t: &Topology) -> bool {
    segments(p).iter().all(|(k, v)| t.segments.get(k) == Some(v))
}

/// The pool for a volume with these accessibility requirements.
pub fn choose<'a>(pools: &'a [TopologyPool], req: Option<&TopologyRequirement>) -> Result<&'a TopologyPool, Error> {
    let Some(req) = req.filter(|r| !r.preferred.is_empty() || !r.requisite.is_empty()) else {
        return Ok(&pools[0]);
    };
    for t in req.preferred.iter().chain(&req.requisite) {
        if let Some(p) = pools.iter().find(|p| matches(p, t)) {
            return Ok(p);
        }
    }
    let wanted: Vec<String> = req.requisite.iter().map(|t| format!("{:?}", t.segments)).collect();
    Err(Error::resource_exhausted(format!(
        "no pool of topologyConstrainedPools serves the requested topology {}; add a pool for that domain",
        wanted.join(" or ")
    )))
}

/// This node's segments: `--topology LABEL=VALUE` flags, and the
/// `topology.kubernetes.io/<label>` entries of a downward-API labels file (Kubernetes
/// copies the node's topology labels onto its pods), the flags winning.
pub fn node_segments(flags: &[String], labels_file: Option<&Path>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    if let Some(f) = labels_file {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("reading --topology-labels-file {}: {e}", f.display()))?;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else { continue };
            if let Some(label) = k.trim().strip_prefix("topology.kubernetes.io/") {
                let v = v.trim().trim_matches('"');
                if label_ok(label) && label_ok(v) {
                    out.insert(format!("{KEY_PREFIX}{label}"), v.to_string());
                }
            }
        }
    }
    for f in flags {
        let (k, v) = f
            .split_once('=')
            .filter(|(k, v)| label_ok(k) && label_ok(v))
            .ok_or_else(|| format!("--topology {f:?}: use LABEL=VALUE, e.g. zone=eu-1a"))?;
        out.insert(format!("{KEY_PREFIX}{k}"), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const POOLS: &str = r#"[
        {"poolName":"pool-a","domainSegments":[{"domainLabel":"zone","value":"a"}]},
        {"poolName":"pool-b","dataPool":"ec-b","domainSegments":[{"domainLabel":"zone","value":"b"}]}
    ]"#;

    fn topo(zone: &str) -> Topology {
        Topology {
            segments: HashMap::from([(format!("{KEY_PREFIX}zone"), zone.to_string())]),
        }
    }

    #[test]
    fn the_preferred_domain_wins_then_the_requisite_ones() {
        let pools = parse_pools(POOLS).unwrap();
        assert_eq!(choose(&pools, None).unwrap().pool_name, "pool-a");
        let req = TopologyRequirement {
            requisite: vec![topo("a"), topo("b")],
            preferred: vec![topo("b")],
        };
        assert_eq!(choose(&pools, Some(&req)).unwrap().pool_name, "pool-b");
        let req = TopologyRequirement {
            requisite: vec![topo("c")],
            preferred: vec![],
        };
        assert_eq!(
            choose(&pools, Some(&req)).unwrap_err().kind(),
            crate::errors::Kind::ResourceExhausted
        );
        assert_eq!(segments(&pools[1])[&format!("{KEY_PREFIX}zone")], "b");
    }

    #[test]
    fn bad_pool_lists_and_node_flags_are_refused() {
        assert!(parse_pools("[]").is_err());
        assert!(parse_pools(r#"[{"poolName":"-x","domainSegments":[{"domainLabel":"zone","value":"a"}]}]"#).is_err());
        assert!(parse_pools(r#"[{"poolName":"p","domainSegments":[]}]"#).is_err());
        assert!(parse_pools(r#"[{"pool":"p"}]"#).is_err());
        assert!(node_segments(&["zone".into()], None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("labels");
        std::fs::write(
            &f,
            "app=\"x\"\ntopology.kubernetes.io/zone=\"b\"\ntopology.kubernetes.io/region=\"eu\"\n",
        )
        .unwrap();
        let s = node_segments(&["zone=c".into()], Some(&f)).unwrap();
        assert_eq!(s[&format!("{KEY_PREFIX}zone")], "c", "the flag wins");
        assert_eq!(s[&format!("{KEY_PREFIX}region")], "eu");
        assert_eq!(s.len(), 2);
    }
}
