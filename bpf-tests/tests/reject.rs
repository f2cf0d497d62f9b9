//! A Service without endpoints on the packet path (reject.h): the client's
//! packet comes back as its refusal, a TCP RST or an ICMP port unreachable,
//! from the address it was sent to, with checksums a real stack accepts;
//! counted per frontend. Decoded with etherparse, not with our own offsets.

use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;
use strake_bpf_tests::pkt::*;
use strake_bpf_tests::*;
use strake_datapath::shared::{STRAKE_SVC_F_EXTERNAL, STRAKE_SVC_F_REJECT};

const HOST_MAC: [u8; 6] = [0xee; 6];
const EMPTY_PORT: u16 = 81;

/// An empty frontend (no backends) on VIP:81 TCP and UDP, refusing or not.
fn empty_service(net: &mut TestNet, addr: Ipv4Addr, port: u16, flags: u32) -> anyhow::Result<()> {
    for (i, proto) in [6u8, 17].into_iter().enumerate() {
        let mut s = TestService::tcp(addr, port, vec![]);
        s.proto = proto;
        s.flags = flags;
        s.frontend_id = 10 + i as u32;
        s.set_id = 10 + i as u32;
        net.add_service(&s)?;
    }
    Ok(())
}

fn segment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    smac: [u8; 6],
    dmac: [u8; 6],
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(40000, EMPTY_PORT, 5000, 64240);
    let b = match ack {
        Some(a) => b.ack(a).psh(),
        None => b.syn(),
    };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// Checks the RST answering a segment from (smac, src) to (dmac, dst):
/// returns (seq, ack number or None).
fn rst_of(
    out: &[u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> (u32, Option<u32>) {
    assert_eq!(out.len(), 54, "Ethernet + IPv4 + TCP, no payload");
    assert_eq!((dst_mac(out), src_mac(out)), (smac, dmac), "MACs swapped");
    assert!(ip_checksum_ok(out), "IPv4 checksum");
    assert!(l4_checksum_ok(out), "TCP checksum");
    let p = SlicedPacket::from_ethernet(out).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    assert_eq!(
        ip.header().source_addr(),
        dst,
        "from the address it was sent to"
    );
    assert_eq!(ip.header().destination_addr(), src);
    assert!(ip.header().ttl() > 1);
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP")
    };
    assert!(t.rst(), "RST");
    assert!(!t.syn() && !t.fin() && !t.psh());
    assert_eq!((t.source_port(), t.destination_port()), (EMPTY_PORT, 40000));
    (
        t.sequence_number(),
        t.ack().then(|| t.acknowledgment_number()),
    )
}

/// Checks the ICMP port unreachable answering `sent` (a UDP datagram).
fn unreachable_of(out: &[u8], sent: &[u8], smac: [u8; 6], dmac: [u8; 6]) {
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    assert_eq!((dst_mac(out), src_mac(out)), (smac, dmac), "MACs swapped");
    assert!(ip_checksum_ok(out), "IPv4 checksum");
    let p = SlicedPacket::from_ethernet(out).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let (src, _, dst, _) = addrs(sent);
    assert_eq!(ip.header().source_addr(), dst);
    assert_eq!(ip.header().destination_addr(), src);
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not ICMP")
    };
    assert!(
        matches!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
        ),
        "port unreachable: {:?}",
        icmp.icmp_type()
    );
    let body = &out[OFF_IP + 20..];
    let mut sum: u32 = body
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "ICMP checksum");
    assert_eq!(
        &out[OFF_IP + 28..],
        &sent[OFF_IP..OFF_IP + 28],
        "quotes the datagram's IPv4 header and first 8 bytes"
    );
}

