//! The load balancer through BPF_PROG_TEST_RUN: every path of the tc and XDP
//! programs, with the bytes they rewrite and the checksums after.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use strake_bpf_tests::pkt::*;
use strake_bpf_tests::*;

const ANY_MAC: [u8; 6] = [0xee; 6];
const CLIENT: Ipv4Addr = PEER_NODE; // an outside client the FIB can reach

fn dnat_ok(out: &[u8]) {
    assert!(ip_checksum_ok(out), "IPv4 checksum");
    assert!(l4_checksum_ok(out), "TCP/UDP checksum");
}

#[test]
fn pod_to_cluster_ip_is_dnated_to_the_backend_and_the_reply_gets_the_service_back() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.add_service(&TestService::tcp(VIP, 80, vec![(POD2, 8080, true)]))?;
        let p = tcp(POD1_MAC, ANY_MAC, POD1, VIP, 40000, 80, 64);
        let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
        assert_eq!(
            out.retval, TC_ACT_REDIRECT,
            "delivered straight into the backend pod"
        );
        assert_eq!(addrs(&out.data), (POD1, 40000, POD2, 8080));
        assert_eq!(dst_mac(&out.data), POD2_MAC);
        dnat_ok(&out.data);
        assert_eq!(net.counter("lb_translated"), 1);

        // The backend answers the client: the source becomes the service.
        let r = tcp(POD2_MAC, ANY_MAC, POD2, POD1, 8080, 40000, 64);
        let out = net.run("from_pod", net.topo.lxc2.index, &r)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(addrs(&out.data), (VIP, 80, POD1, 40000));
        assert_eq!(dst_mac(&out.data), POD1_MAC);
        dnat_ok(&out.data);
        assert_eq!(net.counter("lb_reversed"), 1);
        // UDP too, with its own checksum rules.
        let mut s = TestService::tcp(VIP, 53, vec![(POD2, 5353, true)]);
        s.proto = 17;
        s.frontend_id = 2;
        s.set_id = 2;
        net.add_service(&s)?;
        let u = udp(POD1_MAC, ANY_MAC, POD1, VIP, 40001, 53, 64);
        let out = net.run("from_pod", net.topo.lxc1.index, &u)?;
        assert_eq!(addrs(&out.data), (POD1, 40001, POD2, 5353));
        dnat_ok(&out.data);
        Ok(())
    })
    .unwrap();
}

