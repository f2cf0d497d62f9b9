//! Prometheus metrics, served as text on `--metrics-addr` at `/metrics` (and `/healthz`).
//!
//! * `strake_csi_rpc_total{method,code}` and `strake_csi_rpc_duration_seconds{method,code}`
//! * `strake_csi_ceph_errors_total{op,errno}`: failed librados/librbd calls
//! * `strake_csi_attached_volumes{attacher}`: volumes this node plugin has attached
//! * `strake_csi_attach_helpers_dead`: attachments whose userspace helper is gone
//! * per volume served by a strake-rbd-fuse helper (label `volume` = `pool/image`, read
//!   from each helper's stats socket at scrape time): `strake_csi_fuse_requests_in_flight`,
//!   and by `op` (read, write, flush, discard) `strake_csi_fuse_requests_total`,
//!   `strake_csi_fuse_request_errors_total`, `strake_csi_fuse_bytes_total`,
//!   `strake_csi_fuse_request_duration_seconds` (histogram)
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use strake_rbd_fuse::stats::VolumeSnapshot;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CephLabels {
    pub op: String,
    pub errno: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttachLabels {
    pub attacher: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub rpc_total: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<RpcLabels, Histogram>,
    pub ceph_errors: Family<CephLabels, Counter>,
    pub attached: Family<AttachLabels, Gauge>,
    pub helpers_dead: Gauge,
}

fn new_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("strake_csi");
        let rpc_total = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<RpcLabels, Histogram>::new_with_constructor(new_histogram as fn() -> Histogram);
        let ceph_errors = Family::<CephLabels, Counter>::default();
        let attached = Family::<AttachLabels, Gauge>::default();
        let helpers_dead = Gauge::default();
        registry.register("rpc", "CSI RPCs served, by method and gRPC code", rpc_total.clone());
        registry.register(
            "rpc_duration_seconds",
            "CSI RPC latency, by method and gRPC code",
            rpc_seconds.clone(),
        );
        registry.register(
            "ceph_errors",
            "Failed librados/librbd calls, by call and errno",
            ceph_errors.clone(),
        );
        registry.register(
            "attached_volumes",
            "Volumes attached on this node, by attach path",
            attached.clone(),
        );
        registry.register_collector(Box::new(FuseHelpers));
        registry.register(
            "attach_helpers_dead",
            "Attachments whose userspace helper process died (volume needs unstage/stage)",
            helpers_dead.clone(),
        );
        Metrics {
            registry,
            rpc_total,
            rpc_seconds,
            ceph_errors,
            attached,
            helpers_dead,
        }
    })
}

/// The volume dirs (`<state-dir>/volumes`) whose strake-rbd-fuse helpers the
/// collector reads; set once by the node plugin.
static FUSE_VOLUMES_DIR: OnceLock<PathBuf> = OnceLock::new();

pub fn watch_fuse_helpers(volumes_dir: PathBuf) {
    let _ = FUSE_VOLUMES_DIR.set(volumes_dir);
}

/// Reads every helper's counters at scrape time, so a helper that restarts or goes
/// away is reflected at once and no state is kept here.
#[derive(Debug)]
struct FuseHelpers;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FuseOpLabels {
    volume: String,
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FuseVolumeLabels {
    volume: String,
    transport: String,
}

fn fuse_snapshots() -> Vec<VolumeSnapshot> {
    let Some(dir) = FUSE_VOLUMES_DIR.get() else {
        return vec![];
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.flatten()
        .map(|e| crate::attach::fuse_stats_socket(&e.path()))
        .filter(|p| p.exists())
        .filter_map(|p| strake_rbd_fuse::stats::fetch(&p, Duration::from_millis(500)).ok())
        .flat_map(|s| s.volumes)
        .collect()
}

impl Collector for FuseHelpers {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let vols = fuse_snapshots();
        if vols.is_empty() {
            return Ok(());
        }
        let name = |v: &VolumeSnapshot| format!("{}/{}", v.pool, v.image);
        {
            let mut m = enc.encode_descriptor(
                "fuse_requests_in_flight",
                "Requests a strake-rbd-fuse helper is serving now, by volume",
                None,
                MetricType::Gauge,
            )?;
            for v in &vols {
                let l = FuseVolumeLabels {
                    volume: name(v),
                    transport: v.transport.clone(),
                };
                m.encode_family(&l)?.encode_gauge(&v.in_flight)?;
            }
        }
        type Pick = fn(&strake_rbd_fuse::stats::OpSnapshot) -> u64;
        let counters: [(&str, &str, Pick); 3] = [
            ("fuse_requests", "FUSE IO requests served, by volume and op", |o| {
                o.count
            }),
            (
                "fuse_request_errors",
                "FUSE IO requests that failed, by volume and op",
                |o| o.errors,
            ),
            (
                "fuse_bytes",
                "Bytes read, written or discarded through FUSE, by volume and op",
                |o| o.bytes,
            ),
        ];
        for (metric, help, pick) in counters {
            let mut m = enc.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for v in &vols {
                for o in &v.ops {
                    let l = FuseOpLabels {
                        volume: name(v),
                        op: o.op.clone(),
                    };
                    m.encode_family(&l)?
                        .encode_counter::<NoLabelSet, _, u64>(&pick(o), None)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "fuse_request_duration_seconds",
            "FUSE IO request latency (kernel request to librbd completion), by volume and op",
            None,
            MetricType::Histogram,
        )?;
        for v in &vols {
            for o in &v.ops {
                let l = FuseOpLabels {
                    volume: name(v),
                    op: o.op.clone(),
                };
                m.encode_family(&l)?
                    .encode_histogram::<NoLabelSet>(o.sum_seconds, o.count, &o.buckets, None)?;
            }
        }
        Ok(())
    }
}

/// Records one RPC outcome.
pub fn observe_rpc(method: &str, code: tonic::Code, started: Instant) {
    let m = global();
    let l = RpcLabels {
        method: method.to_string(),
        code: format!("{code:?}"),
    };
    m.rpc_total.get_or_create(&l).inc();
    m.rpc_seconds.get_or_create(&l).observe(started.elapsed().as_secs_f64());
}

pub fn ceph_error(e: &strake_ceph::CephError) {
    global()
        .ceph_errors
        .get_or_create(&CephLabels {
            op: e.op.to_string(),
            errno: e.errno_name().to_string(),
        })
        .inc();
}

pub fn set_attached(attacher: &str, n: i64) {
    global()
        .attached
        .get_or_create(&AttachLabels {
            attacher: attacher.to_string(),
        })
        .set(n);
}

pub fn render() -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &global().registry).expect("encoding metrics to a String");
    s
}

/// Serves `/metrics` and `/healthz` until the process exits.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(|| async { render() }))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// Wraps an RPC body: times it and records its gRPC code.
pub async fn instrument<T, F>(method: &'static str, fut: F) -> Result<tonic::Response<T>, tonic::Status>
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let started = Instant::now();
    let r = fut.await;
    let code = match &r {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    observe_rpc(method, code, started);
    match r {
        Ok(v) => {
            tracing::debug!(method, elapsed_ms = started.elapsed().as_millis() as u64, "rpc ok");
            Ok(tonic::Response::new(v))
        }
        Err(s) => {
            tracing::warn!(method, code = ?s.code(), message = s.message(), "rpc failed");
            Err(s)
        }
    }
}

pub type Shared = Arc<Metrics>;