#[test]
fn a_pod_sending_to_a_service_without_endpoints_gets_a_rst_or_port_unreachable_back() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        empty_service(net, VIP, EMPTY_PORT, STRAKE_SVC_F_REJECT)?;
        let lxc1 = net.topo.lxc1.index;

        // A SYN: RST|ACK acknowledging the SYN and its payload.
        let syn = segment(POD1, VIP, POD1_MAC, HOST_MAC, None, b"hello");
        let out = net.run("from_pod", lxc1, &syn)?;
        assert_eq!(
            out.retval, TC_ACT_REDIRECT,
            "back into the pod that sent it"
        );
        let (seq, ack) = rst_of(&out.data, POD1, VIP, POD1_MAC, HOST_MAC);
        assert_eq!((seq, ack), (0, Some(5000 + 5 + 1)));

        // A segment with an ACK: the RST takes its sequence number from it.
        let seg = segment(POD1, VIP, POD1_MAC, HOST_MAC, Some(777_000), b"data");
        let out = net.run("from_pod", lxc1, &seg)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(
            rst_of(&out.data, POD1, VIP, POD1_MAC, HOST_MAC),
            (777_000, None)
        );

        // A RST is never answered.
        let rst = tcp_flags(POD1_MAC, HOST_MAC, POD1, VIP, 40000, EMPTY_PORT, 0x04);
        assert_eq!(net.run("from_pod", lxc1, &rst)?.retval, TC_ACT_SHOT);

        // UDP, short and long: ICMP port unreachable (the frame grows or
        // shrinks to it).
        for payload in [&b"x"[..], &[7u8; 600][..]] {
            let b = PacketBuilder::ethernet2(POD1_MAC, HOST_MAC)
                .ipv4(POD1.octets(), VIP.octets(), 64)
                .udp(40001, EMPTY_PORT);
            let mut d = Vec::new();
            b.write(&mut d, payload).unwrap();
            let out = net.run("from_pod", lxc1, &d)?;
            assert_eq!(out.retval, TC_ACT_REDIRECT);
            unreachable_of(&out.data, &d, POD1_MAC, HOST_MAC);
        }
        assert_eq!(net.counter("lb_rejected"), 4);
        assert_eq!(net.dp.lb.frontend_rejected(10), 2, "TCP frontend");
        assert_eq!(net.dp.lb.frontend_rejected(11), 2, "UDP frontend");
        assert_eq!(net.counter("lb_no_backend"), 1, "the RST, dropped");
        Ok(())
    })
    .unwrap();
}

#[test]
fn an_empty_set_that_is_not_refusing_drops() {
    if !strake_test_support::root() {
        return;
    }
    // A Local scope empty on this node while other nodes have endpoints
    // (kube-proxy drops those): no answer at all.
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        empty_service(net, VIP, EMPTY_PORT, 0)?;
        let syn = segment(POD1, VIP, POD1_MAC, HOST_MAC, None, b"");
        assert_eq!(
            net.run("from_pod", net.topo.lxc1.index, &syn)?.retval,
            TC_ACT_SHOT
        );
        assert_eq!(net.counter("lb_no_backend"), 1);
        assert_eq!(net.counter("lb_rejected"), 0);
        Ok(())
    })
    .unwrap();
}

#[test]
fn xdp_refuses_an_outside_client_of_a_nodeport_without_endpoints() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        empty_service(
            net,
            Ipv4Addr::UNSPECIFIED,
            30081,
            STRAKE_SVC_F_EXTERNAL | STRAKE_SVC_F_REJECT,
        )?;
        let up0 = net.topo.up0.clone();
        let mut syn = segment(OUTSIDE_CLIENT, NODE_IP, PEER_NODE_MAC, up0.mac, None, b"");
        // segment() writes port 81: the NodePort here is 30081.
        syn[OFF_IP + 22..OFF_IP + 24].copy_from_slice(&30081u16.to_be_bytes());
        fix_l4_checksum(&mut syn);
        let out = net.run_xdp(up0.index, &syn)?;
        assert_eq!(out.retval, XDP_TX, "straight back out of the uplink");
        assert_eq!(out.data.len(), 54);
        assert_eq!(
            (dst_mac(&out.data), src_mac(&out.data)),
            (PEER_NODE_MAC, up0.mac)
        );
        assert!(ip_checksum_ok(&out.data) && l4_checksum_ok(&out.data));
        assert_eq!(addrs(&out.data), (NODE_IP, 30081, OUTSIDE_CLIENT, 40000));
        assert_eq!(out.data[OFF_IP + 20 + 13], 0x14, "RST|ACK");

        let b = PacketBuilder::ethernet2(PEER_NODE_MAC, up0.mac)
            .ipv4(OUTSIDE_CLIENT.octets(), NODE_IP.octets(), 64)
            .udp(40001, 30081);
        let mut d = Vec::new();
        b.write(&mut d, b"q").unwrap();
        let out = net.run_xdp(up0.index, &d)?;
        assert_eq!(out.retval, XDP_TX);
        unreachable_of(&out.data, &d, PEER_NODE_MAC, up0.mac);
        assert_eq!(net.dp.lb.frontend_rejected(10), 1);
        assert_eq!(net.dp.lb.frontend_rejected(11), 1);

        // A datagram with IPv4 options is not quoted: dropped, counted.
        let mut opt = d[..34].to_vec();
        opt.extend_from_slice(&[1, 1, 1, 0]);
        opt.extend_from_slice(&d[34..]);
        opt[OFF_IP] = 0x46;
        let tot = u16::from_be_bytes([opt[16], opt[17]]) + 4;
        opt[16..18].copy_from_slice(&tot.to_be_bytes());
        fix_ip_checksum(&mut opt);
        assert_eq!(net.run_xdp(up0.index, &opt)?.retval, XDP_DROP);
        assert_eq!(net.counter("lb_no_backend"), 1);
        Ok(())
    })
    .unwrap();
}