#[test]
fn established_flows_keep_their_backend_when_the_table_changes() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let svc = TestService::tcp(VIP, 80, vec![(POD2, 80, true), (REMOTE_POD, 80, false)]);
        net.add_service(&svc)?;
        let send = |net: &TestNet, sport: u16| -> anyhow::Result<Ipv4Addr> {
            let out = net.run(
                "from_pod",
                net.topo.lxc1.index,
                &tcp(POD1_MAC, ANY_MAC, POD1, VIP, sport, 80, 64),
            )?;
            Ok(addrs(&out.data).2)
        };
        let first = send(net, 41000)?;
        // The set now holds only the other backend (the first one stays in
        // st_backends, as a terminating backend would).
        let other = if first == POD2 { REMOTE_POD } else { POD2 };
        let mut only_other = TestService::tcp(VIP, 80, vec![(other, 80, other == POD2)]);
        only_other.set_id = 2;
        net.add_service(&only_other)?;
        assert_eq!(
            send(net, 41000)?,
            first,
            "the established flow stays on its backend"
        );
        for sport in 42000..42020 {
            assert_eq!(
                send(net, sport)?,
                other,
                "new flows go to the remaining backend"
            );
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn maglev_spreads_new_flows_and_client_ip_affinity_pins_them() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let backends = vec![
            (POD2, 80, true),
            (REMOTE_POD, 80, false),
            (UNRESOLVED_POD, 80, false),
        ];
        net.add_service(&TestService::tcp(VIP, 80, backends.clone()))?;
        let mut seen: HashMap<Ipv4Addr, u32> = HashMap::new();
        for sport in 30000..30300 {
            let out = net.run(
                "from_pod",
                net.topo.lxc1.index,
                &tcp(POD1_MAC, ANY_MAC, POD1, VIP, sport, 80, 64),
            )?;
            *seen.entry(addrs(&out.data).2).or_default() += 1;
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen.values().all(|n| *n > 60),
            "every backend gets a fair share: {seen:?}"
        );

        let mut sticky = TestService::tcp(Ipv4Addr::new(10, 96, 0, 11), 80, backends);
        sticky.affinity = 60;
        sticky.frontend_id = 2;
        sticky.set_id = 2;
        net.add_service(&sticky)?;
        let mut chosen = std::collections::HashSet::new();
        for sport in 31000..31050 {
            let p = tcp(POD1_MAC, ANY_MAC, POD1, sticky.addr, sport, 80, 64);
            let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
            chosen.insert(addrs(&out.data).2);
        }
        assert_eq!(
            chosen.len(),
            1,
            "one client, one backend while affinity lasts: {chosen:?}"
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_pod_reaching_itself_through_a_service_is_hairpinned() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.add_service(&TestService::tcp(VIP, 80, vec![(POD1, 8080, true)]))?;
        let out = net.run(
            "from_pod",
            net.topo.lxc1.index,
            &tcp(POD1_MAC, ANY_MAC, POD1, VIP, 40000, 80, 64),
        )?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(
            addrs(&out.data),
            (HAIRPIN, 40000, POD1, 8080),
            "source hairpinned so the reply leaves the pod"
        );
        dnat_ok(&out.data);
        let r = tcp(POD1_MAC, ANY_MAC, POD1, HAIRPIN, 8080, 40000, 64);
        let out = net.run("from_pod", net.topo.lxc1.index, &r)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(addrs(&out.data), (VIP, 80, POD1, 40000));
        dnat_ok(&out.data);
        Ok(())
    })
    .unwrap();
}

