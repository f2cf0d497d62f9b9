//! strake-csi benchmarks, against the dev cluster (deploy/dev/ceph-up.sh):
//!
//! 1. RPC latency over the CSI socket, N of each (default 100): CreateVolume,
//!    CreateSnapshot, CreateVolume from a snapshot (clone), DeleteVolume. p50/p99/mean.
//! 2. IO through a staged raw-block volume, for every attach path this node has,
//!    against librbd baselines (fio `ioengine=rbd` and `rbd bench`) on the same
//!    cluster in the same run: sequential 4 MiB write/read (qd16) and random 4 KiB
//!    write/read (qd32). Every path is staged first and each job then runs
//!    round-robin over all of them (`--rounds`, medians reported), so a shift in the
//!    machine's load hits every path alike. Caches are dropped before every job. The fuse-loop
//!    path is measured with strake-rbd-fuse on both transports (io_uring, classic
//!    /dev/fuse threads) and with Debian's rbd-fuse.
//! 3. CPU per GiB moved, per path and job: the whole host's busy CPU time
//!    (/proc/stat, which includes the OSD's share) and the client's (fio plus the
//!    FUSE helper process), divided by the bytes the job moved.
//!
//! Writes JSON and a Markdown table (`--out DIR`, default bench/csi/results).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use strake_csi::attach::AttacherKind;
use strake_csi::csi::controller_client::ControllerClient;
use strake_csi::csi::group_controller_client::GroupControllerClient;
use strake_csi::csi::node_client::NodeClient;
use strake_csi::csi::volume_capability::access_mode::Mode;
use strake_csi::csi::volume_capability::{AccessMode, AccessType, BlockVolume};
use strake_csi::csi::*;

#[derive(Parser)]
#[command(about = "strake-csi latency and IO benchmarks (needs the dev Ceph cluster and root)")]
struct Args {
    #[arg(long, env = "CEPH_CONF", default_value = "/var/lib/strake/ceph-dev/ceph.conf")]
    ceph_conf: PathBuf,
    /// Calls of each RPC for the latency figures (0 skips them).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Bytes per sequential job (MiB).
    #[arg(long, default_value_t = 1024)]
    seq_mib: u64,
    /// Seconds per random job.
    #[arg(long, default_value_t = 15)]
    rand_secs: u64,
    /// Skip the IO part.
    #[arg(long)]
    no_io: bool,
    /// Round-robin passes over all paths for every job; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Only fuse-loop variants whose label contains this (e.g. `io-uring`); baselines always run.
    #[arg(long)]
    only: Option<String>,
    /// strake-csi binary (default: next to this one).
    #[arg(long)]
    driver: Option<PathBuf>,
    #[arg(long, default_value = "bench/csi/results")]
    out: PathBuf,
}

#[derive(Serialize, Clone)]
struct Latency {
    op: String,
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    max_ms: f64,
}

#[derive(Serialize, Clone, Default)]
struct IoResult {
    path: String,
    seq_write_mib_s: f64,
    seq_read_mib_s: f64,
    rand_write_iops: f64,
    rand_read_iops: f64,
}

/// CPU seconds per GiB moved, per job (seq write, seq read, rand write, rand read).
#[derive(Serialize, Clone, Default)]
struct CpuResult {
    path: String,
    /// Every CPU of the host (the OSD, the FUSE helper, loop workers, fio).
    host_s_per_gib: [f64; 4],
    /// fio's own CPU plus the FUSE helper process's (librbd runs inside fio for
    /// the librbd baseline, inside the helper otherwise).
    client_s_per_gib: [f64; 4],
}

#[derive(Serialize)]
struct Report {
    date: String,
    command: String,
    ceph_version: String,
    kernel: String,
    cpus: usize,
    latency: Vec<Latency>,
    io: Vec<IoResult>,
    io_ratios_vs_fio_rbd: Vec<IoResult>,
    cpu_per_gib: Vec<CpuResult>,
    notes: Vec<String>,
}

