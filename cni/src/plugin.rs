//! The plugin's commands. The split of work: the plugin builds the veth and
//! configures both ends over netlink; the agent owns addresses (IPAM) and the
//! data plane (map entry, programs), reached over its socket.

use crate::spec::{
    code, CniError, CniResult, Env, Interface, IpConfig, NetConf, RouteConf, VersionInfo,
    SUPPORTED_VERSIONS,
};
use anyhow::Context;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;
use strake_api::{
    host_ifname, Allocation, ApiError, Attached, AttachmentKey, CheckReport, Client, ErrorKind,
    GcReport, PodRef, Pong, Released, Request, POD_GATEWAY,
};
use strake_netlink::{fmt_mac, netns, Netlink, Route4};

/// What a command prints on success (nothing for DEL, CHECK, GC, STATUS).
pub type Output = Option<String>;

/// Parses stdin as the network configuration, with the spec's error codes:
/// not JSON → 6; unsupported version → 1; JSON of the wrong shape → 7.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let v: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("network configuration is not valid JSON: {e}"),
        )
    })?;
    let version = v.get("cniVersion").and_then(|x| x.as_str()).unwrap_or("");
    if version.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "network configuration has no cniVersion",
        ));
    }
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {version} is not supported; use one of {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let conf: NetConf = serde_json::from_value(v).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("invalid network configuration: {e}"),
        )
    })?;
    if conf.name.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "network configuration has an empty name",
        ));
    }
    if conf.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("mtu {} is out of range 68..65535", conf.mtu.unwrap()),
        ));
    }
    Ok(conf)
}

pub fn version_info(stdin: &[u8]) -> String {
    let v = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|x| x.as_str())
                .map(String::from)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| crate::spec::LATEST.to_string());
    serde_json::to_string(&VersionInfo {
        cni_version: v,
        supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
    })
    .expect("serializable")
}

fn client(conf: &NetConf) -> Client {
    Client::new(
        conf.agent_socket
            .clone()
            .unwrap_or_else(|| strake_api::DEFAULT_SOCKET.to_string()),
    )
    .with_timeout(Duration::from_secs(conf.agent_timeout.unwrap_or(30)))
}

/// Maps the agent's errors onto the spec's codes.
fn api_err(e: ApiError) -> CniError {
    let c = match e.kind {
        ErrorKind::TryAgainLater | ErrorKind::Exhausted => code::TRY_AGAIN_LATER,
        ErrorKind::NotFound => code::UNKNOWN_CONTAINER,
        ErrorKind::InvalidRequest => code::INVALID_CONFIG,
        ErrorKind::Forbidden | ErrorKind::Internal => code::AGENT_FAILURE,
    };
    CniError::new(c, e.message)
}

fn io_err(e: anyhow::Error) -> CniError {
    CniError::new(code::IO_FAILURE, format!("{e:#}"))
}

fn key(conf: &NetConf, env: &Env) -> Result<AttachmentKey, CniError> {
    Ok(AttachmentKey {
        network: conf.name.clone(),
        container_id: env.container_id()?.to_string(),
        ifname: env.ifname()?.to_string(),
    })
}

fn pod_ref(env: &Env) -> Result<Option<PodRef>, CniError> {
    let args = env.args()?;
    Ok(
        match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
            (Some(ns), Some(n)) => Some(PodRef {
                namespace: ns.clone(),
                name: n.clone(),
            }),
            _ => None,
        },
    )
}

fn open_netns(env: &Env) -> Result<File, CniError> {
    let p = env.netns.as_deref().unwrap_or("");
    File::open(p).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS={p}: cannot open the network namespace: {e}"),
        )
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("starting a runtime: {e}")))
}

pub fn cmd_add(conf: &NetConf, env: &Env) -> Result<Output, CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])?;
    let key = key(conf, env)?;
    let pod = pod_ref(env)?;
    let ns_file = open_netns(env)?;
    let ns_path = env.netns.clone().unwrap();
    let agent = client(conf);

    let alloc: Allocation = agent
        .call(&Request::Allocate {
            key: key.clone(),
            pod,
            netns: Some(ns_path.clone()),
        })
        .map_err(api_err)?;
    // The data plane is programmed (in the agent) while the pod side is
    // configured (here): attaching waits on the kernel, configuring does not.
    let attach_key = key.clone();
    let attach_agent = agent.clone();
    let attach = move |pod_mac: [u8; 6]| -> Result<(), CniError> {
        let _: Attached = attach_agent
            .call(&Request::Attach {
                key: attach_key,
                pod_mac,
            })
            .map_err(api_err)?;
        Ok(())
    };
    match plumb(conf, &key, &alloc, &ns_file, &ns_path, attach) {
        Ok((host_mac, pod_mac, mtu)) => {
            let result = build_result(conf, env, &alloc, host_mac, pod_mac, mtu)?;
            Ok(Some(serde_json::to_string(&result).expect("serializable")))
        }
        Err(e) => {
            // Leave nothing half-made: the agent's release removes the veth
            // (and its peer), the map entry, the links and the address.
            if agent
                .call::<Released>(&Request::Release { key: key.clone() })
                .is_err()
            {
                let _ = runtime().and_then(|rt| {
                    rt.block_on(async {
                        let nl = Netlink::connect().map_err(io_err)?;
                        nl.delete_link_by_name(&alloc.host_ifname)
                            .await
                            .map_err(io_err)
                    })
                });
            }
            Err(e)
        }
    }
}

