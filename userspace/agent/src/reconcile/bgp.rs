//! BGP: the node's BIRD, configured from the cluster's BGP resources
//! (docs/bgp.md). Desired state is BIRD's configuration text
//! (`strake_bgp::node::desired`, pure); the pass writes it and runs
//! `configure` only when it differs from what BIRD was last given, starts
//! BIRD when nothing answers (unless a sidecar owns it), and reads the
//! sessions back for status and metrics. It runs again every few seconds
//! even without a change: to see sessions move, and to restart a BIRD that
//! died (its peers keep the routes meanwhile: graceful restart).
//!
//! A node that stops running BGP (the configuration gone, the node deleted)
//! gives BIRD a configuration with no sessions: every peer is told, and
//! withdraws the node's routes at once rather than after the restart time.

use super::{Outcome, Pass, Phase};
use anyhow::{anyhow, Context, Result};
use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strake_api::{AnnouncedView, BgpSessionView, BgpStatus};
use strake_bgp::node::{desired, idle_config, NodeContext};
use strake_bgp::show::Protocol;
use strake_bgp::{BirdLog, Control};
use strake_lb::model::ModelOptions;
use strake_netlink::Netlink;
use strake_source::{Change, ClusterState, Kind, KindSet};

/// How often the phase looks at BIRD without a change.
pub const OBSERVE_EVERY: Duration = Duration::from_secs(5);

/// The daemon's side of this phase.
pub trait BirdDaemon: Send {
    /// The subnet of the uplink address `ip`, once the uplink holds it.
    fn uplink_subnet(&self, uplink: &str, ip: Ipv4Addr) -> Result<Option<Ipv4Network>>;
    /// The configuration file as it is now.
    fn read_config(&self) -> Option<String>;
    fn write_config(&self, text: &str) -> Result<()>;
    /// Whether BIRD answers on its control socket.
    fn running(&self) -> bool;
    /// Starts BIRD on the configuration file; returns once it answers.
    fn start(&self) -> Result<()>;
    /// Makes the configuration file BIRD's running configuration.
    fn configure(&self) -> Result<()>;
    fn protocols(&self) -> Result<Vec<Protocol>>;
}

/// BIRD as a process beside the agent, reached through its control socket.
pub struct BirdProcess {
    pub nl: Netlink,
    pub rt: tokio::runtime::Handle,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub binary: PathBuf,
}

impl BirdProcess {
    fn control(&self) -> Control {
        Control::new(&self.socket).with_timeout(Duration::from_secs(5))
    }
}

impl BirdDaemon for BirdProcess {
    fn uplink_subnet(&self, uplink: &str, ip: Ipv4Addr) -> Result<Option<Ipv4Network>> {
        self.rt.block_on(async {
            let Some(l) = self.nl.link_by_name(uplink).await? else {
                return Ok(None);
            };
            Ok(self
                .nl
                .addresses(l.index)
                .await?
                .into_iter()
                .find(|(a, _)| *a == ip)
                .and_then(|(a, len)| Ipv4Network::new(a, len).ok())
                .map(|n| Ipv4Network::new(n.network(), n.prefix()).expect("a network")))
        })
    }

    fn read_config(&self) -> Option<String> {
        std::fs::read_to_string(&self.config).ok()
    }

