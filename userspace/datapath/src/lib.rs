//! The node's data plane as userspace sees it: load the kernel-side programs,
//! pin their maps and links under a bpffs root, attach them to interfaces, and
//! read and write their maps.
//!
//! Everything that must outlive the agent is pinned: maps under
//! `<root>/maps_v<layout>/`, TCX links under `<root>/links/`. A restarted agent
//! loads fresh programs, reuses the pinned maps (their contents untouched) and
//! swaps the program behind every pinned link with `bpf_link_update`, which is
//! atomic: no packet sees a missing program, so established flows never notice.

mod batch;
mod bpffs;
pub mod conntrack;
pub mod lb;
pub mod policy;
pub mod sock;
pub mod trust;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::xdp::XdpLink;
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
};
use aya::{Ebpf, EbpfLoader};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use strake_ebpf::shared::{counter_value, endpoint_info, STRAKE_MAP_LAYOUT_VERSION};

pub use bpffs::ensure_bpffs;
pub use strake_ebpf::shared;

/// Where and how big.
#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// bpffs directory owned by this agent, e.g. /sys/fs/bpf/strake.
    pub bpffs_root: PathBuf,
    /// Capacity of the local endpoint map.
    pub max_endpoints: u32,
    /// Capacity of the connection table (service, reply and policy entries)
    /// and of the affinity table.
    pub ct_size: u32,
    /// Capacity of the backend-set member table: the sum over Service ports
    /// of their backends.
    pub lb_max_slots: u32,
}

impl DatapathConfig {
    pub fn new(bpffs_root: impl Into<PathBuf>) -> Self {
        DatapathConfig {
            bpffs_root: bpffs_root.into(),
            max_endpoints: 16384,
            ct_size: shared::STRAKE_CT_SIZE,
            lb_max_slots: shared::STRAKE_MAX_SLOTS,
        }
    }
}

/// One loaded program, for status output.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramStatus {
    pub name: String,
    pub attach_point: String,
    pub id: u32,
    pub tag: String,
}

/// A map's fill, for status output and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct MapFill {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

