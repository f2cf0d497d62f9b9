//! The lab: a simulated multi-node cluster on one machine, built from a
//! directory of ordinary Kubernetes YAML and driven by strake's real binaries.
//!
//! ```text
//!   netns fabric-<lab>    bridge br0: the nodes' shared L2 network
//!   netns node-<name>     eth0 (InternalIP) on the fabric, a strake-agent,
//!                         the host side of its pods' veths
//!   netns pod-<ns>-<name> eth0 from strake-cni, a small server on the pod's
//!                         declared container ports
//! ```
//!
//! The lab plays kubelet and the container runtime: it attaches pods by
//! executing the deploy conflist exactly as containerd does (CNI_* variables,
//! CNI_ARGS with K8S_POD_NAMESPACE/NAME, the config on stdin), and writes each
//! pod's IP back as Pod status into an overlay directory the agents read.
//! Everything it creates is journaled before it is created, so `down` removes
//! all of it even after an `up` that died half way.
//!
//! The agents read the lab's directories themselves (`--source dir`), or,
//! with `STRAKE_LAB_SOURCE=kube`, run `--source kube` against a stand-in API
//! server that serves those directories (`kube_api`), writing EndpointSlices
//! as the endpoints controller would.

pub mod cni_runtime;
pub mod kube_api;
pub mod probe;
pub mod procs;
pub mod serve;
pub mod spec;
pub mod topology;

use crate::cni_runtime::{Attachment, ConfList, Runtime};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strake_api::{Client, Pong, Request};
use strake_netlink::{netns, Netlink};

pub use spec::{ExternalSpec, LabSpec, NodeSpec, PodSpec};

/// MTU of node uplinks and their fabric ports when XDP is on: room for the
/// 20-byte IPIP header of direct server return on top of 1500-byte packets.
const JUMBO_FABRIC_MTU: u32 = 1600;
const POD_MTU: u32 = 1500;

/// The conflist shipped in deploy/, used unless another is given.
pub const DEPLOY_CONFLIST: &str = include_str!("../../../deploy/cni/10-strake.conflist");

/// Where reference CNI plugins live (Debian puts them in /usr/lib/cni).
const SYSTEM_CNI_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// The index a running lab leaves in its root (see `write_index`).
pub const INDEX_FILE: &str = "lab.json";

/// Where labs keep their state, one directory per lab.
pub const LABS_ROOT: &str = "/var/lib/strake-lab";

/// Metrics port of every lab agent (each in its own namespace).
pub const AGENT_METRICS_PORT: u16 = 9753;

/// Where the lab's agents take desired state from (`STRAKE_LAB_SOURCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabSource {
    /// `--source dir`: the lab's directory and its status overlay.
    Dir,
    /// `--source kube`: the lab's stand-in API server (`kube_api`).
    Kube,
}

