//! The traffic netperf would make (it is not packaged for Debian 12): TCP
//! request/response on one connection (TCP_RR), a connection per
//! transaction (TCP_CRR), and a UDP stream counted where it lands.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

pub const MSG: usize = 64;
/// A UDP datagram asking the sink for its count.
const COUNT_QUERY: &[u8] = b"?count";

/// TCP echo of MSG-byte messages on `port`, and a UDP sink on the same port
/// that counts datagrams and answers COUNT_QUERY with the count.
pub fn server(port: u16) -> Result<()> {
    let u = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding UDP {port}"))?;
    std::thread::spawn(move || {
        let mut n: u64 = 0;
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = u.recv_from(&mut buf) {
            if &buf[..len] == COUNT_QUERY {
                let _ = u.send_to(&n.to_le_bytes(), from);
            } else {
                n += 1;
            }
        }
    });
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

pub struct CrrResult {
    pub per_sec: f64,
    pub failed: u64,
}

/// Readies a client's netns for `crr_client`: TIME_WAIT ports reused after
/// a second (tcp_tw_reuse) out of the widest ephemeral range. connect()
/// takes every other port of the range, so the default range (32768-60999)
/// caps a client at ~14k connections/s to one server whatever the data
/// path; this one at ~32k.
pub fn prepare_crr_client() -> Result<()> {
    strake_netlink::netns::sysctl("net/ipv4/tcp_tw_reuse", "1")?;
    strake_netlink::netns::sysctl("net/ipv4/ip_local_port_range", "1024 65535")?;
    Ok(())
}

/// Connect, one MSG-byte exchange, close; as many times as fit in `dur`.
/// Call from a thread inside the client's netns, readied by
/// `prepare_crr_client`.
pub fn crr_client(to: SocketAddrV4, dur: Duration) -> Result<CrrResult> {
    let mut buf = [7u8; MSG];
    let (mut ok, mut failed) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < dur {
        let r = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            Ok(())
        })();
        match r {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
        if failed > 100 && ok == 0 {
            bail!("no connection to {to} succeeds");
        }
    }
    Ok(CrrResult {
        per_sec: ok as f64 / start.elapsed().as_secs_f64(),
        failed,
    })
}

/// Sends MSG-byte datagrams to `to` from one socket for `dur`; returns how
/// many were sent.
pub fn udp_blast(to: SocketAddrV4, dur: Duration) -> Result<u64> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    let buf = [9u8; MSG];
    let mut sent = 0u64;
    let start = Instant::now();
    while start.elapsed() < dur {
        for _ in 0..64 {
            if s.send(&buf).is_ok() {
                sent += 1;
            }
        }
    }
    Ok(sent)
}

/// Asks a sink for its count.
pub fn udp_count(sink: SocketAddrV4) -> Result<u64> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut b = [0u8; 8];
    for _ in 0..5 {
        s.send_to(COUNT_QUERY, sink)?;
        if let Ok((8, _)) = s.recv_from(&mut b) {
            return Ok(u64::from_le_bytes(b));
        }
    }
    bail!("the UDP sink at {sink} does not answer")
}
