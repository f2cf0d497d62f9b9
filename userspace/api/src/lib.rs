//! The agent's local API, spoken over a unix socket by `strake-cni` and the
//! `strake` CLI.
//!
//! One request per connection: the client writes a JSON [`Request`] and shuts
//! its write side; the agent answers with one JSON [`Reply`]. The default
//! socket is the abstract name `@strake-agent`: abstract sockets belong to a
//! network namespace, so a CNI plugin running in a node's namespace always
//! reaches that node's agent, and pods, in their own namespaces, never can.
//! The agent also checks that the peer is root (SO_PEERCRED).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

pub use strake_ipam::AttachmentKey;

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "@strake-agent";

/// The link-local gateway every pod routes through (answered by a permanent
/// neighbour entry in the pod, pointing at its host veth).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Parses a socket address: `@name` is abstract, anything else a path.
pub fn socket_addr(s: &str) -> std::io::Result<SocketAddr> {
    match s.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(s),
    }
}

/// The host-side veth name of an attachment: a function of the CNI key alone,
/// so DEL finds it without a netns, a record or the agent.
pub fn host_ifname(key: &AttachmentKey) -> String {
    format!("strk{}", short_hash(key))
}

/// A pod interface's MAC, derived from its address (`0a:58:` + the IPv4
/// bytes, a locally administered unicast address, as OVN-Kubernetes does):
/// known before the interface exists, so the data plane can be programmed
/// while the pod side is still being configured.
pub fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

fn short_hash(key: &AttachmentKey) -> String {
    // FNV-1a, 64 bits: stable across releases (unlike std's hasher).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key
        .container_id
        .bytes()
        .chain([0])
        .chain(key.ifname.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:011x}", h & 0xfff_ffff_ffff)
}

/// A pod, by namespace and name (from CNI_ARGS K8S_POD_NAMESPACE/NAME).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// Reserve an address for an attachment (idempotent per key).
    Allocate {
        key: AttachmentKey,
        pod: Option<PodRef>,
        netns: Option<String>,
    },
    /// The veth is in place: program the data plane for it.
    Attach {
        key: AttachmentKey,
        pod_mac: [u8; 6],
    },
    /// Undo everything for an attachment (idempotent).
    Release {
        key: AttachmentKey,
    },
    /// Report drift between the attachment's record and the kernel.
    Check {
        key: AttachmentKey,
    },
    /// Release every attachment of `network` not in `valid`.
    Gc {
        network: String,
        valid: Vec<AttachmentKey>,
    },
    Status,
    Endpoints,
    /// Services, backends, health and counters of the load balancer.
    LbList,
    /// Why a flow is allowed or not by NetworkPolicy.
    PolicyTrace {
        from: String,
        to: String,
        port: u16,
        protocol: String,
    },
    /// Where the agent's desired-state source stands in its origin now
    /// (what `strake wait` waits for the agent to apply).
    SyncPoint,
    /// BGP: sessions with their state, what the node announces.
    Bgp,
    /// BGP: the routes BIRD holds (learned and announced).
    BgpRoutes,
    /// The connection table's entries that `filter` selects.
    CtList {
        filter: CtFilter,
    },
    /// Removes the flows `filter` selects (a flow's service and reply
    /// entries together; the reply entry's SNAT port is free again).
    CtFlush {
        filter: CtFilter,
    },
}

/// Which connection-table entries `strake ct list` / `flush` mean; every
/// field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtFilter {
    /// Any address of the entry: its key's source or destination, the
    /// client, the frontend, the backend.
    pub addr: Option<Ipv4Addr>,
    /// The key's source address (as the entry's packets carry it).
    pub src: Option<Ipv4Addr>,
    /// The key's destination address.
    pub dst: Option<Ipv4Addr>,
    /// Any port of the entry (key ports, client, frontend, backend, NAT).
    pub port: Option<u16>,
    /// `tcp`, `udp`, `icmp` or a protocol number.
    pub proto: Option<String>,
    /// `service`, `reply` or `policy`.
    pub kind: Option<String>,
}

