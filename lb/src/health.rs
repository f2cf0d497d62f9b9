//! Active backend health checks: TCP connect, or HTTP GET, per backend, at
//! the interval and thresholds its Service asks for. A backend that fails
//! `unhealthy_threshold` checks in a row takes no new flows (it leaves the
//! Maglev tables) until it passes `healthy_threshold` in a row; flows it
//! already has are left alone. Backends start healthy: readiness already
//! vouched for them.
//!
//! Probes bind the node's address and a port from the health-check range,
//! and carry the health-check socket mark; the uplink turns a marked probe
//! of a pod on another node into health-check encapsulation, which that
//! node lets past a NetworkPolicy isolating the backend: the mark, not the
//! address or the port, is what identifies a check (ebpf/include/healthcheck.h,
//! docs/threat-model.md).

use crate::model::{BackendAddr, HealthCheck, HealthProbe};
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub healthy: bool,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub checks: u64,
    pub last_error: Option<String>,
}

#[derive(Default)]
pub struct HealthChecker {
    state: Arc<Mutex<HashMap<BackendAddr, Status>>>,
    tasks: Mutex<HashMap<BackendAddr, (HealthCheck, JoinHandle<()>)>>,
    changed: Arc<Notify>,
    /// Backends whose health flipped since the last `take_flips`.
    flipped: Arc<Mutex<BTreeSet<BackendAddr>>>,
    source: Arc<ProbeSource>,
}

/// Where probes come from.
#[derive(Default)]
struct ProbeSource {
    /// The source ports (first, count, next), taken in turn: the probing
    /// node's XDP tells probe replies from NodePort traffic by them.
    ports: Option<(u16, u32, AtomicU32)>,
    /// SO_MARK of every probe; 0: none.
    mark: u32,
    /// The address probes bind: the node's InternalIP, which the backend's
    /// node checks the health-check encapsulation against.
    addr: Mutex<Option<Ipv4Addr>>,
}

impl HealthChecker {
    /// `source_ports`: connect from these ports (inclusive range) rather
    /// than ephemeral ones; `mark`: the health-check socket mark (0: none).
    pub fn new(source_ports: Option<(u16, u16)>, mark: u32) -> Self {
        HealthChecker {
            source: Arc::new(ProbeSource {
                ports: source_ports.map(|(a, b)| (a, u32::from(b - a) + 1, AtomicU32::new(0))),
                mark,
                addr: Mutex::new(None),
            }),
            ..Default::default()
        }
    }

    /// The address probes bind from now on (`None`: whatever routing picks).
    pub fn set_source_addr(&self, addr: Option<Ipv4Addr>) {
        *self.source.addr.lock().unwrap() = addr;
    }

    /// Notified whenever a backend's health flips.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Unknown backends count as healthy.
    pub fn healthy(&self, b: &BackendAddr) -> bool {
        self.state.lock().unwrap().get(b).is_none_or(|s| s.healthy)
    }

    /// Backends whose health flipped since the last call.
    pub fn take_flips(&self) -> Vec<BackendAddr> {
        std::mem::take(&mut *self.flipped.lock().unwrap())
            .into_iter()
            .collect()
    }

    /// Checks `b` with `cfg` from now on (`None`, or a probe of `none`:
    /// stops checking it). Unchanged settings keep the running check and
    /// its state. Must be called in a runtime.
    pub fn set_target(&self, b: BackendAddr, cfg: Option<HealthCheck>) {
        let cfg = cfg.filter(|h| h.probe != HealthProbe::None);
        let mut tasks = self.tasks.lock().unwrap();
        if tasks.get(&b).map(|(c, _)| c) == cfg.as_ref() {
            return;
        }
        if let Some((_, handle)) = tasks.remove(&b) {
            handle.abort();
        }
        let mut state = self.state.lock().unwrap();
        let Some(cfg) = cfg else {
            state.remove(&b);
            return;
        };
        state.entry(b).or_insert(Status {
            healthy: true,
            ..Default::default()
        });
        tasks.insert(b, (cfg.clone(), self.spawn(b, cfg)));
    }

    fn spawn(&self, b: BackendAddr, cfg: HealthCheck) -> JoinHandle<()> {
        let (st, changed, flipped) = (
            self.state.clone(),
            self.changed.clone(),
            self.flipped.clone(),
        );
        let source = self.source.clone();
        tokio::spawn(async move { check_loop(b, cfg, source, st, changed, flipped).await })
    }

    pub fn snapshot(&self) -> HashMap<BackendAddr, Status> {
        self.state.lock().unwrap().clone()
    }

