//! The lab's stand-in for a pod's containers: it answers on the pod's
//! declared container ports. TCP: greet with the pod's name, then echo every
//! byte back (so one connection can carry a long stream). UDP: answer every
//! datagram with the pod's name.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};

pub fn serve(name: &str, tcp: &[u16], udp: &[u16]) -> Result<()> {
    let mut threads = Vec::new();
    for &port in tcp {
        let l =
            TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding TCP {port}"))?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || {
                    let mut c = conn;
                    let _ = c.set_nodelay(true);
                    if c.write_all(format!("{name}\n").as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if c.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        }));
    }
    for &port in udp {
        let s =
            UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding UDP {port}"))?;
        let reply = name.as_bytes().to_vec();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&reply, peer);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