/// Builds the veth pair and configures both ends, running `attach` (the
/// agent's half) alongside the pod side. Returns (host MAC, pod MAC, MTU).
fn plumb(
    conf: &NetConf,
    key: &AttachmentKey,
    alloc: &Allocation,
    ns_file: &File,
    ns_path: &str,
    attach: impl FnOnce([u8; 6]) -> Result<(), CniError> + Send + 'static,
) -> Result<([u8; 6], [u8; 6], u32), CniError> {
    let host = alloc.host_ifname.clone();
    let ifname = key.ifname.clone();
    let mtu = conf.mtu.unwrap_or(alloc.mtu);
    let ip = alloc.ip;
    let pod_mac = strake_api::pod_mac(ip);
    let ns_fd = ns_file.as_raw_fd();
    let rt = runtime()?;
    // Node side: the veth, its peer born in the pod's namespace as CNI_IFNAME
    // (no move between namespaces, which waits for an RCU grace period).
    let peer = ifname.clone();
    let host_link = rt
        .block_on(async {
            let nl = Netlink::connect()?;
            // Leftovers of an earlier, failed attempt with the same key.
            nl.delete_link_by_name(&host).await?;
            nl.create_veth_into(&host, &peer, ns_fd, pod_mac, mtu)
                .await?;
            let h = nl
                .link_by_name(&host)
                .await?
                .context("the new host veth vanished")?;
            // No IPv6 on the node's side of a pod until strake routes it:
            // a pod's router advertisement configures nothing here
            // (docs/threat-model.md, "Pods").
            netns::disable_ipv6(&host)?;
            nl.set_up(h.index).await?;
            nl.replace_route(&Route4::to_pod(ip, h.index)).await?;
            anyhow::Ok(h)
        })
        .map_err(|e| {
            if format!("{e:#}").contains("File exists") {
                CniError::new(
                    code::IO_FAILURE,
                    format!("interface {ifname} already exists in the pod's network namespace"),
                )
            } else {
                io_err(e)
            }
        })?;
    let attaching = std::thread::spawn(move || attach(pod_mac));
    // Pod side.
    let host_mac = host_link.mac;
    let pod_side = netns::with_netlink_in(Path::new(ns_path), move |nl| async move {
        let l = nl
            .link_by_name(&ifname)
            .await?
            .context("the veth did not arrive in the pod's namespace")?;
        nl.set_up(l.index).await?;
        nl.add_address(l.index, ip, 32).await?;
        // The gateway is a permanent neighbour: no ARP, no proxy_arp, no
        // dependence on the node having a route to 169.254.1.1.
        nl.add_permanent_neighbour(l.index, POD_GATEWAY, host_mac)
            .await?;
        let mut gw = Route4::to(POD_GATEWAY, 32);
        gw.oif = Some(l.index);
        gw.scope_link = true;
        gw.protocol = 4; // static
        nl.replace_route(&gw).await?;
        let mut default = Route4::to(Ipv4Addr::UNSPECIFIED, 0);
        default.gateway = Some(POD_GATEWAY);
        default.oif = Some(l.index);
        default.protocol = 4;
        nl.replace_route(&default).await?;
        Ok(())
    })
    .map_err(io_err);
    let attached = attaching
        .join()
        .map_err(|_| CniError::new(code::AGENT_FAILURE, "attach thread panicked"))?;
    pod_side?;
    attached?;
    Ok((host_mac, pod_mac, mtu))
}

fn build_result(
    conf: &NetConf,
    env: &Env,
    alloc: &Allocation,
    host_mac: [u8; 6],
    pod_mac: [u8; 6],
    mtu: u32,
) -> Result<CniResult, CniError> {
    // Chained after another plugin: extend its result rather than replace it.
    let mut result: CniResult = match &conf.prev_result {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("prevResult does not parse: {e}"),
            )
        })?,
        None => CniResult::default(),
    };
    let base = result.interfaces.len();
    result.interfaces.push(Interface {
        name: alloc.host_ifname.clone(),
        mac: Some(fmt_mac(&host_mac)),
        mtu: Some(mtu),
        ..Default::default()
    });
    result.interfaces.push(Interface {
        name: env.ifname.clone().unwrap(),
        mac: Some(fmt_mac(&pod_mac)),
        mtu: Some(mtu),
        sandbox: env.netns.clone(),
        ..Default::default()
    });
    result.ips.push(IpConfig {
        version: None,
        address: format!("{}/32", alloc.ip),
        gateway: Some(alloc.gateway.to_string()),
        interface: Some(base + 1),
    });
    result.routes.push(RouteConf {
        dst: "0.0.0.0/0".into(),
        gw: Some(alloc.gateway.to_string()),
        ..Default::default()
    });
    if conf.dns.is_some() {
        result.dns = conf.dns.clone();
    }
    Ok(result.for_version(&conf.cni_version))
}