#[test]
fn service_packets_that_cannot_be_balanced_get_defined_verdicts() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.add_service(&TestService::tcp(VIP, 80, vec![(POD2, 8080, true)]))?;
        let mut empty = TestService::tcp(VIP, 81, vec![]);
        empty.frontend_id = 2;
        empty.set_id = 2;
        net.add_service(&empty)?;

        // No backend: dropped, counted.
        let out = net.run(
            "from_pod",
            net.topo.lxc1.index,
            &tcp(POD1_MAC, ANY_MAC, POD1, VIP, 1, 81, 64),
        )?;
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(net.counter("lb_no_backend"), 1);

        // First fragment of a datagram to a service: dropped, counted (later
        // fragments carry no ports to balance by).
        let mut frag = tcp(POD1_MAC, ANY_MAC, POD1, VIP, 1, 80, 64);
        frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // MF
        fix_ip_checksum(&mut frag);
        assert_eq!(
            net.run("from_pod", net.topo.lxc1.index, &frag)?.retval,
            TC_ACT_SHOT
        );
        assert_eq!(net.counter("lb_fragment"), 1);
        // A later fragment to the service address is routed by destination,
        // untouched: no route for the VIP, so the stack gets it (and drops it).
        let mut later = tcp(POD1_MAC, ANY_MAC, POD1, VIP, 1, 80, 64);
        later[20..22].copy_from_slice(&185u16.to_be_bytes());
        fix_ip_checksum(&mut later);
        let out = net.run("from_pod", net.topo.lxc1.index, &later)?;
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, later, "never rewritten, never misrouted");

        // TCP header cut short: dropped as malformed.
        let full = tcp(POD1_MAC, ANY_MAC, POD1, VIP, 1, 80, 64);
        let mut cut = full[..OFF_IP + 20 + 10].to_vec();
        cut[16..18].copy_from_slice(&30u16.to_be_bytes());
        fix_ip_checksum(&mut cut);
        assert_eq!(
            net.run("from_pod", net.topo.lxc1.index, &cut)?.retval,
            TC_ACT_SHOT
        );

        // IP options: the ports are found after them and rewritten right.
        let mut opt = full[..34].to_vec();
        opt.extend_from_slice(&[1, 1, 1, 0]);
        opt.extend_from_slice(&full[34..]);
        opt[OFF_IP] = 0x46;
        let tot = u16::from_be_bytes([opt[16], opt[17]]) + 4;
        opt[16..18].copy_from_slice(&tot.to_be_bytes());
        fix_ip_checksum(&mut opt);
        let out = net.run("from_pod", net.topo.lxc1.index, &opt)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(addrs(&out.data), (POD1, 1, POD2, 8080));
        dnat_ok(&out.data);

        // An ICMP error about a balanced flow (port unreachable from the
        // backend) is routed as it is, not translated: the client's stack
        // matches it to nothing and drops it, like a lost packet.
        let inner = tcp(POD1_MAC, ANY_MAC, POD1, POD2, 40000, 8080, 63);
        let mut icmp = Vec::new();
        icmp.extend_from_slice(&inner[..14]);
        icmp.extend_from_slice(&[0x45, 0, 0, 56, 0, 0, 0x40, 0, 64, 1, 0, 0]);
        icmp.extend_from_slice(&POD2.octets());
        icmp.extend_from_slice(&POD1.octets());
        icmp.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
        icmp.extend_from_slice(&inner[OFF_IP..OFF_IP + 28]);
        fix_ip_checksum(&mut icmp);
        let out = net.run("from_pod", net.topo.lxc2.index, &icmp)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT, "delivered to the client pod");
        assert_eq!(
            &out.data[OFF_IP + 20..],
            &icmp[OFF_IP + 20..],
            "ICMP payload untouched"
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn xdp_nodeport_to_a_local_backend_is_dnated_and_passed_up() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let mut svc = TestService::tcp(Ipv4Addr::UNSPECIFIED, 30080, vec![(POD2, 8080, true)]);
        svc.flags = strake_datapath::shared::STRAKE_SVC_F_EXTERNAL;
        net.add_service(&svc)?;
        let up0 = net.topo.up0.clone();
        let p = tcp(PEER_NODE_MAC, up0.mac, CLIENT, NODE_IP, 50000, 30080, 64);
        let out = net.run_xdp(up0.index, &p)?;
        assert_eq!(out.retval, XDP_PASS, "tc delivers it into the pod");
        assert_eq!(
            addrs(&out.data),
            (CLIENT, 50000, POD2, 8080),
            "client address kept"
        );
        dnat_ok(&out.data);
        // The pod's reply is turned back on its way out of the pod.
        let r = tcp(POD2_MAC, ANY_MAC, POD2, CLIENT, 8080, 50000, 64);
        let out = net.run("from_pod", net.topo.lxc2.index, &r)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(addrs(&out.data), (NODE_IP, 30080, CLIENT, 50000));
        assert_eq!(
            dst_mac(&out.data),
            PEER_NODE_MAC,
            "routed straight back to the client"
        );
        dnat_ok(&out.data);
        Ok(())
    })
    .unwrap();
}

