//! Harness for packet-level tests of the kernel-side programs.
//!
//! Each test gets its own network namespace with a small, known topology, so
//! the programs' FIB lookups and interface indexes resolve against real kernel
//! state, and its own bpffs root, so maps start empty:
//!
//! ```text
//!   lxc1, lxc2   host sides of two pod veths (peers lxc1p, lxc2p)
//!   up0          uplink, 10.0.0.1/24 (peer up0p)
//!   10.0.0.2     neighbour with a permanent MAC      -> FIB lookup SUCCESS
//!   10.0.0.3     no neighbour entry                  -> FIB lookup NO_NEIGH
//!   up1          a second uplink, 10.1.0.1/24 (peer up1p)
//!   routes       10.244.2.0/24 via 10.0.0.2, 10.244.3.0/24 via 10.0.0.3,
//!                198.51.100.0/24 via 10.0.0.2 (an outside network, up0),
//!                198.18.0.0/24 via 10.1.0.2 (another network, up1),
//!                blackhole 10.244.1.0/24 (this node's pod block)
//! ```

use anyhow::Result;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use strake_datapath::shared::endpoint_info;
use strake_datapath::{Datapath, DatapathConfig, TestRunOutput};
use strake_netlink::{netns, Link, Netlink, Route4};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const PEER_NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const PEER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const UNRESOLVED_NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
pub const POD1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
pub const POD1_MAC: [u8; 6] = [0x0a, 0, 0, 0, 1, 10];
pub const POD2_MAC: [u8; 6] = [0x0a, 0, 0, 0, 1, 11];
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
pub const UNRESOLVED_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 5);
pub const FREE_LOCAL_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 99);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);
/// An outside client routed through up0 (the reverse path of up0).
pub const OUTSIDE_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// A host routed through up1: arriving on up0 fails a strict reverse-path check.
pub const UP1_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);
/// No route at all.
pub const UNROUTED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Interfaces of the test topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub lxc1: Link,
    pub lxc2: Link,
    pub up0: Link,
    pub up1: Link,
}

/// A loaded data plane inside a private namespace with the topology above.
pub struct TestNet {
    pub dp: Datapath,
    pub topo: Topology,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Builds a fresh namespace and data plane, runs `f` inside it, tears down.
pub fn with_testnet<F>(f: F) -> Result<()>
where
    F: FnOnce(&mut TestNet) -> Result<()> + Send + 'static,
{
    let id = format!(
        "sbt{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    let ns_path = netns::create(&id)?;
    let root = PathBuf::from(format!("/sys/fs/bpf/{id}"));
    let root2 = root.clone();
    let result = netns::run_in(&ns_path, move || {
        let topo = build_topology()?;
        let dp = Datapath::load(&DatapathConfig {
            bpffs_root: root2,
            max_endpoints: 1024,
            ct_size: 4096,
            lb_max_slots: 65536,
        })?;
        let mut net = TestNet { dp, topo };
        f(&mut net)
    });
    let _ = Datapath::purge(&root);
    let _ = netns::delete(&id);
    result
}

fn build_topology() -> Result<Topology> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let nl = Netlink::connect()?;
        let lo = nl.link_by_name("lo").await?.expect("lo");
        nl.set_up(lo.index).await?;
        for (a, b) in [
            ("lxc1", "lxc1p"),
            ("lxc2", "lxc2p"),
            ("up0", "up0p"),
            ("up1", "up1p"),
        ] {
            nl.create_veth(a, b, 1500).await?;
            for n in [a, b] {
                let l = nl.link_by_name(n).await?.expect("just created");
                nl.set_up(l.index).await?;
            }
        }
        let up0 = nl.link_by_name("up0").await?.expect("up0");
        nl.add_address(up0.index, NODE_IP, 24).await?;
        nl.add_permanent_neighbour(up0.index, PEER_NODE, PEER_NODE_MAC)
            .await?;
        let mut r = Route4::to(Ipv4Addr::new(10, 244, 2, 0), 24);
        r.gateway = Some(PEER_NODE);
        nl.replace_route(&r).await?;
        let mut r = Route4::to(Ipv4Addr::new(10, 244, 3, 0), 24);
        r.gateway = Some(UNRESOLVED_NODE);
        nl.replace_route(&r).await?;
        let mut r = Route4::to(Ipv4Addr::new(10, 244, 1, 0), 24);
        r.blackhole = true;
        nl.replace_route(&r).await?;
        let mut r = Route4::to(Ipv4Addr::new(198, 51, 100, 0), 24);
        r.gateway = Some(PEER_NODE);
        nl.replace_route(&r).await?;
        let up1 = nl.link_by_name("up1").await?.expect("up1");
        nl.add_address(up1.index, Ipv4Addr::new(10, 1, 0, 1), 24)
            .await?;
        let mut r = Route4::to(Ipv4Addr::new(198, 18, 0, 0), 24);
        r.gateway = Some(Ipv4Addr::new(10, 1, 0, 2));
        nl.replace_route(&r).await?;
        netns::sysctl("net/ipv4/ip_forward", "1")?;
        netns::sysctl("net/ipv4/conf/all/forwarding", "1")?;
        Ok(Topology {
            lxc1: nl.link_by_name("lxc1").await?.expect("lxc1"),
            lxc2: nl.link_by_name("lxc2").await?.expect("lxc2"),
            up0,
            up1,
        })
    })
}