    /// Checks exactly these backends from now on: new ones start, dropped
    /// ones stop, changed settings restart. Must be called in a runtime.
    pub fn set_targets(&self, targets: Vec<(BackendAddr, HealthCheck)>) {
        let mut tasks = self.tasks.lock().unwrap();
        let wanted: HashMap<BackendAddr, HealthCheck> = targets
            .into_iter()
            .filter(|(_, h)| h.probe != HealthProbe::None)
            .collect();
        tasks.retain(|b, (cfg, handle)| {
            let keep = wanted.get(b) == Some(cfg);
            if !keep {
                handle.abort();
            }
            keep
        });
        let mut state = self.state.lock().unwrap();
        state.retain(|b, _| wanted.contains_key(b));
        for (b, cfg) in wanted {
            if tasks.contains_key(&b) {
                continue;
            }
            state.entry(b).or_insert(Status {
                healthy: true,
                ..Default::default()
            });
            let handle = self.spawn(b, cfg.clone());
            tasks.insert(b, (cfg, handle));
        }
    }
}

async fn check_loop(
    b: BackendAddr,
    cfg: HealthCheck,
    source: Arc<ProbeSource>,
    state: Arc<Mutex<HashMap<BackendAddr, Status>>>,
    changed: Arc<Notify>,
    flips: Arc<Mutex<BTreeSet<BackendAddr>>>,
) {
    let target = SocketAddr::from((b.ip, cfg.port.unwrap_or(b.port)));
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe(target, &cfg, &source).await;
        let mut flipped = None;
        {
            let mut st = state.lock().unwrap();
            let Some(s) = st.get_mut(&b) else { return };
            s.checks += 1;
            match &result {
                Ok(()) => {
                    s.consecutive_ok += 1;
                    s.consecutive_fail = 0;
                    s.last_error = None;
                    if !s.healthy && s.consecutive_ok >= cfg.healthy_threshold {
                        s.healthy = true;
                        flipped = Some(true);
                    }
                }
                Err(e) => {
                    s.consecutive_fail += 1;
                    s.consecutive_ok = 0;
                    s.last_error = Some(e.clone());
                    if s.healthy && s.consecutive_fail >= cfg.unhealthy_threshold {
                        s.healthy = false;
                        flipped = Some(false);
                    }
                }
            }
        }
        if let Some(h) = flipped {
            if h {
                tracing::info!(backend = %b, "backend healthy again: takes new flows");
            } else {
                tracing::warn!(backend = %b, error = result.err().unwrap_or_default(), "backend unhealthy: no new flows");
            }
            flips.lock().unwrap().insert(b);
            changed.notify_one();
        }
    }
}

/// Connects to `target` from the probe source: its address, one of its
/// ports, its mark. The socket closes with a reset (linger 0), as load
/// balancers' checks do, so checks leave no TIME_WAIT behind to block their
/// port for the next one (and the backend's node forgets the check).
async fn connect(target: SocketAddr, source: &ProbeSource) -> std::io::Result<TcpStream> {
    let addr = source.addr.lock().unwrap().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let new_socket = || -> std::io::Result<TcpSocket> {
        let sock = TcpSocket::new_v4()?;
        sock.set_zero_linger()?;
        if source.mark != 0 {
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Mark, &source.mark)
                .map_err(|e| {
                    std::io::Error::other(format!(
                        "setting the health-check mark (needs CAP_NET_ADMIN): {e}"
                    ))
                })?;
        }
        Ok(sock)
    };
    let Some((first, count, next)) = &source.ports else {
        let sock = new_socket()?;
        sock.bind(SocketAddr::from((addr, 0)))?;
        return sock.connect(target).await;
    };
    let mut last = None;
    for _ in 0..(*count).min(8) {
        let port = first + (next.fetch_add(1, Ordering::Relaxed) % count) as u16;
        let sock = new_socket()?;
        sock.set_reuseaddr(true)?;
        if let Err(e) = sock.bind(SocketAddr::from((addr, port))) {
            last = Some(e);
            continue;
        }
        match sock.connect(target).await {
            // Another check holds this port toward the same backend.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => last = Some(e),
            r => return r,
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no health-check source port free")))
}

async fn probe(target: SocketAddr, cfg: &HealthCheck, source: &ProbeSource) -> Result<(), String> {
    let attempt = async {
        let mut s = connect(target, source)
            .await
            .map_err(|e| format!("connect {target}: {e}"))?;
        if let HealthProbe::Http { path } = &cfg.probe {
            let req = format!(
                "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: strake-health\r\n\r\n",
                target.ip()
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("HTTP request to {target}: {e}"))?;
            let mut buf = [0u8; 64];
            let n = s
                .read(&mut buf)
                .await
                .map_err(|e| format!("HTTP response from {target}: {e}"))?;
            let line = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if !(200..400).contains(&code) {
                return Err(format!("GET {path} on {target} answered {code}"));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(cfg.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer from {target} within {:?}", cfg.timeout)),
    }
}

/// How long a failing backend keeps taking new flows at most.
pub fn detection_window(cfg: &HealthCheck) -> Duration {
    cfg.interval * cfg.unhealthy_threshold + cfg.timeout
}
