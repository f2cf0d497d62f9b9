//! The VXLAN device, its forwarding entries and neighbours, and routes with
//! a metric through it, in a throwaway namespace (root; run under the lab
//! lock like every namespace test).

use std::net::Ipv4Addr;
use strake_netlink::{netns, vtep_mac, FdbEntry, Neighbour, Route4, VxlanSpec};

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

#[test]
fn a_vxlan_device_with_static_entries_and_a_fallback_route_through_it() {
    if !strake_test_support::root() {
        return;
    }
    let ns = Ns(format!("strake-nltest-vx-{}", std::process::id()));
    let path = netns::create(&ns.0).unwrap();
    netns::with_netlink_in(&path, |nl| async move {
        nl.create_veth("up0", "up1", 1500).await?;
        let up = nl.link_by_name("up0").await?.unwrap();
        nl.add_address(up.index, "10.0.1.11".parse()?, 24).await?;
        nl.set_up(up.index).await?;
        let local: Ipv4Addr = "10.0.1.11".parse()?;
        let spec = VxlanSpec {
            vni: 1,
            local,
            port: 4789,
            dev: up.index,
            mac: vtep_mac(local),
            mtu: 1450,
        };
        nl.create_vxlan("strake.vxlan", &spec).await?;
        let v = nl.vxlan("strake.vxlan").await?.expect("the device");
        assert_eq!(
            (v.vni, v.local, v.port, v.mtu),
            (1, Some(local), 4789, 1450)
        );
        assert_eq!(v.mac, [0x0e, 0x73, 10, 0, 1, 11]);
        nl.set_up(v.index).await?;
        assert!(
            nl.vxlan("up0").await.is_err(),
            "a veth is not a VXLAN device"
        );
        assert!(nl.vxlan("nothing").await?.is_none());

        let remote: Ipv4Addr = "10.0.2.11".parse()?;
        let fdb = FdbEntry {
            mac: vtep_mac(remote),
            dst: remote,
        };
        nl.add_fdb(v.index, &fdb).await?;
        nl.add_fdb(v.index, &fdb).await?; // idempotent
        assert_eq!(nl.fdb(v.index).await?, vec![fdb]);
        nl.add_permanent_neighbour(v.index, remote, vtep_mac(remote))
            .await?;
        assert_eq!(
            nl.permanent_neighbours(v.index).await?,
            vec![Neighbour {
                ip: remote,
                mac: vtep_mac(remote)
            }]
        );

        let mut fallback = Route4::to("10.244.3.0".parse()?, 24);
        fallback.gateway = Some(remote);
        fallback.oif = Some(v.index);
        fallback.onlink = true;
        fallback.metric = 1024;
        fallback.source = Some(local);
        nl.replace_route(&fallback).await?;
        let mut primary = Route4::to("10.244.3.0".parse()?, 24);
        primary.gateway = Some("10.0.1.1".parse()?);
        primary.protocol = strake_netlink::BIRD_ROUTE_PROTO;
        primary.metric = 32;
        nl.replace_route(&primary).await?;
        let ours = nl.routes(Some(strake_netlink::STRAKE_ROUTE_PROTO)).await?;
        assert_eq!(ours.len(), 1, "{ours:?}");
        let r = &ours[0];
        assert_eq!(
            (r.metric, r.onlink, r.source, r.gateway, r.oif),
            (1024, true, Some(local), Some(remote), Some(v.index))
        );
        assert_eq!(
            nl.routes(Some(strake_netlink::BIRD_ROUTE_PROTO))
                .await?
                .len(),
            1
        );
        // Deleting the fallback leaves the other route to the prefix alone.
        nl.delete_route(r).await?;
        assert!(nl
            .routes(Some(strake_netlink::STRAKE_ROUTE_PROTO))
            .await?
            .is_empty());
        assert_eq!(
            nl.routes(Some(strake_netlink::BIRD_ROUTE_PROTO))
                .await?
                .len(),
            1
        );

        nl.delete_fdb(v.index, &fdb).await?;
        nl.delete_fdb(v.index, &fdb).await?;
        assert!(nl.fdb(v.index).await?.is_empty());
        nl.delete_neighbour(v.index, remote).await?;
        nl.delete_neighbour(v.index, remote).await?;
        assert!(nl.permanent_neighbours(v.index).await?.is_empty());
        Ok(())
    })
    .unwrap();
}