impl TestNet {
    /// Registers the two local pods on lxc1 and lxc2.
    pub fn add_local_pods(&mut self) -> Result<()> {
        let (l1, l2) = (self.topo.lxc1.clone(), self.topo.lxc2.clone());
        self.dp.upsert_endpoint(POD1, endpoint(&l1, POD1_MAC, 1))?;
        self.dp.upsert_endpoint(POD2, endpoint(&l2, POD2_MAC, 2))?;
        Ok(())
    }

    /// Sets a local pod's isolation (POD1 or POD2) as the policy compiler
    /// would.
    pub fn isolate(&mut self, pod: Ipv4Addr, ingress: bool, egress: bool) -> Result<()> {
        use strake_datapath::shared::{STRAKE_EP_F_EGRESS_ISOLATED, STRAKE_EP_F_INGRESS_ISOLATED};
        let (link, mac, id) = if pod == POD1 {
            (self.topo.lxc1.clone(), POD1_MAC, 1)
        } else {
            (self.topo.lxc2.clone(), POD2_MAC, 2)
        };
        let mut ep = endpoint(&link, mac, id);
        if ingress {
            ep.flags |= STRAKE_EP_F_INGRESS_ISOLATED;
        }
        if egress {
            ep.flags |= STRAKE_EP_F_EGRESS_ISOLATED;
        }
        self.dp.upsert_endpoint(pod, ep)
    }

    /// Runs `program` once on `packet` as if it arrived on `ifindex`.
    pub fn run(&self, program: &str, ifindex: u32, packet: &[u8]) -> Result<TestRunOutput> {
        self.dp
            .test_run(program, packet, Some(&skb_ctx(ifindex)), 1)
    }

    /// Runs `program` on `packet` with a full context: the device it runs
    /// on, the interface it came in on (0: made by this host) and its mark.
    pub fn run_ctx(
        &self,
        program: &str,
        ifindex: u32,
        ingress_ifindex: u32,
        mark: u32,
        packet: &[u8],
    ) -> Result<TestRunOutput> {
        let mut ctx = skb_ctx(ifindex);
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        self.dp.test_run(program, packet, Some(&ctx), 1)
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.dp
            .counters()
            .unwrap()
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| c.packets)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }
}

pub fn endpoint(host: &Link, pod_mac: [u8; 6], id: u32) -> endpoint_info {
    endpoint_info {
        ifindex: host.index,
        flags: strake_datapath::shared::STRAKE_EP_F_ANTISPOOF,
        pod_mac,
        host_mac: host.mac,
        endpoint_id: id,
        // One identity per endpoint: tests key verdicts by the endpoint.
        identity: id,
    }
}

/// A service for the maps, as the agent would write it.
pub struct TestService {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    /// (backend address, port, on this node)
    pub backends: Vec<(Ipv4Addr, u16, bool)>,
    pub maglev: bool,
    pub affinity: u32,
    pub flags: u32,
    pub frontend_id: u32,
    pub set_id: u32,
}

impl TestService {
    pub fn tcp(addr: Ipv4Addr, port: u16, backends: Vec<(Ipv4Addr, u16, bool)>) -> Self {
        TestService {
            addr,
            port,
            proto: 6,
            backends,
            maglev: true,
            affinity: 0,
            flags: 0,
            frontend_id: 1,
            set_id: 1,
        }
    }
}