#[test]
fn xdp_snat_to_a_remote_backend_and_back() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let mut svc = TestService::tcp(LB_IP, 80, vec![(REMOTE_POD, 8080, false)]);
        svc.flags = strake_datapath::shared::STRAKE_SVC_F_EXTERNAL;
        net.add_service(&svc)?;
        let up0 = net.topo.up0.clone();
        let client = Ipv4Addr::new(10, 0, 0, 2);
        let p = tcp(PEER_NODE_MAC, up0.mac, client, LB_IP, 50001, 80, 64);
        let out = net.run_xdp(up0.index, &p)?;
        assert_eq!(out.retval, XDP_TX, "out the port it came in on");
        let (src, sport, dst, dport) = addrs(&out.data);
        assert_eq!((src, dst, dport), (NODE_IP, REMOTE_POD, 8080));
        assert!(
            (20000..=29999).contains(&sport),
            "SNAT port {sport} from the configured range"
        );
        assert_eq!(dst_mac(&out.data), PEER_NODE_MAC);
        assert_eq!(src_mac(&out.data), up0.mac);
        assert_eq!(ttl(&out.data), 63);
        dnat_ok(&out.data);
        // Same flow, same port.
        assert_eq!(addrs(&net.run_xdp(up0.index, &p)?.data).1, sport);
        // The backend's reply comes back to the node's port.
        let r = tcp(PEER_NODE_MAC, up0.mac, REMOTE_POD, NODE_IP, 8080, sport, 63);
        let out = net.run_xdp(up0.index, &r)?;
        assert_eq!(out.retval, XDP_TX);
        assert_eq!(addrs(&out.data), (LB_IP, 80, client, 50001));
        dnat_ok(&out.data);
        Ok(())
    })
    .unwrap();
}

/// XDP cannot resolve a neighbour, and the stack drops a frame whose source
/// is its own address (a martian), resolving nothing: a SNATed frame whose
/// next hop is unresolved goes up marked, translated as it would leave, for
/// tc to route with bpf_redirect_neigh (the lab's conntrack test shows the
/// whole way).
#[test]
fn xdp_snat_behind_an_unresolved_next_hop_goes_up_marked_for_tc_to_route() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let mut svc = TestService::tcp(LB_IP, 80, vec![(UNRESOLVED_POD, 8080, false)]);
        svc.flags = strake_datapath::shared::STRAKE_SVC_F_EXTERNAL;
        net.add_service(&svc)?;
        let up0 = net.topo.up0.clone();
        let p = tcp(PEER_NODE_MAC, up0.mac, CLIENT, LB_IP, 50001, 80, 64);
        let out = net.run_xdp(up0.index, &p)?;
        assert_eq!(out.retval, XDP_PASS, "up to tc");
        // Test runs hand back the metadata before the frame.
        assert_eq!(out.data.len(), p.len() + 4, "4 bytes of metadata");
        let (meta, frame) = out.data.split_at(4);
        assert_eq!(
            u32::from_ne_bytes(meta.try_into().unwrap()),
            strake_datapath::shared::STRAKE_META_ROUTE
        );
        let (src, _, dst, dport) = addrs(frame);
        assert_eq!((src, dst, dport), (NODE_IP, UNRESOLVED_POD, 8080));
        assert_eq!(ttl(frame), 64, "tc decrements it when it routes");
        dnat_ok(frame);
        assert_eq!(net.counter("xdp_neigh_to_tc"), 1);
        assert_eq!(net.counter("pass_stack"), 0);
        // A frame XDP routes itself carries no mark.
        let mut svc = TestService::tcp(LB_IP, 81, vec![(REMOTE_POD, 8080, false)]);
        svc.flags = strake_datapath::shared::STRAKE_SVC_F_EXTERNAL;
        net.add_service(&svc)?;
        let p = tcp(PEER_NODE_MAC, up0.mac, CLIENT, LB_IP, 50001, 81, 64);
        let out = net.run_xdp(up0.index, &p)?;
        assert_eq!((out.retval, out.data.len()), (XDP_TX, p.len()));
        Ok(())
    })
    .unwrap();
}

