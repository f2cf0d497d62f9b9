//! The lab's networks: fabrics (`kind: Fabric`, one L2 subnet each, a
//! bridge in its own namespace) and routers (`kind: Router`, a namespace
//! with an interface on some fabrics, running BIRD as a top-of-rack router
//! or route reflector), both `apiVersion: lab.strake.dev/v1`. Without any
//! Fabric the lab is one /24 around the nodes, as it always was.
//!
//! ```yaml
//! kind: Fabric
//! metadata: {name: rack-a}
//! spec: {subnet: 10.0.1.0/24}
//! ---
//! kind: Router
//! metadata: {name: tor-a}
//! spec:
//!   asNumber: 65001
//!   interfaces: [{fabric: rack-a, address: 10.0.1.1}, {fabric: core, address: 10.0.0.1}]
//!   nodes: [rack-a]          # BGP with every node on these fabrics
//!   nodeAsNumber: 65001      # the nodes' AS (default: the router's: iBGP, and it reflects)
//!   peers: [tor-b]           # BGP with these routers, over a fabric both are on
//! ```

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;

/// One L2 network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricSpec {
    /// Empty for the lab's implicit single fabric.
    pub name: String,
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl FabricSpec {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        contains(self.net, self.prefix, ip)
    }
}

pub fn contains(net: Ipv4Addr, prefix: u8, ip: Ipv4Addr) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(net) & mask == u32::from(ip) & mask
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterInterface {
    pub fabric: String,
    pub address: Ipv4Addr,
}

/// A router: BGP with the nodes of `node_fabrics` (dynamic: whichever node
/// comes up there) and with the routers in `peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSpec {
    pub name: String,
    pub as_number: u32,
    pub interfaces: Vec<RouterInterface>,
    pub node_fabrics: Vec<String>,
    /// The AS its nodes are in; the router's own means iBGP with the router
    /// as their route reflector.
    pub node_as_number: u32,
    pub peers: Vec<String>,
}

impl RouterSpec {
    pub fn address_on(&self, fabric: &str) -> Option<Ipv4Addr> {
        self.interfaces
            .iter()
            .find(|i| i.fabric == fabric)
            .map(|i| i.address)
    }

    pub fn router_id(&self) -> Ipv4Addr {
        self.interfaces[0].address
    }
}

fn str_field<'a>(v: &'a serde_yaml::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|x| x.as_str())
}

fn names(v: &serde_yaml::Value, what: &str, kind: &str, name: &str) -> Result<Vec<String>> {
    match v.get(what) {
        None => Ok(Vec::new()),
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(String::from)
                    .with_context(|| format!("{kind} {name}: spec.{what} is a list of names"))
            })
            .collect(),
        Some(_) => bail!("{kind} {name}: spec.{what} is a list of names"),
    }
}

pub fn parse_fabric(name: &str, spec: &serde_yaml::Value) -> Result<FabricSpec> {
    if name.is_empty()
        || name.len() > 15
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!("Fabric {name:?}: metadata.name must be 1 to 15 letters, digits or dashes (it names interfaces)");
    }
    let (net, prefix) = str_field(spec, "subnet")
        .and_then(strake_source::parse_cidr)
        .with_context(|| format!("Fabric {name}: spec.subnet must be an IPv4 CIDR"))?;
    if !(8..=30).contains(&prefix) {
        bail!("Fabric {name}: spec.subnet /{prefix}: use a prefix from /8 to /30");
    }
    Ok(FabricSpec {
        name: name.into(),
        net,
        prefix,
    })
}

pub fn parse_router(name: &str, spec: &serde_yaml::Value) -> Result<RouterSpec> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("Router {name:?}: metadata.name must be letters, digits or dashes");
    }
    let as_number = spec
        .get("asNumber")
        .and_then(|v| v.as_u64())
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n != 0)
        .with_context(|| format!("Router {name}: spec.asNumber must be an AS number"))?;
    let mut interfaces = Vec::new();
    for (i, itf) in spec
        .get("interfaces")
        .and_then(|v| v.as_sequence())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let fabric = str_field(itf, "fabric")
            .with_context(|| format!("Router {name}: spec.interfaces[{i}].fabric is required"))?;
        let address = str_field(itf, "address")
            .and_then(|a| a.parse().ok())
            .with_context(|| {
                format!("Router {name}: spec.interfaces[{i}].address must be an IPv4 address")
            })?;
        interfaces.push(RouterInterface {
            fabric: fabric.into(),
            address,
        });
    }
    if interfaces.is_empty() {
        bail!("Router {name}: spec.interfaces needs at least one {{fabric, address}}");
    }
    Ok(RouterSpec {
        name: name.into(),
        as_number,
        interfaces,
        node_fabrics: names(spec, "nodes", "Router", name)?,
        node_as_number: match spec.get("nodeAsNumber") {
            None => as_number,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n != 0)
                .with_context(|| {
                    format!("Router {name}: spec.nodeAsNumber must be an AS number")
                })?,
        },
        peers: names(spec, "peers", "Router", name)?,
    })
}

