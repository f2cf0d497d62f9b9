//! Active backend health checks: TCP connect, or HTTP GET, per backend, at
//! the interval and thresholds its Service asks for. A backend that fails
//! `unhealthy_threshold` checks in a row takes no new flows (it leaves the
//! Maglev tables) until it passes `healthy_threshold` in a row; flows it
//! already has are left alone. Backends start healthy: readiness already
//! vouched for them.

use crate::model::{BackendAddr, HealthCheck, HealthProbe};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
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
    ports: Option<Arc<SourcePorts>>,
}

/// The source ports checks connect from, taken in turn. NetworkPolicy
/// recognises health checks by them (see ebpf/include/policy.h).
struct SourcePorts {
    first: u16,
    count: u32,
    next: AtomicU32,
}

impl HealthChecker {
    /// `source_ports`: connect from these ports (inclusive range) rather
    /// than ephemeral ones.
    pub fn new(source_ports: Option<(u16, u16)>) -> Self {
        HealthChecker {
            ports: source_ports.map(|(a, b)| {
                Arc::new(SourcePorts {
                    first: a,
                    count: u32::from(b - a) + 1,
                    next: AtomicU32::new(0),
                })
            }),
            ..Default::default()
        }
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
        let ports = self.ports.clone();
        tokio::spawn(async move { check_loop(b, cfg, ports, st, changed, flipped).await })
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
    ports: Option<Arc<SourcePorts>>,
    state: Arc<Mutex<HashMap<BackendAddr, Status>>>,
    changed: Arc<Notify>,
    flips: Arc<Mutex<BTreeSet<BackendAddr>>>,
) {
    let target = SocketAddr::from((b.ip, cfg.port.unwrap_or(b.port)));
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe(target, &cfg, ports.as_deref()).await;
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

/// Connects to `target`, from one of `ports` if given. The socket closes
/// with a reset (linger 0), as load balancers' checks do, so checks leave no
/// TIME_WAIT behind to block their port for the next one.
async fn connect(target: SocketAddr, ports: Option<&SourcePorts>) -> std::io::Result<TcpStream> {
    let Some(p) = ports else {
        return TcpStream::connect(target).await;
    };
    let mut last = None;
    for _ in 0..p.count.min(8) {
        let port = p.first + (p.next.fetch_add(1, Ordering::Relaxed) % p.count) as u16;
        let sock = TcpSocket::new_v4()?;
        sock.set_reuseaddr(true)?;
        sock.set_zero_linger()?;
        if let Err(e) = sock.bind(SocketAddr::from(([0, 0, 0, 0], port))) {
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

async fn probe(
    target: SocketAddr,
    cfg: &HealthCheck,
    ports: Option<&SourcePorts>,
) -> Result<(), String> {
    let attempt = async {
        let mut s = connect(target, ports)
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
