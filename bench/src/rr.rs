//! TCP request/response: the client sends a fixed-size request and waits for
//! an equal-size response, over one connection, as netperf's TCP_RR does
//! (netperf is not packaged for Debian 12).

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub const MSG: usize = 64;

pub fn server(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding {port}"))?;
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut c = conn;
            let _ = c.set_nodelay(true);
            let mut buf = [0u8; MSG];
            while c.read_exact(&mut buf).is_ok() {
                if c.write_all(&buf).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

pub struct RrResult {
    pub per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs transactions for `dur`; call from a thread inside the client's netns.
pub fn client(to: SocketAddrV4, dur: Duration) -> Result<RrResult> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
        .with_context(|| format!("connecting {to}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = [7u8; MSG];
    // Warm up.
    for _ in 0..200 {
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
    }
    let mut lat = Vec::with_capacity(500_000);
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    let n = lat.len() as f64;
    let secs = start.elapsed().as_secs_f64();
    Ok(RrResult {
        per_sec: n / secs,
        p50_us: crate::report::percentile(&mut lat, 50.0),
        p99_us: crate::report::percentile(&mut lat, 99.0),
    })
}