/// One entry of the connection table (ebpf/include/conntrack.h).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtEntryView {
    /// `service` (a flow to a frontend as the client sent it), `reply` (its
    /// reply as it leaves the backend) or `policy` (a flow an endpoint's
    /// policy let through).
    pub kind: String,
    pub proto: String,
    /// The entry's key: the packets it matches.
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// `syn`, `established`, `closing` or `other` (not TCP): what sets its
    /// timeout.
    pub state: String,
    /// Seconds since its flow's last packet (either direction for a
    /// service entry with its reply entry).
    pub idle_seconds: u32,
    /// Seconds until the sweep may remove it, unless a packet comes.
    pub expires_in_seconds: u32,
    /// `snat`, `dsr`, `hairpin`, `revoked`, `exempt`.
    pub flags: Vec<String>,
    /// Service and reply entries: the client as it sent the flow.
    pub client: Option<String>,
    /// Service and reply entries: the frontend it sent to.
    pub frontend: Option<String>,
    /// Service and reply entries: the backend (id, and address when the
    /// backend is still known).
    pub backend_id: Option<u32>,
    pub backend: Option<String>,
    /// SNAT: the port on the node's address the flow was given.
    pub nat_port: Option<u16>,
    /// Policy entries: the endpoint that owns it, and the direction.
    pub endpoint_id: Option<u32>,
    pub direction: Option<String>,
}

/// What `strake ct list` shows of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CtListView {
    pub node: String,
    /// Entries in the table, of every kind.
    pub total: u64,
    pub capacity: u64,
    /// The entries the filter selected.
    pub entries: Vec<CtEntryView>,
}