impl TestNet {
    /// Writes node settings: this node is NODE_IP on up0, NodePorts answer there.
    pub fn lb_node(&mut self) -> Result<()> {
        self.dp.lb.set_config(strake_datapath::shared::lb_config {
            node_addr: u32::from_ne_bytes(NODE_IP.octets()),
            hash_seed: 7,
            snat_port_min: 20000,
            snat_port_max: 29999,
            flags: 0,
        })?;
        self.dp.lb.set_node_addrs(&[NODE_IP])
    }

    /// Installs a service: backends (ids 1..), its set, its frontend.
    /// Returns the backend ids.
    pub fn add_service(&mut self, s: &TestService) -> Result<Vec<u32>> {
        use strake_datapath::shared::*;
        let mut ids = Vec::new();
        let mut entries = Vec::new();
        for (i, (ip, port, local)) in s.backends.iter().enumerate() {
            let id = s.set_id * 100 + i as u32 + 1;
            let mut flags = STRAKE_BE_F_ACTIVE as u8;
            if *local {
                flags |= STRAKE_BE_F_LOCAL as u8;
            }
            self.dp.lb.set_backend(
                id,
                backend_info {
                    addr: u32::from_ne_bytes(ip.octets()),
                    port: port.to_be(),
                    proto: s.proto,
                    flags,
                },
            )?;
            ids.push(id);
            entries.push(strake_lb::maglev::Entry {
                key: u32::from(*ip) as u64,
                id,
                weight: 1,
            });
        }
        self.dp.lb.set_slots(s.set_id, &ids, 0)?;
        let table_size = if s.maglev && !ids.is_empty() { 251 } else { 0 };
        if table_size > 0 {
            self.dp
                .lb
                .set_maglev(s.set_id, &strake_lb::maglev::build(&entries, table_size))?;
        }
        self.dp.lb.set_service(
            svc_key {
                addr: u32::from_ne_bytes(s.addr.octets()),
                port: s.port.to_be(),
                proto: s.proto,
                pad: 0,
            },
            svc_info {
                frontend_id: s.frontend_id,
                set_id: s.set_id,
                count: ids.len() as u32,
                table_size,
                affinity_timeout: s.affinity,
                flags: s.flags,
                inside_set_id: s.set_id,
                inside_count: ids.len() as u32,
                inside_table_size: table_size,
            },
        )?;
        Ok(ids)
    }

    /// Runs `xdp_lb` once as if the frame arrived on `ifindex`.
    pub fn run_xdp(&self, ifindex: u32, packet: &[u8]) -> Result<TestRunOutput> {
        self.dp
            .test_run_xdp(packet, Some(&xdp_ctx(ifindex, packet.len())), 1)
    }
}

/// A `struct xdp_md` for test runs: data 0, data_end = the frame's length,
/// ingress_ifindex (linux/bpf.h).
pub fn xdp_ctx(ifindex: u32, len: usize) -> Vec<u8> {
    let mut ctx = vec![0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// A `struct __sk_buff` prefix up to `ifindex` (linux/bpf.h): the test-run
/// API accepts `ingress_ifindex` and `ifindex` there and zero elsewhere.
pub fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 44];
    ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes()); // ingress_ifindex
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes()); // ifindex
    ctx
}

/// Packet construction and inspection.
pub mod pkt {
    use etherparse::{Ipv4HeaderSlice, PacketBuilder};
    use std::net::Ipv4Addr;

    pub const OFF_IP: usize = 14;
    pub const OFF_TTL: usize = OFF_IP + 8;
    pub const OFF_CHECK: usize = OFF_IP + 10;

