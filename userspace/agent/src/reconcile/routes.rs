//! Routes between nodes: every other node's pod CIDR via its InternalIP
//! (direct routing, no tunnel), and a blackhole for this node's own block so
//! an unassigned pod address never leaks to the default route. Only routes
//! tagged with strake's protocol number are ever touched.
//!
//! Desired routes are few (one per node), so every pass observes the table.

use super::{Outcome, Pass, Phase};
use anyhow::Result;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use strake_netlink::{Netlink, Route4, STRAKE_ROUTE_PROTO};
use strake_source::{ClusterState, Kind, KindSet};

/// The kernel's side of this phase: strake's node routes.
pub trait RouteTable: Send {
    /// Routes tagged with strake's node-route protocol.
    fn routes(&self) -> Result<Vec<Route4>>;
    fn replace(&self, r: &Route4) -> Result<()>;
    fn delete(&self, r: &Route4) -> Result<()>;
}

/// The node's routing table over rtnetlink.
pub struct NetlinkRoutes {
    pub nl: Netlink,
    pub rt: tokio::runtime::Handle,
}

impl RouteTable for NetlinkRoutes {
    fn routes(&self) -> Result<Vec<Route4>> {
        self.rt.block_on(self.nl.routes(Some(STRAKE_ROUTE_PROTO)))
    }
    fn replace(&self, r: &Route4) -> Result<()> {
        self.rt.block_on(self.nl.replace_route(r))
    }
    fn delete(&self, r: &Route4) -> Result<()> {
        self.rt.block_on(self.nl.delete_route(r))
    }
}

/// The node routes this node should have.
pub fn desired_routes(state: &ClusterState, me: &str) -> BTreeSet<Route4> {
    let mut out = BTreeSet::new();
    for name in state.nodes.keys() {
        let Some((net, prefix)) = state.node_pod_cidr(name) else {
            continue;
        };
        let mut r = Route4::to(net, prefix);
        if name == me {
            r.blackhole = true;
        } else {
            let Some(gw) = state.node_internal_ip(name) else {
                continue;
            };
            r.gateway = Some(gw);
        }
        out.insert(r);
    }
    out
}

/// Identity of a route for diffing: what it is, not how the kernel echoes it.
fn shape(r: &Route4) -> (Ipv4Addr, u8, Option<Ipv4Addr>, bool) {
    (r.dst, r.prefix, r.gateway, r.blackhole)
}

pub struct RoutesPhase<T> {
    pub table: T,
    pub node: String,
    /// Desired routes, for status.
    pub installed: Arc<AtomicUsize>,
}

impl<T: RouteTable> Phase for RoutesPhase<T> {
    fn name(&self) -> &'static str {
        "routes"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[Kind::Node])
    }

    fn reconcile(&mut self, pass: &Pass<'_>) -> Result<Outcome> {
        let desired = desired_routes(pass.state, &self.node);
        let current = self.table.routes()?;
        let want: BTreeSet<_> = desired.iter().map(shape).collect();
        let have: BTreeSet<_> = current.iter().map(shape).collect();
        let mut changes = 0;
        // Every route is tried: one node's bad address must not keep the
        // others unreachable. The first failure is what the pass reports.
        let mut failed = None;
        for r in current.iter().filter(|r| !want.contains(&shape(r))) {
            match self.table.delete(r) {
                Ok(()) => {
                    tracing::info!(route = %r, "withdrew node route");
                    changes += 1;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        for r in desired.iter().filter(|r| !have.contains(&shape(r))) {
            match self.table.replace(r) {
                Ok(()) => {
                    tracing::info!(route = %r, "installed node route");
                    changes += 1;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        self.installed.store(
            desired.len() - usize::from(failed.is_some()),
            Ordering::Relaxed,
        );
        match failed {
            Some(e) => Err(e),
            None => Ok(Outcome::applied(changes)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default, Clone)]
    pub struct FakeTable {
        pub routes: Arc<Mutex<Vec<Route4>>>,
        /// Routes via this gateway cannot be installed.
        pub unreachable: Arc<Mutex<Option<Ipv4Addr>>>,
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
            t.retain(|x| (x.dst, x.prefix) != (r.dst, r.prefix));
            t.push(r.clone());
            Ok(())
        }
        fn delete(&self, r: &Route4) -> Result<()> {
            self.routes.lock().unwrap().retain(|x| x != r);
            Ok(())
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

    #[test]
    fn other_nodes_are_routed_and_our_block_is_blackholed() {
        let st = strake_source::dir::state_from_yaml(NODES).unwrap();
        let r: Vec<String> = desired_routes(&st, "a")
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
        let table = FakeTable::default();
        let mut stale = Route4::to("10.244.9.0".parse().unwrap(), 24);
        stale.gateway = Some("10.0.0.9".parse().unwrap());
        table.routes.lock().unwrap().push(stale.clone());
        let mut phase = RoutesPhase {
            table: table.clone(),
            node: "a".into(),
            installed: Default::default(),
        };
        let st = strake_source::dir::state_from_yaml(NODES).unwrap();
        let pass = Pass {
            state: &st,
            full: true,
            revision: 1,
        };
        assert_eq!(phase.reconcile(&pass).unwrap(), Outcome::applied(3));
        assert!(!table.routes.lock().unwrap().contains(&stale));
        assert_eq!(phase.reconcile(&pass).unwrap(), Outcome::applied(0));
    }

    #[test]
    fn one_unreachable_gateway_fails_the_pass_but_not_the_other_routes() {
        let table = FakeTable::default();
        *table.unreachable.lock().unwrap() = Some("10.0.0.2".parse().unwrap());
        let mut phase = RoutesPhase {
            table: table.clone(),
            node: "c".into(),
            installed: Default::default(),
        };
        let st = strake_source::dir::state_from_yaml(NODES).unwrap();
        let e = phase
            .reconcile(&Pass {
                state: &st,
                full: false,
                revision: 1,
            })
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("10.244.2.0/24 via 10.0.0.2") && msg.contains("unreachable"),
            "{msg}"
        );
        let routes = table.routes.lock().unwrap();
        assert_eq!(routes.len(), 1, "the route via a is in: {routes:?}");
    }
}
