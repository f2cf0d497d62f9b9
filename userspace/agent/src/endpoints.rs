//! Endpoints: a pod's address, its veth and its place in the data plane.
//!
//! The CNI plugin drives the life of an endpoint through the API: Allocate
//! (address, saved), Attach (map entry, then programs), Release (everything
//! undone, the address last, so it is never reused while anything of the old
//! endpoint remains). The agent only ever rebuilds kernel state from its
//! records, so a restart re-derives the same state and changes nothing.

use crate::agent::{Agent, EndpointRecord};
use crate::reconcile::endpoints::{EndpointKernel, KernelEndpoints};
use crate::reconcile::policy::DatapathPolicy;
use crate::reconcile::LocalEvent;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use strake_api::{
    host_ifname, Allocation, ApiError, Attached, AttachmentKey, CheckReport, EndpointView,
    ErrorKind, GcReport, PodRef, Released, POD_GATEWAY,
};
use strake_datapath::shared::endpoint_info;
use strake_ipam::Block;
use strake_netlink::STRAKE_POD_ROUTE_PROTO;
use strake_policy::compile::LocalEndpoint;
use strake_source::ObjectKey;

fn internal_ctx(e: anyhow::Error) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("{e:#}"))
}

fn pod_key(p: &PodRef) -> ObjectKey {
    ObjectKey::new(p.namespace.clone(), p.name.clone())
}

/// The node's endpoints as the policy compiler sees them.
pub fn local_endpoints(ipam: &Mutex<strake_ipam::Ipam<EndpointRecord>>) -> Vec<LocalEndpoint> {
    let ipam = ipam.lock().unwrap_or_else(|e| e.into_inner());
    ipam.allocations()
        .map(|a| LocalEndpoint {
            pod: a.record.pod.as_ref().map(pod_key),
            endpoint_id: a.record.endpoint_id,
            ip: a.ip,
        })
        .collect()
}

impl Agent {
    /// The node's pod block from desired state, or why there is none yet.
    pub fn pod_block(&self) -> Result<Block, ApiError> {
        let st = self.state();
        if !st.synced {
            return Err(ApiError::new(
                ErrorKind::TryAgainLater,
                "desired state is not loaded yet",
            ));
        }
        let (net, prefix) = st.node_pod_cidr(self.node()).ok_or_else(|| {
            ApiError::new(
                ErrorKind::TryAgainLater,
                format!(
                    "node {} has no spec.podCIDR (or no Node object) yet",
                    self.node()
                ),
            )
        })?;
        Ok(Block::new(net, prefix))
    }

