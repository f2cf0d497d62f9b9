//! The socket load balancer's per-pod opt-out: pods annotated
//! `lb.strake.dev/socket-lb: "false"` keep the Service address on the wire
//! (their traffic is translated per packet on their veth), for workloads
//! that must see the VIP in packets. The programs know a pod by its network
//! namespace's cookie, so this phase keeps st_sock_optout equal to the
//! cookies of the annotated pods attached here.

use super::{LocalEvent, Outcome, Pass, Phase};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use strake_source::{Kind, KindSet, ObjectKey};

/// The annotation, on a Pod; `"false"` opts it out.
pub const SOCKET_LB_ANNOTATION: &str = "lb.strake.dev/socket-lb";

/// The kernel's side of this phase.
pub trait SockKernel: Send {
    /// Attached pods: (pod, its network namespace).
    fn pods(&self) -> Vec<(ObjectKey, PathBuf)>;
    fn netns_cookie(&self, netns: &Path) -> Result<u64>;
    fn opted_out(&self) -> Result<Vec<u64>>;
    fn set_opt_out(&mut self, cookie: u64, out: bool) -> Result<()>;
}

pub struct SocketLbPhase<K> {
    pub kernel: K,
    /// Cookies by namespace path: a namespace keeps its cookie for life,
    /// and a pod's path names one namespace while the pod is attached.
    cookies: BTreeMap<PathBuf, u64>,
}

impl<K> SocketLbPhase<K> {
    pub fn new(kernel: K) -> Self {
        SocketLbPhase {
            kernel,
            cookies: BTreeMap::new(),
        }
    }
}

fn opted_out(state: &strake_source::ClusterState, pod: &ObjectKey) -> bool {
    state
        .pods
        .get(pod)
        .and_then(|p| p.metadata.annotations.as_ref())
        .and_then(|a| a.get(SOCKET_LB_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

impl<K: SockKernel> Phase for SocketLbPhase<K> {
    fn name(&self) -> &'static str {
        "socket_lb"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[Kind::Pod])
    }

    fn note_local(&mut self, event: &LocalEvent) -> bool {
        matches!(event, LocalEvent::Endpoint(_))
    }

    fn reconcile(&mut self, pass: &Pass<'_>) -> Result<Outcome> {
        let pods = self.kernel.pods();
        let live: BTreeSet<&PathBuf> = pods.iter().map(|(_, n)| n).collect();
        self.cookies.retain(|p, _| live.contains(p));
        let mut want = BTreeSet::new();
        for (pod, netns) in &pods {
            if !opted_out(pass.state, pod) {
                continue;
            }
            let cookie = match self.cookies.get(netns) {
                Some(c) => *c,
                None => match self.kernel.netns_cookie(netns) {
                    Ok(c) => {
                        self.cookies.insert(netns.clone(), c);
                        c
                    }
                    // The pod is going away (its namespace with it).
                    Err(e) => {
                        tracing::debug!(%pod, netns = %netns.display(), error = format!("{e:#}"), "no netns cookie");
                        continue;
                    }
                },
            };
            want.insert(cookie);
        }
        let have: BTreeSet<u64> = self.kernel.opted_out()?.into_iter().collect();
        let mut changes = 0;
        for c in want.difference(&have) {
            self.kernel.set_opt_out(*c, true)?;
            changes += 1;
        }
        // Only a complete view may take an opt-out away.
        if pass.state.synced {
            for c in have.difference(&want) {
                self.kernel.set_opt_out(*c, false)?;
                changes += 1;
            }
        }
        Ok(Outcome::applied(changes))
    }
}

/// The phase's kernel: the agent's endpoint records and the data plane.
pub struct KernelSock {
    pub ipam: Arc<Mutex<strake_ipam::Ipam<crate::agent::EndpointRecord>>>,
    pub dp: Arc<Mutex<strake_datapath::Datapath>>,
}

impl SockKernel for KernelSock {
    fn pods(&self) -> Vec<(ObjectKey, PathBuf)> {
        let ipam = self.ipam.lock().unwrap_or_else(|e| e.into_inner());
        ipam.allocations()
            .filter_map(|a| {
                let pod = a.record.pod.as_ref()?;
                let netns = a.record.netns.as_ref()?;
                Some((
                    ObjectKey::new(pod.namespace.clone(), pod.name.clone()),
                    PathBuf::from(netns),
                ))
            })
            .collect()
    }
    fn netns_cookie(&self, netns: &Path) -> Result<u64> {
        strake_netlink::netns::cookie(netns)
    }
    fn opted_out(&self) -> Result<Vec<u64>> {
        self.dp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sock
            .opted_out()
    }
    fn set_opt_out(&mut self, cookie: u64, out: bool) -> Result<()> {
        self.dp
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sock
            .set_opt_out(cookie, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        pods: Vec<(ObjectKey, PathBuf)>,
        out: BTreeSet<u64>,
    }

    impl SockKernel for Fake {
        fn pods(&self) -> Vec<(ObjectKey, PathBuf)> {
            self.pods.clone()
        }
        fn netns_cookie(&self, netns: &Path) -> Result<u64> {
            Ok(netns.to_string_lossy().len() as u64)
        }
        fn opted_out(&self) -> Result<Vec<u64>> {
            Ok(self.out.iter().copied().collect())
        }
        fn set_opt_out(&mut self, cookie: u64, out: bool) -> Result<()> {
            if out {
                self.out.insert(cookie);
            } else {
                self.out.remove(&cookie);
            }
            Ok(())
        }
    }

    fn pod(name: &str, annotation: Option<&str>) -> String {
        let ann = annotation
            .map(|v| format!(", annotations: {{{SOCKET_LB_ANNOTATION}: \"{v}\"}}"))
            .unwrap_or_default();
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{namespace: d, name: {name}{ann}}}\nspec: {{nodeName: a}}\n---\n")
    }

    #[test]
    fn only_pods_annotated_false_are_opted_out_and_the_annotation_can_be_removed() {
        let mut phase = SocketLbPhase::new(Fake {
            pods: vec![
                (ObjectKey::new("d", "p1"), PathBuf::from("/run/netns/p1")),
                (ObjectKey::new("d", "p22"), PathBuf::from("/run/netns/p22")),
                (
                    ObjectKey::new("d", "p333"),
                    PathBuf::from("/run/netns/p333"),
                ),
            ],
            ..Default::default()
        });
        let text = pod("p1", Some("false")) + &pod("p22", Some("true")) + &pod("p333", None);
        let mut st = strake_source::dir::state_from_yaml(&text).unwrap();
        st.synced = true;
        let pass = Pass {
            state: &st,
            full: true,
            revision: 1,
        };
        phase.reconcile(&pass).unwrap();
        let p1 = "/run/netns/p1".len() as u64;
        assert_eq!(phase.kernel.out, BTreeSet::from([p1]));
        let mut st = strake_source::dir::state_from_yaml(&pod("p1", None)).unwrap();
        st.synced = true;
        let pass = Pass {
            state: &st,
            full: true,
            revision: 2,
        };
        phase.reconcile(&pass).unwrap();
        assert!(phase.kernel.out.is_empty());
    }
}