/// Checks routers against the fabrics and each other.
pub fn check(fabrics: &[FabricSpec], routers: &[RouterSpec]) -> Result<()> {
    let fabric = |r: &RouterSpec, f: &str| {
        fabrics
            .iter()
            .find(|x| x.name == f)
            .with_context(|| format!("Router {}: no Fabric named {f}", r.name))
    };
    for r in routers {
        for i in &r.interfaces {
            let f = fabric(r, &i.fabric)?;
            if !f.contains(i.address) {
                bail!(
                    "Router {}: address {} is not in Fabric {}'s subnet {}/{}",
                    r.name,
                    i.address,
                    f.name,
                    f.net,
                    f.prefix
                );
            }
        }
        for f in &r.node_fabrics {
            fabric(r, f)?;
            if r.address_on(f).is_none() {
                bail!(
                    "Router {}: spec.nodes names {f}, where it has no interface",
                    r.name
                );
            }
        }
        for p in &r.peers {
            let other = routers.iter().find(|x| &x.name == p).with_context(|| {
                format!(
                    "Router {}: spec.peers names {p}, which is no Router",
                    r.name
                )
            })?;
            if shared_fabric(r, other).is_none() {
                bail!("Routers {} and {p} share no fabric to peer over", r.name);
            }
        }
    }
    Ok(())
}

/// A fabric both routers have an interface on.
pub fn shared_fabric<'a>(a: &'a RouterSpec, b: &RouterSpec) -> Option<&'a str> {
    a.interfaces
        .iter()
        .find(|i| b.address_on(&i.fabric).is_some())
        .map(|i| i.fabric.as_str())
}

/// Kernel routes a router needs to the fabrics it is not on: via a router
/// on that fabric, over a fabric they share. (The underlay: node addresses
/// are routed whatever BGP carries, as a real fabric's IGP would.)
pub fn underlay_routes(
    me: &RouterSpec,
    fabrics: &[FabricSpec],
    routers: &[RouterSpec],
) -> Vec<(Ipv4Addr, u8, Ipv4Addr)> {
    let mut out = Vec::new();
    for f in fabrics {
        if me.address_on(&f.name).is_some() {
            continue;
        }
        let via = routers
            .iter()
            .filter(|r| r.name != me.name && r.address_on(&f.name).is_some())
            .find_map(|r| shared_fabric(r, me).and_then(|s| r.address_on(s)));
        if let Some(via) = via {
            out.push((f.net, f.prefix, via));
        }
    }
    out
}

/// BIRD's configuration for a lab router.
pub fn router_bird_config(
    me: &RouterSpec,
    fabrics: &[FabricSpec],
    routers: &[RouterSpec],
) -> String {
    use std::fmt::Write;
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Lab router {}, written by strake-lab.\nlog stderr all;\ntimeformat protocol \"%s\";\ntimeformat route \"%s\";\nrouter id {};\n",
        me.name,
        me.router_id()
    );
    let _ = writeln!(c, "protocol device {{ scan time 10; }}");
    let _ = writeln!(c, "protocol direct {{ ipv4; }}");
    let _ = writeln!(
        c,
        "# Learned routes into the kernel, ECMP over every equal path.\n\
         protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; merge paths on; }}\n"
    );
    for f in &me.node_fabrics {
        let Some(fab) = fabrics.iter().find(|x| &x.name == f) else {
            continue;
        };
        let local = me.address_on(f).unwrap_or(me.router_id());
        let ibgp = me.node_as_number == me.as_number;
        let _ = writeln!(
            c,
            "# Every node on {f}, whichever comes up there.\n\
             protocol bgp nodes_{id} {{\n  local {local} as {asn};\n  neighbor range {net}/{len} as {nas};\n  \
             dynamic name \"node_{id}_\";\n  direct;\n{rr}  graceful restart on;\n  \
             ipv4 {{ import all; export all; next hop self {nhs}; }};\n}}\n",
            id = ident(f),
            asn = me.as_number,
            nas = me.node_as_number,
            net = fab.net,
            len = fab.prefix,
            // A route reflector keeps the next hop of what it reflects (the
            // node, on the same fabric); what it learned elsewhere is
            // reached through itself.
            rr = if ibgp { "  rr client;\n" } else { "" },
            nhs = if ibgp { "ebgp" } else { "" },
        );
    }
    for p in &me.peers {
        let Some(other) = routers.iter().find(|r| &r.name == p) else {
            continue;
        };
        let Some(f) = shared_fabric(me, other) else {
            continue;
        };
        let _ = writeln!(
            c,
            "protocol bgp router_{id} {{\n  local {local} as {asn};\n  neighbor {addr} as {oas};\n  direct;\n  graceful restart on;\n  \
             ipv4 {{ import all; export where source = RTS_BGP; next hop self; }};\n}}\n",
            id = ident(p),
            local = me.address_on(f).unwrap_or(me.router_id()),
            asn = me.as_number,
            addr = other.address_on(f).unwrap_or(other.router_id()),
            oas = other.as_number,
        );
    }
    c
}

