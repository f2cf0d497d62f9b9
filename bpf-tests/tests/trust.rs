//! The attacker's packets (docs/threat-model.md): each exemption of the data
//! plane tried with what an attacker would send, and the real thing beside
//! it. Every test here let the attacker through before the trust checks
//! existed.

use std::net::Ipv4Addr;
use strake_bpf_tests::pkt::*;
use strake_bpf_tests::*;
use strake_datapath::trust::{DsrTarget, Rpf};

const ANY_MAC: [u8; 6] = [0xee; 6];
const MARK: u32 = 0x5354_0000;
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const RST: u8 = 0x04;
/// A host on the fabric that is no cluster node (it passes the reverse-path
/// check: it really is on up0's network).
const FABRIC_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);

fn verdict(net: &TestNet, program: &str, ifindex: u32, p: &[u8]) -> u32 {
    net.run(program, ifindex, p).unwrap().retval
}

fn dsr_target(vip: Ipv4Addr, vport: u16, backend: Ipv4Addr, bport: u16) -> DsrTarget {
    DsrTarget {
        vip,
        vport,
        proto: 6,
        backend,
        bport,
    }
}

#[test]
fn ipip_is_unwrapped_only_from_cluster_nodes_for_their_dsr_targets_and_leaves_no_state_otherwise() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.dp.policy.set_cluster_nodes(&[NODE_IP, PEER_NODE])?;
        net.dp
            .trust
            .add_dsr_target(&dsr_target(LB_IP, 80, POD2, 8080), 1)?;
        let up0 = net.topo.up0.index;
        let to_lb = |src: Ipv4Addr, dst: Ipv4Addr, sport: u16| {
            tcp(ANY_MAC, ANY_MAC, src, dst, sport, 80, 64)
        };
        let attacks: Vec<(&str, Vec<u8>)> = vec![
            (
                "from a host that is no node, inner source forged",
                ipip(
                    &to_lb(OUTSIDE_CLIENT, LB_IP, 50001),
                    FABRIC_HOST,
                    POD2,
                    8080,
                ),
            ),
            (
                "for a frontend this node does not know",
                ipip(
                    &to_lb(OUTSIDE_CLIENT, Ipv4Addr::new(203, 0, 113, 99), 50002),
                    PEER_NODE,
                    POD2,
                    8080,
                ),
            ),
            (
                "for a port the backend does not serve the frontend on",
                ipip(&to_lb(OUTSIDE_CLIENT, LB_IP, 50003), PEER_NODE, POD2, 22),
            ),
            (
                "for a local pod that is no backend of the frontend",
                ipip(&to_lb(OUTSIDE_CLIENT, LB_IP, 50004), PEER_NODE, POD1, 8080),
            ),
            (
                "with the inner source this node's address",
                ipip(&to_lb(NODE_IP, LB_IP, 50005), PEER_NODE, POD2, 8080),
            ),
            (
                "with the inner source a local pod",
                ipip(&to_lb(POD1, LB_IP, 50006), PEER_NODE, POD2, 8080),
            ),
            (
                "shaped as a health check, from a host that is no node",
                ipip(
                    &tcp(ANY_MAC, ANY_MAC, FABRIC_HOST, POD2, 61001, 80, 64),
                    FABRIC_HOST,
                    POD2,
                    0,
                ),
            ),
        ];
        for (what, p) in &attacks {
            assert_eq!(
                verdict(net, "from_wire", up0, p),
                TC_ACT_SHOT,
                "IPIP {what}"
            );
        }
        assert_eq!(
            net.dp.ct.reply_entries(),
            0,
            "no reverse-NAT state from any of them"
        );
        assert_eq!(net.counter("drop_untrusted_encap"), attacks.len() as u64);
        assert_eq!(net.counter("lb_decap"), 0);

        // The real thing: direct return from a cluster node for a target.
        let good = ipip(&to_lb(OUTSIDE_CLIENT, LB_IP, 50010), PEER_NODE, POD2, 8080);
        let out = net.run("from_wire", up0, &good)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(addrs(&out.data), (OUTSIDE_CLIENT, 50010, POD2, 8080));
        assert_eq!(net.dp.ct.reply_entries(), 1);
        // A NodePort: the client sent to the balancing node's address.
        net.dp
            .trust
            .add_dsr_target(&dsr_target(Ipv4Addr::UNSPECIFIED, 30080, POD2, 8080), 2)?;
        let np = |node: Ipv4Addr, sport: u16| {
            ipip(
                &tcp(ANY_MAC, ANY_MAC, OUTSIDE_CLIENT, node, sport, 30080, 64),
                PEER_NODE,
                POD2,
                8080,
            )
        };
        assert_eq!(
            verdict(net, "from_wire", up0, &np(PEER_NODE, 50011)),
            TC_ACT_REDIRECT
        );
        assert_eq!(
            verdict(net, "from_wire", up0, &np(FABRIC_HOST, 50012)),
            TC_ACT_SHOT,
            "a NodePort on an address that is no node"
        );
        assert_eq!(net.dp.ct.reply_entries(), 2);
        Ok(())
    })
    .unwrap();
}

