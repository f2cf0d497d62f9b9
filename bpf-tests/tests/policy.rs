//! NetworkPolicy verdicts in the tc programs, on crafted packets: `from_pod`
//! (egress of the sender, then ingress of a local receiver) and `from_wire`
//! (ingress of a local receiver from another node). The maps are written as
//! the agent's compiler would: address classes in st_ipcache, (endpoint,
//! class, direction, protocol, port prefix) verdicts in st_policy.

use std::net::Ipv4Addr;
use strake_bpf_tests::pkt::*;
use strake_bpf_tests::*;
use strake_datapath::policy::VerdictKey;

const ANY_MAC: [u8; 6] = [0xee; 6];
const INGRESS: u8 = 0;
const EGRESS: u8 = 1;
/// The class the tests give POD1's address.
const CLASS_POD1: u32 = 7;
const CLASS_REMOTE: u32 = 9;
const TCP: u8 = 6;
const UDP: u8 = 17;

fn isolate(net: &mut TestNet, pod: Ipv4Addr, ingress: bool, egress: bool) {
    net.isolate(pod, ingress, egress).unwrap();
}

fn allow(
    identity: u32,
    class_id: u32,
    direction: u8,
    proto: Option<u8>,
    port: u16,
    port_bits: u8,
) -> VerdictKey {
    VerdictKey {
        identity,
        class_id,
        direction,
        proto,
        port,
        port_bits,
    }
}

/// POD1 -> POD2 through `from_pod` on lxc1.
fn pod1_to_pod2(net: &TestNet, p: &[u8]) -> u32 {
    net.run("from_pod", net.topo.lxc1.index, p).unwrap().retval
}

/// POD2 -> anywhere through `from_pod` on lxc2.
fn from_pod2(net: &TestNet, p: &[u8]) -> u32 {
    net.run("from_pod", net.topo.lxc2.index, p).unwrap().retval
}

/// An ICMP destination-unreachable from `src` to `dst` quoting `inner`.
fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut icmp = Vec::new();
    icmp.extend_from_slice(&inner[..14]);
    icmp.extend_from_slice(&[0x45, 0, 0, 56, 0, 0, 0x40, 0, 64, 1, 0, 0]);
    icmp.extend_from_slice(&src.octets());
    icmp.extend_from_slice(&dst.octets());
    icmp.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    icmp.extend_from_slice(&inner[OFF_IP..OFF_IP + 28]);
    fix_ip_checksum(&mut icmp);
    icmp
}

