//! Clients that run inside a namespace: what tests and the demo use to show
//! that packets arrive (or do not).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;
use strake_netlink::netns;

/// Connects over TCP from inside `ns` and returns the server's greeting line.
pub fn tcp(ns: &Path, to: SocketAddrV4, timeout: Duration) -> Result<String> {
    netns::run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&to.into(), timeout)
            .with_context(|| format!("TCP connect to {to}"))?;
        s.set_read_timeout(Some(timeout))?;
        let mut line = String::new();
        BufReader::new(&mut s)
            .read_line(&mut line)
            .with_context(|| format!("reading from {to}"))?;
        if line.is_empty() {
            bail!("{to} closed the connection without a greeting");
        }
        Ok(line.trim_end().to_string())
    })
}

/// Sends one UDP datagram from inside `ns` and returns the answer.
pub fn udp(ns: &Path, to: SocketAddrV4, timeout: Duration) -> Result<String> {
    netns::run_in(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"probe", to)
            .with_context(|| format!("UDP send to {to}"))?;
        let mut buf = [0u8; 2048];
        let (n, _) = s
            .recv_from(&mut buf)
            .with_context(|| format!("no UDP answer from {to}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    })
}

/// One ICMP echo from inside `ns` (Debian's ping, run in the namespace).
pub fn ping(ns: &Path, to: Ipv4Addr) -> Result<()> {
    let out =
        crate::procs::run_in_netns(ns, "ping", &["-c", "1", "-W", "2", "-q", &to.to_string()])?;
    if !out.status.success() {
        bail!(
            "ping {to} failed: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// An open TCP connection made from inside `ns` (the socket stays in that
/// namespace; it can be used from any thread). The greeting is consumed.
pub fn tcp_stream(ns: &Path, to: SocketAddrV4, timeout: Duration) -> Result<(TcpStream, String)> {
    let ns: PathBuf = ns.to_path_buf();
    netns::run_in(&ns, move || {
        let s = TcpStream::connect_timeout(&to.into(), timeout)
            .with_context(|| format!("TCP connect to {to}"))?;
        s.set_read_timeout(Some(timeout))?;
        let mut greeting = Vec::new();
        let mut byte = [0u8; 1];
        let mut r = &s;
        while r.read(&mut byte)? == 1 && byte[0] != b'\n' {
            greeting.push(byte[0]);
        }
        let _ = (&s).flush();
        Ok((s, String::from_utf8_lossy(&greeting).to_string()))
    })
}

pub fn write_all(mut s: &TcpStream, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data)
}