fn stats(op: &str, mut d: Vec<Duration>) -> Latency {
    if d.is_empty() {
        // --n 0: latency skipped; dropped from the report.
        return Latency {
            op: op.into(),
            n: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            mean_ms: 0.0,
            max_ms: 0.0,
        };
    }
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    let pct = |p: f64| ms(d[((d.len() as f64 * p).ceil() as usize).clamp(1, d.len()) - 1]);
    Latency {
        op: op.into(),
        n: d.len(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        mean_ms: d.iter().map(|x| ms(*x)).sum::<f64>() / d.len() as f64,
        max_ms: ms(*d.last().unwrap()),
    }
}

fn mon(c: &strake_ceph::Cluster, v: serde_json::Value) -> Result<Vec<u8>> {
    c.mon_command(&v.to_string()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

struct Job {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    depth: u32,
    random: bool,
}

const JOBS: [Job; 4] = [
    Job {
        name: "seq_write",
        rw: "write",
        bs: "4M",
        depth: 16,
        random: false,
    },
    Job {
        name: "seq_read",
        rw: "read",
        bs: "4M",
        depth: 16,
        random: false,
    },
    Job {
        name: "rand_write",
        rw: "randwrite",
        bs: "4k",
        depth: 32,
        random: true,
    },
    Job {
        name: "rand_read",
        rw: "randread",
        bs: "4k",
        depth: 32,
        random: true,
    },
];

/// Busy CPU seconds of the whole host so far (/proc/stat: all but idle and iowait).
fn host_cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: f64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / clk_tck()
}

fn clk_tck() -> f64 {
    // USER_HZ: what /proc/stat and /proc/PID/stat count in.
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds used by this process's reaped children (fio, all its threads,
/// librbd's included: fio's own usr_cpu/sys_cpu count only the job thread).
fn children_cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// CPU seconds (user + system, all threads) a process has used.
fn proc_cpu_secs(pid: i32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is [0], utime [11], stime [12].
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / clk_tck()
}

struct Measured {
    value: f64,
    gib: f64,
    host_cpu_s: f64,
    client_cpu_s: f64,
}

/// Runs one fio job; `value` is MiB/s (sequential) or IOPS (random).
fn fio(target: &[String], job: &Job, a: &Args, helper: Option<i32>) -> Result<Measured> {
    drop_caches();
    let (h0, p0) = (host_cpu_secs(), helper.map(proc_cpu_secs).unwrap_or(0.0));
    let mut cmd = Command::new("fio");
    cmd.args(["--output-format=json", "--name=j", "--group_reporting"])
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.bs))
        .arg(format!("--iodepth={}", job.depth))
        .arg(format!("--size={}M", a.seq_mib))
        .args(target);
    if job.random {
        cmd.arg(format!("--runtime={}", a.rand_secs)).arg("--time_based");
    }
    let c0 = children_cpu_secs();
    let out = sh(&mut cmd)?;
    let fio_cpu_s = children_cpu_secs() - c0;
    let (h1, p1) = (host_cpu_secs(), helper.map(proc_cpu_secs).unwrap_or(0.0));
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap_or(0)..])?;
    let j = &v["jobs"][0];
    let side = if job.rw.contains("write") {
        &j["write"]
    } else {
        &j["read"]
    };
    Ok(Measured {
        value: if job.random {
            side["iops"].as_f64().unwrap_or(0.0)
        } else {
            side["bw_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        },
        gib: side["io_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        host_cpu_s: h1 - h0,
        client_cpu_s: fio_cpu_s + (p1 - p0),
    })
}

/// The FUSE helper's PID recorded in the node plugin's state for the one staged volume.
fn staged_helper_pid(state_dir: &Path) -> Option<i32> {
    let rd = std::fs::read_dir(state_dir.join("volumes")).ok()?;
    rd.flatten().find_map(|e| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path().join("state.json")).ok()?).ok()?;
        v["attachment"]["helper_pid"].as_i64().map(|p| p as i32)
    })
}

