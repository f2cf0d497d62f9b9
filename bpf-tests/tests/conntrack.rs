//! The connection table's lifecycle through BPF_PROG_TEST_RUN: the TCP
//! flags the programs record, the timeouts the agent's sweep applies to
//! them, SNAT ports given back with their flows, and a lost reply entry put
//! back from its service entry.

use std::net::Ipv4Addr;
use strake_bpf_tests::pkt::*;
use strake_bpf_tests::*;
use strake_datapath::conntrack::{flow_state, monotonic_secs, FlowState, Timeouts};
use strake_datapath::shared::{ct_entry, ct_key, STRAKE_CT_REPLY, STRAKE_CT_SERVICE};

const ANY_MAC: [u8; 6] = [0xee; 6];
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

fn port_of(k: &ct_key) -> u16 {
    u16::from_be(k.flow.sport)
}

/// The service entry of the flow from POD1:`sport`, and its reply entry.
fn flow(net: &TestNet, sport: u16) -> (Option<ct_entry>, Option<ct_entry>) {
    let all = net.dp.ct.dump().unwrap();
    let svc = all
        .iter()
        .find(|(k, _)| k.kind as u32 == STRAKE_CT_SERVICE && port_of(k) == sport)
        .map(|(_, v)| *v);
    let reply = all
        .iter()
        .find(|(k, _)| k.kind as u32 == STRAKE_CT_REPLY && u16::from_be(k.flow.dport) == sport)
        .map(|(_, v)| *v);
    (svc, reply)
}

fn state(net: &TestNet, sport: u16) -> FlowState {
    let (s, r) = flow(net, sport);
    let (s, r) = (s.expect("service entry"), r.expect("reply entry"));
    flow_state(6, s.tcp | r.tcp, true)
}

/// Client POD1:`sport` -> VIP:80 and the backend POD2:8080's answers.
fn client(net: &TestNet, sport: u16, flags: u8) {
    let p = tcp_flags(POD1_MAC, ANY_MAC, POD1, VIP, sport, 80, flags);
    let out = net.run("from_pod", net.topo.lxc1.index, &p).unwrap();
    assert_eq!(out.retval, TC_ACT_REDIRECT);
}

fn server(net: &TestNet, sport: u16, flags: u8) {
    let p = tcp_flags(POD2_MAC, ANY_MAC, POD2, POD1, 8080, sport, flags);
    let out = net.run("from_pod", net.topo.lxc2.index, &p).unwrap();
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    assert_eq!(addrs(&out.data).0, VIP, "the reply was turned back");
}

#[test]
fn tcp_states_from_syn_to_fin_and_rst_each_with_its_timeout() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.add_service(&TestService::tcp(VIP, 80, vec![(POD2, 8080, true)]))?;
        let t = Timeouts::default();

        // 40001: a handshake that never completes.
        client(net, 40001, SYN);
        assert_eq!(state(net, 40001), FlowState::Syn);
        server(net, 40001, SYN_ACK);
        assert_eq!(state(net, 40001), FlowState::Syn, "SYN-ACK is no ACK yet");
        // 40002: established.
        client(net, 40002, SYN);
        server(net, 40002, SYN_ACK);
        client(net, 40002, ACK);
        assert_eq!(state(net, 40002), FlowState::Established);
        // 40003: half closed (the client's FIN only) is still established.
        client(net, 40003, SYN);
        server(net, 40003, SYN_ACK);
        client(net, 40003, ACK);
        client(net, 40003, FIN_ACK);
        assert_eq!(state(net, 40003), FlowState::Established);
        // 40004: a FIN each way: closing.
        for (c, f) in [
            (true, SYN),
            (false, SYN_ACK),
            (true, ACK),
            (true, FIN_ACK),
            (false, FIN_ACK),
        ] {
            if c {
                client(net, 40004, f)
            } else {
                server(net, 40004, f)
            }
        }
        assert_eq!(state(net, 40004), FlowState::Closing);
        // 40005: reset by the server.
        client(net, 40005, SYN);
        server(net, 40005, SYN_ACK);
        client(net, 40005, ACK);
        server(net, 40005, RST);
        assert_eq!(state(net, 40005), FlowState::Closing);
        // 40006: closed, then its 5-tuple reused by a new SYN: a new flow.
        for (c, f) in [(true, SYN), (false, SYN_ACK), (true, ACK), (false, RST)] {
            if c {
                client(net, 40006, f)
            } else {
                server(net, 40006, f)
            }
        }
        client(net, 40006, SYN);
        assert_eq!(state(net, 40006), FlowState::Syn, "a new SYN starts over");

        let alive = |net: &TestNet, sport: u16| {
            let (s, r) = flow(net, sport);
            assert_eq!(s.is_some(), r.is_some(), "{sport}: both entries or none");
            s.is_some()
        };
        let now = monotonic_secs();
        // Within every timeout: nothing goes.
        let r = net.dp.ct.sweep(now + t.closing - 1, &t)?;
        assert_eq!(r.expired, 0, "{r:?}");
        // Past the closing timeout: the closed flows, each with its four
        // entries (service, reply, the client's egress and the backend's
        // ingress policy entries).
        let r = net.dp.ct.sweep(now + t.closing + 2, &t)?;
        assert_eq!(r.expired, 8, "{r:?}");
        assert!(!alive(net, 40004) && !alive(net, 40005));
        for sport in [40001, 40002, 40003, 40006] {
            assert!(alive(net, sport), "{sport} is not closed");
        }
        // Past the SYN timeout: the handshakes.
        let r = net.dp.ct.sweep(now + t.syn + 2, &t)?;
        assert_eq!(r.expired, 8, "{r:?}");
        assert!(!alive(net, 40001) && !alive(net, 40006));
        assert!(alive(net, 40002) && alive(net, 40003));
        // Established connections live for hours of silence, not forever.
        assert_eq!(net.dp.ct.sweep(now + 3600, &t)?.expired, 0);
        assert_eq!(net.dp.ct.sweep(now + t.established + 2, &t)?.expired, 8);
        assert_eq!(net.dp.ct.entries(), 0);
        Ok(())
    })
    .unwrap();
}