    pub fn allocate(
        &self,
        key: AttachmentKey,
        pod: Option<PodRef>,
        netns: Option<String>,
    ) -> Result<Allocation, ApiError> {
        let _cni = self.cni_lock();
        let block = self.pod_block()?;
        let mtu = self.pod_mtu().map_err(internal_ctx)?;
        let mut ipam = self.ipam();
        ipam.set_block(block)?;
        // The lowest free id: ids index per-endpoint counters, so they stay
        // small and are reused (release forgets what the last owner left).
        let used: std::collections::BTreeSet<u32> =
            ipam.allocations().map(|a| a.record.endpoint_id).collect();
        let endpoint_id = (1..strake_datapath::shared::STRAKE_MAX_ENDPOINT_IDS)
            .find(|i| !used.contains(i))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Exhausted,
                    "no free endpoint id; the node has too many pods",
                )
            })?;
        let record = EndpointRecord {
            pod: pod.clone(),
            netns,
            host_ifname: host_ifname(&key),
            endpoint_id,
            pod_mac: None,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let ip = ipam.allocate(key.clone(), record)?;
        let rec = &ipam.get(&key).expect("just allocated").record;
        tracing::info!(%key, %ip, pod = ?pod.map(|p| p.to_string()), host_ifname = %rec.host_ifname, "allocated");
        Ok(Allocation {
            ip,
            gateway: POD_GATEWAY,
            pod_cidr: block.to_string(),
            mtu,
            host_ifname: rec.host_ifname.clone(),
        })
    }

    pub fn attach(&self, key: &AttachmentKey, pod_mac: [u8; 6]) -> Result<Attached, ApiError> {
        let _cni = self.cni_lock();
        let alloc = self.ipam().get(key).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("no address was allocated for {key}; call allocate first"),
            )
        })?;
        let link = self
            .block_on(self.nl.link_by_name(&alloc.record.host_ifname))
            .map_err(internal_ctx)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!("host veth {} does not exist", alloc.record.host_ifname),
                )
            })?;
        // NetworkPolicy first: a pod a policy isolates must be isolated from
        // its very first packet. Its identity (compiled by the policy phase
        // from its Pod object) carries its rules: one entry to write.
        let pod = alloc.record.pod.as_ref().map(pod_key);
        let (identity, flags) = self.policy.lock().unwrap().endpoint_policy(pod.as_ref());
        let info = endpoint_info {
            ifindex: link.index,
            flags,
            pod_mac,
            host_mac: link.mac,
            endpoint_id: alloc.record.endpoint_id,
            identity,
        };
        {
            let mut dp = self.dp();
            dp.upsert_endpoint(alloc.ip, info).map_err(internal_ctx)?;
            if let Err(e) = dp.attach_endpoint(&alloc.record.host_ifname) {
                let _ = dp.remove_endpoint(alloc.ip);
                return Err(internal_ctx(e));
            }
        }
        // In memory only (saved with the next allocation or release): after
        // a crash the data-plane entry, which carries the endpoint id and
        // the pod MAC, shows the endpoint attached (`attached_mac`). One
        // fsync per ADD, not two.
        let mut rec = alloc.record.clone();
        rec.pod_mac = Some(pod_mac);
        self.ipam().note(key, rec);
        self.metrics.endpoints.set(self.ipam().len() as i64);
        let _ = self
            .local_events
            .send(LocalEvent::Endpoint(alloc.record.pod.as_ref().map(pod_key)));
        tracing::info!(%key, ip = %alloc.ip, ifindex = link.index, "endpoint attached");
        Ok(Attached {
            endpoint_id: alloc.record.endpoint_id,
            host_mac: link.mac,
        })
    }

    /// Undoes an attachment. Safe to repeat, and safe for an attachment the
    /// agent never heard of (it still removes a veth of the derived name).
    pub fn release(&self, key: &AttachmentKey) -> Result<Released, ApiError> {
        let _cni = self.cni_lock();
        self.release_locked(key)
    }

    fn release_locked(&self, key: &AttachmentKey) -> Result<Released, ApiError> {
        let alloc = self.ipam().get(key).cloned();
        let ifname = alloc
            .as_ref()
            .map(|a| a.record.host_ifname.clone())
            .unwrap_or_else(|| host_ifname(key));
        if let Some(a) = &alloc {
            // Only remove the map entry if it is still ours.
            let mut dp = self.dp();
            let ours = dp
                .endpoint_entry(a.ip)
                .map_err(internal_ctx)?
                .is_some_and(|e| e.endpoint_id == a.record.endpoint_id);
            if ours {
                dp.remove_endpoint(a.ip).map_err(internal_ctx)?;
            }
        }
        // The veth first: its programs go with it. Dropping the pinned links
        // of a live veth would detach each one on its own, an RCU grace
        // period apiece under RTNL (docs/kernel-notes.md); after the veth is
        // gone the pins hold defunct links, and removing them is free.
        self.block_on(self.nl.delete_link_by_name(&ifname))
            .map_err(internal_ctx)?;
        self.dp().detach_endpoint(&ifname).map_err(internal_ctx)?;
        if let Some(a) = &alloc {
            // The id will be reused: its next owner starts clean.
            let mut dp = self.dp();
            dp.ct
                .forget_policy_flows(a.record.endpoint_id)
                .map_err(internal_ctx)?;
            dp.policy
                .reset_drops(a.record.endpoint_id)
                .map_err(internal_ctx)?;
        }
        let released = self.ipam().release(key)?;
        self.metrics.endpoints.set(self.ipam().len() as i64);
        if let Some(a) = &released {
            let _ = self
                .local_events
                .send(LocalEvent::Endpoint(a.record.pod.as_ref().map(pod_key)));
            tracing::info!(%key, ip = %a.ip, "released");
        }
        Ok(Released {
            ip: released.map(|a| a.ip),
        })
    }

    pub fn check(&self, key: &AttachmentKey) -> Result<CheckReport, ApiError> {
        let mut problems = Vec::new();
        // The spec's "unknown container" (3): nothing to compare, and
        // nothing for the runtime to clean up.
        let Some(alloc) = self.ipam().get(key).cloned() else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("strake-agent has no record of {key}: it was never added, or was deleted"),
            ));
        };
        let ifname = &alloc.record.host_ifname;
        let link = self
            .block_on(self.nl.link_by_name(ifname))
            .map_err(internal_ctx)?;
        match &link {
            None => problems.push(format!("host veth {ifname} is missing")),
            Some(l) if !l.up => problems.push(format!("host veth {ifname} is down")),
            _ => {}
        }
        let entry = self.dp().endpoint_entry(alloc.ip).map_err(internal_ctx)?;
        if crate::reconcile::endpoints::attached_mac(&alloc.record, entry.as_ref()).is_none() {
            problems.push(format!("{key} was allocated but never attached"));
        }
        match (&entry, &link) {
            (None, _) => problems.push(format!("no data-plane entry for {}", alloc.ip)),
            (Some(e), Some(l)) if e.ifindex != l.index => problems.push(format!(
                "data-plane entry for {} points at ifindex {}, but {ifname} is {}",
                alloc.ip, e.ifindex, l.index
            )),
            _ => {}
        }
        if let Some(l) = &link {
            match self.dp().endpoint_attached(ifname) {
                Ok(true) => {}
                Ok(false) => problems.push(format!("strake programs are not attached to {ifname}")),
                Err(e) => problems.push(format!("cannot query programs on {ifname}: {e:#}")),
            }
            let routes = self
                .block_on(self.nl.routes(Some(STRAKE_POD_ROUTE_PROTO)))
                .map_err(internal_ctx)?;
            if !routes
                .iter()
                .any(|r| r.dst == alloc.ip && r.prefix == 32 && r.oif == Some(l.index))
            {
                problems.push(format!("route {}/32 dev {ifname} is missing", alloc.ip));
            }
        }
        Ok(CheckReport { problems })
    }

    pub fn gc(&self, network: &str, valid: &[AttachmentKey]) -> Result<GcReport, ApiError> {
        let _cni = self.cni_lock();
        let valid: BTreeSet<&AttachmentKey> = valid.iter().collect();
        let stale: Vec<AttachmentKey> = self
            .ipam()
            .allocations()
            .filter(|a| a.key.network == network && !valid.contains(&a.key))
            .map(|a| a.key.clone())
            .collect();
        for key in &stale {
            self.release_locked(key)?;
        }
        let records = self.endpoint_kernel().records();
        let swept = crate::reconcile::endpoints::sweep(&mut self.endpoint_kernel(), &records)
            .map_err(internal_ctx)?;
        tracing::info!(
            network,
            released = stale.len(),
            swept = swept.len(),
            "garbage collected"
        );
        Ok(GcReport {
            released: stale,
            swept,
        })
    }

    /// Brings the data plane in line with the records after a start: map
    /// entries rewritten with live interface data, pinned links taken over
    /// (program swapped atomically), leftovers of crashes swept.
    pub fn restore_endpoints(&self) -> anyhow::Result<()> {
        let _cni = self.cni_lock();
        let r = crate::reconcile::endpoints::repair(&mut self.endpoint_kernel(), true)?;
        self.metrics.endpoints.set(self.ipam().len() as i64);
        tracing::info!(restored = r.restored, vanished = r.vanished, swept = ?r.swept, "endpoints restored");
        Ok(())
    }

    fn cni_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.endpoints_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn endpoint_kernel(&self) -> KernelEndpoints {
        KernelEndpoints {
            ipam: self.ipam.clone(),
            dp: self.dp.clone(),
            nl: self.nl.clone(),
            rt: self.rt.clone(),
        }
    }

    pub fn policy_kernel(
        &self,
    ) -> DatapathPolicy<impl Fn() -> Vec<LocalEndpoint> + Send + 'static> {
        let ipam = self.ipam.clone();
        DatapathPolicy {
            dp: self.dp.clone(),
            local: move || local_endpoints(&ipam),
        }
    }

    pub fn endpoint_views(&self) -> Result<Vec<EndpointView>, ApiError> {
        let entries = self.dp().endpoint_entries().map_err(internal_ctx)?;
        let ipam = self.ipam();
        Ok(ipam
            .allocations()
            .map(|a| EndpointView {
                pod: a.record.pod.clone(),
                ip: a.ip,
                host_ifname: a.record.host_ifname.clone(),
                container_id: a.key.container_id.clone(),
                ifname: a.key.ifname.clone(),
                network: a.key.network.clone(),
                endpoint_id: a.record.endpoint_id,
                attached: entries
                    .iter()
                    .any(|(ip, e)| *ip == a.ip && e.endpoint_id == a.record.endpoint_id),
            })
            .collect())
    }
}