#[test]
fn an_isolated_pod_takes_only_what_a_rule_allows_by_class_protocol_and_port() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.dp.policy.set_class(POD1, 32, CLASS_POD1)?;
        // Nothing isolates POD2 yet: anything reaches it.
        let p81 = tcp(POD1_MAC, ANY_MAC, POD1, POD2, 40001, 81, 64);
        assert_eq!(pod1_to_pod2(net, &p81), TC_ACT_REDIRECT);

        isolate(net, POD2, true, false);
        net.dp
            .policy
            .set_verdict(&allow(2, CLASS_POD1, INGRESS, Some(TCP), 80, 16), 1)?;
        // Ports 1000-1007: a prefix of 13 bits.
        net.dp
            .policy
            .set_verdict(&allow(2, CLASS_POD1, INGRESS, Some(TCP), 1000, 13), 2)?;
        net.dp.policy.bump_generation()?;
        let cases: [(u8, u16, u32); 7] = [
            (TCP, 80, TC_ACT_REDIRECT),
            (TCP, 82, TC_ACT_SHOT),
            (UDP, 80, TC_ACT_SHOT), // a TCP rule does not allow UDP
            (TCP, 1000, TC_ACT_REDIRECT),
            (TCP, 1007, TC_ACT_REDIRECT),
            (TCP, 1008, TC_ACT_SHOT),
            (TCP, 999, TC_ACT_SHOT),
        ];
        for (i, (proto, port, want)) in cases.into_iter().enumerate() {
            let sport = 41000 + i as u16;
            let p = if proto == TCP {
                tcp(POD1_MAC, ANY_MAC, POD1, POD2, sport, port, 64)
            } else {
                udp(POD1_MAC, ANY_MAC, POD1, POD2, sport, port, 64)
            };
            assert_eq!(pod1_to_pod2(net, &p), want, "{proto}/{port}");
        }
        assert_eq!(net.counter("policy_drop_ingress"), 4);
        assert_eq!(
            net.dp.policy.drops(2),
            (4, 0),
            "counted for the pod dropped for"
        );
        // The established flow on port 81 was opened before isolation and is
        // not allowed now: judged again (new generation), dropped.
        assert_eq!(pod1_to_pod2(net, &p81), TC_ACT_SHOT);
        // A peer of another class is not let in by POD1's rules.
        let other = tcp(PEER_NODE_MAC, ANY_MAC, REMOTE_POD, POD2, 40000, 80, 64);
        assert_eq!(
            net.run("from_wire", net.topo.up0.index, &other)?.retval,
            TC_ACT_SHOT
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn replies_pass_new_flows_the_other_way_do_not() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        // POD2 may send nothing of its own.
        isolate(net, POD2, false, true);
        net.dp.policy.bump_generation()?;
        let req = tcp(POD1_MAC, ANY_MAC, POD1, POD2, 40000, 80, 64);
        assert_eq!(pod1_to_pod2(net, &req), TC_ACT_REDIRECT);
        let reply = tcp(POD2_MAC, ANY_MAC, POD2, POD1, 80, 40000, 64);
        assert_eq!(
            from_pod2(net, &reply),
            TC_ACT_REDIRECT,
            "the reply of an allowed flow passes"
        );
        let new = tcp(POD2_MAC, ANY_MAC, POD2, POD1, 80, 40001, 64);
        assert_eq!(
            from_pod2(net, &new),
            TC_ACT_SHOT,
            "a flow POD2 opens is judged and dropped"
        );
        let out = udp(POD2_MAC, ANY_MAC, POD2, REMOTE_POD, 5000, 53, 64);
        assert_eq!(from_pod2(net, &out), TC_ACT_SHOT);
        assert_eq!(net.counter("policy_drop_egress"), 2);
        // A pod reaching itself is never blocked.
        isolate(net, POD2, true, true);
        net.dp.policy.bump_generation()?;
        let me = tcp(POD2_MAC, ANY_MAC, POD2, POD2, 5000, 80, 64);
        assert_eq!(from_pod2(net, &me), TC_ACT_REDIRECT);
        Ok(())
    })
    .unwrap();
}

#[test]
fn fragments_without_ports_are_judged_with_port_zero() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.dp.policy.set_class(POD1, 32, CLASS_POD1)?;
        isolate(net, POD2, true, false);
        net.dp
            .policy
            .set_verdict(&allow(2, CLASS_POD1, INGRESS, Some(UDP), 53, 16), 1)?;
        net.dp.policy.bump_generation()?;
        // A first fragment (MF, offset 0) carries the ports: judged by them.
        let mut first = udp(POD1_MAC, ANY_MAC, POD1, POD2, 5000, 53, 64);
        first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        fix_ip_checksum(&mut first);
        assert_eq!(pod1_to_pod2(net, &first), TC_ACT_REDIRECT);
        // A later fragment has no ports: only a rule without ports allows it.
        let mut later = udp(POD1_MAC, ANY_MAC, POD1, POD2, 5000, 53, 64);
        later[20..22].copy_from_slice(&0x0010u16.to_be_bytes()); // offset 128 bytes
        fix_ip_checksum(&mut later);
        assert_eq!(pod1_to_pod2(net, &later), TC_ACT_SHOT);
        net.dp
            .policy
            .set_verdict(&allow(2, CLASS_POD1, INGRESS, None, 0, 0), 2)?;
        net.dp.policy.bump_generation()?;
        assert_eq!(pod1_to_pod2(net, &later), TC_ACT_REDIRECT);
        Ok(())
    })
    .unwrap();
}

