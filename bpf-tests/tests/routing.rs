//! The routing fast path at tc: `from_pod` on a pod's host veth and
//! `from_wire` on the uplink. Every case asserts the verdict and every byte the
//! program rewrote (and that it rewrote nothing else).

use strake_bpf_tests::pkt::{self, *};
use strake_bpf_tests::*;

const HOST_MAC_UNUSED: [u8; 6] = [0xee; 6];

#[test]
fn pod_to_local_pod_is_redirected_into_its_netns() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        let lxc2 = net.topo.lxc2.clone();
        let p = tcp(POD1_MAC, HOST_MAC_UNUSED, POD1, POD2, 40000, 80, 64);
        let before = net.counter("fwd_local");
        let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(
            dst_mac(&out.data),
            POD2_MAC,
            "destination MAC is the target pod's"
        );
        assert_eq!(
            src_mac(&out.data),
            lxc2.mac,
            "source MAC is the target's host veth"
        );
        assert_eq!(ttl(&out.data), 63);
        assert!(ip_checksum_ok(&out.data));
        // Only MACs, TTL and IP checksum changed.
        for i in pkt::diff(&p, &out.data) {
            assert!(
                i < 12 || i == OFF_TTL || i == OFF_CHECK || i == OFF_CHECK + 1,
                "byte {i} changed"
            );
        }
        assert_eq!(net.counter("fwd_local"), before + 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn pod_to_remote_pod_is_routed_by_the_fib() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        let up0 = net.topo.up0.clone();
        let p = udp(POD1_MAC, HOST_MAC_UNUSED, POD1, REMOTE_POD, 5353, 53, 64);
        let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(
            dst_mac(&out.data),
            PEER_NODE_MAC,
            "next hop is the peer node"
        );
        assert_eq!(src_mac(&out.data), up0.mac, "sent from the uplink's MAC");
        assert_eq!(ttl(&out.data), 63);
        assert!(ip_checksum_ok(&out.data));
        assert_eq!(net.counter("fwd_fib"), 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn unresolved_next_hop_goes_through_redirect_neigh() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        let p = tcp(
            POD1_MAC,
            HOST_MAC_UNUSED,
            POD1,
            UNRESOLVED_POD,
            40000,
            443,
            64,
        );
        let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        // The kernel fills the MACs when it resolves the neighbour.
        assert_eq!(&out.data[..12], &p[..12]);
        assert_eq!(ttl(&out.data), 63);
        assert!(ip_checksum_ok(&out.data));
        assert_eq!(net.counter("fwd_neigh"), 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn traffic_to_the_node_and_to_free_pod_addresses_goes_to_the_stack_untouched() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        for dst in [NODE_IP, FREE_LOCAL_IP] {
            let p = tcp(POD1_MAC, HOST_MAC_UNUSED, POD1, dst, 40000, 22, 64);
            let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
            assert_eq!(out.retval, TC_ACT_OK, "to {dst}");
            assert_eq!(out.data, p, "to {dst}: the stack gets the packet as sent");
        }
        assert_eq!(net.counter("pass_stack"), 2);
        Ok(())
    })
    .unwrap();
}

