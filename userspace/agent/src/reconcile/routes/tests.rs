use super::*;
use std::collections::BTreeMap;

/// A routing table, an uplink on a /24 around the node's address, and a
/// VXLAN device, in memory.
#[derive(Default, Clone)]
pub struct FakeTable {
    pub routes: Arc<Mutex<Vec<Route4>>>,
    /// Routes via this gateway cannot be installed.
    pub unreachable: Arc<Mutex<Option<Ipv4Addr>>>,
    pub tunnel: Arc<Mutex<Option<Vxlan>>>,
    pub fdb: Arc<Mutex<BTreeSet<FdbEntry>>>,
    pub neighbours: Arc<Mutex<BTreeMap<Ipv4Addr, [u8; 6]>>>,
    pub tunnels_made: Arc<AtomicUsize>,
}

impl RouteTable for FakeTable {
    fn routes(&self) -> Result<Vec<Route4>> {
        Ok(self.routes.lock().unwrap().clone())
    }
    fn replace(&self, r: &Route4) -> Result<()> {
        if r.gateway.is_some() && r.gateway == *self.unreachable.lock().unwrap() {
            anyhow::bail!("installing route {r}: Network is unreachable (os error 101)");
        }
        let mut t = self.routes.lock().unwrap();
        t.retain(|x| (x.dst, x.prefix, x.metric) != (r.dst, r.prefix, r.metric));
        t.push(r.clone());
        Ok(())
    }
    fn delete(&self, r: &Route4) -> Result<()> {
        self.routes.lock().unwrap().retain(|x| x != r);
        Ok(())
    }
    fn uplink(&self, _name: &str, ip: Ipv4Addr) -> Result<Option<Uplink>> {
        Ok(Some(Uplink {
            index: 2,
            mtu: 1500,
            subnet: Ipv4Network::new(Ipv4Network::new(ip, 24)?.network(), 24)?,
        }))
    }
    fn tunnel(&self) -> Result<Option<Vxlan>> {
        Ok(self.tunnel.lock().unwrap().clone())
    }
    fn create_tunnel(&self, s: &VxlanSpec) -> Result<u32> {
        let index = 100 + self.tunnels_made.fetch_add(1, Ordering::SeqCst) as u32;
        *self.tunnel.lock().unwrap() = Some(Vxlan {
            index,
            vni: s.vni,
            local: Some(s.local),
            port: s.port,
            mtu: s.mtu,
            mac: s.mac,
            up: true,
        });
        Ok(index)
    }
    fn delete_tunnel(&self) -> Result<()> {
        if let Some(t) = self.tunnel.lock().unwrap().take() {
            // Routes through a device go with it, as do its entries.
            self.routes
                .lock()
                .unwrap()
                .retain(|r| r.oif != Some(t.index));
            self.fdb.lock().unwrap().clear();
            self.neighbours.lock().unwrap().clear();
        }
        Ok(())
    }
    fn fdb(&self, _t: u32) -> Result<Vec<FdbEntry>> {
        Ok(self.fdb.lock().unwrap().iter().copied().collect())
    }
    fn add_fdb(&self, _t: u32, e: &FdbEntry) -> Result<()> {
        self.fdb.lock().unwrap().insert(*e);
        Ok(())
    }
    fn delete_fdb(&self, _t: u32, e: &FdbEntry) -> Result<()> {
        self.fdb.lock().unwrap().remove(e);
        Ok(())
    }
    fn neighbours(&self, _t: u32) -> Result<Vec<Neighbour>> {
        Ok(self
            .neighbours
            .lock()
            .unwrap()
            .iter()
            .map(|(ip, mac)| Neighbour { ip: *ip, mac: *mac })
            .collect())
    }
    fn add_neighbour(&self, _t: u32, n: &Neighbour) -> Result<()> {
        self.neighbours.lock().unwrap().insert(n.ip, n.mac);
        Ok(())
    }
    fn delete_neighbour(&self, _t: u32, ip: Ipv4Addr) -> Result<()> {
        self.neighbours.lock().unwrap().remove(&ip);
        Ok(())
    }
}

