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

/// One attempt of [`client`], as `strake-lab client` prints it (a JSON
/// line): what an application in the calling process's namespace and
/// cgroup saw.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// The server's answer (the lab's servers answer with the pod's name).
    pub answer: Option<String>,
    /// getpeername() of the socket (TCP; UDP when connected).
    pub peer: Option<String>,
    /// Source address of the UDP answer (recvfrom).
    pub from: Option<String>,
    pub error: Option<String>,
    /// errno of the failure, when there was one.
    pub errno: Option<i32>,
    /// How long connect (TCP) or the exchange (UDP) took.
    pub micros: u64,
}

/// `count` exchanges with `to`, each on a new socket, from the calling
/// process: `tcp` (connect, getpeername, read the greeting), `udp` (connect,
/// getpeername, send, recvfrom) or `udp-sendto` (unconnected: sendto,
/// recvfrom).
pub fn client(
    to: SocketAddrV4,
    mode: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Attempt>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = std::time::Instant::now();
        let mut a = Attempt {
            answer: None,
            peer: None,
            from: None,
            error: None,
            errno: None,
            micros: 0,
        };
        let r: std::io::Result<()> = (|| {
            match mode {
                "tcp" => {
                    let s = TcpStream::connect_timeout(&to.into(), timeout);
                    a.micros = t0.elapsed().as_micros() as u64;
                    let mut s = s?;
                    a.peer = Some(s.peer_addr()?.to_string());
                    s.set_read_timeout(Some(timeout))?;
                    let mut line = String::new();
                    BufReader::new(&mut s).read_line(&mut line)?;
                    a.answer = Some(line.trim_end().to_string());
                }
                "udp" | "udp-sendto" => {
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    s.set_read_timeout(Some(timeout))?;
                    if mode == "udp" {
                        s.connect(to)?;
                        a.peer = Some(s.peer_addr()?.to_string());
                        s.send(b"client")?;
                    } else {
                        s.send_to(b"client", to)?;
                    }
                    let mut buf = [0u8; 2048];
                    let (n, from) = s.recv_from(&mut buf)?;
                    a.micros = t0.elapsed().as_micros() as u64;
                    a.from = Some(from.to_string());
                    a.answer = Some(String::from_utf8_lossy(&buf[..n]).to_string());
                }
                m => {
                    return Err(std::io::Error::other(format!(
                        "mode {m}: use tcp, udp or udp-sendto"
                    )))
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            if a.micros == 0 {
                a.micros = t0.elapsed().as_micros() as u64;
            }
            a.errno = e.raw_os_error();
            a.error = Some(e.to_string());
        }
        out.push(a);
    }
    Ok(out)
}