#[test]
fn icmp_errors_about_a_flow_the_pod_has_pass_and_others_do_not() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        // POD1 takes nothing new.
        isolate(net, POD1, true, false);
        net.dp.policy.bump_generation()?;
        let query = udp(POD1_MAC, ANY_MAC, POD1, POD2, 5000, 53, 64);
        assert_eq!(pod1_to_pod2(net, &query), TC_ACT_REDIRECT);
        // POD2 answers with port unreachable, quoting the query: related.
        let err = icmp_error(POD2, POD1, &query);
        assert_eq!(
            from_pod2(net, &err),
            TC_ACT_REDIRECT,
            "a related ICMP error reaches POD1"
        );
        // The same error about a flow POD1 never had: dropped.
        let stranger = udp(POD1_MAC, ANY_MAC, POD1, POD2, 6000, 53, 64);
        let err = icmp_error(POD2, POD1, &stranger);
        assert_eq!(from_pod2(net, &err), TC_ACT_SHOT);
        // An echo request to POD1 is new, and dropped; its reply to an echo
        // POD1 sent passes.
        let mut echo = icmp_error(POD1, POD2, &query);
        echo.truncate(OFF_IP + 28);
        echo[OFF_IP + 2..OFF_IP + 4].copy_from_slice(&28u16.to_be_bytes());
        echo[OFF_IP + 20] = 8; // echo request
        echo[OFF_IP + 21] = 0;
        echo[OFF_IP + 24..OFF_IP + 26].copy_from_slice(&77u16.to_be_bytes()); // id
        fix_ip_checksum(&mut echo);
        assert_eq!(pod1_to_pod2(net, &echo), TC_ACT_REDIRECT, "POD1 may ping");
        let mut echo_reply = echo.clone();
        echo_reply[OFF_IP + 12..OFF_IP + 16].copy_from_slice(&POD2.octets());
        echo_reply[OFF_IP + 16..OFF_IP + 20].copy_from_slice(&POD1.octets());
        echo_reply[OFF_IP + 20] = 0;
        fix_ip_checksum(&mut echo_reply);
        assert_eq!(
            from_pod2(net, &echo_reply),
            TC_ACT_REDIRECT,
            "the echo reply passes"
        );
        let mut ping_in = echo.clone();
        ping_in[OFF_IP + 12..OFF_IP + 16].copy_from_slice(&POD2.octets());
        ping_in[OFF_IP + 16..OFF_IP + 20].copy_from_slice(&POD1.octets());
        ping_in[OFF_IP + 24..OFF_IP + 26].copy_from_slice(&78u16.to_be_bytes());
        fix_ip_checksum(&mut ping_in);
        assert_eq!(
            from_pod2(net, &ping_in),
            TC_ACT_SHOT,
            "a ping to POD1 is dropped"
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_revoked_flow_stays_dropped_both_ways_until_allowed_again() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.dp.policy.set_class(POD1, 32, CLASS_POD1)?;
        isolate(net, POD2, true, false);
        let rule = allow(2, CLASS_POD1, INGRESS, Some(TCP), 80, 16);
        net.dp.policy.set_verdict(&rule, 1)?;
        net.dp.policy.bump_generation()?;
        let req = tcp(POD1_MAC, ANY_MAC, POD1, POD2, 40000, 80, 64);
        let reply = tcp(POD2_MAC, ANY_MAC, POD2, POD1, 80, 40000, 64);
        assert_eq!(pod1_to_pod2(net, &req), TC_ACT_REDIRECT);
        assert_eq!(from_pod2(net, &reply), TC_ACT_REDIRECT);
        // The rule goes.
        net.dp.policy.remove_verdict(&rule)?;
        net.dp.policy.bump_generation()?;
        // The server speaks first: judged as the reply it is, and revoked.
        // (Were the flow forgotten, POD2, whose egress nothing isolates,
        // would reopen it as a flow of its own and POD1 could talk again.)
        assert_eq!(from_pod2(net, &reply), TC_ACT_SHOT);
        assert_eq!(pod1_to_pod2(net, &req), TC_ACT_SHOT);
        assert_eq!(from_pod2(net, &reply), TC_ACT_SHOT);
        assert_eq!(
            net.counter("policy_revoked"),
            1,
            "revoked once, however many packets"
        );
        // Allowed again: the same flow resumes.
        net.dp.policy.set_verdict(&rule, 1)?;
        net.dp.policy.bump_generation()?;
        assert_eq!(pod1_to_pod2(net, &req), TC_ACT_REDIRECT);
        assert_eq!(from_pod2(net, &reply), TC_ACT_REDIRECT);
        Ok(())
    })
    .unwrap();
}