pub fn phase(table: &FakeTable, node: &str) -> RoutesPhase<FakeTable> {
    RoutesPhase {
        table: table.clone(),
        node: node.into(),
        uplink: Arc::new(Mutex::new(Some("eth0".into()))),
        tunnel: TunnelOptions {
            encapsulate: true,
            vni: 4096,
            port: 4789,
        },
        installed: Default::default(),
        overhead: Default::default(),
    }
}

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: a}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: b}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: c}
spec: {}
status: {addresses: [{type: InternalIP, address: 10.0.0.3}]}
"#;

/// Two racks: a1, a2 on 10.0.1.0/24, b1 on 10.0.2.0/24.
const RACKS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: a1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.1.11}]}
---
apiVersion: v1
kind: Node
metadata: {name: a2}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.1.12}]}
---
apiVersion: v1
kind: Node
metadata: {name: b1}
spec: {podCIDR: 10.244.3.0/24}
status: {addresses: [{type: InternalIP, address: 10.0.2.11}]}
"#;

const BGP_ON: &str =
    "---\napiVersion: bgp.strake.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n";

fn run(phase: &mut RoutesPhase<FakeTable>, yaml: &str) -> Result<Outcome> {
    let st = strake_source::dir::state_from_yaml(yaml).unwrap();
    phase.reconcile(&Pass {
        state: &st,
        full: true,
        revision: 1,
    })
}

fn table(t: &FakeTable) -> Vec<String> {
    let mut v: Vec<String> = t
        .routes
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    v.sort();
    v
}

fn reach(me: &str, subnet: &str) -> Reach {
    Reach {
        me: me.parse().unwrap(),
        subnet: subnet.parse().unwrap(),
        encapsulate: true,
        tunnel: Some(7),
    }
}

#[test]
fn other_nodes_are_routed_and_our_block_is_blackholed() {
    let st = strake_source::dir::state_from_yaml(NODES).unwrap();
    let r: Vec<String> = desired(&st, "a", &reach("10.0.0.1", "10.0.0.0/24"))
        .routes
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(
        r,
        vec!["blackhole 10.244.1.0/24", "10.244.2.0/24 via 10.0.0.2"]
    );
}

#[test]
fn a_pass_installs_what_is_missing_and_withdraws_what_is_stale() {
    let t = FakeTable::default();
    let mut stale = Route4::to("10.244.9.0".parse().unwrap(), 24);
    stale.gateway = Some("10.0.0.9".parse().unwrap());
    t.routes.lock().unwrap().push(stale.clone());
    let mut p = phase(&t, "a");
    assert_eq!(run(&mut p, NODES).unwrap(), Outcome::applied(3));
    assert!(!t.routes.lock().unwrap().contains(&stale));
    assert_eq!(run(&mut p, NODES).unwrap(), Outcome::applied(0));
    assert!(t.tunnel.lock().unwrap().is_none(), "one subnet: no tunnel");
}

#[test]
fn one_unreachable_gateway_fails_the_pass_but_not_the_other_routes() {
    let t = FakeTable::default();
    *t.unreachable.lock().unwrap() = Some("10.0.0.2".parse().unwrap());
    let mut p = phase(&t, "c");
    let msg = format!("{:#}", run(&mut p, NODES).unwrap_err());
    assert!(
        msg.contains("10.244.2.0/24 via 10.0.0.2") && msg.contains("unreachable"),
        "{msg}"
    );
    assert_eq!(t.routes.lock().unwrap().len(), 1, "the route via a is in");
}