#[test]
fn xdp_dsr_wraps_in_ipip_and_the_backend_node_unwraps_and_answers_directly() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let mut svc = TestService::tcp(LB_IP, 80, vec![(REMOTE_POD, 8080, false)]);
        svc.flags = strake_datapath::shared::STRAKE_SVC_F_EXTERNAL
            | strake_datapath::shared::STRAKE_SVC_F_DSR;
        net.add_service(&svc)?;
        let up0 = net.topo.up0.clone();
        let client = Ipv4Addr::new(10, 0, 0, 2);
        let p = tcp(PEER_NODE_MAC, up0.mac, client, LB_IP, 50002, 80, 64);
        let out = net.run_xdp(up0.index, &p)?;
        assert_eq!(out.retval, XDP_TX);
        assert_eq!(out.data.len(), p.len() + 20);
        let outer = &out.data[OFF_IP..OFF_IP + 20];
        assert_eq!(outer[9], 4, "IPIP");
        assert_eq!(&outer[12..16], &NODE_IP.octets());
        assert_eq!(&outer[16..20], &REMOTE_POD.octets());
        assert_eq!(
            u16::from_be_bytes([outer[4], outer[5]]),
            8080,
            "backend port in the outer IP ID"
        );
        assert!(ip_checksum_ok(&out.data), "outer checksum");
        assert_eq!(
            &out.data[OFF_IP + 20..],
            &p[OFF_IP..],
            "the client's packet rides untouched"
        );
        assert_eq!(net.counter("lb_encap"), 1);

        // On the backend's node (here: the same test node, POD2 as backend,
        // the wrapped packet coming from the other node): it knows the
        // frontend and has POD2:8080 among its local backends.
        net.dp.policy.set_cluster_nodes(&[NODE_IP, PEER_NODE])?;
        net.dp.trust.add_dsr_target(
            &strake_datapath::trust::DsrTarget {
                vip: LB_IP,
                vport: 80,
                proto: 6,
                backend: POD2,
                bport: 8080,
            },
            1,
        )?;
        let mut wrapped = out.data.clone();
        wrapped[OFF_IP + 12..OFF_IP + 16].copy_from_slice(&PEER_NODE.octets());
        wrapped[OFF_IP + 16..OFF_IP + 20].copy_from_slice(&POD2.octets());
        fix_ip_checksum(&mut wrapped);
        let out = net.run("from_wire", up0.index, &wrapped)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT, "into the backend pod");
        assert_eq!(out.data.len(), p.len());
        assert_eq!(addrs(&out.data), (client, 50002, POD2, 8080));
        dnat_ok(&out.data);
        assert_eq!(net.counter("lb_decap"), 1);
        // The reply leaves from here, as the service, straight to the client.
        let r = tcp(POD2_MAC, ANY_MAC, POD2, client, 8080, 50002, 64);
        let out = net.run("from_pod", net.topo.lxc2.index, &r)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(addrs(&out.data), (LB_IP, 80, client, 50002));
        dnat_ok(&out.data);
        Ok(())
    })
    .unwrap();
}

#[test]
fn xdp_leaves_everything_else_alone() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.add_service(&TestService::tcp(VIP, 80, vec![(POD2, 8080, true)]))?; // internal only
        let mut ext = TestService::tcp(LB_IP, 80, vec![(POD2, 8080, true)]);
        ext.flags = strake_datapath::shared::STRAKE_SVC_F_EXTERNAL;
        ext.frontend_id = 2;
        ext.set_id = 2;
        net.add_service(&ext)?;
        let up0 = net.topo.up0.clone();
        let cases = vec![
            (
                "a ClusterIP from outside",
                tcp(PEER_NODE_MAC, up0.mac, CLIENT, VIP, 1, 80, 64),
            ),
            (
                "a pod address",
                tcp(PEER_NODE_MAC, up0.mac, CLIENT, POD1, 1, 80, 64),
            ),
            ("ICMP", {
                let mut p = udp(PEER_NODE_MAC, up0.mac, CLIENT, LB_IP, 1, 80, 64);
                p[OFF_IP + 9] = 1;
                fix_ip_checksum(&mut p);
                p
            }),
            (
                "a truncated IPv4 header",
                tcp(PEER_NODE_MAC, up0.mac, CLIENT, LB_IP, 1, 80, 64)[..24].to_vec(),
            ),
            (
                "a cut TCP header",
                tcp(PEER_NODE_MAC, up0.mac, CLIENT, LB_IP, 1, 80, 64)[..40].to_vec(),
            ),
        ];
        for (what, p) in cases {
            let out = net.run_xdp(up0.index, &p)?;
            assert_eq!(out.retval, XDP_PASS, "{what}");
            assert_eq!(out.data, p, "{what}: untouched");
        }
        // A first fragment to an external frontend is dropped, counted.
        let mut frag = tcp(PEER_NODE_MAC, up0.mac, CLIENT, LB_IP, 1, 80, 64);
        frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        fix_ip_checksum(&mut frag);
        assert_eq!(net.run_xdp(up0.index, &frag)?.retval, XDP_DROP);
        assert_eq!(net.counter("lb_fragment"), 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_maglev_service_whose_table_is_missing_picks_from_its_slots() {
    if !strake_test_support::root() {
        return;
    }
    // Between the agent installing a set's new table and updating the
    // service (a table of another size, or not in yet), new flows must still
    // find a backend rather than be dropped.
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.add_service(&TestService::tcp(VIP, 80, vec![(POD2, 8080, true)]))?;
        net.dp.lb.remove_set(1, 0)?; // the table only: slots stay
        net.dp.lb.commit_tables()?;
        let p = tcp(POD1_MAC, ANY_MAC, POD1, VIP, 40100, 80, 64);
        let out = net.run("from_pod", net.topo.lxc1.index, &p)?;
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(addrs(&out.data), (POD1, 40100, POD2, 8080));
        assert_eq!(net.counter("lb_no_backend"), 0);
        Ok(())
    })
    .unwrap();
}