/// A packet counter summed over CPUs.
#[derive(Debug, Clone, Serialize)]
pub struct Counter {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// What BPF_PROG_TEST_RUN reported.
#[derive(Debug, Clone)]
pub struct TestRunOutput {
    pub retval: u32,
    pub data: Vec<u8>,
    /// Average time per run, as the kernel measured it.
    pub duration_ns: u64,
}

/// Which object a program lives in, and where it attaches.
struct ProgramSpec {
    name: &'static str,
    object: ObjectKind,
    attach: TcAttachType,
    what: &'static str,
}

#[derive(Clone, Copy)]
enum ObjectKind {
    Pod,
    Uplink,
}

const FROM_POD: ProgramSpec = ProgramSpec {
    name: "from_pod",
    object: ObjectKind::Pod,
    attach: TcAttachType::Ingress,
    what: "pod veth ingress",
};
const TO_POD: ProgramSpec = ProgramSpec {
    name: "to_pod",
    object: ObjectKind::Pod,
    attach: TcAttachType::Egress,
    what: "pod veth egress",
};
const FROM_WIRE: ProgramSpec = ProgramSpec {
    name: "from_wire",
    object: ObjectKind::Uplink,
    attach: TcAttachType::Ingress,
    what: "uplink ingress",
};
const TO_WIRE: ProgramSpec = ProgramSpec {
    name: "to_wire",
    object: ObjectKind::Uplink,
    attach: TcAttachType::Egress,
    what: "uplink egress",
};
const ALL_PROGRAMS: [&ProgramSpec; 4] = [&FROM_POD, &TO_POD, &FROM_WIRE, &TO_WIRE];

pub struct Datapath {
    root: PathBuf,
    pod: Ebpf,
    uplink: Ebpf,
    xdp: Ebpf,
    pub ct: conntrack::Conntrack,
    /// The socket-level load balancer (cgroup hooks).
    pub sock: sock::SockLb,
    pub lb: lb::LbMaps,
    pub policy: policy::PolicyMaps,
    pub trust: trust::TrustMaps,
    endpoints: BpfHashMap<MapData, u32, endpoint_info>,
    counters: PerCpuArray<MapData, counter_value>,
    max_endpoints: u32,
}

impl Datapath {
    /// Loads the programs, creating or reusing the pinned maps. Attaches
    /// nothing: see [`Datapath::attach_endpoint`] and [`Datapath::attach_uplink`].
    pub fn load(cfg: &DatapathConfig) -> Result<Self> {
        ensure_bpffs(&cfg.bpffs_root)?;
        let maps_dir = maps_dir(&cfg.bpffs_root);
        std::fs::create_dir_all(&maps_dir)
            .with_context(|| format!("creating {}", maps_dir.display()))?;
        std::fs::create_dir_all(links_dir(&cfg.bpffs_root))
            .with_context(|| format!("creating {}", links_dir(&cfg.bpffs_root).display()))?;
        replace_outgrown_counters(&maps_dir)?;

        let load = |bytes: &[u8], what: &str| -> Result<Ebpf> {
            EbpfLoader::new()
                .default_map_pin_directory(&maps_dir)
                .map_max_entries(map_name(shared::STRAKE_MAP_ENDPOINTS), cfg.max_endpoints)
                .map_max_entries(map_name(shared::STRAKE_MAP_CT), cfg.ct_size)
                .map_max_entries(map_name(shared::STRAKE_MAP_AFFINITY), cfg.ct_size)
                .map_max_entries(map_name(shared::STRAKE_MAP_SLOTS), cfg.lb_max_slots)
                .map_max_entries(map_name(shared::STRAKE_MAP_SOCK_REV), cfg.ct_size)
                .map_max_entries(map_name(shared::STRAKE_MAP_SOCK_FWD), cfg.ct_size)
                .map_max_entries(map_name(shared::STRAKE_MAP_SOCK_OPTOUT), cfg.max_endpoints)
                .load(bytes)
                .with_context(|| {
                    format!(
                        "loading the {what} programs (maps pinned in {}); if the map \
                         layout changed without a version bump, remove that directory",
                        maps_dir.display()
                    )
                })
        };
        let mut pod = load(strake_ebpf::POD_OBJECT, "pod")?;
        let mut uplink = load(strake_ebpf::UPLINK_OBJECT, "uplink")?;
        let mut xdp = load(strake_ebpf::XDP_OBJECT, "XDP")?;
        let sock = sock::SockLb::new(load(strake_ebpf::SOCK_OBJECT, "socket")?)?;
        {
            let prog: &mut Xdp = xdp
                .program_mut("xdp_lb")
                .ok_or_else(|| anyhow!("program xdp_lb missing from its object"))?
                .try_into()?;
            prog.load().context("verifier rejected program xdp_lb")?;
        }
        for spec in ALL_PROGRAMS {
            let ebpf = match spec.object {
                ObjectKind::Pod => &mut pod,
                ObjectKind::Uplink => &mut uplink,
            };
            let prog: &mut SchedClassifier = ebpf
                .program_mut(spec.name)
                .ok_or_else(|| anyhow!("program {} missing from its object", spec.name))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifier rejected program {}", spec.name))?;
        }
        let endpoints = policy::take(&mut pod, map_name(shared::STRAKE_MAP_ENDPOINTS))?;
        let counters = policy::take(&mut pod, map_name(shared::STRAKE_MAP_COUNTERS))?;
        let ct = conntrack::Conntrack::take(&mut pod, cfg.ct_size)?;
        let lb = lb::LbMaps::take(&mut pod)?;
        let policy = policy::PolicyMaps::take(&mut pod)?;
        let trust = trust::TrustMaps::take(&mut pod)?;
        Ok(Datapath {
            root: cfg.bpffs_root.clone(),
            pod,
            uplink,
            xdp,
            ct,
            sock,
            lb,
            policy,
            trust,
            endpoints,
            counters,
            max_endpoints: cfg.max_endpoints,
        })
    }

    pub fn bpffs_root(&self) -> &Path {
        &self.root
    }

    fn ebpf(&mut self, kind: ObjectKind) -> &mut Ebpf {
        match kind {
            ObjectKind::Pod => &mut self.pod,
            ObjectKind::Uplink => &mut self.uplink,
        }
    }