#[test]
fn ip_blocks_with_except_are_longest_prefix_classes() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        // ipBlock 10.244.0.0/16 except 10.244.2.5/32: the except is a longer
        // prefix with a class no rule names.
        net.dp
            .policy
            .set_class(Ipv4Addr::new(10, 244, 0, 0), 16, CLASS_REMOTE)?;
        net.dp.policy.set_class(REMOTE_POD, 32, 0)?;
        isolate(net, POD2, true, false);
        net.dp
            .policy
            .set_verdict(&allow(2, CLASS_REMOTE, INGRESS, None, 0, 0), 1)?;
        net.dp.policy.bump_generation()?;
        let up0 = net.topo.up0.index;
        let inside = tcp(
            PEER_NODE_MAC,
            ANY_MAC,
            Ipv4Addr::new(10, 244, 2, 6),
            POD2,
            40000,
            80,
            64,
        );
        assert_eq!(net.run("from_wire", up0, &inside)?.retval, TC_ACT_REDIRECT);
        let except = tcp(PEER_NODE_MAC, ANY_MAC, REMOTE_POD, POD2, 40000, 80, 64);
        assert_eq!(net.run("from_wire", up0, &except)?.retval, TC_ACT_SHOT);
        let outside = tcp(PEER_NODE_MAC, ANY_MAC, OUTSIDE_CLIENT, POD2, 40000, 80, 64);
        assert_eq!(net.run("from_wire", up0, &outside)?.retval, TC_ACT_SHOT);
        // Egress by class too: POD2 may send to the block, not outside it.
        isolate(net, POD2, true, true);
        net.dp
            .policy
            .set_verdict(&allow(2, CLASS_REMOTE, EGRESS, Some(UDP), 53, 16), 2)?;
        net.dp.policy.bump_generation()?;
        let dns = udp(
            POD2_MAC,
            ANY_MAC,
            POD2,
            Ipv4Addr::new(10, 244, 2, 7),
            5000,
            53,
            64,
        );
        assert_eq!(from_pod2(net, &dns), TC_ACT_REDIRECT);
        let other_port = udp(
            POD2_MAC,
            ANY_MAC,
            POD2,
            Ipv4Addr::new(10, 244, 2, 7),
            5000,
            54,
            64,
        );
        assert_eq!(from_pod2(net, &other_port), TC_ACT_SHOT);
        let far = udp(
            POD2_MAC,
            ANY_MAC,
            POD2,
            Ipv4Addr::new(192, 0, 2, 7),
            5000,
            53,
            64,
        );
        assert_eq!(from_pod2(net, &far), TC_ACT_SHOT);
        Ok(())
    })
    .unwrap();
}

#[test]
fn sctp_is_judged_by_its_ports() {
    if !strake_test_support::root() {
        return;
    }
    with_testnet(|net| {
        net.add_local_pods()?;
        net.dp.policy.set_class(POD1, 32, CLASS_POD1)?;
        isolate(net, POD2, true, false);
        net.dp
            .policy
            .set_verdict(&allow(2, CLASS_POD1, INGRESS, Some(132), 5000, 16), 1)?;
        net.dp.policy.bump_generation()?;
        // An SCTP common header where UDP's was: ports, then the rest.
        let sctp = |dport: u16| {
            let mut p = udp(POD1_MAC, ANY_MAC, POD1, POD2, 40000, dport, 64);
            p[OFF_IP + 9] = 132;
            fix_ip_checksum(&mut p);
            p
        };
        assert_eq!(pod1_to_pod2(net, &sctp(5000)), TC_ACT_REDIRECT);
        assert_eq!(pod1_to_pod2(net, &sctp(5001)), TC_ACT_SHOT);
        // A UDP packet to the SCTP port is not let in by the SCTP rule.
        let u = udp(POD1_MAC, ANY_MAC, POD1, POD2, 40001, 5000, 64);
        assert_eq!(pod1_to_pod2(net, &u), TC_ACT_SHOT);
        Ok(())
    })
    .unwrap();
}