#[test]
fn expiring_ttl_is_left_to_the_stack_for_icmp_time_exceeded() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        for dst in [POD2, REMOTE_POD] {
            let p = tcp(POD1_MAC, HOST_MAC_UNUSED, POD1, dst, 1, 2, 1);
            let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
            assert_eq!(out.retval, TC_ACT_OK);
            assert_eq!(out.data, p);
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn spoofed_sources_are_dropped() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        // An address that is no endpoint at all.
        let p = tcp(POD1_MAC, HOST_MAC_UNUSED, FREE_LOCAL_IP, POD2, 1, 2, 64);
        assert_eq!(
            net.run("from_pod", net.topo.lxc1.index, &p)?.retval,
            TC_ACT_SHOT
        );
        // Another pod's address, sent from the wrong veth.
        let p = tcp(POD1_MAC, HOST_MAC_UNUSED, POD2, REMOTE_POD, 1, 2, 64);
        assert_eq!(
            net.run("from_pod", net.topo.lxc1.index, &p)?.retval,
            TC_ACT_SHOT
        );
        assert_eq!(net.counter("drop_spoofed"), 2);
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_pods_own_arp_passes_untouched() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        // ARP request for the gateway.
        let arp = arp(POD1_MAC, POD1, std::net::Ipv4Addr::new(169, 254, 1, 1));
        let out = net.run("from_pod", net.topo.lxc1.index, &arp)?;
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, arp);
        assert_eq!(net.counter("pass_non_ipv4"), 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn malformed_ipv4_is_dropped_never_forwarded() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        let good = tcp(POD1_MAC, HOST_MAC_UNUSED, POD1, POD2, 40000, 80, 64);
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        // (Frames cut inside the 20-byte IPv4 header cannot be fed to a tc
        // program: this kernel's BPF_PROG_TEST_RUN answers EINVAL for IPv4
        // frames shorter than 34 bytes. The parser's bounds checks for them
        // are shared with XDP, where they are tested.)
        // IHL below the minimum.
        let mut p = good.clone();
        p[OFF_IP] = 0x44;
        cases.push(("ihl 4", p));
        // IHL claims 60 bytes of header the frame does not have.
        let mut p = good[..14 + 24].to_vec();
        p[OFF_IP] = 0x4f;
        cases.push(("ihl beyond the frame", p));
        // Version 6 inside an IPv4 ethertype.
        let mut p = good.clone();
        p[OFF_IP] = 0x65;
        cases.push(("version 6", p));
        for (what, p) in &cases {
            let out = net
                .run("from_pod", net.topo.lxc1.index, p)
                .map_err(|e| e.context(*what))?;
            assert_eq!(out.retval, TC_ACT_SHOT, "{what}");
        }
        assert_eq!(net.counter("drop_malformed"), cases.len() as u64);
        Ok(())
    })
    .unwrap();
}

#[test]
fn ip_options_and_fragments_are_routed_by_destination() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        // IHL 6: one 4-byte option (NOP NOP NOP EOL) before the TCP header.
        let base = tcp(POD1_MAC, HOST_MAC_UNUSED, POD1, POD2, 40000, 80, 64);
        let mut p = base[..34].to_vec();
        p.extend_from_slice(&[1, 1, 1, 0]);
        p.extend_from_slice(&base[34..]);
        p[OFF_IP] = 0x46;
        let tot = u16::from_be_bytes([p[16], p[17]]) + 4;
        p[16..18].copy_from_slice(&tot.to_be_bytes());
        fix_ip_checksum(&mut p);
        let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT, "with IP options");
        assert_eq!(&out.data[34..38], &[1, 1, 1, 0], "options kept");
        assert!(ip_checksum_ok(&out.data));

        // A non-first fragment carries no L4 header; routing needs none.
        let mut p = udp(POD1_MAC, HOST_MAC_UNUSED, POD1, REMOTE_POD, 1, 2, 64);
        p[20..22].copy_from_slice(&185u16.to_be_bytes()); // offset 185 * 8 = 1480 bytes, MF clear
        fix_ip_checksum(&mut p);
        let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT, "later fragment");
        assert_eq!(dst_mac(&out.data), PEER_NODE_MAC);
        assert!(ip_checksum_ok(&out.data));
        Ok(())
    })
    .unwrap();
}

#[test]
fn from_wire_delivers_to_local_pods_and_leaves_node_traffic_alone() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        let up0 = net.topo.up0.clone();
        let lxc1 = net.topo.lxc1.clone();
        let p = tcp(PEER_NODE_MAC, up0.mac, REMOTE_POD, POD1, 40000, 80, 63);
        let out = net.run("from_wire", up0.index, &p)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(dst_mac(&out.data), POD1_MAC);
        assert_eq!(src_mac(&out.data), lxc1.mac);
        assert_eq!(ttl(&out.data), 62);
        assert!(ip_checksum_ok(&out.data));

        for dst in [NODE_IP, FREE_LOCAL_IP] {
            let p = tcp(PEER_NODE_MAC, up0.mac, PEER_NODE, dst, 40000, 22, 64);
            let out = net.run("from_wire", up0.index, &p)?;
            assert_eq!(out.retval, TC_ACT_OK);
            assert_eq!(out.data, p);
        }
        // Malformed frames on the uplink belong to the node's stack.
        let mut bad = tcp(PEER_NODE_MAC, up0.mac, REMOTE_POD, POD1, 1, 2, 64);
        bad[OFF_IP] = 0x43;
        assert_eq!(net.run("from_wire", up0.index, &bad)?.retval, TC_ACT_OK);
        Ok(())
    })
    .unwrap();
}