    /// Attaches `spec` to `ifname`, or takes over the link pinned at `pin` by
    /// swapping its program atomically.
    fn attach(&mut self, spec: &ProgramSpec, ifname: &str, pin: &Path) -> Result<()> {
        let prog: &mut SchedClassifier = self
            .ebpf(spec.object)
            .program_mut(spec.name)
            .expect("checked at load")
            .try_into()?;
        match PinnedLink::from_pin(pin) {
            Ok(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old))?;
                match prog.attach_to_link(link) {
                    Ok(id) => {
                        // The pin keeps the link alive; our fd may close.
                        drop(prog.take_link(id)?);
                        return Ok(());
                    }
                    Err(e) => {
                        // The device went away with the link still pinned
                        // (defunct link): start over with a fresh one.
                        tracing::debug!(pin = %pin.display(), error = %e, "pinned link unusable; re-attaching");
                        std::fs::remove_file(pin).ok();
                    }
                }
            }
            Err(LinkError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow!(e).context(format!("opening pinned link {}", pin.display())))
            }
        }
        let id = prog
            .attach_with_options(
                ifname,
                spec.attach,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("attaching {} to {} ({})", spec.name, ifname, spec.what))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        link.pin(pin)
            .with_context(|| format!("pinning link {}", pin.display()))?;
        Ok(())
    }

    /// Attaches the pod programs to a pod's host-side veth.
    ///
    /// TCX, not clsact filters: the `bandwidth` CNI plugin needs the
    /// `ingress` qdisc slot clsact would take. The price is measured: each
    /// TCX attach waits for an RCU grace period under the RTNL lock (~15-28 ms
    /// on this machine's kernel, against 0.3 ms for a clsact filter), most of
    /// CNI ADD's time. Hosts with `rcu_expedited=1` do it in microseconds.
    pub fn attach_endpoint(&mut self, ifname: &str) -> Result<()> {
        let (ing, eg) = (self.link_pin(ifname, "in"), self.link_pin(ifname, "eg"));
        self.attach(&FROM_POD, ifname, &ing)?;
        self.attach(&TO_POD, ifname, &eg)
    }

    /// Detaches the pod programs from a host-side veth (removing the pins
    /// drops the links). Succeeds if they were never attached.
    pub fn detach_endpoint(&mut self, ifname: &str) -> Result<()> {
        for dir in ["in", "eg"] {
            let pin = self.link_pin(ifname, dir);
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow!(e).context(format!("removing {}", pin.display()))),
            }
        }
        Ok(())
    }

    /// Interfaces that have pinned endpoint links, for garbage collection.
    pub fn pinned_endpoint_links(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(links_dir(&self.root))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.strip_prefix("ep_")
                            .and_then(|r| r.rsplit_once('_'))
                            .map(|(ifname, _)| ifname.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out.dedup();
        out
    }

    /// Whether the kernel really runs our programs on this veth (both
    /// directions), as opposed to pins that merely exist.
    pub fn endpoint_attached(&self, ifname: &str) -> Result<bool> {
        for (spec, dir) in [
            (&FROM_POD, TcAttachType::Ingress),
            (&TO_POD, TcAttachType::Egress),
        ] {
            let (_, progs) = SchedClassifier::query_tcx(ifname, dir)
                .with_context(|| format!("querying tc programs on {ifname}"))?;
            if !progs.iter().any(|p| p.name_as_str() == Some(spec.name)) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Attaches the uplink programs to the node's interface toward the
    /// fabric: `from_wire` (ingress) and `to_wire` (egress).
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<()> {
        let pin =
            |dir: &str| links_dir(&self.root).join(format!("uplink_{}_{dir}", pin_safe(ifname)));
        let (ing, eg) = (pin("in"), pin("eg"));
        self.attach(&FROM_WIRE, ifname, &ing)?;
        self.attach(&TO_WIRE, ifname, &eg)
    }

    /// Attaches the XDP load balancer to the node's uplink (native mode), or
    /// swaps the program behind its pinned link.
    pub fn attach_xdp(&mut self, ifname: &str) -> Result<()> {
        let pin = links_dir(&self.root).join(format!("xdp_{}", pin_safe(ifname)));
        let prog: &mut Xdp = self
            .xdp
            .program_mut("xdp_lb")
            .expect("checked at load")
            .try_into()?;
        match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = XdpLink::try_from(FdLink::from(old))?;
                match prog.attach_to_link(link) {
                    Ok(id) => {
                        drop(prog.take_link(id)?);
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::debug!(pin = %pin.display(), error = %e, "pinned XDP link unusable; re-attaching");
                        std::fs::remove_file(&pin).ok();
                    }
                }
            }
            Err(LinkError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow!(e).context(format!("opening pinned link {}", pin.display())))
            }
        }
        let id = prog
            .attach(ifname, XdpMode::Driver)
            .with_context(|| format!("attaching xdp_lb to {ifname} (native XDP)"))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        link.pin(&pin)
            .with_context(|| format!("pinning link {}", pin.display()))?;
        Ok(())
    }

    /// Takes the XDP load balancer off the uplink, if an earlier run left
    /// it there (its pinned link is the only reference to it).
    pub fn detach_xdp(&mut self, ifname: &str) -> Result<()> {
        let pin = links_dir(&self.root).join(format!("xdp_{}", pin_safe(ifname)));
        match std::fs::remove_file(&pin) {
            Ok(()) => {
                tracing::info!(
                    uplink = ifname,
                    "XDP load balancer detached (--lb-xdp=false)"
                );
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("removing pinned link {}", pin.display()))),
        }
    }

    /// Attaches the socket-level load balancer below the cgroup v2
    /// directory `cgroup` (see [`sock::SockLb::attach`]).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let links = links_dir(&self.root);
        self.sock.attach(cgroup, &links)
    }

    fn link_pin(&self, ifname: &str, dir: &str) -> PathBuf {
        links_dir(&self.root).join(format!("ep_{}_{dir}", pin_safe(ifname)))
    }

    pub fn upsert_endpoint(&mut self, ip: Ipv4Addr, info: endpoint_info) -> Result<()> {
        self.endpoints
            .insert(u32::from_ne_bytes(ip.octets()), info, 0)
            .with_context(|| {
                format!(
                    "writing endpoint {ip} to st_endpoints (capacity {}; raise --max-endpoints if full)",
                    self.max_endpoints
                )
            })
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        match self.endpoints.remove(&u32::from_ne_bytes(ip.octets())) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("removing endpoint {ip}"))),
        }
    }

    /// One endpoint's entry.
    pub fn endpoint_entry(&self, ip: Ipv4Addr) -> Result<Option<endpoint_info>> {
        match self.endpoints.get(&u32::from_ne_bytes(ip.octets()), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("reading st_endpoints {ip}"))),
        }
    }

    pub fn endpoint_entries(&self) -> Result<Vec<(Ipv4Addr, endpoint_info)>> {
        let mut out = Vec::new();
        for kv in self.endpoints.iter() {
            let (k, v) = kv.context("reading st_endpoints")?;
            out.push((Ipv4Addr::from(k.to_ne_bytes()), v));
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    pub fn counters(&self) -> Result<Vec<Counter>> {
        let mut out = Vec::new();
        for (name, idx) in strake_ebpf::COUNTER_NAMES {
            let per_cpu = self.counters.get(&idx, 0).context("reading st_counters")?;
            let (packets, bytes) = per_cpu
                .iter()
                .fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes));
            out.push(Counter {
                name: name.to_string(),
                packets,
                bytes,
            });
        }
        Ok(out)
    }

    pub fn map_fill(&self) -> Result<Vec<MapFill>> {
        Ok(vec![MapFill {
            name: map_name(shared::STRAKE_MAP_ENDPOINTS).into(),
            entries: self.endpoints.keys().count() as u64,
            capacity: self.max_endpoints as u64,
        }])
    }

    pub fn programs(&self) -> Result<Vec<ProgramStatus>> {
        let mut out = Vec::new();
        let xdp: &Xdp = self.xdp.program("xdp_lb").expect("loaded").try_into()?;
        let info = xdp.info()?;
        out.push(ProgramStatus {
            name: "xdp_lb".into(),
            attach_point: "uplink XDP".into(),
            id: info.id(),
            tag: format!("{:016x}", info.tag()),
        });
        for spec in ALL_PROGRAMS {
            let ebpf = match spec.object {
                ObjectKind::Pod => &self.pod,
                ObjectKind::Uplink => &self.uplink,
            };
            let prog: &SchedClassifier = ebpf.program(spec.name).expect("loaded").try_into()?;
            let info = prog.info()?;
            out.push(ProgramStatus {
                name: spec.name.to_string(),
                attach_point: spec.what.to_string(),
                id: info.id(),
                tag: format!("{:016x}", info.tag()),
            });
        }
        if let Some(cg) = self.sock.cgroup() {
            for (name, what) in sock::PROGRAMS {
                let prog: &aya::programs::CgroupSockAddr =
                    self.sock.ebpf.program(name).expect("loaded").try_into()?;
                let info = prog.info()?;
                out.push(ProgramStatus {
                    name: name.to_string(),
                    attach_point: format!("{what} at {}", cg.display()),
                    id: info.id(),
                    tag: format!("{:016x}", info.tag()),
                });
            }
        }
        Ok(out)
    }

    /// Runs a loaded program on `packet` through BPF_PROG_TEST_RUN, in the
    /// calling thread's network namespace (FIB lookups and ifindexes resolve
    /// there). `ctx` is a `struct __sk_buff` prefix. For packet tests and
    /// benchmarks; production traffic never goes through here.
    pub fn test_run(
        &self,
        program: &str,
        packet: &[u8],
        ctx: Option<&[u8]>,
        repeat: u32,
    ) -> Result<TestRunOutput> {
        let spec = ALL_PROGRAMS
            .iter()
            .find(|s| s.name == program)
            .ok_or_else(|| anyhow!("no tc program named {program}"))?;
        let ebpf = match spec.object {
            ObjectKind::Pod => &self.pod,
            ObjectKind::Uplink => &self.uplink,
        };
        let prog: &SchedClassifier = ebpf.program(program).expect("loaded").try_into()?;
        run_test(prog, program, packet, ctx, repeat)
    }

    /// BPF_PROG_TEST_RUN of `xdp_lb`; `ctx` is a `struct xdp_md` (for
    /// ingress_ifindex).
    pub fn test_run_xdp(
        &self,
        packet: &[u8],
        ctx: Option<&[u8]>,
        repeat: u32,
    ) -> Result<TestRunOutput> {
        let prog: &Xdp = self.xdp.program("xdp_lb").expect("loaded").try_into()?;
        run_test(prog, "xdp_lb", packet, ctx, repeat)
    }
}