    pub fn tcp(
        smac: [u8; 6],
        dmac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        ttl: u8,
    ) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(smac, dmac)
            .ipv4(src.octets(), dst.octets(), ttl)
            .tcp(sport, dport, 1000, 65535)
            .syn();
        let payload = b"strake";
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).unwrap();
        out
    }

    pub fn udp(
        smac: [u8; 6],
        dmac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        ttl: u8,
    ) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(smac, dmac)
            .ipv4(src.octets(), dst.octets(), ttl)
            .udp(sport, dport);
        let payload = b"strake-udp";
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).unwrap();
        out
    }

    pub fn dst_mac(p: &[u8]) -> [u8; 6] {
        p[0..6].try_into().unwrap()
    }
    pub fn src_mac(p: &[u8]) -> [u8; 6] {
        p[6..12].try_into().unwrap()
    }
    pub fn ttl(p: &[u8]) -> u8 {
        p[OFF_TTL]
    }

    /// Whether the IPv4 header checksum is right.
    pub fn ip_checksum_ok(p: &[u8]) -> bool {
        let h = Ipv4HeaderSlice::from_slice(&p[OFF_IP..]).expect("an IPv4 header");
        h.header_checksum() == h.to_header().calc_header_checksum()
    }

    /// Sets a new IPv4 header checksum after a test edited the header.
    pub fn fix_ip_checksum(p: &mut [u8]) {
        let ihl = (p[OFF_IP] & 0x0f) as usize * 4;
        p[OFF_CHECK] = 0;
        p[OFF_CHECK + 1] = 0;
        let mut sum: u32 = 0;
        for c in p[OFF_IP..OFF_IP + ihl].chunks(2) {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        p[OFF_CHECK..OFF_CHECK + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// Destination and source of the IPv4 packet at OFF_IP, with L4 ports.
    pub fn addrs(p: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
        let ihl = (p[OFF_IP] & 0x0f) as usize * 4;
        let l4 = OFF_IP + ihl;
        let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
        (
            ip(OFF_IP + 12),
            u16::from_be_bytes([p[l4], p[l4 + 1]]),
            ip(OFF_IP + 16),
            u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]),
        )
    }

    /// The folded ones'-complement sum of the TCP or UDP segment at OFF_IP
    /// and its pseudo-header.
    fn l4_sum(p: &[u8]) -> u16 {
        let ihl = (p[OFF_IP] & 0x0f) as usize * 4;
        let proto = p[OFF_IP + 9];
        let tot = u16::from_be_bytes([p[OFF_IP + 2], p[OFF_IP + 3]]) as usize;
        let l4 = &p[OFF_IP + ihl..OFF_IP + tot];
        let mut sum: u32 = 0;
        for c in p[OFF_IP + 12..OFF_IP + 20].chunks(2) {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        sum += proto as u32 + l4.len() as u32;
        for c in l4.chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// Whether the TCP or UDP checksum of the packet at OFF_IP is right.
    pub fn l4_checksum_ok(p: &[u8]) -> bool {
        l4_sum(p) == 0xffff
    }

    /// `inner` (an Ethernet frame) wrapped in IPIP from `src` to `dst`, the
    /// outer IP ID carrying `id` (DSR: the backend port).
    pub fn ipip(inner: &[u8], src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
        let mut out = inner[..OFF_IP].to_vec();
        let tot = (inner.len() - OFF_IP + 20) as u16;
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&tot.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0x40, 0, 64, 4, 0, 0]);
        out.extend_from_slice(&src.octets());
        out.extend_from_slice(&dst.octets());
        out.extend_from_slice(&inner[OFF_IP..]);
        fix_ip_checksum(&mut out);
        out
    }

    /// A TCP segment with the given flags byte (0x02 SYN, 0x12 SYN-ACK,
    /// 0x04 RST, 0x10 ACK).
    pub fn tcp_flags(
        smac: [u8; 6],
        dmac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        flags: u8,
    ) -> Vec<u8> {
        let mut p = tcp(smac, dmac, src, dst, sport, dport, 64);
        let ihl = (p[OFF_IP] & 0x0f) as usize * 4;
        p[OFF_IP + ihl + 13] = flags;
        fix_l4_checksum(&mut p);
        p
    }

    /// Sets a new TCP or UDP checksum after a test edited the packet.
    pub fn fix_l4_checksum(p: &mut [u8]) {
        let ihl = (p[OFF_IP] & 0x0f) as usize * 4;
        let csum_at = OFF_IP + ihl + if p[OFF_IP + 9] == 6 { 16 } else { 6 };
        p[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let c = !l4_sum(p);
        p[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// An ARP request from `smac`, sender address `sender`, for `target`.
    pub fn arp(smac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0xff; 6];
        p.extend_from_slice(&smac);
        p.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        p.extend_from_slice(&smac);
        p.extend_from_slice(&sender.octets());
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&target.octets());
        p
    }

    /// Bytes that differ between two packets of equal length.
    pub fn diff(a: &[u8], b: &[u8]) -> Vec<usize> {
        assert_eq!(a.len(), b.len(), "lengths differ");
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }
}