/// A name as a BIRD identifier.
pub fn ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> serde_yaml::Value {
        serde_yaml::from_str(s).unwrap()
    }

    fn two_racks() -> (Vec<FabricSpec>, Vec<RouterSpec>) {
        let fabrics = vec![
            parse_fabric("core", &y("{subnet: 10.0.0.0/24}")).unwrap(),
            parse_fabric("rack-a", &y("{subnet: 10.0.1.0/24}")).unwrap(),
            parse_fabric("rack-b", &y("{subnet: 10.0.2.0/24}")).unwrap(),
        ];
        let routers = vec![
            parse_router(
                "tor-a",
                &y("{asNumber: 65001, interfaces: [{fabric: rack-a, address: 10.0.1.1}, {fabric: core, address: 10.0.0.1}], nodes: [rack-a], peers: [tor-b]}"),
            )
            .unwrap(),
            parse_router(
                "tor-b",
                &y("{asNumber: 65002, interfaces: [{fabric: rack-b, address: 10.0.2.1}, {fabric: core, address: 10.0.0.2}], nodes: [rack-b], peers: [tor-a]}"),
            )
            .unwrap(),
        ];
        (fabrics, routers)
    }

    #[test]
    fn routers_reach_the_other_racks_through_each_other() {
        let (f, r) = two_racks();
        check(&f, &r).unwrap();
        assert_eq!(
            underlay_routes(&r[0], &f, &r),
            vec![("10.0.2.0".parse().unwrap(), 24, "10.0.0.2".parse().unwrap())]
        );
        let conf = router_bird_config(&r[0], &f, &r);
        assert!(
            conf.contains("neighbor range 10.0.1.0/24 as 65001;"),
            "{conf}"
        );
        assert!(conf.contains("protocol bgp router_tor_b {\n  local 10.0.0.1 as 65001;\n  neighbor 10.0.0.2 as 65002;"), "{conf}");
        strake_bgp_parses(&conf);
    }

    fn strake_bgp_parses(conf: &str) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.conf");
        std::fs::write(&p, conf).unwrap();
        let out = std::process::Command::new("bird")
            .args(["-p", "-c"])
            .arg(&p)
            .output()
            .expect("bird (bird2) installed");
        assert!(
            out.status.success(),
            "{}\n{conf}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn bad_topologies_are_refused_naming_what_is_wrong() {
        let (f, mut r) = two_racks();
        r[0].interfaces[0].address = "10.0.9.1".parse().unwrap();
        assert!(check(&f, &r)
            .unwrap_err()
            .to_string()
            .contains("address 10.0.9.1 is not in Fabric rack-a's subnet 10.0.1.0/24"));
        let (f, mut r) = two_racks();
        r[0].peers = vec!["spine".into()];
        assert!(check(&f, &r)
            .unwrap_err()
            .to_string()
            .contains("spec.peers names spine, which is no Router"));
        let (f, mut r) = two_racks();
        r[1].interfaces.retain(|i| i.fabric != "core");
        assert!(check(&f, &r)
            .unwrap_err()
            .to_string()
            .contains("share no fabric"));
        assert!(parse_fabric("a-very-long-fabric", &y("{subnet: 10.0.0.0/24}")).is_err());
        assert!(parse_fabric("x", &y("{subnet: 10.0.0.0}"))
            .unwrap_err()
            .to_string()
            .contains("spec.subnet must be an IPv4 CIDR"));
        assert!(parse_router("r", &y("{asNumber: 1}"))
            .unwrap_err()
            .to_string()
            .contains("spec.interfaces needs"));
        assert!(parse_router("r", &y("{interfaces: []}"))
            .unwrap_err()
            .to_string()
            .contains("spec.asNumber"));
    }
}
