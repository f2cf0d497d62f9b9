//! Topology-aware provisioning: `topologyConstrainedPools` puts each volume's image in
//! the pool of the domain the request prefers, the record stays in the StorageClass's
//! pool, the answer carries the domain, and the node reports its own; snapshots and
//! restores follow their volumes' pools; sweep of a zone pool leaves live images alone.
mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use strake_csi::csi::*;
use strake_csi::topology::KEY_PREFIX;
use tonic::Code;

fn zone(z: &str) -> Topology {
    Topology {
        segments: HashMap::from([(format!("{KEY_PREFIX}zone"), z.to_string())]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_land_in_the_pool_of_their_zone_and_keep_working() {
    if !strake_test_support::ceph() {
        return;
    }
    let (main, pa, pb) = (TestPool::new("topo"), TestPool::new("topo-a"), TestPool::new("topo-b"));
    let drv = Driver::start(DriverOpts {
        list_pools: vec![main.name.clone()],
        extra_args: vec!["--topology".into(), "zone=b,rack=r1".into()],
        ..Default::default()
    });
    let _cleanup = CleanupOnDrop(drv.dir.clone());
    let (mut c, mut n) = (drv.controller().await, drv.node().await);

    let info = n.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    let segs = info.accessible_topology.unwrap().segments;
    assert_eq!(segs[&format!("{KEY_PREFIX}zone")], "b");
    assert_eq!(segs[&format!("{KEY_PREFIX}rack")], "r1");
    let caps = drv
        .identity()
        .await
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        caps.capabilities.iter().any(|c| matches!(
            &c.r#type,
            Some(plugin_capability::Type::Service(s))
                if s.r#type == plugin_capability::service::Type::VolumeAccessibilityConstraints as i32
        )),
        "{caps:?}"
    );

    let mut params = main.params();
    params.insert(
        "topologyConstrainedPools".into(),
        format!(
            r#"[{{"poolName":"{}","domainSegments":[{{"domainLabel":"zone","value":"a"}}]}},
                {{"poolName":"{}","domainSegments":[{{"domainLabel":"zone","value":"b"}}]}}]"#,
            pa.name, pb.name
        ),
    );
    let cap = block_cap();
    let req = |name: &str, preferred: &str, source: Option<volume_content_source::Type>| CreateVolumeRequest {
        name: name.into(),
        capacity_range: range(64 * MIB),
        volume_capabilities: vec![cap.clone()],
        parameters: params.clone(),
        secrets: secrets(),
        accessibility_requirements: Some(TopologyRequirement {
            requisite: vec![zone("a"), zone("b")],
            preferred: vec![zone(preferred)],
        }),
        volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    };
    let v = c
        .create_volume(req("pvc-zoned", "b", None))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.accessible_topology, vec![zone("b")]);
    assert_eq!(v.volume_context["pool"], pb.name);
    assert_eq!(pb.images(), vec![image_name(&v)], "the image is in zone b's pool");
    assert!(main.images().is_empty() && pa.images().is_empty());
    assert!(
        main.journal_keys().iter().any(|k| k == "vol.name.pvc-zoned"),
        "the record is in the StorageClass's pool"
    );
    // A retry that prefers another zone finds the same volume.
    let again = c
        .create_volume(req("pvc-zoned", "a", None))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);

    // No pool for the domain asked for; a malformed pool list.
    let mut only_c = req("pvc-c", "c", None);
    only_c.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![zone("c")],
        preferred: vec![zone("c")],
    });
    assert_eq!(
        c.create_volume(only_c).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    let mut bad = req("pvc-bad", "a", None);
    bad.parameters
        .insert("topologyConstrainedPools".into(), r#"[{"pool":"x"}]"#.into());
    let e = c.create_volume(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("topologyConstrainedPools"), "{}", e.message());

    // It attaches and holds data on the node of zone b; its snapshot stays in zone b's
    // pool; a restore preferring zone a lands there, cloned across pools.
    publish_to(&mut c, &v, NODE, cap.clone()).await;
    let (stg, tgt) = (drv.dir.join("stg"), drv.dir.join("pods/z/dev"));
    stage(&mut n, &v, &stg, cap.clone()).await;
    publish(&mut n, &v, &stg, &tgt, cap.clone(), false).await;
    let sum = write_data(&tgt, 0, 8 * MIB, 5);
    let s = snapshot(&mut c, "snap-zoned", &v.volume_id).await;
    assert!(pb.images().iter().any(|i| i.contains("snap-")), "{:?}", pb.images());
    let r = c
        .create_volume(req("pvc-zoned-restore", "a", from_snapshot(&s.snapshot_id)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(r.accessible_topology, vec![zone("a")]);
    assert_eq!(pa.images(), vec![image_name(&r)]);
    let ctl = c.controller_expand_volume(ControllerExpandVolumeRequest {
        volume_id: r.volume_id.clone(),
        capacity_range: range(96 * MIB),
        secrets: secrets(),
        ..Default::default()
    });
    assert_eq!(ctl.await.unwrap().into_inner().capacity_bytes, 96 * MIB as i64);
    publish_to(&mut c, &r, NODE, cap.clone()).await;
    let (stg2, tgt2) = (drv.dir.join("stg2"), drv.dir.join("pods/r/dev"));
    stage(&mut n, &r, &stg2, cap.clone()).await;
    publish(&mut n, &r, &stg2, &tgt2, cap.clone(), false).await;
    assert_eq!(read_sha(&tgt2, 0, 8 * MIB), sum, "the restore in zone a holds the data");

    // Sweeping a zone pool finds the records in the journal pool: nothing live is an orphan.
    let out = Command::new(env!("CARGO_BIN_EXE_strake-csi"))
        .args(["sweep", "--pool", &format!("{},{}", pa.name, pb.name), "--ceph-conf"])
        .arg(conf())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let findings = String::from_utf8_lossy(&out.stdout);
    assert!(
        !findings.contains("\"image\""),
        "live zone images reported as orphans: {findings}"
    );

    for (vol, t, st) in [(&v, &tgt, &stg), (&r, &tgt2, &stg2)] {
        unpublish(&mut n, vol, t).await;
        unstage(&mut n, vol, st).await;
    }
    delete(&mut c, &r.volume_id).await;
    delete_snapshot(&mut c, &s.snapshot_id).await;
    delete(&mut c, &v.volume_id).await;
    for p in [&main, &pa, &pb] {
        p.assert_empty();
    }
    assert_node_clean(&drv.dir);
}