/// What `strake ct flush` did on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CtFlushView {
    pub node: String,
    /// Entries removed (a flow's service and reply entries count two).
    pub removed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub pod_cidr: String,
    pub mtu: u32,
    pub host_ifname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attached {
    pub endpoint_id: u32,
    pub host_mac: [u8; 6],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Released {
    pub ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    /// Empty when the kernel matches the record.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcReport {
    pub released: Vec<AttachmentKey>,
    /// Host veths and pinned links that belonged to no attachment.
    pub swept: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pong {
    pub node: String,
    pub version: String,
    /// The agent can serve ADD now (desired state synced, a pod block known,
    /// a free address in it).
    pub can_add: bool,
    /// Why not, when it cannot.
    pub reason: Option<String>,
    /// The data plane is loaded and the uplink program attached.
    pub datapath_ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramView {
    pub name: String,
    pub attach_point: String,
    pub id: u32,
    pub tag: String,
    pub attachments: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapView {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterView {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// One reconcile phase's standing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseView {
    pub name: String,
    /// The last revision the phase fully applied.
    pub applied_revision: u64,
    /// Failed passes in a row.
    pub failures: u32,
    pub last_error: Option<String>,
    /// Why the phase waits (not an error), when it does.
    pub waiting: Option<String>,
    /// When it runs next without a new change, from now.
    pub next_run_ms: Option<u64>,
    pub last_duration_ms: f64,
    pub last_changes: usize,
    pub passes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub pod_cidr: Option<String>,
    pub uplink: Option<String>,
    /// Which uplink program serves north-south Services: `xdp`, or `tc`
    /// (`--lb-xdp=false`, or native XDP would not attach).
    #[serde(default)]
    pub north_south: Option<String>,
    pub bpffs_root: String,
    pub synced: bool,
    pub source_revision: u64,
    pub endpoints: usize,
    pub routes: usize,
    pub programs: Vec<ProgramView>,
    pub maps: Vec<MapView>,
    pub counters: Vec<CounterView>,
    pub source_errors: Vec<String>,
    /// The desired-state revision every phase has applied.
    pub applied_revision: u64,
    /// Where the source stood in its origin at the current revision (see
    /// [`SyncPoint`]).
    pub source_position: u64,
    pub phases: Vec<PhaseView>,
    pub policy_generation: u32,
    pub policy_entries: usize,
    pub policy_classes: usize,
    /// How this node reaches every other node's pods.
    #[serde(default)]
    pub routing: RoutingView,
    /// The cgroup the socket load balancer is attached below (None: off).
    #[serde(default)]
    pub socket_lb: Option<String>,
}

/// The node's routing mode and, per other node, what its pods' block is
/// routed by now (the kernel's best route).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RoutingView {
    /// `bgp` or `direct`.
    pub mode: String,
    /// `cross-subnet` (VXLAN to off-subnet nodes, behind BGP) or `never`.
    pub encapsulation: String,
    /// Sessions established, of all (BGP mode).
    pub sessions_established: usize,
    pub sessions: usize,
    pub nodes: Vec<NodeRouteView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRouteView {
    pub node: String,
    pub block: String,
    /// `local` (this node), `bgp`, `direct`, `vxlan` or `none`.
    pub via: String,
    pub next_hops: Vec<String>,
}

impl RoutingView {
    /// Whether every other node's block has a route.
    pub fn complete(&self) -> bool {
        self.nodes.iter().all(|n| n.via != "none")
    }
}

/// One BGP session, as BIRD reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BgpSessionView {
    /// BIRD's protocol name.
    pub name: String,
    pub neighbor: String,
    pub neighbor_as: u32,
    pub local_as: u32,
    /// Which resource asks for it (`BGPPeer tor-a`, `node-to-node mesh: node b`).
    pub origin: String,
    /// BIRD's protocol state (`up`, `start`, ...) and BGP state
    /// (`Established`, `Active`, ...).
    pub state: String,
    pub bgp_state: String,
    pub established: bool,
    /// Seconds in the current state.
    pub uptime_seconds: Option<u64>,
    pub last_error: Option<String>,
    /// Prefixes accepted from the peer, filtered out, sent to it.
    pub received: u64,
    pub filtered: u64,
    pub sent: u64,
    /// The peer is restarting (graceful restart): its routes are kept.
    pub peer_restarting: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnnouncedView {
    pub prefix: String,
    pub why: String,
}

/// A node's BGP.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BgpStatus {
    pub enabled: bool,
    pub as_number: Option<u32>,
    pub router_id: Option<String>,
    pub bird_socket: String,
    pub bird_running: bool,
    pub sessions: Vec<BgpSessionView>,
    pub announced: Vec<AnnouncedView>,
    /// Resources that could not be honoured (a bad BGPPeer, named by field).
    pub problems: Vec<String>,
}

/// A route BIRD holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BgpRouteView {
    pub prefix: String,
    /// `unicast`, `blackhole`, ...
    pub kind: String,
    /// The session (or `strake_announce`) it came from.
    pub protocol: String,
    pub from: Option<String>,
    pub next_hops: Vec<String>,
    pub as_path: Vec<u32>,
    /// BIRD's best route for the prefix (the one in the kernel).
    pub best: bool,
    /// Seconds since it was learned.
    pub age_seconds: Option<u64>,
}

/// Where a source stands in its origin: a directory's content stamp
/// (`exact`: positions compare equal or not at all), or the highest
/// resourceVersion of an API server (ordered).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncPoint {
    pub position: u64,
    pub exact: bool,
}

impl AgentStatus {
    /// Whether the agent has applied everything up to `target`; if not,
    /// what it is waiting for, naming failing phases and their errors.
    pub fn reached(&self, target: &SyncPoint) -> Result<(), String> {
        wait_reason(
            self.synced,
            self.source_position,
            self.source_revision,
            self.applied_revision,
            &self.phases,
            target,
            true,
        )
    }
}

/// What `strake wait` still waits for (`Ok` when nothing): the source's
/// sync and position, and every phase behind `revision`.
pub fn wait_reason(
    synced: bool,
    position: u64,
    revision: u64,
    applied: u64,
    phases: &[PhaseView],
    target: &SyncPoint,
    countdown: bool,
) -> Result<(), String> {
    let mut why = Vec::new();
    if !synced {
        why.push("the desired-state source has not synced yet".to_string());
    }
    let arrived = if target.exact {
        position == target.position
    } else {
        position >= target.position
    };
    if !arrived {
        why.push("the latest desired state has not reached the agent yet".to_string());
    }
    for p in phases {
        if p.applied_revision >= revision {
            continue;
        }
        let next = p
            .next_run_ms
            .filter(|_| countdown)
            .map(|ms| format!("; retrying in {ms} ms"))
            .unwrap_or_default();
        why.push(match (&p.last_error, &p.waiting) {
            (Some(e), _) => format!(
                "phase {} failed ({} in a row): {e}{next}",
                p.name, p.failures
            ),
            (None, Some(w)) => format!("phase {} is waiting: {w}", p.name),
            (None, None) => format!(
                "phase {} has applied revision {} of {revision}",
                p.name, p.applied_revision
            ),
        });
    }
    if why.is_empty() && applied < revision {
        why.push(format!("revision {applied} applied of {revision}"));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointView {
    pub pod: Option<PodRef>,
    pub ip: Ipv4Addr,
    pub host_ifname: String,
    pub container_id: String,
    pub ifname: String,
    pub network: String,
    pub endpoint_id: u32,
    /// The endpoint is in the data plane (map entry and programs attached).
    pub attached: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbCountersView {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbFrontendView {
    /// ClusterIP, NodePort, LoadBalancer, ExternalIP.
    pub kind: String,
    /// 0.0.0.0 for NodePort: any node address.
    pub address: Ipv4Addr,
    pub port: u16,
    pub id: Option<u32>,
    /// cluster or local (traffic policy).
    pub scope: String,
    pub counters: LbCountersView,
    /// What the socket-level load balancer did for this frontend.
    #[serde(default)]
    pub socket: LbSocketCountersView,
    /// Packets of new flows refused on the packet path (TCP RST, ICMP port
    /// unreachable): the Service had no usable endpoint.
    #[serde(default)]
    pub rejected: u64,
}

/// Per frontend, the socket hooks' work (programs/sock.c): no packet of
/// these is translated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LbSocketCountersView {
    /// connect() calls given a backend (TCP and UDP).
    pub connects: u64,
    /// Unconnected UDP sends given a backend.
    pub datagrams: u64,
    /// Calls refused with ECONNREFUSED: no eligible backend.
    pub refused: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbBackendView {
    pub address: Ipv4Addr,
    pub port: u16,
    pub node: Option<String>,
    pub pod: Option<String>,
    pub weight: u32,
    pub ready: bool,
    pub terminating: bool,
    pub healthy: bool,
    pub health_error: Option<String>,
    /// Takes new flows (ready, healthy, not terminating).
    pub active: bool,
    pub local: bool,
    pub id: Option<u32>,
    pub counters: LbCountersView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbServiceView {
    /// `namespace/name:port`.
    pub service: String,
    pub protocol: String,
    pub scheduler: String,
    pub table_size: u32,
    pub affinity_timeout: Option<u32>,
    pub external_mode: String,
    pub external_traffic_policy: String,
    pub internal_traffic_policy: String,
    pub frontends: Vec<LbFrontendView>,
    pub backends: Vec<LbBackendView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbStatus {
    pub node: String,
    pub services: Vec<LbServiceView>,
    pub ct_entries: u64,
    pub ct_capacity: u64,
    pub rnat_entries: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyDecisionView {
    pub pod: String,
    pub direction: String,
    pub isolated: bool,
    pub allowed: bool,
    pub allowed_by: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyTraceView {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub allowed: bool,
    pub egress: Option<PolicyDecisionView>,
    pub ingress: Option<PolicyDecisionView>,
}

/// Why a request failed, for callers that map it onto their own codes (the
/// CNI plugin onto the spec's error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Transient: not ready yet; retrying later may work.
    TryAgainLater,
    /// The node's pod block has no free address.
    Exhausted,
    NotFound,
    InvalidRequest,
    /// The caller may not use the API (root only, or `--api-allow-uid`).
    Forbidden,
    Internal,
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

impl From<strake_ipam::IpamError> for ApiError {
    fn from(e: strake_ipam::IpamError) -> Self {
        use strake_ipam::IpamError;
        let kind = match e {
            IpamError::Exhausted { .. } => ErrorKind::Exhausted,
            IpamError::NoBlock => ErrorKind::TryAgainLater,
            _ => ErrorKind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(ApiError),
}

/// A blocking client: small enough for a CNI plugin that lives milliseconds.
#[derive(Debug, Clone)]
pub struct Client {
    addr: String,
    timeout: Duration,
}

impl Client {
    pub fn new(addr: impl Into<String>) -> Self {
        Client {
            addr: addr.into(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` and decodes the answer as `T`.
    pub fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, ApiError> {
        let unreachable = |e: std::io::Error| {
            ApiError::new(
                ErrorKind::TryAgainLater,
                format!(
                    "strake-agent is not reachable at {} ({e}); is it running on this node?",
                    self.addr
                ),
            )
        };
        let addr = socket_addr(&self.addr).map_err(unreachable)?;
        let mut s = UnixStream::connect_addr(&addr).map_err(unreachable)?;
        s.set_read_timeout(Some(self.timeout)).ok();
        s.set_write_timeout(Some(self.timeout)).ok();
        let body = serde_json::to_vec(req).expect("requests serialize");
        // The agent may answer (refuse) before reading everything: a failed
        // write still leaves its answer to read.
        let sent = s
            .write_all(&body)
            .and_then(|()| s.shutdown(std::net::Shutdown::Write));
        let mut buf = Vec::new();
        // After a refusal the agent closes with our request unread, which
        // resets the connection: what arrived before that is the answer.
        let read = s.read_to_end(&mut buf);
        if buf.is_empty() {
            match (sent, read) {
                (Err(e), _) => return Err(unreachable(e)),
                (Ok(()), Err(e)) => {
                    return Err(ApiError::new(
                        ErrorKind::TryAgainLater,
                        format!(
                            "no answer from strake-agent at {} within {:?}: {e}",
                            self.addr, self.timeout
                        ),
                    ))
                }
                (Ok(()), Ok(_)) => {}
            }
        }
        match serde_json::from_slice::<Reply>(&buf) {
            Ok(Reply::Ok(v)) => serde_json::from_value(v).map_err(|e| {
                ApiError::new(
                    ErrorKind::Internal,
                    format!("unexpected answer from strake-agent: {e}"),
                )
            }),
            Ok(Reply::Error(e)) => Err(e),
            Err(e) => Err(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "garbled answer from strake-agent ({} bytes): {e}",
                    buf.len()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifnames_are_stable_short_and_distinct() {
        let k = |c: &str, i: &str| AttachmentKey {
            network: "n".into(),
            container_id: c.into(),
            ifname: i.into(),
        };
        let a = host_ifname(&k("abc", "eth0"));
        assert_eq!(a, host_ifname(&k("abc", "eth0")));
        assert_eq!(a.len(), 15, "fits IFNAMSIZ");
        assert_ne!(a, host_ifname(&k("abc", "eth1")));
        assert_ne!(a, host_ifname(&k("abd", "eth0")));
        // The network name is not part of it: a veth is per container+ifname.
        assert_eq!(
            a,
            host_ifname(&AttachmentKey {
                network: "other".into(),
                ..k("abc", "eth0")
            })
        );
        assert_eq!(
            pod_mac("10.244.1.7".parse().unwrap()),
            [0x0a, 0x58, 10, 244, 1, 7]
        );
    }

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::Release {
            key: AttachmentKey {
                network: "n".into(),
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.starts_with(r#"{"op":"release""#), "{s}");
        assert!(matches!(
            serde_json::from_str::<Request>(&s).unwrap(),
            Request::Release { .. }
        ));
    }
}
