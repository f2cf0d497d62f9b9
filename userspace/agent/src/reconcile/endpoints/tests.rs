//! Restoring and repairing endpoints against an in-memory node.

use super::*;
use crate::reconcile::fake::FakeEndpoints;
use strake_datapath::shared::STRAKE_EP_F_INGRESS_ISOLATED;

fn record(ip: &str, ifname: &str, id: u32, attached: bool) -> Record {
    Record {
        key: format!("net/{ifname}/eth0"),
        ip: ip.parse().unwrap(),
        record: EndpointRecord {
            pod: None,
            netns: None,
            host_ifname: ifname.into(),
            endpoint_id: id,
            pod_mac: attached.then_some([0x0a, 0x58, 10, 244, 1, id as u8]),
            created_unix: 0,
        },
    }
}

#[test]
fn a_restart_rewrites_entries_from_records_keeps_isolation_and_sweeps_leftovers() {
    let k = FakeEndpoints::default();
    {
        let mut n = k.node.lock().unwrap();
        n.records = vec![
            record("10.244.1.2", "strka", 1, true),
            record("10.244.1.3", "strkb", 2, true),
            // Allocated, its ADD still running: nothing is done for it.
            record("10.244.1.4", "strkc", 3, false),
        ];
        // strka came back with a new ifindex (the old entry is stale) and is
        // isolated by policy; strkb's veth is gone; strkz belongs to nobody.
        n.links.insert("strka".into(), (21, [2, 0, 0, 0, 0, 1]));
        n.links.insert("strkc".into(), (23, [2, 0, 0, 0, 0, 3]));
        n.links.insert("strkz".into(), (29, [2, 0, 0, 0, 0, 9]));
        n.links.insert("eth0".into(), (2, [2, 0, 0, 0, 0, 2]));
        let stale = endpoint_info {
            ifindex: 11,
            flags: STRAKE_EP_F_ANTISPOOF | STRAKE_EP_F_INGRESS_ISOLATED,
            endpoint_id: 1,
            ..Default::default()
        };
        n.entries.insert("10.244.1.2".parse().unwrap(), stale);
        n.entries.insert(
            "10.244.1.3".parse().unwrap(),
            endpoint_info {
                ifindex: 12,
                endpoint_id: 2,
                ..Default::default()
            },
        );
        n.entries
            .insert("10.244.1.99".parse().unwrap(), Default::default());
        n.pinned = vec!["strka".into(), "strkb".into(), "strkgone".into()];
    }
    let mut kk = k.clone();
    let r = repair(&mut kk, true).unwrap();
    assert_eq!((r.restored, r.vanished), (1, 1));
    let n = k.node.lock().unwrap();
    let a = n.entries[&"10.244.1.2".parse().unwrap()];
    assert_eq!(a.ifindex, 21, "live interface data");
    assert_eq!(a.host_mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(
        a.flags,
        STRAKE_EP_F_ANTISPOOF | STRAKE_EP_F_INGRESS_ISOLATED,
        "isolation is the policy phase's and stays"
    );
    assert!(n.attached["strka"], "programs swapped in");
    assert!(
        !n.entries.contains_key(&"10.244.1.3".parse().unwrap()),
        "veth gone: entry gone"
    );
    assert!(
        !n.entries.contains_key(&"10.244.1.99".parse().unwrap()),
        "no record: swept"
    );
    assert!(!n.links.contains_key("strkz"), "orphan veth swept");
    assert!(n.links.contains_key("strkc") && n.links.contains_key("eth0"));
    assert_eq!(n.pinned, vec!["strka".to_string()]);
    let mut swept = r.swept.clone();
    swept.sort();
    assert_eq!(
        swept,
        ["links of strkgone", "map entry 10.244.1.99", "veth strkz"]
    );
}

#[test]
fn a_full_pass_repairs_only_what_drifted() {
    let k = FakeEndpoints::default();
    {
        let mut n = k.node.lock().unwrap();
        n.records = vec![record("10.244.1.2", "strka", 1, true)];
        n.links.insert("strka".into(), (21, [2, 0, 0, 0, 0, 1]));
    }
    let mut kk = k.clone();
    repair(&mut kk, true).unwrap();
    let writes = k.fault.writes();
    let mut phase = EndpointsPhase {
        kernel: k.clone(),
        lock: Default::default(),
    };
    let st = strake_source::ClusterState::default();
    let full = Pass {
        state: &st,
        full: true,
        revision: 1,
    };
    assert_eq!(phase.reconcile(&full).unwrap(), Outcome::applied(0));
    assert_eq!(k.fault.writes(), writes, "nothing drifted, nothing written");
    // Someone detached the programs: the next full pass puts them back.
    k.node.lock().unwrap().attached.clear();
    assert_eq!(phase.reconcile(&full).unwrap(), Outcome::applied(1));
    assert!(k.node.lock().unwrap().attached["strka"]);
    // Incremental passes leave endpoints to CNI.
    k.node.lock().unwrap().attached.clear();
    let inc = Pass {
        state: &st,
        full: false,
        revision: 2,
    };
    assert_eq!(phase.reconcile(&inc).unwrap(), Outcome::applied(0));
}

#[test]
fn an_attach_the_table_never_saved_is_restored_from_its_map_entry() {
    // Attach notes the pod MAC in memory only; a crash before the next save
    // leaves a record without it. Its entry (same endpoint id) proves the
    // attach happened; an entry of another id (the address reused) does not.
    let k = FakeEndpoints::default();
    {
        let mut n = k.node.lock().unwrap();
        n.records = vec![
            record("10.244.1.2", "strka", 1, false),
            record("10.244.1.3", "strkb", 2, false),
        ];
        n.links.insert("strka".into(), (21, [2, 0, 0, 0, 0, 1]));
        n.links.insert("strkb".into(), (22, [2, 0, 0, 0, 0, 2]));
        for (ip, ifindex, id) in [("10.244.1.2", 21, 1), ("10.244.1.3", 22, 7)] {
            n.entries.insert(
                ip.parse().unwrap(),
                endpoint_info {
                    ifindex,
                    flags: STRAKE_EP_F_ANTISPOOF,
                    pod_mac: [0x0a, 0x58, 10, 244, 1, id as u8],
                    host_mac: [2, 0, 0, 0, 0, ifindex as u8 - 20],
                    endpoint_id: id,
                    identity: 0,
                },
            );
        }
    }
    let mut kk = k.clone();
    let r = repair(&mut kk, true).unwrap();
    assert_eq!(r.restored, 1, "only strka counts as attached");
    let n = k.node.lock().unwrap();
    assert!(n.attached.get("strka").copied().unwrap_or(false));
    assert!(!n.attached.get("strkb").copied().unwrap_or(false));
    assert_eq!(
        n.entries[&"10.244.1.2".parse().unwrap()].pod_mac,
        [0x0a, 0x58, 10, 244, 1, 1]
    );
}