/// `nc -p 32100 <isolated pod> 80` from another node: the old policy let
/// TCP from any cluster node's address and a health-check source port in.
#[test]
fn a_syn_from_a_node_address_and_a_health_check_port_is_judged_by_the_policies() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.dp.policy.set_cluster_nodes(&[NODE_IP, PEER_NODE])?;
        net.isolate(POD2, true, false)?;
        let up0 = net.topo.up0.index;
        for (range, sport) in [((32000, 32255), 32100), ((61000, 61255), 61001)] {
            net.dp.policy.set_health_check_ports(Some(range))?;
            net.dp.policy.bump_generation()?;
            let syn = tcp_flags(PEER_NODE_MAC, ANY_MAC, PEER_NODE, POD2, sport, 80, SYN);
            assert_eq!(
                verdict(net, "from_wire", up0, &syn),
                TC_ACT_SHOT,
                "from port {sport}"
            );
        }
        assert_eq!(net.dp.policy.drops(2), (2, 0), "dropped by the policy");
        Ok(())
    })
    .unwrap();
}

#[test]
fn health_checks_pass_only_wrapped_by_the_probing_node_and_their_answers_only_while_they_last() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.dp.trust.set_config(MARK, Rpf::Strict)?;
        net.dp.policy.set_health_check_ports(Some((61000, 61255)))?;
        net.dp.policy.set_cluster_nodes(&[NODE_IP, PEER_NODE])?;
        let up0 = net.topo.up0.clone();

        // The probing node: to_wire wraps the agent's marked probe, only.
        let probe = tcp_flags(up0.mac, PEER_NODE_MAC, NODE_IP, REMOTE_POD, 61001, 80, SYN);
        for (mark, what) in [(0, "unmarked"), (MARK + 1, "another mark")] {
            let out = net.run_ctx("to_wire", up0.index, 0, mark, &probe)?;
            assert_eq!(
                (out.retval, &out.data),
                (TC_ACT_OK, &probe),
                "{what}: untouched"
            );
        }
        for (p, what) in [
            (
                tcp_flags(
                    up0.mac,
                    PEER_NODE_MAC,
                    Ipv4Addr::new(10, 1, 0, 1),
                    REMOTE_POD,
                    61001,
                    80,
                    SYN,
                ),
                "marked, but not from the node's address",
            ),
            (
                tcp_flags(up0.mac, PEER_NODE_MAC, NODE_IP, PEER_NODE, 61001, 80, SYN),
                "a probe of a node's own address (hostNetwork)",
            ),
            (
                tcp_flags(up0.mac, PEER_NODE_MAC, NODE_IP, FABRIC_HOST, 61001, 80, SYN),
                "a probe of a host that is behind no node",
            ),
        ] {
            let out = net.run_ctx("to_wire", up0.index, 0, MARK, &p)?;
            assert_eq!(
                (out.retval, &out.data),
                (TC_ACT_OK, &p),
                "{what}: untouched"
            );
        }
        let out = net.run_ctx("to_wire", up0.index, 0, MARK, &probe)?;
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data.len(), probe.len() + 20);
        let outer = &out.data[OFF_IP..OFF_IP + 20];
        assert_eq!(outer[9], 4, "IPIP");
        assert_eq!(&outer[12..16], &NODE_IP.octets(), "from the node");
        assert_eq!(
            &outer[16..20],
            &REMOTE_POD.octets(),
            "to the backend itself"
        );
        assert!(ip_checksum_ok(&out.data));
        assert_eq!(
            &out.data[OFF_IP + 20..],
            &probe[OFF_IP..],
            "the probe rides untouched"
        );
        assert_eq!(
            &out.data[..OFF_IP],
            &probe[..OFF_IP],
            "same link-layer header"
        );
        assert_eq!(net.counter("hc_encap"), 1);
        assert_eq!(
            net.dp.trust.health_check_flows(),
            (0, 1),
            "the reply it expects"
        );

        // The backend's node (this one, POD2 isolated both ways), probed by
        // the agent of the node PEER_NODE.
        net.isolate(POD2, true, true)?;
        net.dp.policy.bump_generation()?;
        let inner = tcp_flags(PEER_NODE_MAC, up0.mac, PEER_NODE, POD2, 61001, 80, SYN);
        let out = net.run("from_wire", up0.index, &ipip(&inner, PEER_NODE, POD2, 0))?;
        assert_eq!(
            out.retval, TC_ACT_REDIRECT,
            "into the pod, past its ingress isolation"
        );
        assert_eq!(out.data.len(), inner.len());
        assert_eq!(addrs(&out.data), (PEER_NODE, 61001, POD2, 80));
        assert!(ip_checksum_ok(&out.data) && l4_checksum_ok(&out.data));
        assert_eq!(net.counter("hc_decap"), 1);
        let answer = tcp_flags(POD2_MAC, ANY_MAC, POD2, PEER_NODE, 80, 61001, SYN_ACK);
        assert_eq!(
            verdict(net, "from_pod", net.topo.lxc2.index, &answer),
            TC_ACT_REDIRECT,
            "the answer passes the pod's egress isolation"
        );

        // What `nc -p 61001` on that node sends: the same probe, unwrapped.
        assert_eq!(
            verdict(net, "from_wire", up0.index, &inner),
            TC_ACT_SHOT,
            "judged by policy"
        );
        let forged: Vec<(&str, Vec<u8>)> = vec![
            (
                "inner source not the wrapping node",
                ipip(
                    &tcp(ANY_MAC, ANY_MAC, OUTSIDE_CLIENT, POD2, 61002, 80, 64),
                    PEER_NODE,
                    POD2,
                    0,
                ),
            ),
            (
                "not from a health-check port",
                ipip(
                    &tcp(ANY_MAC, ANY_MAC, PEER_NODE, POD2, 40000, 80, 64),
                    PEER_NODE,
                    POD2,
                    0,
                ),
            ),
            (
                "UDP",
                ipip(
                    &udp(ANY_MAC, ANY_MAC, PEER_NODE, POD2, 61003, 80, 64),
                    PEER_NODE,
                    POD2,
                    0,
                ),
            ),
        ];
        for (what, p) in &forged {
            assert_eq!(
                verdict(net, "from_wire", up0.index, p),
                TC_ACT_SHOT,
                "{what}"
            );
        }
        assert_eq!(net.counter("drop_untrusted_encap"), forged.len() as u64);

        // The prober's reset ends the check: the pod's packets to that port
        // are its own again, judged by its egress policy.
        let rst = tcp_flags(PEER_NODE_MAC, up0.mac, PEER_NODE, POD2, 61001, 80, RST);
        assert_eq!(
            verdict(net, "from_wire", up0.index, &ipip(&rst, PEER_NODE, POD2, 0)),
            TC_ACT_REDIRECT
        );
        assert_eq!(
            verdict(net, "from_pod", net.topo.lxc2.index, &answer),
            TC_ACT_SHOT
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn packets_on_the_uplink_claiming_sources_that_cannot_come_from_there_are_dropped() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let (up0, up1) = (net.topo.up0.index, net.topo.up1.index);
        let to_pod2 = |src: Ipv4Addr| tcp(PEER_NODE_MAC, ANY_MAC, src, POD2, 40000, 80, 64);
        let impossible = [
            ("this node's address", NODE_IP),
            ("the hairpin address", HAIRPIN),
            ("the pods' gateway", Ipv4Addr::new(169, 254, 1, 1)),
            ("a local pod", POD1),
        ];
        let unroutable = [
            (
                "an unassigned address of this node's pod block (blackholed)",
                FREE_LOCAL_IP,
            ),
            ("an address with no route back", UNROUTED),
        ];
        let legit = [
            ("another node", PEER_NODE),
            ("a pod on another node", REMOTE_POD),
            ("an outside client routed via the uplink", OUTSIDE_CLIENT),
        ];
        // Strict (the default): the route back must leave by up0.
        let mut dropped = 0;
        for (what, src) in impossible
            .iter()
            .chain(&unroutable)
            .chain(&[("a host behind up1", UP1_HOST)])
        {
            assert_eq!(
                verdict(net, "from_wire", up0, &to_pod2(*src)),
                TC_ACT_SHOT,
                "strict: {what}"
            );
            dropped += 1;
        }
        for (what, src) in &legit {
            assert_eq!(
                verdict(net, "from_wire", up0, &to_pod2(*src)),
                TC_ACT_REDIRECT,
                "strict: {what}"
            );
        }
        assert_eq!(
            verdict(net, "from_wire", up1, &to_pod2(UP1_HOST)),
            TC_ACT_REDIRECT,
            "on its own side"
        );
        assert_eq!(
            verdict(net, "from_wire", up1, &to_pod2(OUTSIDE_CLIENT)),
            TC_ACT_SHOT,
            "on the wrong side"
        );
        dropped += 1;
        assert_eq!(net.counter("drop_spoofed_wire"), dropped);

        net.dp.trust.set_config(MARK, Rpf::Loose)?;
        assert_eq!(
            verdict(net, "from_wire", up0, &to_pod2(UP1_HOST)),
            TC_ACT_REDIRECT,
            "loose: any route back"
        );
        for (what, src) in impossible.iter().chain(&unroutable) {
            assert_eq!(
                verdict(net, "from_wire", up0, &to_pod2(*src)),
                TC_ACT_SHOT,
                "loose: {what}"
            );
        }
        net.dp.trust.set_config(MARK, Rpf::Off)?;
        assert_eq!(
            verdict(net, "from_wire", up0, &to_pod2(UNROUTED)),
            TC_ACT_REDIRECT,
            "off"
        );
        for (what, src) in &impossible {
            assert_eq!(
                verdict(net, "from_wire", up0, &to_pod2(*src)),
                TC_ACT_SHOT,
                "off, yet never: {what}"
            );
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn only_packets_this_node_makes_itself_are_let_into_an_isolated_pod_as_the_node() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.isolate(POD2, true, false)?;
        net.dp.policy.bump_generation()?;
        let lxc2 = net.topo.lxc2.index;
        let from_node = |sport: u16| tcp(ANY_MAC, POD2_MAC, NODE_IP, POD2, sport, 80, 64);
        // Made here (kubelet's probe): no ingress interface.
        let made_here = net.run_ctx("to_pod", lxc2, 0, 0, &from_node(40001))?;
        assert_eq!(made_here.retval, TC_ACT_OK, "kubelet's probe");
        // Forwarded by the stack from the uplink, claiming the same address.
        let forwarded = net.run_ctx("to_pod", lxc2, net.topo.up0.index, 0, &from_node(40002))?;
        assert_eq!(forwarded.retval, TC_ACT_SHOT, "forwarded, not made here");
        let hairpin = tcp(ANY_MAC, POD2_MAC, HAIRPIN, POD2, 40003, 80, 64);
        assert_eq!(
            net.run_ctx("to_pod", lxc2, net.topo.up0.index, 0, &hairpin)?
                .retval,
            TC_ACT_SHOT,
            "the hairpin address from anywhere but the pod itself"
        );
        // The exemption is remembered: a policy change does not cut it.
        net.dp.policy.bump_generation()?;
        assert_eq!(
            net.run_ctx("to_pod", lxc2, 0, 0, &from_node(40001))?.retval,
            TC_ACT_OK
        );
        Ok(())
    })
    .unwrap();
}