pub fn cmd_del(conf: &NetConf, env: &Env) -> Result<Output, CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_IFNAME"])?;
    let key = key(conf, env)?;
    // The agent undoes everything, the veth included (its peer in the pod
    // goes with it), so DEL needs no netns: it may be gone already.
    match client(conf).call::<Released>(&Request::Release { key: key.clone() }) {
        Ok(_) => Ok(None),
        Err(e) => {
            // Free what we can without the agent, then let the runtime retry
            // for the rest (address, map entry, links).
            let _ = runtime()?.block_on(async {
                let nl = Netlink::connect()?;
                nl.delete_link_by_name(&host_ifname(&key)).await
            });
            Err(api_err(e))
        }
    }
}

pub fn cmd_check(conf: &NetConf, env: &Env) -> Result<Output, CniError> {
    env.require(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])?;
    if !crate::spec::version_at_least(&conf.cni_version, "0.4.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "CHECK needs cniVersion 0.4.0 or later",
        ));
    }
    let key = key(conf, env)?;
    let prev: CniResult = conf
        .prev_result
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult"))
        .and_then(|v| {
            serde_json::from_value(v).map_err(|e| {
                CniError::new(
                    code::DECODE_FAILURE,
                    format!("prevResult does not parse: {e}"),
                )
            })
        })?;
    let ns_path = env.netns.clone().unwrap();
    open_netns(env)?;
    // The agent's view first: a container it does not know is "unknown
    // container" (3), not drift in a pod that was never ours.
    let report: CheckReport = client(conf)
        .call(&Request::Check { key: key.clone() })
        .map_err(api_err)?;
    // Our interface in prevResult: named CNI_IFNAME, in this sandbox.
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == key.ifname && i.sandbox.as_deref() == Some(ns_path.as_str()))
        .ok_or_else(|| {
            CniError::new(
                code::DRIFT,
                format!("prevResult has no interface {} in {ns_path}", key.ifname),
            )
        })?;
    let (ip, prefix) = prev
        .ips
        .iter()
        .find(|i| i.interface == Some(idx))
        .and_then(|i| i.address.split_once('/'))
        .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
        .ok_or_else(|| {
            CniError::new(
                code::DRIFT,
                format!("prevResult has no IPv4 address for {}", key.ifname),
            )
        })?;

    let mut problems = Vec::new();
    let ifname = key.ifname.clone();
    let pod_view = netns::with_netlink_in(Path::new(&ns_path), move |nl| async move {
        let mut p = Vec::new();
        match nl.link_by_name(&ifname).await? {
            None => p.push(format!("interface {ifname} is missing in the pod")),
            Some(l) => {
                if !l.up {
                    p.push(format!("interface {ifname} is down in the pod"));
                }
                if !nl.addresses(l.index).await?.contains(&(ip, prefix)) {
                    p.push(format!(
                        "address {ip}/{prefix} is missing on {ifname} in the pod"
                    ));
                }
                let routes = nl.routes(None).await?;
                if !routes
                    .iter()
                    .any(|r| r.prefix == 0 && r.gateway == Some(POD_GATEWAY))
                {
                    p.push(format!(
                        "default route via {POD_GATEWAY} is missing in the pod"
                    ));
                }
            }
        }
        Ok(p)
    })
    .map_err(io_err)?;
    problems.extend(pod_view);
    problems.extend(report.problems);
    if problems.is_empty() {
        Ok(None)
    } else {
        Err(CniError::new(
            code::DRIFT,
            format!(
                "attachment differs from its result: {}",
                problems.join("; ")
            ),
        ))
    }
}

pub fn cmd_gc(conf: &NetConf) -> Result<Output, CniError> {
    if !crate::spec::version_at_least(&conf.cni_version, "1.1.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "GC needs cniVersion 1.1.0",
        ));
    }
    let valid = conf
        .valid_attachments
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| AttachmentKey {
            network: conf.name.clone(),
            container_id: a.container_id,
            ifname: a.ifname,
        })
        .collect();
    let _: GcReport = client(conf)
        .call(&Request::Gc {
            network: conf.name.clone(),
            valid,
        })
        .map_err(api_err)?;
    Ok(None)
}

pub fn cmd_status(conf: &NetConf) -> Result<Output, CniError> {
    if !crate::spec::version_at_least(&conf.cni_version, "1.1.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "STATUS needs cniVersion 1.1.0",
        ));
    }
    let pong: Pong = client(conf)
        .with_timeout(Duration::from_secs(5))
        .call(&Request::Ping)
        .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.message))?;
    if !pong.datapath_ok {
        return Err(CniError::new(
            code::NOT_AVAILABLE_LIMITED,
            format!(
                "strake-agent on {} has not attached its data plane to the uplink yet",
                pong.node
            ),
        ));
    }
    if !pong.can_add {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "strake-agent on {} cannot add pods: {}",
                pong.node,
                pong.reason.unwrap_or_default()
            ),
        ));
    }
    Ok(None)
}
