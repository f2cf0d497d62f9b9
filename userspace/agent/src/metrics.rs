//! Prometheus metrics, served with /healthz over HTTP.
//!
//! Counters the programs keep in per-CPU maps and map fill are read at scrape
//! time (a collector), so they are exact and cost nothing between scrapes.

use crate::agent::Agent;
use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Weak};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// Metrics the agent updates as it works.
#[derive(Clone)]
pub struct Metrics {
    pub endpoints: Gauge,
    pub api_requests: Family<OpLabels, Counter>,
    pub reconcile_seconds: Family<PhaseLabels, Histogram>,
    pub errors: Family<PhaseLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            endpoints: Gauge::default(),
            api_requests: Family::default(),
            reconcile_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 4.0, 10))
            }),
            errors: Family::default(),
        }
    }
}

impl Metrics {
    pub fn api_request(&self, op: &str, result: &str) {
        self.api_requests
            .get_or_create(&OpLabels {
                op: op.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn observe_reconcile(&self, phase: &str, seconds: f64) {
        self.reconcile_seconds
            .get_or_create(&PhaseLabels {
                phase: phase.into(),
            })
            .observe(seconds);
    }

    pub fn error(&self, phase: &str) {
        self.errors
            .get_or_create(&PhaseLabels {
                phase: phase.into(),
            })
            .inc();
    }
}

/// Reads the data plane's counters and map fill at scrape time.
#[derive(Debug)]
struct DatapathCollector(Weak<Agent>);

impl Collector for DatapathCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(agent) = self.0.upgrade() else {
            return Ok(());
        };
        let (counters, maps) = {
            let dp = agent.dp();
            (
                dp.counters().unwrap_or_default(),
                dp.map_fill().unwrap_or_default(),
            )
        };
        for (name, help, pick) in [
            (
                "strake_datapath_packets",
                "Packets handled by the data plane, by what it did with them",
                0,
            ),
            (
                "strake_datapath_bytes",
                "Bytes handled by the data plane, by what it did with them",
                1,
            ),
        ] {
            let counter = ConstCounter::new(0u64);
            let mut m = enc.encode_descriptor(name, help, None, counter.metric_type())?;
            for c in &counters {
                let v = if pick == 0 { c.packets } else { c.bytes };
                let labels = vec![("action".to_string(), c.name.clone())];
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        // Policy drops per pod and direction, and the compiled policy's size.
        let eps: Vec<(String, u32)> = agent
            .ipam()
            .allocations()
            .map(|a| {
                (
                    a.record
                        .pod
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| a.key.container_id.clone()),
                    a.record.endpoint_id,
                )
            })
            .collect();
        {
            let drops: Vec<(String, u64, u64)> = {
                let dp = agent.dp();
                eps.iter()
                    .map(|(pod, id)| {
                        let (i, e) = dp.policy.drops(*id);
                        (pod.clone(), i, e)
                    })
                    .collect()
            };
            let mut m = enc.encode_descriptor(
                "strake_policy_drops",
                "Packets NetworkPolicy dropped, by pod and direction",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (pod, i, e) in &drops {
                for (dir, v) in [("ingress", i), ("egress", e)] {
                    let labels = vec![
                        ("pod".to_string(), pod.clone()),
                        ("direction".to_string(), dir.to_string()),
                    ];
                    ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let (entries, classes) = {
            let p = agent.policy.lock().unwrap();
            (p.entries(), p.classes())
        };
        for (name, help, v) in [
            (
                "strake_policy_entries",
                "Verdict entries compiled for this node's pods",
                entries,
            ),
            (
                "strake_policy_classes",
                "Address classes (distinct sets of policy peers)",
                classes,
            ),
        ] {
            let g = ConstGauge::new(v as i64);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        {
            // healthCheckNodePort: what each port reports, and what it answered.
            let want = {
                let lb = agent.lb.lock().unwrap();
                crate::hc_nodeport::wanted(&lb.planner, agent.node())
            };
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(
                "strake_lb_health_check_node_port_local_endpoints",
                "Local serving endpoints each healthCheckNodePort reports (0: it answers 503)",
                None,
                g.metric_type(),
            )?;
            for (port, p) in &want {
                let labels = vec![
                    ("service".to_string(), p.service.to_string()),
                    ("port".to_string(), port.to_string()),
                ];
                ConstGauge::new(p.local_endpoints as i64).encode(m.encode_family(&labels)?)?;
            }
            let mut m = enc.encode_descriptor(
                "strake_lb_health_check_node_port_responses",
                "Answers of the healthCheckNodePort listeners, by port and status code",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for ((port, code), n) in agent.hc_stats.responses.lock().unwrap().iter() {
                let labels = vec![
                    ("port".to_string(), port.to_string()),
                    ("code".to_string(), code.to_string()),
                ];
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
        if let Ok(lb) = agent.lb_status() {
            // One family per frontend counter, packet path and socket path alike.
            type FrontendValue = fn(&strake_api::LbFrontendView) -> u64;
            let families: [(&str, &str, FrontendValue); 7] = [
                (
                    "strake_lb_frontend_packets",
                    "Packets to each service frontend",
                    |f| f.counters.packets,
                ),
                (
                    "strake_lb_frontend_bytes",
                    "Bytes to each service frontend",
                    |f| f.counters.bytes,
                ),
                (
                    "strake_lb_frontend_new_flows",
                    "New flows to each service frontend",
                    |f| f.counters.new_flows,
                ),
                (
                    "strake_lb_frontend_socket_connects",
                    "connect() calls the socket load balancer gave a backend",
                    |f| f.socket.connects,
                ),
                (
                    "strake_lb_frontend_socket_datagrams",
                    "Unconnected UDP sends the socket load balancer gave a backend",
                    |f| f.socket.datagrams,
                ),
                (
                    "strake_lb_frontend_socket_refused",
                    "Socket calls refused (ECONNREFUSED): no eligible backend",
                    |f| f.socket.refused,
                ),
                (
                    "strake_lb_frontend_rejected",
                    "Packets refused on the packet path (TCP RST, ICMP port unreachable): no usable endpoint",
                    |f| f.rejected,
                ),
            ];
            for (name, help, value) in families {
                let mut m =
                    enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
                for s in &lb.services {
                    for f in &s.frontends {
                        let labels = vec![
                            ("service".to_string(), s.service.clone()),
                            ("kind".to_string(), f.kind.clone()),
                            (
                                "frontend".to_string(),
                                format!("{}:{}/{}", f.address, f.port, s.protocol),
                            ),
                        ];
                        ConstCounter::new(value(f)).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
            for (i, (name, help)) in [
                ("strake_lb_backend_packets", "Packets sent to each backend"),
                ("strake_lb_backend_bytes", "Bytes sent to each backend"),
                (
                    "strake_lb_backend_new_flows",
                    "New flows given to each backend",
                ),
            ]
            .into_iter()
            .enumerate()
            {
                let mut m =
                    enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
                for s in &lb.services {
                    for b in &s.backends {
                        let labels = vec![
                            ("service".to_string(), s.service.clone()),
                            ("backend".to_string(), format!("{}:{}", b.address, b.port)),
                        ];
                        let c = &b.counters;
                        ConstCounter::new([c.packets, c.bytes, c.new_flows][i])
                            .encode(m.encode_family(&labels)?)?;
                    }
                }
            }
            for (name, help, pick) in [
                (
                    "strake_lb_backend_healthy",
                    "1 if the backend passes its health checks",
                    0,
                ),
                (
                    "strake_lb_backend_active",
                    "1 if the backend takes new flows (ready, healthy, not terminating)",
                    1,
                ),
            ] {
                let mut m =
                    enc.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
                for s in &lb.services {
                    for b in &s.backends {
                        let labels = vec![
                            ("service".to_string(), s.service.clone()),
                            ("backend".to_string(), format!("{}:{}", b.address, b.port)),
                        ];
                        let v = if pick == 0 { b.healthy } else { b.active };
                        ConstGauge::new(v as i64).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
            for (name, help, v) in [
                ("strake_lb_ct_entries", "Flows in the load balancer's connection table (counted every --resync)", lb.ct_entries),
                ("strake_lb_ct_capacity", "Capacity of the connection table (--ct-size); at capacity the least recently used flows are forgotten", lb.ct_capacity),
            ] {
                let g = ConstGauge::new(v as i64);
                g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        {
            let gc = agent
                .ct_gc
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let capacity = agent.dp().ct.capacity as i64;
            for (name, help, v) in [
                ("strake_ct_entries", "Entries in the connection table st_ct after the last sweep (service, reply and policy entries)", gc.last.entries as i64),
                ("strake_ct_capacity", "Capacity of the connection table (--ct-size)", capacity),
                ("strake_ct_gc_last_expired", "Entries the last sweep removed as expired", gc.last.expired as i64),
                ("strake_ct_gc_last_revived", "Entries the last sweep found expired but saw a packet before removal: kept", gc.last.revived as i64),
            ] {
                let g = ConstGauge::new(v);
                g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
            for (name, help, v) in [
                ("strake_ct_gc_last_duration_seconds", "How long the last sweep took", gc.last.duration.as_secs_f64()),
                ("strake_ct_gc_interval_seconds", "Time until the next sweep (adaptive, --ct-gc-min-interval to --ct-gc-max-interval)", gc.interval.as_secs_f64()),
            ] {
                let g = ConstGauge::new(v);
                g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
            for (name, help, v) in [
                (
                    "strake_ct_gc_sweeps",
                    "Connection-table sweeps since the start",
                    gc.sweeps,
                ),
                (
                    "strake_ct_gc_expired",
                    "Entries removed as expired since the start",
                    gc.expired_total,
                ),
            ] {
                let c = ConstCounter::new(v);
                c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
            }
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(
                "strake_ct_snat_ports_in_use",
                "SNAT ports held by flows to each backend (by backend id), at the last sweep",
                None,
                g.metric_type(),
            )?;
            for (backend, n) in &gc.last.snat_ports {
                let labels = vec![("backend_id".to_string(), backend.to_string())];
                ConstGauge::new(*n as i64).encode(m.encode_family(&labels)?)?;
            }
            let g = ConstGauge::new(gc.last.masq_ports as i64);
            g.encode(enc.encode_descriptor(
                "strake_ct_masquerade_ports_in_use",
                "Masquerade ports held by pods' flows out of the cluster, at the last sweep",
                None,
                g.metric_type(),
            )?)?;
        }
        for (name, help, cap) in [
            ("strake_map_entries", "Entries in each eBPF map", false),
            (
                "strake_map_capacity",
                "Capacity (max_entries) of each eBPF map",
                true,
            ),
        ] {
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
            for mf in &maps {
                let labels = vec![("map".to_string(), mf.name.clone())];
                let v = if cap { mf.capacity } else { mf.entries } as i64;
                ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// BGP sessions and prefixes, as the bgp phase last saw them (it looks
/// every few seconds): a scrape never waits on BIRD.
#[derive(Debug)]
struct BgpCollector(Weak<Agent>);

impl Collector for BgpCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(agent) = self.0.upgrade() else {
            return Ok(());
        };
        let bgp = agent.bgp.lock().unwrap().clone();
        let g = ConstGauge::new(i64::from(bgp.enabled));
        g.encode(enc.encode_descriptor(
            "strake_bgp_enabled",
            "1 when this node runs BGP (a BGPConfiguration selects it)",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(bgp.announced.len() as i64);
        g.encode(enc.encode_descriptor(
            "strake_bgp_announced_prefixes",
            "Prefixes this node announces (its pod block, Service addresses)",
            None,
            g.metric_type(),
        )?)?;
        type Pick = fn(&strake_api::BgpSessionView) -> i64;
        let per_session: [(&str, &str, Pick); 4] = [
            (
                "strake_bgp_session_up",
                "1 when the BGP session is Established",
                |s| i64::from(s.established),
            ),
            (
                "strake_bgp_session_uptime_seconds",
                "Seconds the BGP session has been in its current state",
                |s| s.uptime_seconds.unwrap_or(0) as i64,
            ),
            (
                "strake_bgp_prefixes_received",
                "Prefixes accepted from the peer",
                |s| s.received as i64,
            ),
            (
                "strake_bgp_prefixes_sent",
                "Prefixes sent to the peer",
                |s| s.sent as i64,
            ),
        ];
        for (name, help, pick) in per_session {
            let mut m =
                enc.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for s in &bgp.sessions {
                let labels = vec![
                    ("peer".to_string(), s.neighbor.clone()),
                    ("peer_as".to_string(), s.neighbor_as.to_string()),
                    ("origin".to_string(), s.origin.clone()),
                ];
                ConstGauge::new(pick(s)).encode(m.encode_family(&labels)?)?;
            }
        }
        let g = ConstGauge::new(bgp.problems.len() as i64);
        g.encode(enc.encode_descriptor(
            "strake_bgp_invalid_resources",
            "BGP resources or node settings refused (strake bgp peers names them)",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

pub fn registry(agent: &Arc<Agent>) -> Registry {
    let mut r = Registry::default();
    let m = &agent.metrics;
    r.register(
        "strake_endpoints",
        "Local endpoints (pods) with an address",
        m.endpoints.clone(),
    );
    r.register(
        "strake_api_requests",
        "Agent API requests by operation and result",
        m.api_requests.clone(),
    );
    r.register(
        "strake_reconcile_duration_seconds",
        "Time to reconcile desired state into the kernel, by phase",
        m.reconcile_seconds.clone(),
    );
    r.register("strake_errors", "Failed reconcile phases", m.errors.clone());
    r.register_collector(Box::new(DatapathCollector(Arc::downgrade(agent))));
    r.register_collector(Box::new(BgpCollector(Arc::downgrade(agent))));
    r
}

#[derive(Clone)]
struct HttpState {
    agent: Arc<Agent>,
    registry: Arc<Registry>,
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let mut out = String::new();
    // Scrapes read BPF maps: keep them off the async workers.
    let reg = s.registry.clone();
    let body = tokio::task::spawn_blocking(move || {
        prometheus_client::encoding::text::encode(&mut out, &reg).map(|_| out)
    })
    .await;
    match body {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response(),
    }
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    let synced = s.agent.state().synced;
    if !synced {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "desired state not loaded yet\n".to_string(),
        );
    }
    match s.agent.uplink() {
        Some(u) => (
            StatusCode::OK,
            format!("ok: node {}, uplink {u}\n", s.agent.node()),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "uplink program not attached yet\n".to_string(),
        ),
    }
}

pub async fn serve(agent: Arc<Agent>) -> Result<()> {
    let state = HttpState {
        registry: Arc::new(registry(&agent)),
        agent: agent.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&agent.cfg.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", agent.cfg.metrics_addr))?;
    tracing::info!(addr = %agent.cfg.metrics_addr, "metrics and healthz listening");
    axum::serve(listener, app).await.context("metrics server")
}