impl LabSource {
    /// `STRAKE_LAB_SOURCE`: `dir` (the default) or `kube`.
    pub fn from_env() -> Result<Self> {
        match std::env::var("STRAKE_LAB_SOURCE").as_deref() {
            Err(_) | Ok("") | Ok("dir") => Ok(LabSource::Dir),
            Ok("kube") => Ok(LabSource::Kube),
            Ok(other) => bail!("STRAKE_LAB_SOURCE={other}: use dir or kube"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub container_id: String,
    pub ip: Ipv4Addr,
}

/// Things `up` made, in order, so `down` can undo them whatever happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Made {
    Netns { name: String },
    Bpffs { path: PathBuf },
    Cgroup { path: PathBuf },
}

pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    pub spec: LabSpec,
    pub root: PathBuf,
    pub conflist: ConfList,
    conflist_text: String,
    /// Where its agents read desired state; a running lab keeps the one it
    /// was brought up with (its index says).
    pub source: LabSource,
}

impl Lab {
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, None)
    }

    /// A lab from `dir`, with an optional conflist file instead of deploy's.
    pub fn load_with(dir: &Path, conflist: Option<&Path>) -> Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("lab directory {}", dir.display()))?;
        let spec = LabSpec::from_dir(&dir)?;
        let base = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "lab".into());
        let name: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let conflist_text = match conflist {
            Some(p) => {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
            }
            None => DEPLOY_CONFLIST.to_string(),
        };
        let conflist = ConfList::from_json(conflist_text.as_bytes())?;
        let root = PathBuf::from(LABS_ROOT).join(&name);
        let running = std::fs::read(root.join(INDEX_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| serde_json::from_value::<LabSource>(v["source"].clone()).ok());
        let source = match running {
            Some(s) => s,
            None => LabSource::from_env()?,
        };
        Ok(Lab {
            root,
            name,
            dir,
            spec,
            conflist,
            conflist_text,
            source,
        })
    }

    /// The same lab with its agents on another source (before `up`).
    pub fn with_source(mut self, source: LabSource) -> Self {
        self.source = source;
        self
    }

    /// The namespace the stand-in API server runs in (kube mode).
    pub fn kube_api_netns_name(&self) -> String {
        format!("kapi-{}", self.name)
    }

    /// One command to the lab's stand-in API server (`sync`, `disconnect`,
    /// `expire`, `stats`: see `kube_api`).
    pub fn kube_api(&self, cmd: &str) -> Result<serde_json::Value> {
        kube_api::control(&self.root, cmd)
    }

    /// Starts the stand-in API server, listening in every node's namespace,
    /// and writes the kubeconfig the agents use.
    fn start_kube_api(&self) -> Result<()> {
        std::fs::write(self.root.join(kube_api::KUBECONFIG), kube_api::kubeconfig())?;
        let ns = self.make_netns(&self.kube_api_netns_name())?;
        let mut args: Vec<String> = vec!["kube-api".into()];
        for d in [self.dir.clone(), self.status_dir()] {
            args.extend(["--dir".into(), d.display().to_string()]);
        }
        for n in &self.spec.nodes {
            args.extend([
                "--netns".into(),
                self.node_netns(&n.name).display().to_string(),
            ]);
        }
        args.extend([
            "--control".into(),
            self.root
                .join(kube_api::CONTROL_SOCKET)
                .display()
                .to_string(),
        ]);
        let log = self.root.join("kube-api.log");
        let pid = procs::spawn_in_netns(&ns, &procs::bin("strake-lab")?, &args, &log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.kube_api("stats") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline || !procs::alive(pid) => bail!(
                    "the lab's API server did not come up ({e:#}); its log:\n{}",
                    tail(&log, 20)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The namespace of the lab's implicit single fabric.
    pub fn fabric_netns(&self) -> String {
        self.fabric_netns_of("")
    }
    /// The namespace holding a fabric's bridge.
    pub fn fabric_netns_of(&self, fabric: &str) -> String {
        if fabric.is_empty() {
            format!("fabric-{}", self.name)
        } else {
            format!("fabric-{}-{fabric}", self.name)
        }
    }
    pub fn router_netns_name(router: &str) -> String {
        format!("router-{router}")
    }
    pub fn router_netns(&self, router: &str) -> PathBuf {
        netns::path(&Self::router_netns_name(router))
    }
    pub fn router_dir(&self, router: &str) -> PathBuf {
        self.root.join("routers").join(router)
    }
    /// The control socket of a router's BIRD.
    pub fn router_control(&self, router: &str) -> strake_bgp::Control {
        strake_bgp::Control::new(self.router_dir(router).join("bird.ctl"))
    }
    /// The control socket of a node's BIRD (the agent starts it).
    pub fn node_bird_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("bird.ctl")
    }
    pub fn node_netns_name(node: &str) -> String {
        format!("node-{node}")
    }
    pub fn pod_netns_name(namespace: &str, name: &str) -> String {
        format!("pod-{namespace}-{name}")
    }
    pub fn ext_netns_name(name: &str) -> String {
        format!("ext-{name}")
    }
    pub fn ext_netns(&self, name: &str) -> PathBuf {
        netns::path(&Self::ext_netns_name(name))
    }
    pub fn node_netns(&self, node: &str) -> PathBuf {
        netns::path(&Self::node_netns_name(node))
    }
    pub fn pod_netns(&self, namespace: &str, name: &str) -> PathBuf {
        netns::path(&Self::pod_netns_name(namespace, name))
    }
    pub fn bpffs_root(&self, node: &str) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/strake-lab")
            .join(&self.name)
            .join(node)
    }
    /// The lab's cgroup v2 subtree: `<cgroup2 mount>/strake-lab-<lab>`.
    /// Each node has a cgroup below it holding its agent, its host-network
    /// processes and its pods' processes; the node's socket load balancer
    /// attaches there, never to the machine's root cgroup.
    pub fn cgroup_base(&self) -> Result<PathBuf> {
        Ok(strake_datapath::sock::cgroup2_mount()?.join(format!("strake-lab-{}", self.name)))
    }
    pub fn node_cgroup(&self, node: &str) -> Result<PathBuf> {
        Ok(self.cgroup_base()?.join(node))
    }
    /// Remembers which cgroup the processes of a namespace run in, for
    /// `strake lab exec` (which knows only the namespace).
    fn record_cgroup(&self, netns_name: &str, cgroup: &Path) -> Result<()> {
        let d = self.root.join("cgroups");
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(netns_name), cgroup.display().to_string())?;
        Ok(())
    }
    /// Runs a command in a lab target (`namespace/pod`, `node/<name>`,
    /// `ext/<name>`, `router/<name>`): in its network namespace and, for
    /// nodes and pods, in its node's cgroup, as `strake lab exec` does.
    pub fn exec(&self, target: &str, program: &str, args: &[&str]) -> Result<std::process::Output> {
        let (ns, name) = target_netns(target)?;
        let cg = cgroup_of_netns(&name);
        procs::run_in(&ns, cg.as_deref(), program, args)
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }
    pub fn status_dir(&self) -> PathBuf {
        self.root.join("status")
    }
    fn pod_record_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.root
            .join("pods")
            .join(format!("{namespace}_{name}.json"))
    }
    fn journal_path(&self) -> PathBuf {
        self.root.join("journal.jsonl")
    }

    fn journal(&self, m: Made) -> Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.journal_path())?;
        writeln!(f, "{}", serde_json::to_string(&m)?)?;
        f.sync_data()?;
        Ok(())
    }

    fn journaled(&self) -> Vec<Made> {
        std::fs::read_to_string(self.journal_path())
            .map(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn make_netns(&self, name: &str) -> Result<PathBuf> {
        self.journal(Made::Netns { name: name.into() })?;
        netns::create(name)
    }

    /// The CNI runtime for pods of `node`: plugins run in the node's namespace.
    pub fn runtime(&self, node: &str) -> Runtime {
        let mut path = vec![procs::bin_dir()];
        path.extend(SYSTEM_CNI_DIRS.iter().map(PathBuf::from));
        let mut rt = Runtime::new(path, self.root.join("cni-cache"));
        rt.netns = Some(self.node_netns(node));
        rt
    }

    /// A stable container id for a pod of this lab (hex, as runtimes use).
    pub fn container_id(&self, namespace: &str, name: &str) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in format!("{}/{namespace}/{name}", self.name).bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}{:016x}", h.rotate_left(29) ^ 0x5bd1e995)
    }

    pub fn attachment(&self, namespace: &str, name: &str) -> Attachment {
        let cid = self.container_id(namespace, name);
        Attachment {
            container_id: cid.clone(),
            netns: self.pod_netns(namespace, name),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), namespace.into()),
                ("K8S_POD_NAME".into(), name.into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), cid),
            ],
            capability_args: BTreeMap::new(),
        }
    }

    /// Calls the agent of `node` (its API socket lives in the node's netns).
    pub fn agent<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        node: &str,
        req: Request,
    ) -> Result<T> {
        netns::run_in(&self.node_netns(node), move || {
            Client::new(strake_api::DEFAULT_SOCKET)
                .with_timeout(Duration::from_secs(30))
                .call(&req)
                .map_err(|e| anyhow!(e))
        })
    }

    pub fn is_up(&self) -> bool {
        self.spec
            .fabrics
            .iter()
            .any(|f| netns::exists(&self.fabric_netns_of(&f.name)))
            || self
                .spec
                .routers
                .iter()
                .any(|r| netns::exists(&Self::router_netns_name(&r.name)))
            || self
                .spec
                .nodes
                .iter()
                .any(|n| netns::exists(&Self::node_netns_name(&n.name)))
            || self
                .spec
                .externals
                .iter()
                .any(|e| netns::exists(&Self::ext_netns_name(&e.name)))
    }

    /// Builds the whole lab. On failure, what was made stays for inspection;
    /// `down` removes it.
    pub fn up(&self) -> Result<()> {
        if self.is_up() {
            bail!(
                "lab {} is already (partly) up; run `strake lab down {}` first",
                self.name,
                self.dir.display()
            );
        }
        procs::bin("strake-agent")?;
        procs::bin("strake-cni")?;
        for d in ["status", "pods", "cni-cache"] {
            std::fs::create_dir_all(self.root.join(d))?;
        }
        self.write_index()?;
        std::fs::write(self.root.join("conflist.json"), &self.conflist_text)?;
        for f in &self.spec.fabrics {
            self.up_fabric(f)?;
        }
        for r in &self.spec.routers {
            self.up_router(r)?;
        }
        for n in &self.spec.nodes {
            self.up_node(n)?;
        }
        for e in &self.spec.externals {
            self.up_external(e)?;
        }
        if self.source == LabSource::Kube {
            self.start_kube_api()?;
        }
        for n in &self.spec.nodes {
            let cg = self.node_cgroup(&n.name)?;
            self.journal(Made::Cgroup {
                path: self.cgroup_base()?,
            })?;
            std::fs::create_dir_all(&cg)
                .with_context(|| format!("creating cgroup {}", cg.display()))?;
            self.record_cgroup(&Self::node_netns_name(&n.name), &cg)?;
        }
        for n in &self.spec.nodes {
            self.start_agent(&n.name)?;
        }
        for n in &self.spec.nodes {
            self.wait_agent_ready(&n.name, Duration::from_secs(30))?;
        }
        for p in &self.spec.pods {
            self.add_pod(p)?;
        }
        for n in &self.spec.nodes {
            // BGP sessions take a few seconds to come up.
            self.wait_routes(&n.name, Duration::from_secs(60))?;
        }
        // Pod IPs reach the other agents through the status directory, after
        // the CNI ADD returned; a lab is up only once every node has applied
        // them, or the first connections would see a Service with some of
        // its backends missing.
        self.wait_synced(Duration::from_secs(30))?;
        Ok(())
    }

    /// `lab.json` in the lab's root: its directory and nodes, with the
    /// namespace each node's agent listens in. `strake --lab DIR` finds the
    /// agents through it without linking the lab.
    fn write_index(&self) -> Result<()> {
        let nodes: Vec<serde_json::Value> = self
            .spec
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name,
                    "netns": self.node_netns(&n.name),
                })
            })
            .collect();
        let index = serde_json::json!({
            "name": self.name,
            "dir": self.dir,
            "nodes": nodes,
            "source": self.source,
        });
        std::fs::write(
            self.root.join(INDEX_FILE),
            serde_json::to_vec_pretty(&index)?,
        )?;
        Ok(())
    }

    /// Whether the lab declares fabrics of its own (racks) rather than one
    /// implicit L2 network.
    pub fn has_racks(&self) -> bool {
        self.spec.fabrics.iter().any(|f| !f.name.is_empty())
    }

    /// Waits until the kernel of `node` has a route for every node's block
    /// (direct, BGP or the VXLAN fallback).
    pub fn wait_routes(&self, node: &str, timeout: Duration) -> Result<()> {
        let want = self.spec.nodes.len();
        let deadline = Instant::now() + timeout;
        loop {
            let st: strake_api::AgentStatus = self.agent(node, Request::Status)?;
            let r = &st.routing;
            if r.nodes.len() >= want && r.complete() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let missing: Vec<&str> = r
                    .nodes
                    .iter()
                    .filter(|n| n.via == "none")
                    .map(|n| n.node.as_str())
                    .collect();
                bail!(
                    "node {node} has no route to the pods of {missing:?} after {timeout:?} (routing: {}; `strake bgp peers --lab` shows the sessions)",
                    r.mode
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn up_fabric(&self, f: &spec::FabricSpec) -> Result<()> {
        let ns = self.make_netns(&self.fabric_netns_of(&f.name))?;
        netns::with_netlink_in(&ns, |nl| async move {
            let lo = nl.link_by_name("lo").await?.context("lo")?;
            nl.set_up(lo.index).await?;
            nl.create_bridge("br0").await?;
            let br = nl.link_by_name("br0").await?.context("br0")?;
            nl.set_up(br.index).await?;
            Ok(())
        })
    }

    /// Connects a host (node, router, external) to a fabric's bridge: a veth
    /// whose far end is renamed `ifname` in `ns`. Returns the fabric-side name.
    fn plug_into_fabric(
        &self,
        fabric: &str,
        who: &str,
        ns: &Path,
        mtu: u32,
        ifname: &str,
    ) -> Result<String> {
        let fabric_ns = netns::path(&self.fabric_netns_of(fabric));
        let (f_end, n_end) = fabric_veth_names(&format!("{who}@{fabric}"));
        let ns2 = ns.to_path_buf();
        let (f2, n2) = (f_end.clone(), n_end.clone());
        netns::with_netlink_in(&fabric_ns, move |nl| async move {
            nl.create_veth(&f2, &n2, mtu).await?;
            let br = nl.link_by_name("br0").await?.context("br0")?;
            let f = nl.link_by_name(&f2).await?.context("fabric end")?;
            nl.set_controller(f.index, br.index).await?;
            nl.set_up(f.index).await?;
            let u = nl.link_by_name(&n2).await?.context("far end")?;
            let nsf = File::open(&ns2)?;
            nl.move_to_netns(u.index, nsf.as_raw_fd()).await?;
            Ok(())
        })?;
        let name = ifname.to_string();
        netns::with_netlink_in(ns, move |nl| async move {
            let lo = nl.link_by_name("lo").await?.context("lo")?;
            nl.set_up(lo.index).await?;
            let u = nl.link_by_name(&n_end).await?.context("uplink")?;
            nl.set_name(u.index, &name).await?;
            nl.set_up(u.index).await?;
            Ok(())
        })?;
        if self.spec.xdp {
            // Frames into an XDP program must carry full checksums, as a NIC
            // delivers them (docs/design.md, Testing); a veth sends them partial.
            let out = procs::run_in_netns(ns, "ethtool", &["-K", ifname, "tx", "off"])?;
            if !out.status.success() {
                bail!(
                    "ethtool -K {ifname} tx off in {}: {}",
                    ns.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(f_end)
    }

    fn fabric_mtu(&self) -> u32 {
        if self.spec.xdp {
            JUMBO_FABRIC_MTU
        } else {
            POD_MTU
        }
    }

    /// A router: its namespace, an interface on each of its fabrics, routes
    /// to the fabrics it is not on, and BIRD.
    fn up_router(&self, r: &spec::RouterSpec) -> Result<()> {
        let ns = self.make_netns(&Self::router_netns_name(&r.name))?;
        let dir = self.router_dir(&r.name);
        std::fs::create_dir_all(&dir)?;
        for i in &r.interfaces {
            self.plug_into_fabric(
                &i.fabric,
                &format!("router/{}", r.name),
                &ns,
                self.fabric_mtu(),
                &i.fabric,
            )?;
            let prefix = self.spec.fabric(&i.fabric).map_or(24, |f| f.prefix);
            let (ifname, addr) = (i.fabric.clone(), i.address);
            netns::with_netlink_in(&ns, move |nl| async move {
                let l = nl
                    .link_by_name(&ifname)
                    .await?
                    .context("router interface")?;
                nl.add_address(l.index, addr, prefix).await
            })?;
        }
        let routes = topology::underlay_routes(r, &self.spec.fabrics, &self.spec.routers);
        netns::with_netlink_in(&ns, move |nl| async move {
            netns::sysctl("net/ipv4/ip_forward", "1")?;
            // Spread flows over equal paths by their ports too, as a fabric
            // does (the default hashes addresses only).
            netns::sysctl("net/ipv4/fib_multipath_hash_policy", "1")?;
            for (dst, len, via) in routes {
                let mut rt = strake_netlink::Route4::to(dst, len);
                rt.gateway = Some(via);
                rt.protocol = 4; // static
                nl.replace_route(&rt).await?;
            }
            Ok(())
        })?;
        let conf = dir.join("bird.conf");
        std::fs::write(
            &conf,
            topology::router_bird_config(r, &self.spec.fabrics, &self.spec.routers),
        )?;
        let bird = which("bird")
            .context("BIRD (bird2) is not installed; scripts/install-deps.sh installs it")?;
        let ctl = dir.join("bird.ctl");
        let args: Vec<String> = vec![
            "-f".into(),
            "-c".into(),
            conf.display().to_string(),
            "-s".into(),
            ctl.display().to_string(),
            "-P".into(),
            dir.join("bird.pid").display().to_string(),
        ];
        procs::spawn_in_netns(&ns, &bird, &args, &dir.join("bird.log"))?;
        let control = self.router_control(&r.name);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match control.call("show status") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "BIRD of router {} is not answering: {e:#}; its log:\n{}",
                        r.name,
                        tail(&dir.join("bird.log"), 20)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn up_external(&self, e: &ExternalSpec) -> Result<()> {
        let ns = self.make_netns(&Self::ext_netns_name(&e.name))?;
        self.plug_into_fabric(&e.fabric, &format!("ext/{}", e.name), &ns, POD_MTU, "eth0")?;
        let (ip, prefix, routes) = (e.ip, e.prefix, e.routes.clone());
        netns::with_netlink_in(&ns, move |nl| async move {
            let u = nl.link_by_name("eth0").await?.context("eth0")?;
            nl.add_address(u.index, ip, prefix).await?;
            for (dst, len, via) in routes {
                let mut r = strake_netlink::Route4::to(dst, len);
                r.gateway = Some(via);
                r.protocol = 4;
                nl.replace_route(&r).await?;
            }
            Ok(())
        })
    }

    fn up_node(&self, n: &NodeSpec) -> Result<()> {
        let node_ns = self.make_netns(&Self::node_netns_name(&n.name))?;
        std::fs::create_dir_all(self.node_dir(&n.name).join("state"))?;
        let f_end =
            self.plug_into_fabric(&n.fabric, &n.name, &node_ns, self.fabric_mtu(), "eth0")?;
        if self.spec.xdp {
            // The node's XDP_TX frames reach the fabric only if the fabric
            // port runs an XDP program (docs/kernel-notes.md); a switch port would not
            // need one.
            let pin = PathBuf::from("/sys/fs/bpf/strake-lab")
                .join(&self.name)
                .join(format!("fabric_{f_end}"));
            self.journal(Made::Bpffs { path: pin.clone() })?;
            netns::run_in(&netns::path(&self.fabric_netns_of(&n.fabric)), move || {
                strake_datapath::attach_xdp_pass(&f_end, &pin)
            })?;
        }
        let (ip, prefix, gw) = (n.ip, n.prefix, n.gateway);
        netns::with_netlink_in(&node_ns, move |nl| async move {
            // A node's loopback is up (the agents reach a local API server there).
            let lo = nl.link_by_name("lo").await?.context("lo")?;
            nl.set_up(lo.index).await?;
            let u = nl.link_by_name("eth0").await?.context("uplink")?;
            nl.add_address(u.index, ip, prefix).await?;
            netns::sysctl("net/ipv4/ip_forward", "1")?;
            if let Some(gw) = gw {
                // The rack's router: everything off the subnet goes there.
                let mut r = strake_netlink::Route4::to(Ipv4Addr::UNSPECIFIED, 0);
                r.gateway = Some(gw);
                r.protocol = 4; // static
                nl.replace_route(&r).await?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Starts (or restarts) the agent of `node`.
    pub fn start_agent(&self, node: &str) -> Result<u32> {
        let bpffs = self.bpffs_root(node);
        self.journal(Made::Bpffs {
            path: bpffs.clone(),
        })?;
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            node.into(),
            "--bpffs-root".into(),
            bpffs.display().to_string(),
            "--state-dir".into(),
            self.node_dir(node).join("state").display().to_string(),
            "--metrics-addr".into(),
            format!("0.0.0.0:{AGENT_METRICS_PORT}"),
            "--uplink".into(),
            "eth0".into(),
            // One fabric: a fixed pod MTU under the jumbo fabric (room for
            // direct return's IPIP). Racks: the agent's own accounting
            // (the uplink's, less VXLAN's 50 bytes where it is needed).
            "--pod-mtu".into(),
            if self.has_racks() { 0 } else { POD_MTU }.to_string(),
            "--bird-socket".into(),
            self.node_bird_socket(node).display().to_string(),
            "--bird-config".into(),
            self.node_dir(node).join("bird.conf").display().to_string(),
            "--lb-xdp".into(),
            self.spec.xdp.to_string(),
            "--cgroup-root".into(),
            self.node_cgroup(node)?.display().to_string(),
            "--log-file".into(),
            self.agent_log(node).display().to_string(),
        ];
        if let Some(e) = &self.spec.encapsulation {
            args.extend(["--encapsulation".into(), e.clone()]);
        }
        let mut env = Vec::new();
        match self.source {
            LabSource::Dir => args.extend([
                "--source".into(),
                "dir".into(),
                "--source-dir".into(),
                self.dir.display().to_string(),
                "--source-dir".into(),
                self.status_dir().display().to_string(),
            ]),
            LabSource::Kube => {
                args.extend(["--source".into(), "kube".into()]);
                env.push((
                    "KUBECONFIG".to_string(),
                    self.root.join(kube_api::KUBECONFIG).display().to_string(),
                ));
            }
        }
        args.extend(self.spec.agent_args.iter().cloned());
        let pid = procs::spawn_in(
            &self.node_netns(node),
            Some(&self.node_cgroup(node)?),
            &procs::bin("strake-agent")?,
            &args,
            &env,
            &self.agent_log(node),
        )?;
        std::fs::write(self.node_dir(node).join("agent.pid"), pid.to_string())?;
        Ok(pid)
    }

    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        std::fs::read_to_string(self.node_dir(node).join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits until the agent of `node` answers and can add pods.
    pub fn wait_agent_ready(&self, node: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.agent::<Pong>(node, Request::Ping) {
                Ok(p) if p.can_add && p.datapath_ok => return Ok(()),
                Ok(p) => {
                    last = p
                        .reason
                        .unwrap_or_else(|| "data plane not attached yet".into())
                }
                Err(e) => last = format!("{e:#}"),
            }
            if let Some(pid) = self.agent_pid(node) {
                if !procs::alive(pid) {
                    bail!(
                        "strake-agent of node {node} exited; its log:\n{}",
                        tail(&self.agent_log(node), 20)
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "strake-agent of node {node} not ready after {timeout:?} ({last}); its log:\n{}",
            tail(&self.agent_log(node), 20)
        )
    }

    /// An empty pod sandbox (namespace with lo up), journaled so `down`
    /// removes it; for callers that drive CNI themselves.
    pub fn pod_sandbox(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let ns = self.make_netns(&Self::pod_netns_name(namespace, name))?;
        netns::with_netlink_in(&ns, |nl| async move {
            let lo = nl.link_by_name("lo").await?.context("lo")?;
            nl.set_up(lo.index).await
        })?;
        Ok(ns)
    }

    /// Attaches a pod through the CNI conflist and starts its server.
    pub fn add_pod(&self, p: &PodSpec) -> Result<PodRecord> {
        self.pod_sandbox(&p.namespace, &p.name)?;
        let result = self
            .runtime(&p.node)
            .add(&self.conflist, &self.attachment(&p.namespace, &p.name))
            .with_context(|| format!("CNI ADD for pod {}", p.key()))?;
        self.record_cgroup(
            &Self::pod_netns_name(&p.namespace, &p.name),
            &self.node_cgroup(&p.node)?,
        )?;
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("CNI result for {} has no IPv4 address: {result}", p.key()))?;
        let rec = PodRecord {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            node: p.node.clone(),
            container_id: self.container_id(&p.namespace, &p.name),
            ip,
        };
        std::fs::write(
            self.pod_record_path(&p.namespace, &p.name),
            serde_json::to_vec_pretty(&rec)?,
        )?;
        // The container first, then Ready: as kubelet reports a pod ready only
        // once it runs, a backend never enters a Service before it listens.
        self.start_pod_server(p)?;
        self.write_pod_status(p, Some(ip))?;
        Ok(rec)
    }

    /// Starts the lab's server in a pod, on its declared container ports.
    pub fn start_pod_server(&self, p: &PodSpec) -> Result<()> {
        if p.tcp_ports.is_empty() && p.udp_ports.is_empty() {
            return Ok(());
        }
        let join = |v: &[u16]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut args = vec!["serve".to_string(), "--name".into(), p.key()];
        if !p.tcp_ports.is_empty() {
            args.extend(["--tcp".into(), join(&p.tcp_ports)]);
        }
        if !p.udp_ports.is_empty() {
            args.extend(["--udp".into(), join(&p.udp_ports)]);
        }
        let log = self
            .root
            .join("pods")
            .join(format!("{}_{}.log", p.namespace, p.name));
        let ns = self.pod_netns(&p.namespace, &p.name);
        let cg = self.node_cgroup(&p.node)?;
        procs::spawn_in(&ns, Some(&cg), &procs::bin("strake-lab")?, &args, &[], &log)?;
        // Listening before returning (the Ready that follows must be true).
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(port) = p.tcp_ports.first() {
            let addr = std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port);
            let up = netns::run_in(&ns, move || {
                Ok(
                    std::net::TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200))
                        .is_ok(),
                )
            })?;
            if up || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops everything running in a pod (its "containers"), as a crash would.
    pub fn stop_pod_server(&self, namespace: &str, name: &str) {
        procs::stop(
            &procs::pids_in_netns(&self.pod_netns(namespace, name)),
            Duration::from_secs(2),
        );
    }

    /// Waits until every node's data plane reflects everything written to
    /// the lab's directories so far (what `strake wait` does).
    pub fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // Against the API server, the point is the resourceVersion that
        // covers the directories now (watches deliver in order).
        let kube_target = match self.source {
            LabSource::Dir => None,
            LabSource::Kube => Some(strake_api::SyncPoint {
                position: self.kube_api("sync")?["resourceVersion"]
                    .as_u64()
                    .context("the lab's API server gave no resourceVersion")?,
                exact: false,
            }),
        };
        for n in &self.spec.nodes {
            let target: strake_api::SyncPoint = match kube_target {
                Some(t) => t,
                None => self.agent(&n.name, Request::SyncPoint)?,
            };
            loop {
                let st: strake_api::AgentStatus = self.agent(&n.name, Request::Status)?;
                let why = match st.reached(&target) {
                    Ok(()) => break,
                    Err(why) => why,
                };
                if Instant::now() > deadline {
                    bail!(
                        "node {} has not applied the latest desired state after {timeout:?}: {why}",
                        n.name
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Waits until every node's load balancer satisfies `pred`.
    pub fn wait_lb(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&strake_api::LbStatus) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all = true;
            for n in &self.spec.nodes {
                let st: strake_api::LbStatus = self.agent(&n.name, Request::LbList)?;
                if !pred(&st) {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("load balancers did not reach \"{what}\" within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kubelet's part: the pod's IP as Pod status, for every agent to read.
    fn write_pod_status(&self, p: &PodSpec, ip: Option<Ipv4Addr>) -> Result<()> {
        let path = self
            .status_dir()
            .join(format!("{}_{}.yaml", p.namespace, p.name));
        let Some(ip) = ip else {
            let _ = std::fs::remove_file(path);
            return Ok(());
        };
        let host_ip = self
            .spec
            .node(&p.node)
            .map(|n| n.ip.to_string())
            .unwrap_or_default();
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"namespace": p.namespace, "name": p.name},
            "status": {
                "phase": "Running",
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "hostIP": host_ip,
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_yaml::to_string(&doc)?)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    pub fn pod_record(&self, namespace: &str, name: &str) -> Option<PodRecord> {
        serde_json::from_slice(&std::fs::read(self.pod_record_path(namespace, name)).ok()?).ok()
    }

    pub fn pod_ip(&self, namespace: &str, name: &str) -> Result<Ipv4Addr> {
        self.pod_record(namespace, name)
            .map(|r| r.ip)
            .with_context(|| format!("pod {namespace}/{name} is not up in lab {}", self.name))
    }

    /// Detaches a pod (CNI DEL) and removes its namespace and processes.
    pub fn del_pod(&self, namespace: &str, name: &str, node: &str) -> Result<()> {
        let ns = self.pod_netns(namespace, name);
        let att = self.attachment(namespace, name);
        let del = self.runtime(node).del(&self.conflist, &att);
        procs::stop(&procs::pids_in_netns(&ns), Duration::from_secs(2));
        netns::delete(&Self::pod_netns_name(namespace, name))?;
        let _ = std::fs::remove_file(self.pod_record_path(namespace, name));
        let _ = std::fs::remove_file(self.status_dir().join(format!("{namespace}_{name}.yaml")));
        del.map_err(|e| anyhow!("CNI DEL for pod {namespace}/{name}: {e}"))
    }

    /// Removes everything `up` made. Works on a lab that is half up, and
    /// again on one that is already down.
    pub fn down(&self) -> Result<()> {
        let mut problems = Vec::new();
        // Pods first, while their agents still run, so CNI DEL releases cleanly.
        let mut pods: Vec<(String, String, String)> = self
            .spec
            .pods
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone(), p.node.clone()))
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.root.join("pods")) {
            for e in rd
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            {
                if let Ok(r) = serde_json::from_slice::<PodRecord>(
                    &std::fs::read(e.path()).unwrap_or_default(),
                ) {
                    if !pods
                        .iter()
                        .any(|(n, m, _)| *n == r.namespace && *m == r.name)
                    {
                        pods.push((r.namespace, r.name, r.node));
                    }
                }
            }
        }
        for (ns, name, node) in &pods {
            let exists = netns::exists(&Self::pod_netns_name(ns, name));
            // Without a live agent, DEL cannot release; the node goes anyway.
            let agent_up = self.agent_pid(node).is_some_and(procs::alive);
            if exists && agent_up {
                if let Err(e) = self.del_pod(ns, name, node) {
                    problems.push(format!("{e:#}"));
                }
            }
        }
        // Then every namespace made, processes inside first.
        let mut names: Vec<String> = self
            .journaled()
            .into_iter()
            .filter_map(|m| match m {
                Made::Netns { name } => Some(name),
                _ => None,
            })
            .collect();
        names.extend(pods.iter().map(|(ns, n, _)| Self::pod_netns_name(ns, n)));
        names.extend(
            self.spec
                .nodes
                .iter()
                .map(|n| Self::node_netns_name(&n.name)),
        );
        names.extend(
            self.spec
                .fabrics
                .iter()
                .map(|f| self.fabric_netns_of(&f.name)),
        );
        names.extend(
            self.spec
                .routers
                .iter()
                .map(|r| Self::router_netns_name(&r.name)),
        );
        names.push(self.fabric_netns());
        names.sort();
        names.dedup();
        for name in &names {
            let p = netns::path(name);
            procs::stop(&procs::pids_in_netns(&p), Duration::from_secs(3));
            if let Err(e) = netns::delete(name) {
                problems.push(format!("{e:#}"));
            }
        }
        for m in self.journaled() {
            if let Made::Bpffs { path } = m {
                let _ = strake_datapath::Datapath::purge(&path);
            }
        }
        // The cgroups last: nothing runs in them once the namespaces are
        // gone, but a process that escaped the namespace sweep (or was
        // started into a node's cgroup by hand) is stopped here.
        let mut cgroups: Vec<PathBuf> = self
            .journaled()
            .into_iter()
            .filter_map(|m| match m {
                Made::Cgroup { path } => Some(path),
                _ => None,
            })
            .collect();
        if let Ok(base) = self.cgroup_base() {
            cgroups.push(base);
        }
        cgroups.sort();
        cgroups.dedup();
        for cg in &cgroups {
            if let Err(e) = procs::remove_cgroup(cg) {
                problems.push(format!("{e:#}"));
            }
        }
        let lab_bpffs = PathBuf::from("/sys/fs/bpf/strake-lab").join(&self.name);
        let _ = strake_datapath::Datapath::purge(&lab_bpffs);
        let _ = std::fs::remove_dir(PathBuf::from("/sys/fs/bpf/strake-lab"));
        if self.root.exists() {
            std::fs::remove_dir_all(&self.root)
                .with_context(|| format!("removing {}", self.root.display()))?;
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(
                "lab {} is down, with problems on the way:\n  {}",
                self.name,
                problems.join("\n  ")
            )
        }
    }

    /// A netlink connection into a node's namespace, for tests and tools.
    pub fn in_node<F, Fut, R>(&self, node: &str, f: F) -> Result<R>
    where
        F: FnOnce(Netlink) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<R>>,
        R: Send + 'static,
    {
        netns::with_netlink_in(&self.node_netns(node), f)
    }
}

/// `namespace/pod`, `node/<name>`, `ext/<name>` or `router/<name>`: the
/// namespace's path and name.
pub fn target_netns(target: &str) -> Result<(PathBuf, String)> {
    let (a, b) = target.split_once('/').ok_or_else(|| {
        anyhow!("{target}: expected namespace/pod, node/<name>, ext/<name> or router/<name>")
    })?;
    let name = match a {
        "node" => Lab::node_netns_name(b),
        "ext" => Lab::ext_netns_name(b),
        "router" => Lab::router_netns_name(b),
        _ => Lab::pod_netns_name(a, b),
    };
    let p = netns::path(&name);
    if !p.exists() {
        bail!("no network namespace {name} (is the lab up?)");
    }
    Ok((p, name))
}

/// The cgroup a lab runs the processes of a namespace in (nodes' and pods'
/// namespaces; None for externals and routers, which are not nodes).
pub fn cgroup_of_netns(netns_name: &str) -> Option<PathBuf> {
    std::fs::read_dir(LABS_ROOT)
        .ok()?
        .flatten()
        .find_map(|lab| std::fs::read_to_string(lab.path().join("cgroups").join(netns_name)).ok())
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| p.exists())
}

/// Names of a node's link into the fabric: (fabric end, node end before it
/// is renamed eth0). Short hashes keep them under 15 characters.
fn fabric_veth_names(node: &str) -> (String, String) {
    let mut h: u32 = 0x811c9dc5;
    for b in node.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    (format!("fab{h:08x}"), format!("upl{h:08x}"))
}

/// A program on PATH (or in the sbin directories, where Debian puts
/// daemons).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn tail(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