    fn write_config(&self, text: &str) -> Result<()> {
        if let Some(d) = self.config.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let tmp = self.config.with_extension("conf.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.config)
            .with_context(|| format!("replacing {}", self.config.display()))
    }

    fn running(&self) -> bool {
        self.control()
            .with_timeout(Duration::from_secs(2))
            .call("show status")
            .is_ok()
    }

    fn start(&self) -> Result<()> {
        if let Some(d) = self.socket.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // A socket file left by a BIRD that died would make the new one
        // fail to bind.
        let _ = std::fs::remove_file(&self.socket);
        // BIRD checks the configuration, then forks into the background:
        // the command returns with BIRD's verdict on the file. It does not
        // die with the agent (fail static).
        let out = std::process::Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .arg("-s")
            .arg(&self.socket)
            .arg("-P")
            .arg(self.socket.with_extension("pid"))
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| {
                format!(
                    "starting {} (Debian's bird2; or --bird-start=false with a BIRD sidecar)",
                    self.binary.display()
                )
            })?;
        if !out.status.success() {
            anyhow::bail!(
                "BIRD refused to start on {}: {}",
                self.config.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.running() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!(
            "BIRD started but does not answer on {} after 10s",
            self.socket.display()
        )
    }

    fn configure(&self) -> Result<()> {
        self.control().configure(&self.config)
    }

    fn protocols(&self) -> Result<Vec<Protocol>> {
        self.control().protocols()
    }
}

/// Settings of the phase that do not come from the cluster state.
#[derive(Debug, Clone)]
pub struct BgpOptions {
    /// Start BIRD when it is not running.
    pub start: bool,
    pub socket: String,
    pub log: BirdLog,
    pub lb: ModelOptions,
}

pub struct BgpPhase<D> {
    pub daemon: D,
    pub node: String,
    /// The uplink, once the node phase found it.
    pub uplink: Arc<Mutex<Option<String>>>,
    pub options: BgpOptions,
    /// What the API and metrics show.
    pub view: Arc<Mutex<BgpStatus>>,
    /// This agent has given BIRD its configuration at least once (after a
    /// restart of the agent, the file may be newer than what BIRD runs).
    configured: bool,
    /// Service addresses are announced: Service, Pod and EndpointSlice
    /// changes matter.
    announcing: bool,
    reported: Vec<String>,
}

impl<D: BirdDaemon> BgpPhase<D> {
    pub fn new(
        daemon: D,
        node: &str,
        uplink: Arc<Mutex<Option<String>>>,
        options: BgpOptions,
        view: Arc<Mutex<BgpStatus>>,
    ) -> Self {
        BgpPhase {
            daemon,
            node: node.into(),
            uplink,
            options,
            view,
            configured: false,
            announcing: true,
            reported: Vec::new(),
        }
    }

    fn report(&mut self, problems: &[String]) {
        if problems != self.reported.as_slice() {
            for p in problems {
                tracing::warn!(problem = %p, "BGP resource not honoured");
            }
            self.reported = problems.to_vec();
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A session as the API shows it: what was asked, and what BIRD says.
fn session_view(s: &strake_bgp::Session, p: Option<&Protocol>) -> BgpSessionView {
    let now = now_unix();
    BgpSessionView {
        name: s.name.clone(),
        neighbor: s.neighbor.to_string(),
        neighbor_as: s.neighbor_as,
        local_as: s.local_as,
        origin: s.origin.to_string(),
        state: p.map_or("unknown".into(), |p| p.state.clone()),
        bgp_state: p
            .and_then(|p| p.bgp_state.clone())
            .unwrap_or_else(|| "unknown".into()),
        established: p.is_some_and(|p| p.established()),
        uptime_seconds: p.and_then(|p| p.since).map(|t| now.saturating_sub(t)),
        last_error: p.and_then(|p| p.last_error.clone()),
        received: p.map_or(0, |p| p.routes.imported),
        filtered: p.map_or(0, |p| p.routes.filtered),
        sent: p.map_or(0, |p| p.routes.exported),
        peer_restarting: p.is_some_and(|p| p.neighbor_restarting),
    }
}

impl<D: BirdDaemon> Phase for BgpPhase<D> {
    fn name(&self) -> &'static str {
        "bgp"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[
            Kind::Node,
            Kind::BgpConfiguration,
            Kind::BgpPeer,
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Pod,
        ])
    }

    fn note(&mut self, change: &Change, _state: &ClusterState) -> bool {
        match change.kind() {
            Kind::Service | Kind::EndpointSlice | Kind::Pod => self.announcing,
            _ => true,
        }
    }

    fn reconcile(&mut self, pass: &Pass<'_>) -> Result<Outcome> {
        let state = pass.state;
        let Some(uplink) = self.uplink.lock().unwrap().clone() else {
            return Ok(Outcome::Waiting {
                after: Duration::from_secs(2),
                reason: "the uplink is not attached yet".into(),
            });
        };
        let Some(ip) = state.node_internal_ip(&self.node) else {
            // Deleted, or not yet known: a node without an address runs no
            // BGP; a BIRD running for it is idled below.
            return self.idle(&uplink, None);
        };
        let Some(subnet) = self.daemon.uplink_subnet(&uplink, ip)? else {
            return Ok(Outcome::Waiting {
                after: Duration::from_secs(2),
                reason: format!("{uplink} does not hold this node's InternalIP {ip} yet"),
            });
        };
        let ctx = NodeContext {
            node: self.node.clone(),
            uplink: uplink.clone(),
            subnet,
            own_route_protocols: vec![
                strake_netlink::STRAKE_ROUTE_PROTO,
                strake_netlink::STRAKE_POD_ROUTE_PROTO,
            ],
            log: self.options.log.clone(),
            lb: self.options.lb,
        };
        let d = desired(state, &ctx).map_err(|e| {
            anyhow!(
                "{e}; BIRD keeps its previous configuration until the BGPConfiguration is fixed"
            )
        })?;
        self.report(&d.problems);
        self.announcing = d.config.as_ref().is_some_and(|c| {
            !c.service_load_balancer_ips.is_empty() || !c.service_external_ips.is_empty()
        });
        let Some(bird) = d.bird else {
            return self.idle(&uplink, Some(ip));
        };
        let text = bird.render();
        let mut changes = 0;
        if !self.daemon.running() {
            if !self.options.start {
                self.publish(&bird, &[], &d.problems, false);
                return Ok(Outcome::Waiting {
                    after: Duration::from_secs(2),
                    reason: format!(
                        "BIRD is not answering on {} (its sidecar runs it: --bird-start=false)",
                        self.options.socket
                    ),
                });
            }
            self.daemon.write_config(&text)?;
            self.daemon.start()?;
            tracing::info!(
                sessions = bird.sessions.len(),
                announced = bird.announce.len(),
                "BIRD started"
            );
            self.configured = true;
            changes += 1;
        } else if !self.configured || self.daemon.read_config().as_deref() != Some(text.as_str()) {
            self.daemon.write_config(&text)?;
            self.daemon.configure()?;
            tracing::info!(
                sessions = bird.sessions.len(),
                announced = bird.announce.len(),
                "BIRD reconfigured"
            );
            self.configured = true;
            changes += 1;
        }
        let protocols = self.daemon.protocols().unwrap_or_default();
        self.publish(&bird, &protocols, &d.problems, true);
        Ok(Outcome::Applied {
            changes,
            requeue_after: Some(OBSERVE_EVERY),
        })
    }
}

impl<D: BirdDaemon> BgpPhase<D> {
    /// This node runs no BGP: a running BIRD gets a configuration with no
    /// sessions and no routes.
    fn idle(&mut self, uplink: &str, ip: Option<Ipv4Addr>) -> Result<Outcome> {
        *self.view.lock().unwrap() = BgpStatus {
            bird_socket: self.options.socket.clone(),
            ..Default::default()
        };
        let mut changes = 0;
        if self.daemon.running() {
            let id = ip.unwrap_or(Ipv4Addr::new(127, 0, 0, 1));
            let text = idle_config(&self.node, id, uplink, self.options.log.clone()).render();
            if !self.configured || self.daemon.read_config().as_deref() != Some(text.as_str()) {
                self.daemon.write_config(&text)?;
                self.daemon.configure()?;
                tracing::info!("BGP is off for this node: BIRD idled, its sessions closed");
                self.configured = true;
                changes += 1;
            }
            self.view.lock().unwrap().bird_running = true;
        }
        Ok(Outcome::applied(changes))
    }

    fn publish(
        &self,
        bird: &strake_bgp::NodeBird,
        protocols: &[Protocol],
        problems: &[String],
        running: bool,
    ) {
        let sessions = bird
            .sessions
            .iter()
            .map(|s| session_view(s, protocols.iter().find(|p| p.name == s.name)))
            .collect();
        *self.view.lock().unwrap() = BgpStatus {
            enabled: true,
            as_number: Some(bird.local_as),
            router_id: Some(bird.router_id.to_string()),
            bird_socket: self.options.socket.clone(),
            bird_running: running,
            sessions,
            announced: bird
                .announce
                .iter()
                .map(|a| AnnouncedView {
                    prefix: a.net.to_string(),
                    why: a.why.clone(),
                })
                .collect(),
            problems: problems.to_vec(),
        };
    }
}

#[cfg(test)]
mod tests;