/// `rbd bench` baseline: parses "elapsed: … ops/sec: … bytes/sec: …".
fn rbd_bench(conf: &Path, pool: &str, image: &str, a: &Args) -> Result<IoResult> {
    let mut r = IoResult {
        path: "rbd bench (librbd)".into(),
        ..Default::default()
    };
    for job in &JOBS {
        drop_caches();
        let io_size = job.bs.to_uppercase(); // rbd wants 4K, not 4k
        let (io_type, pattern) = match job.rw {
            "write" => ("write", "seq"),
            "read" => ("read", "seq"),
            "randwrite" => ("write", "rand"),
            _ => ("read", "rand"),
        };
        let total = if job.random {
            "256M".to_string()
        } else {
            format!("{}M", a.seq_mib)
        };
        let out = sh(Command::new("rbd")
            .arg("-c")
            .arg(conf)
            .args([
                "bench",
                "--io-type",
                io_type,
                "--io-pattern",
                pattern,
                "--io-size",
                &io_size,
            ])
            .args(["--io-threads", &job.depth.to_string(), "--io-total", &total])
            .arg(format!("{pool}/{image}")))?;
        let last = out.lines().rev().find(|l| l.contains("elapsed:")).unwrap_or("");
        let field = |k: &str| -> f64 {
            let f: Vec<&str> = last.split_whitespace().collect();
            f.iter()
                .position(|x| *x == k)
                .and_then(|i| f.get(i + 1))
                .and_then(|x| x.parse().ok())
                .unwrap_or(0.0)
        };
        // bytes/sec is printed with a unit ("286 MiB/s"); ops/sec times the IO size is exact.
        let ops = field("ops/sec:");
        let v = if job.random { ops } else { ops * 4.0 };
        eprintln!("  rbd bench {}: {v:.0}", job.name);
        match job.name {
            "seq_write" => r.seq_write_mib_s = v,
            "seq_read" => r.seq_read_mib_s = v,
            "rand_write" => r.rand_write_iops = v,
            _ => r.rand_read_iops = v,
        }
    }
    Ok(r)
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Deletes the benchmark pool and user whatever happens (errors included).
struct Cleanup(strake_ceph::Cluster, String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let p = &self.1;
        let _ = mon(
            &self.0,
            serde_json::json!({"prefix": "osd pool rm", "pool": p, "pool2": p, "yes_i_really_really_mean_it": true}),
        );
        let _ = mon(
            &self.0,
            serde_json::json!({"prefix": "auth rm", "entity": "client.strake-csi-bench"}),
        );
    }
}

struct Driver(Child);

/// The node id of the benchmark's node plugin (ControllerPublishVolume names it).
const BENCH_NODE: &str = "bench-node";