#[test]
fn xdp_admits_only_clients_in_a_frontends_load_balancer_source_ranges() {
    if !strake_test_support::root() {
        return;
    }
    use strake_datapath::shared::{STRAKE_SVC_F_EXTERNAL, STRAKE_SVC_F_SOURCE_RANGES};
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let mut svc = TestService::tcp(LB_IP, 80, vec![(POD2, 8080, true)]);
        svc.flags = STRAKE_SVC_F_EXTERNAL | STRAKE_SVC_F_SOURCE_RANGES;
        net.add_service(&svc)?;
        net.dp
            .lb
            .set_source_ranges(1, &[(Ipv4Addr::new(198, 51, 100, 0), 24)])?;
        let up0 = net.topo.up0.clone();
        let inside = tcp(PEER_NODE_MAC, up0.mac, OUTSIDE_CLIENT, LB_IP, 50000, 80, 64);
        let outside = tcp(PEER_NODE_MAC, up0.mac, CLIENT, LB_IP, 50000, 80, 64);
        let out = net.run_xdp(up0.index, &inside)?;
        assert_eq!(out.retval, XDP_PASS);
        assert_eq!(addrs(&out.data), (OUTSIDE_CLIENT, 50000, POD2, 8080));
        assert_eq!(net.run_xdp(up0.index, &outside)?.retval, XDP_DROP);
        assert_eq!(net.counter("lb_source_denied"), 1);
        assert_eq!(
            net.counter("lb_translated"),
            1,
            "the refused one never balanced"
        );
        // Ranges replaced: the new one admits, the old one no longer does.
        net.dp.lb.set_source_ranges(1, &[(CLIENT, 32)])?;
        assert_eq!(
            net.dp.lb.source_ranges(1)?,
            vec![(CLIENT, 32)],
            "the old range is gone"
        );
        assert_eq!(net.run_xdp(up0.index, &outside)?.retval, XDP_PASS);
        assert_eq!(net.run_xdp(up0.index, &inside)?.retval, XDP_DROP);
        // The flag with no range admits no one; without the flag, everyone.
        net.dp.lb.set_source_ranges(1, &[])?;
        assert_eq!(net.run_xdp(up0.index, &outside)?.retval, XDP_DROP);
        svc.flags = STRAKE_SVC_F_EXTERNAL;
        net.add_service(&svc)?;
        assert_eq!(net.run_xdp(up0.index, &inside)?.retval, XDP_PASS);
        assert_eq!(net.counter("lb_source_denied"), 3);
        Ok(())
    })
    .unwrap();
}