/// An ICMPv6 router advertisement, as a pod would send one to make the node
/// route through it (the CVE-2020-10749 class).
fn router_advertisement(smac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0x33, 0x33, 0, 0, 0, 1];
    p.extend_from_slice(&smac);
    p.extend_from_slice(&[0x86, 0xdd]);
    // IPv6: payload 16 bytes, next header ICMPv6 (58), hop limit 255.
    p.extend_from_slice(&[0x60, 0, 0, 0, 0, 16, 58, 255]);
    p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 1, 10]);
    p.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    // Router advertisement: type 134, router lifetime 1800 s.
    p.extend_from_slice(&[134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]);
    p
}

#[test]
fn pods_send_ipv4_and_arp_in_their_own_name_and_nothing_else() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        let lxc1 = net.topo.lxc1.index;
        assert_eq!(
            verdict(net, "from_pod", lxc1, &router_advertisement(POD1_MAC)),
            TC_ACT_SHOT
        );
        let mut vlan = tcp(POD1_MAC, ANY_MAC, POD1, POD2, 40000, 80, 64);
        vlan.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
        assert_eq!(
            verdict(net, "from_pod", lxc1, &vlan),
            TC_ACT_SHOT,
            "a VLAN-tagged frame"
        );
        let gw = Ipv4Addr::new(169, 254, 1, 1);
        assert_eq!(
            verdict(net, "from_pod", lxc1, &arp(POD1_MAC, POD2, gw)),
            TC_ACT_SHOT,
            "ARP claiming another pod's address"
        );
        assert_eq!(net.counter("drop_not_ipv4"), 3);
        for (what, p) in [
            ("its own ARP", arp(POD1_MAC, POD1, gw)),
            (
                "an ARP probe (sender 0.0.0.0)",
                arp(POD1_MAC, Ipv4Addr::UNSPECIFIED, POD1),
            ),
        ] {
            let out = net.run("from_pod", lxc1, &p)?;
            assert_eq!((out.retval, out.data), (TC_ACT_OK, p), "{what}");
        }
        assert_eq!(net.counter("pass_non_ipv4"), 2);
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_health_check_reply_to_a_port_that_is_also_a_nodeport_reaches_the_prober() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.dp.trust.set_config(MARK, Rpf::Strict)?;
        // The old default range, inside Kubernetes' NodePort range, and a
        // Service on NodePort 32000 with a backend on another node.
        net.dp.policy.set_health_check_ports(Some((32000, 32255)))?;
        net.dp.policy.set_cluster_nodes(&[NODE_IP, PEER_NODE])?;
        let mut svc = TestService::tcp(
            Ipv4Addr::UNSPECIFIED,
            32000,
            vec![(REMOTE_POD, 8080, false)],
        );
        svc.flags = strake_datapath::shared::STRAKE_SVC_F_EXTERNAL;
        net.add_service(&svc)?;
        let up0 = net.topo.up0.clone();
        // The agent probes REMOTE_POD:80 from NODE_IP:32000.
        let probe = tcp_flags(up0.mac, PEER_NODE_MAC, NODE_IP, REMOTE_POD, 32000, 80, SYN);
        let wrapped = net.run_ctx("to_wire", up0.index, 0, MARK, &probe)?;
        assert_eq!(
            wrapped.data.len(),
            probe.len() + 20,
            "wrapped: the probe is recorded"
        );
        let reply = tcp_flags(
            PEER_NODE_MAC,
            up0.mac,
            REMOTE_POD,
            NODE_IP,
            80,
            32000,
            SYN_ACK,
        );
        let out = net.run_xdp(up0.index, &reply)?;
        assert_eq!(
            (out.retval, &out.data),
            (XDP_PASS, &reply),
            "up to the agent's socket, untouched"
        );
        assert_eq!(
            (net.dp.ct.service_entries(), net.dp.ct.reply_entries()),
            (0, 0)
        );
        // From another port of the backend it is no reply to a probe: the
        // NodePort takes it, as it takes a client's connection.
        for p in [
            tcp_flags(PEER_NODE_MAC, up0.mac, REMOTE_POD, NODE_IP, 81, 32000, SYN),
            tcp_flags(
                PEER_NODE_MAC,
                up0.mac,
                OUTSIDE_CLIENT,
                NODE_IP,
                50000,
                32000,
                SYN,
            ),
        ] {
            assert_eq!(
                net.run_xdp(up0.index, &p)?.retval,
                XDP_TX,
                "balanced to the remote backend"
            );
        }
        Ok(())
    })
    .unwrap();
}