#[test]
fn udp_flows_time_out_after_the_other_timeout_and_policy_entries_with_them() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        let mut s = TestService::tcp(VIP, 53, vec![(POD2, 5353, true)]);
        s.proto = 17;
        net.add_service(&s)?;
        let u = udp(POD1_MAC, ANY_MAC, POD1, VIP, 40001, 53, 64);
        assert_eq!(
            net.run("from_pod", net.topo.lxc1.index, &u)?.retval,
            TC_ACT_REDIRECT
        );
        let before = net.dp.ct.entries();
        assert!(
            before >= 2,
            "service and reply entries, and policy's: {before}"
        );
        let t = Timeouts {
            other: 30,
            ..Timeouts::default()
        };
        let now = monotonic_secs();
        assert_eq!(net.dp.ct.sweep(now + 29, &t)?.expired, 0);
        let r = net.dp.ct.sweep(now + 32, &t)?;
        assert_eq!(r.expired, before, "{r:?}");
        assert_eq!(r.entries, 0);
        Ok(())
    })
    .unwrap();
}

#[test]
fn snat_ports_come_back_when_their_flows_expire_and_allocation_works_at_90_percent() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        // 20 ports.
        let mut cfg = net.dp.lb.config()?;
        cfg.snat_port_min = 20000;
        cfg.snat_port_max = 20019;
        net.dp.lb.set_config(cfg)?;
        let mut svc = TestService::tcp(LB_IP, 80, vec![(REMOTE_POD, 8080, false)]);
        svc.flags = strake_datapath::shared::STRAKE_SVC_F_EXTERNAL;
        net.add_service(&svc)?;
        let up0 = net.topo.up0.clone();
        let client = Ipv4Addr::new(10, 0, 0, 2);
        let open = |net: &TestNet, sport: u16, flags: u8| {
            let p = tcp_flags(PEER_NODE_MAC, up0.mac, client, LB_IP, sport, 80, flags);
            net.run_xdp(up0.index, &p).unwrap()
        };
        // 18 of 20 in use (90 %): the next two still find theirs.
        let mut ports = std::collections::BTreeSet::new();
        for sport in 50000..50020 {
            let out = open(net, sport, SYN);
            assert_eq!(out.retval, XDP_TX, "flow {sport} got a port");
            ports.insert(addrs(&out.data).1);
        }
        assert_eq!(ports.len(), 20, "every port once");
        // The range is full: the next flow is dropped, and counted.
        assert_eq!(open(net, 50020, SYN).retval, XDP_DROP);
        assert_eq!(net.counter("lb_snat_full"), 1);
        // The first ten close (the client resets them); the sweep gives
        // their ports back, and only theirs.
        for sport in 50000..50010 {
            assert_eq!(open(net, sport, RST).retval, XDP_TX);
        }
        let t = Timeouts::default();
        let r = net.dp.ct.sweep(monotonic_secs() + t.closing + 2, &t)?;
        assert_eq!(r.expired, 20, "ten flows, two entries each: {r:?}");
        assert_eq!(r.snat_ports.values().sum::<u64>(), 10, "{r:?}");
        for sport in 50020..50030 {
            assert_eq!(
                open(net, sport, SYN).retval,
                XDP_TX,
                "flow {sport} reuses a port"
            );
        }
        assert_eq!(net.counter("lb_snat_full"), 1, "no failure since");
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_lost_reply_entry_is_put_back_by_the_flows_next_second() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.lb_node()?;
        net.add_service(&TestService::tcp(VIP, 80, vec![(POD2, 8080, true)]))?;
        client(net, 40001, SYN);
        let (k, _) = net
            .dp
            .ct
            .dump()?
            .into_iter()
            .find(|(k, _)| k.kind as u32 == STRAKE_CT_REPLY)
            .expect("a reply entry");
        net.dp.ct.remove(&k)?;
        // The reply now finds nothing to turn it back.
        let r = tcp_flags(POD2_MAC, ANY_MAC, POD2, POD1, 8080, 40001, SYN_ACK);
        let out = net.run("from_pod", net.topo.lxc2.index, &r)?;
        assert_eq!(addrs(&out.data).0, POD2, "untranslated without its entry");
        // The client's next packet a second later restores it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        client(net, 40001, ACK);
        assert_eq!(net.counter("ct_reply_restored"), 1);
        server(net, 40001, ACK);
        Ok(())
    })
    .unwrap();
}
