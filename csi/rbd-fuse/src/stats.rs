//! Per-volume IO counters: requests in flight, and per operation the count, errors,
//! bytes and a latency histogram. Lock-free (atomics) because every request touches
//! them from whichever thread completes it.
//!
//! The server publishes a [`Snapshot`] as JSON on a unix socket (`--stats-socket`);
//! the node plugin reads every helper's socket when Prometheus scrapes it and exposes
//! the numbers under its own `/metrics`, labelled by volume (`strake-csi`'s metrics).
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the latency buckets: 50 µs to 2.5 s, covering a cache hit
/// in librbd up to a stalled OSD.
pub const BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The operations we time; everything else (lookup, getattr, ...) is metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Read, Op::Write, Op::Flush, Op::Discard];
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
        }
    }
}

#[derive(Default)]
struct OpCounters {
    count: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    sum_ns: AtomicU64,
    /// Non-cumulative: bucket i counts latencies in (BUCKETS[i-1], BUCKETS[i]]; the
    /// last slot counts everything above the largest bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

#[derive(Default)]
pub struct VolumeStats {
    in_flight: AtomicI64,
    ops: [OpCounters; 4],
}

impl VolumeStats {
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// Records a finished request; `bytes` counts only on success.
    pub fn finish(&self, op: Op, took: Duration, ok: bool, bytes: u64) {
        self.in_flight.fetch_sub(1, Relaxed);
        let c = &self.ops[op as usize];
        c.count.fetch_add(1, Relaxed);
        if ok {
            c.bytes.fetch_add(bytes, Relaxed);
        } else {
            c.errors.fetch_add(1, Relaxed);
        }
        c.sum_ns.fetch_add(took.as_nanos() as u64, Relaxed);
        let secs = took.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        c.buckets[i].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self, pool: &str, image: &str, transport: &str, read_only: bool) -> VolumeSnapshot {
        let ops = Op::ALL
            .iter()
            .map(|op| {
                let c = &self.ops[*op as usize];
                let mut cum = 0;
                let buckets = BUCKETS
                    .iter()
                    .enumerate()
                    .map(|(i, le)| {
                        cum += c.buckets[i].load(Relaxed);
                        (*le, cum)
                    })
                    .collect();
                OpSnapshot {
                    op: op.name().into(),
                    count: c.count.load(Relaxed),
                    errors: c.errors.load(Relaxed),
                    bytes: c.bytes.load(Relaxed),
                    sum_seconds: c.sum_ns.load(Relaxed) as f64 / 1e9,
                    buckets,
                }
            })
            .collect();
        VolumeSnapshot {
            pool: pool.into(),
            image: image.into(),
            transport: transport.into(),
            read_only,
            in_flight: self.in_flight.load(Relaxed),
            ops,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpSnapshot {
    pub op: String,
    pub count: u64,
    pub errors: u64,
    pub bytes: u64,
    pub sum_seconds: f64,
    /// (upper bound in seconds, cumulative count), as Prometheus histograms want them;
    /// `count` is the +Inf bucket.
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeSnapshot {
    pub pool: String,
    pub image: String,
    /// `io-uring` or `classic`: how requests reach this server.
    pub transport: String,
    pub read_only: bool,
    pub in_flight: i64,
    pub ops: Vec<OpSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub pid: u32,
    pub volumes: Vec<VolumeSnapshot>,
}

/// A unix socket path may hold at most 107 bytes, and state dirs nest deeply: go
/// through an O_PATH descriptor of the directory (`/proc/self/fd/N/name`), which the
/// kernel resolves to the same place. The descriptor lives as long as the returned value.
fn short_path(path: &Path) -> std::io::Result<(std::path::PathBuf, Option<std::fs::File>)> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().len() < 100 {
        return Ok((path.to_path_buf(), None));
    }
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => return Ok((path.to_path_buf(), None)),
    };
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    use std::os::fd::AsRawFd;
    Ok((
        Path::new(&format!("/proc/self/fd/{}", d.as_raw_fd())).join(name),
        Some(d),
    ))
}

/// Serves `snapshot()` as one JSON document to every connection on `path`.
pub fn serve(path: &Path, snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let (p, _dir) = short_path(path)?;
    let listener = UnixListener::bind(&p)?;
    std::thread::Builder::new().name("stats".into()).spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let body = serde_json::to_vec(&snapshot()).unwrap_or_default();
            let _ = conn.write_all(&body);
        }
    })?;
    Ok(())
}

/// Reads a server's snapshot from its stats socket (what the node plugin does).
pub fn fetch(path: &Path, timeout: Duration) -> std::io::Result<Snapshot> {
    use std::io::Read;
    let (p, _dir) = short_path(path)?;
    let mut s = std::os::unix::net::UnixStream::connect(&p)?;
    s.set_read_timeout(Some(timeout))?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_errors() {
        let s = VolumeStats::default();
        for (us, ok) in [(30, true), (700, true), (700, false), (5_000_000, true)] {
            s.start();
            s.finish(Op::Write, Duration::from_micros(us), ok, 4096);
        }
        let snap = s.snapshot("p", "i", "classic", false);
        let w = &snap.ops[Op::Write as usize];
        assert_eq!((w.count, w.errors, w.bytes), (4, 1, 3 * 4096));
        assert_eq!(w.buckets[0], (0.00005, 1));
        assert_eq!(w.buckets[4], (0.001, 3)); // the two 700 µs requests
        assert_eq!(w.buckets.last().unwrap().1, 3); // 5 s is only in +Inf (= count)
        assert_eq!(snap.in_flight, 0);
    }
}