fn run_test<P>(
    prog: &P,
    program: &str,
    packet: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
) -> Result<TestRunOutput>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    {
        // Room for programs that grow the packet (encapsulation).
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.ctx_in = ctx;
        opts.repeat = repeat.max(1);
        let r = prog
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutput {
            retval: r.return_value,
            data: out,
            duration_ns: r.duration.as_nanos() as u64,
        })
    }
}

impl Datapath {
    /// Removes everything this data plane pinned: links (detaching the
    /// programs) and maps. For `strake lab down` and uninstall, never for a
    /// restart.
    pub fn purge(root: &Path) -> Result<()> {
        if root.exists() {
            std::fs::remove_dir_all(root)
                .with_context(|| format!("removing {}", root.display()))?;
        }
        Ok(())
    }
}

/// Attaches `xdp_pass` to `ifname` (in the calling thread's namespace) and
/// pins the link at `pin`: for a veth that must take frames its peer sends
/// with XDP_TX (a lab fabric port standing in for a switch).
pub fn attach_xdp_pass(ifname: &str, pin: &Path) -> Result<()> {
    let mut ebpf = aya::Ebpf::load(strake_ebpf::XDP_PASS_OBJECT).context("loading xdp_pass")?;
    let prog: &mut Xdp = ebpf
        .program_mut("xdp_pass")
        .expect("in the object")
        .try_into()?;
    prog.load()?;
    let id = prog
        .attach(ifname, XdpMode::Driver)
        .with_context(|| format!("attaching xdp_pass to {ifname}"))?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    if let Some(d) = pin.parent() {
        std::fs::create_dir_all(d)?;
    }
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// The counter array grows when programs learn new counters; a pinned one
/// from an older agent is too small for them. Counters are statistics (rates
/// survive a reset), unlike flow state, so an outgrown one is replaced rather
/// than bumping the whole map layout: the programs still attached keep the
/// old array until their links are swapped a moment later.
fn replace_outgrown_counters(maps_dir: &Path) -> Result<()> {
    let pin = maps_dir.join(map_name(shared::STRAKE_MAP_COUNTERS));
    let Ok(info) = aya::maps::MapInfo::from_pin(&pin) else {
        return Ok(());
    };
    if info.max_entries() < shared::STRAKE_CNT_MAX {
        tracing::info!(pin = %pin.display(), had = info.max_entries(), want = shared::STRAKE_CNT_MAX,
            "replacing the pinned counter array: this agent counts more; counters restart from 0");
        std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
    }
    Ok(())
}

fn maps_dir(root: &Path) -> PathBuf {
    root.join(format!("maps_v{STRAKE_MAP_LAYOUT_VERSION}"))
}

fn links_dir(root: &Path) -> PathBuf {
    root.join("links")
}

/// A map name from shared.h (bindgen makes C strings of them).
pub fn map_name(c: &'static [u8]) -> &'static str {
    std::ffi::CStr::from_bytes_with_nul(c)
        .ok()
        .and_then(|c| c.to_str().ok())
        .expect("shared.h map names are NUL-terminated ASCII")
}

/// bpffs rejects dots in names (docs/kernel-notes.md).
fn pin_safe(s: &str) -> String {
    s.replace('.', "_")
}

/// Checks an interface name is pin-safe and short enough, for callers that
/// build names.
pub fn validate_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 || name.contains('/') {
        bail!("invalid interface name {name:?}");
    }
    Ok(())
}