#[test]
fn with_bgp_same_subnet_blocks_are_left_to_bird_and_other_subnets_get_a_vxlan_fallback() {
    let t = FakeTable::default();
    let mut p = phase(&t, "a1");
    run(&mut p, &format!("{RACKS}{BGP_ON}")).unwrap();
    assert_eq!(
        table(&t),
        vec![
            "10.244.3.0/24 via 10.0.2.11 oif 100 onlink metric 1024",
            "blackhole 10.244.1.0/24",
        ],
        "no direct route to a2: BIRD carries it"
    );
    let tun = t.tunnel.lock().unwrap().clone().unwrap();
    assert_eq!((tun.vni, tun.port, tun.mtu), (4096, 4789, 1450));
    assert_eq!(tun.mac, vtep_mac("10.0.1.11".parse().unwrap()));
    let b1: Ipv4Addr = "10.0.2.11".parse().unwrap();
    assert_eq!(
        t.fdb.lock().unwrap().iter().copied().collect::<Vec<_>>(),
        vec![FdbEntry {
            mac: vtep_mac(b1),
            dst: b1
        }]
    );
    assert_eq!(t.neighbours.lock().unwrap().get(&b1), Some(&vtep_mac(b1)));
    assert_eq!(p.overhead.load(Ordering::Relaxed), VXLAN_OVERHEAD);
    let fallback = t
        .routes
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.onlink)
        .cloned()
        .unwrap();
    assert_eq!(fallback.source, Some("10.0.1.11".parse().unwrap()));
    assert_eq!(
        run(&mut p, &format!("{RACKS}{BGP_ON}")).unwrap(),
        Outcome::applied(0)
    );
}

#[test]
fn without_bgp_the_same_subnet_is_direct_and_the_other_still_goes_through_vxlan() {
    let t = FakeTable::default();
    let mut p = phase(&t, "a1");
    run(&mut p, RACKS).unwrap();
    assert_eq!(
        table(&t),
        vec![
            "10.244.2.0/24 via 10.0.1.12",
            "10.244.3.0/24 via 10.0.2.11 oif 100 onlink metric 1024",
            "blackhole 10.244.1.0/24",
        ]
    );
    // BGP comes on: the direct route goes, the fallback stays.
    run(&mut p, &format!("{RACKS}{BGP_ON}")).unwrap();
    assert_eq!(table(&t).len(), 2);
    assert!(!table(&t).iter().any(|r| r.contains("10.0.1.12")));
}

#[test]
fn the_tunnel_follows_its_peers_and_its_settings() {
    let t = FakeTable::default();
    let mut p = phase(&t, "a1");
    run(&mut p, RACKS).unwrap();
    // b1 is deleted: no off-subnet node left, no tunnel, no fallback route.
    let without_b1 = RACKS.rsplit_once("---").unwrap().0;
    run(&mut p, without_b1).unwrap();
    assert!(t.tunnel.lock().unwrap().is_none());
    assert!(t.fdb.lock().unwrap().is_empty());
    assert!(!table(&t).iter().any(|r| r.contains("onlink")));
    assert_eq!(p.overhead.load(Ordering::Relaxed), 0);
    // Back; then a VXLAN port change remakes the device.
    run(&mut p, RACKS).unwrap();
    assert_eq!(t.tunnels_made.load(Ordering::SeqCst), 2);
    p.tunnel.port = 8472;
    run(&mut p, RACKS).unwrap();
    assert_eq!(t.tunnels_made.load(Ordering::SeqCst), 3);
    assert_eq!(t.tunnel.lock().unwrap().as_ref().unwrap().port, 8472);
    assert!(
        table(&t).iter().any(|r| r.contains("oif 102 onlink")),
        "{:?}",
        table(&t)
    );
}

#[test]
fn with_encapsulation_off_a_bgp_node_leaves_other_subnets_to_the_fabric() {
    let t = FakeTable::default();
    let mut p = phase(&t, "a1");
    p.tunnel.encapsulate = false;
    run(&mut p, &format!("{RACKS}{BGP_ON}")).unwrap();
    assert_eq!(table(&t), vec!["blackhole 10.244.1.0/24"]);
    assert!(t.tunnel.lock().unwrap().is_none());
}