/// Starts strake-csi (all services) in `dir` and connects to it.
async fn start_driver(
    bin: &Path,
    conf: &Path,
    dir: &Path,
    pool: &str,
    extra: &[&str],
) -> Result<(Driver, tonic::transport::Channel)> {
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("csi.sock");
    let log = std::fs::File::create(dir.join("driver.log"))?;
    let d = Driver(
        Command::new(bin)
            .arg("--endpoint")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--ceph-conf")
            .arg(conf)
            .args(["--metrics-addr", "", "--list-pools", pool, "--node-id", BENCH_NODE])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("strake-csi did not start; see {}", dir.join("driver.log").display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((d, strake_csi::client::connect(&socket).await?))
}
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    if !a.ceph_conf.exists() {
        bail!(
            "{} does not exist: start the dev cluster with deploy/dev/ceph-up.sh",
            a.ceph_conf.display()
        );
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let admin = strake_ceph::Cluster::connect(&strake_ceph::ConnectOptions::new(&a.ceph_conf))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = format!("bench-csi-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    mon(
        &admin,
        serde_json::json!({"prefix": "osd pool create", "pool": pool, "pg_num": 32, "pgp_num": 32}),
    )?;
    let _cleanup = Cleanup(admin.clone(), pool.clone());
    mon(
        &admin,
        serde_json::json!({"prefix": "osd pool application enable", "pool": pool, "app": "rbd"}),
    )?;
    let out = mon(
        &admin,
        serde_json::json!({"prefix": "auth get-or-create", "entity": "client.strake-csi-bench", "caps": ["mon", "profile rbd", "osd", "profile rbd", "mgr", "profile rbd"], "format": "json"}),
    )?;
    let key = serde_json::from_slice::<serde_json::Value>(&out)?[0]["key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let secrets = HashMap::from([
        ("userID".to_string(), "strake-csi-bench".to_string()),
        ("userKey".to_string(), key),
        // The key-encryption key for the encrypted rows (csi/README.md, Encryption).
        (
            "encryptionPassphrase".to_string(),
            "strake-csi-bench-key-encryption-key".to_string(),
        ),
    ]);

    let tmp = std::env::temp_dir().join(format!("strake-csi-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let driver_bin = a
        .driver
        .clone()
        .unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("strake-csi"));
    let (_driver, ch) = start_driver(&driver_bin, &a.ceph_conf, &tmp.join("main"), &pool, &[]).await?;
    let ch_group = ch.clone();
    let mut c = ControllerClient::new(ch);
    let params = HashMap::from([("pool".to_string(), pool.clone())]);
    let create = |name: String, src: Option<volume_content_source::Type>, size: u64| CreateVolumeRequest {
        name,
        capacity_range: Some(CapacityRange {
            required_bytes: size as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![block_cap()],
        parameters: params.clone(),
        secrets: secrets.clone(),
        volume_content_source: src.map(|t| VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    };

    // ---- latency ----
    eprintln!(
        "latency: {} x CreateVolume / CreateSnapshot / clone from snapshot / DeleteVolume",
        a.n
    );
    let mut lat = vec![];
    let (mut vols, mut snaps, mut clones) = (vec![], vec![], vec![]);
    let mut d = vec![];
    for i in 0..a.n {
        let t = Instant::now();
        let v = c
            .create_volume(create(format!("bench-vol-{i}"), None, 1 << 30))
            .await?
            .into_inner()
            .volume
            .unwrap();
        d.push(t.elapsed());
        vols.push(v.volume_id);
    }
    lat.push(stats("CreateVolume (1 GiB)", d));
    let mut d = vec![];
    for (i, v) in vols.iter().enumerate() {
        let t = Instant::now();
        let s = c
            .create_snapshot(CreateSnapshotRequest {
                source_volume_id: v.clone(),
                name: format!("bench-snap-{i}"),
                secrets: secrets.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .snapshot
            .unwrap();
        d.push(t.elapsed());
        snaps.push(s.snapshot_id);
    }
    lat.push(stats("CreateSnapshot", d));
    let mut d = vec![];
    for (i, s) in snaps.iter().enumerate() {
        let src =
            volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource { snapshot_id: s.clone() });
        let t = Instant::now();
        let v = c
            .create_volume(create(format!("bench-clone-{i}"), Some(src), 1 << 30))
            .await?
            .into_inner()
            .volume
            .unwrap();
        d.push(t.elapsed());
        clones.push(v.volume_id);
    }
    lat.push(stats("CreateVolume from snapshot (clone)", d));
    let mut d = vec![];
    for v in &clones {
        let t = Instant::now();
        c.delete_volume(DeleteVolumeRequest {
            volume_id: v.clone(),
            secrets: secrets.clone(),
        })
        .await?;
        d.push(t.elapsed());
    }
    lat.push(stats("DeleteVolume (clone)", d));
    let mut d = vec![];
    for s in &snaps {
        let t = Instant::now();
        c.delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: s.clone(),
            secrets: secrets.clone(),
        })
        .await?;
        d.push(t.elapsed());
    }
    lat.push(stats("DeleteSnapshot", d));
    let mut d = vec![];
    for v in &vols {
        let t = Instant::now();
        c.delete_volume(DeleteVolumeRequest {
            volume_id: v.clone(),
            secrets: secrets.clone(),
        })
        .await?;
        d.push(t.elapsed());
    }
    lat.push(stats("DeleteVolume (1 GiB)", d));

    // Encrypted CreateVolume: a passphrase, its wrapping, and librbd's LUKS2 format.
    let mut d = vec![];
    let mut enc = vec![];
    for i in 0..a.n {
        let mut req = create(format!("bench-enc-{i}"), None, 1 << 30);
        req.parameters.insert("encrypted".into(), "true".into());
        let t = Instant::now();
        let v = c.create_volume(req).await?.into_inner().volume.unwrap();
        d.push(t.elapsed());
        enc.push(v.volume_id);
    }
    lat.push(stats("CreateVolume (1 GiB, encrypted)", d));
    for v in &enc {
        c.delete_volume(DeleteVolumeRequest {
            volume_id: v.clone(),
            secrets: secrets.clone(),
        })
        .await?;
    }

    // Group snapshots of 3 and 10 volumes with 16 MiB written each (each member is
    // copied out of the group snapshot: Ceph 16, see csi/README.md).
    let mut g = GroupControllerClient::new(ch_group.clone());
    let bio = admin.ioctx(&pool).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut members = vec![];
    for i in (0..10).filter(|_| a.n > 0) {
        let v = c
            .create_volume(create(format!("bench-gmember-{i}"), None, 256 << 20))
            .await?
            .into_inner()
            .volume
            .unwrap();
        let img = bio
            .open(&v.volume_context["imageName"])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let chunk = vec![0x5au8 ^ i as u8; 1 << 20];
        for m in 0..16u64 {
            img.write_at(m << 20, &chunk).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        members.push(v.volume_id);
    }
    let rounds = if a.n == 0 { 0 } else { (a.n / 5).max(3) };
    for k in [3usize, 10].into_iter().filter(|_| rounds > 0) {
        let mut d = vec![];
        for r in 0..rounds {
            let t = Instant::now();
            let gs = g
                .create_volume_group_snapshot(CreateVolumeGroupSnapshotRequest {
                    name: format!("bench-group-{k}-{r}"),
                    source_volume_ids: members[..k].to_vec(),
                    secrets: secrets.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .group_snapshot
                .unwrap();
            d.push(t.elapsed());
            g.delete_volume_group_snapshot(DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: gs.group_snapshot_id,
                secrets: secrets.clone(),
                ..Default::default()
            })
            .await?;
        }
        lat.push(stats(&format!("CreateVolumeGroupSnapshot ({k} volumes)"), d));
    }
    for v in &members {
        c.delete_volume(DeleteVolumeRequest {
            volume_id: v.clone(),
            secrets: secrets.clone(),
        })
        .await?;
    }
    for l in &lat {
        eprintln!("  {:<38} p50 {:>7.1} ms  p99 {:>7.1} ms", l.op, l.p50_ms, l.p99_ms);
    }

    // ---- IO ----
    let mut io = vec![];
    let mut cpus = vec![];
    let mut ratios = vec![];
    let mut notes = vec![];
    if !a.no_io {
        let size = (a.seq_mib + 64) << 20;
        // Baselines on a plain image: fio's librbd engine, then rbd bench.
        let base = format!("bench-librbd-{}", std::process::id());
        let bio = admin.ioctx(&pool).map_err(|e| anyhow::anyhow!("{e}"))?;
        bio.create_image(&base, size, &Default::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!("io: fio ioengine=rbd");
        let rbd_target = vec![
            "--ioengine=rbd".to_string(),
            "--clientname=admin".to_string(),
            format!("--pool={pool}"),
            format!("--rbdname={base}"),
            "--direct=1".to_string(),
        ];
        std::env::set_var("CEPH_CONF", &a.ceph_conf);
        // Every path is staged first, then the jobs run round-robin over all of them
        // (`--rounds` times), so a change in the machine's load hits every path alike;
        // the figures are medians over rounds, the ratios medians of per-round ratios.
        struct Staged {
            name: String,
            target: Vec<String>,
            helper: Option<i32>,
            cleanup: Option<(Driver, String, PathBuf, tonic::transport::Channel)>,
        }
        let mut staged = vec![Staged {
            name: "fio ioengine=rbd (librbd)".into(),
            target: rbd_target,
            helper: None,
            cleanup: None,
        }];
        for kind in AttacherKind::ALL {
            if let Err(why) = kind.available() {
                notes.push(format!("{kind}: not measured, {why}"));
                continue;
            }
            let variants: Vec<(&str, Vec<&str>)> = match kind {
                AttacherKind::FuseLoop => vec![
                    (
                        "strake-rbd-fuse io-uring",
                        vec!["--fuse-helper=strake-rbd-fuse", "--fuse-transport=io-uring"],
                    ),
                    (
                        "strake-rbd-fuse classic",
                        vec!["--fuse-helper=strake-rbd-fuse", "--fuse-transport=classic"],
                    ),
                    ("rbd-fuse", vec!["--fuse-helper=rbd-fuse"]),
                    // The same path as the first row, on an encrypted volume: the
                    // ratio to that row is the price of LUKS2 in librbd.
                    (
                        "strake-rbd-fuse io-uring, encrypted (LUKS2)",
                        vec!["--fuse-helper=strake-rbd-fuse", "--fuse-transport=io-uring"],
                    ),
                ]
                .into_iter()
                .filter(|(l, _)| a.only.as_deref().is_none_or(|o| l.contains(o)))
                .collect(),
                _ => vec![("", vec![])],
            };
            for (label, extra) in variants {
                let i = staged.len();
                eprintln!("io: staging a block volume via {kind} {label}");
                let dir = tmp.join(format!("io-{kind}-{i}"));
                let (d, ch) = start_driver(&driver_bin, &a.ceph_conf, &dir, &pool, &extra).await?;
                let (mut c, mut n) = (ControllerClient::new(ch.clone()), NodeClient::new(ch.clone()));
                let mut req = create(format!("bench-io-{kind}-{i}"), None, size);
                req.parameters.insert("mounter".into(), kind.to_string());
                if label.contains("encrypted") {
                    req.parameters.insert("encrypted".into(), "true".into());
                }
                let v = c.create_volume(req).await?.into_inner().volume.unwrap();
                let stg = dir.join("stg");
                c.controller_publish_volume(ControllerPublishVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    node_id: BENCH_NODE.into(),
                    volume_capability: Some(block_cap()),
                    secrets: secrets.clone(),
                    ..Default::default()
                })
                .await?;
                n.node_stage_volume(NodeStageVolumeRequest {
                    volume_id: v.volume_id.clone(),
                    staging_target_path: stg.to_string_lossy().into(),
                    volume_capability: Some(block_cap()),
                    secrets: secrets.clone(),
                    volume_context: v.volume_context.clone(),
                    ..Default::default()
                })
                .await?;
                let dev = strake_csi::node::staged_ids(&dir.join("state"))
                    .get(&v.volume_id)
                    .cloned()
                    .context("staged device")?;
                staged.push(Staged {
                    name: format!("strake-csi {kind} {label}").trim().to_string(),
                    target: vec![
                        format!("--filename={}", dev.display()),
                        "--ioengine=libaio".into(),
                        "--direct=1".into(),
                    ],
                    helper: staged_helper_pid(&dir.join("state")),
                    cleanup: Some((d, v.volume_id, stg, ch)),
                });
            }
        }
        // results[path][job][round]
        let mut results: Vec<Vec<Vec<Measured>>> =
            staged.iter().map(|_| JOBS.iter().map(|_| vec![]).collect()).collect();
        let mut failure = None;
        'jobs: for (ji, job) in JOBS.iter().enumerate() {
            for round in 0..a.rounds {
                for (pi, st) in staged.iter().enumerate() {
                    match fio(&st.target, job, &a, st.helper) {
                        Ok(m) => {
                            eprintln!("  {} {} round {round}: {:.0}", st.name, job.name, m.value);
                            results[pi][ji].push(m);
                        }
                        Err(e) => {
                            failure = Some(e.context(format!("{} {}", st.name, job.name)));
                            break 'jobs;
                        }
                    }
                }
            }
        }
        for st in staged.iter_mut() {
            if let Some((_d, vol, stg, ch)) = st.cleanup.take() {
                let (mut c, mut n) = (ControllerClient::new(ch.clone()), NodeClient::new(ch));
                n.node_unstage_volume(NodeUnstageVolumeRequest {
                    volume_id: vol.clone(),
                    staging_target_path: stg.to_string_lossy().into(),
                })
                .await?;
                c.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                    volume_id: vol.clone(),
                    node_id: BENCH_NODE.into(),
                    secrets: secrets.clone(),
                })
                .await?;
                c.delete_volume(DeleteVolumeRequest {
                    volume_id: vol,
                    secrets: secrets.clone(),
                })
                .await?;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let median = |mut v: Vec<f64>| -> f64 {
            v.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
            if v.is_empty() {
                0.0
            } else {
                v[v.len() / 2]
            }
        };
        let row = |name: &str, f: &dyn Fn(usize) -> f64| IoResult {
            path: name.into(),
            seq_write_mib_s: f(0),
            seq_read_mib_s: f(1),
            rand_write_iops: f(2),
            rand_read_iops: f(3),
        };
        for (pi, st) in staged.iter().enumerate() {
            io.push(row(&st.name, &|j| {
                median(results[pi][j].iter().map(|m| m.value).collect())
            }));
            let per_gib = |j: usize, host: bool| {
                median(
                    results[pi][j]
                        .iter()
                        .filter(|m| m.gib > 0.0)
                        .map(|m| if host { m.host_cpu_s } else { m.client_cpu_s } / m.gib)
                        .collect(),
                )
            };
            cpus.push(CpuResult {
                path: st.name.clone(),
                host_s_per_gib: [0, 1, 2, 3].map(|j| per_gib(j, true)),
                client_s_per_gib: [0, 1, 2, 3].map(|j| per_gib(j, false)),
            });
            if pi > 0 {
                ratios.push(row(&st.name, &|j| {
                    median(
                        results[pi][j]
                            .iter()
                            .zip(&results[0][j])
                            .map(|(m, b)| m.value / b.value)
                            .collect(),
                    )
                }));
            }
        }
        let rb = rbd_bench(&a.ceph_conf, &pool, &base, &a)?;
        let b = io[0].clone();
        ratios.insert(
            0,
            IoResult {
                path: rb.path.clone(),
                seq_write_mib_s: rb.seq_write_mib_s / b.seq_write_mib_s,
                seq_read_mib_s: rb.seq_read_mib_s / b.seq_read_mib_s,
                rand_write_iops: rb.rand_write_iops / b.rand_write_iops,
                rand_read_iops: rb.rand_read_iops / b.rand_read_iops,
            },
        );
        io.insert(1, rb);
        bio.remove_image(&base).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    drop(c);

    let report = Report {
        date: sh(Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%M:%SZ"))
            .unwrap_or_default()
            .trim()
            .into(),
        command,
        ceph_version: sh(Command::new("ceph").arg("--version"))
            .unwrap_or_default()
            .trim()
            .into(),
        kernel: sh(Command::new("uname").arg("-r")).unwrap_or_default().trim().into(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        latency: lat.into_iter().filter(|l| l.n > 0).collect(),
        io,
        io_ratios_vs_fio_rbd: ratios,
        cpu_per_gib: cpus,
        notes,
    };
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("csi-bench.json"), serde_json::to_string_pretty(&report)?)?;
    let md = markdown(&report);
    std::fs::write(a.out.join("csi-bench.md"), &md)?;
    println!("{md}");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s += &format!(
        "# strake-csi benchmarks ({})\n\n`{}`\n\n{} · kernel {} · {} CPUs\n\n",
        r.date, r.command, r.ceph_version, r.kernel, r.cpus
    );
    if !r.latency.is_empty() {
        s += "## RPC latency over the CSI socket\n\n| operation | n | p50 ms | p99 ms | mean ms | max ms |\n|---|---|---|---|---|---|\n";
    }
    for l in &r.latency {
        s += &format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            l.op, l.n, l.p50_ms, l.p99_ms, l.mean_ms, l.max_ms
        );
    }
    if !r.io.is_empty() {
        s += "\n## IO: staged raw-block volume vs librbd (same cluster, same run)\n\n| path | seq write 4M qd16 MiB/s | seq read 4M qd16 MiB/s | rand write 4k qd32 IOPS | rand read 4k qd32 IOPS |\n|---|---|---|---|---|\n";
        for x in &r.io {
            s += &format!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                x.path, x.seq_write_mib_s, x.seq_read_mib_s, x.rand_write_iops, x.rand_read_iops
            );
        }
        s += "\nRatio to fio `ioengine=rbd` (median of the per-round ratios; `rbd bench` runs once, after):\n\n| path | seq write | seq read | rand write | rand read |\n|---|---|---|---|---|\n";
        for x in &r.io_ratios_vs_fio_rbd {
            s += &format!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                x.path, x.seq_write_mib_s, x.seq_read_mib_s, x.rand_write_iops, x.rand_read_iops
            );
        }
    }
    if !r.cpu_per_gib.is_empty() {
        s += "\nCPU seconds per GiB moved, whole host (incl. the OSD) / client (fio + FUSE helper):\n\n| path | seq write | seq read | rand write | rand read |\n|---|---|---|---|---|\n";
        for c in &r.cpu_per_gib {
            let cell = |i: usize| format!("{:.2} / {:.2}", c.host_s_per_gib[i], c.client_s_per_gib[i]);
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                c.path,
                cell(0),
                cell(1),
                cell(2),
                cell(3)
            );
        }
    }
    for n in &r.notes {
        s += &format!("\n- {n}");
    }
    s + "\n"
}
