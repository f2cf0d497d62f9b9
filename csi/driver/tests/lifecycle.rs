//! The whole life of a volume over the gRPC socket, against the real cluster:
//! create → stage → publish → write with checksum → snapshot → restore + clone →
//! expand (controller + node) → checksums in every volume → tear down → nothing left.
mod common;

use std::path::Path;

use common::*;
use strake_csi::csi::*;

fn statvfs_total(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks() * s.fragment_size()
}

fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0
}

const DATA: u64 = 100 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_volume_whole_life_xfs() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("life-fs");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let (mut c, mut n) = (drv.controller().await, drv.node().await);
    let cap = mount_cap("xfs");
    let d = drv.dir.clone();

    let vol = create(&mut c, "pvc-life-fs", &pool, GIB, cap.clone(), None).await;
    assert_eq!(vol.capacity_bytes, GIB as i64);
    let (stg, tgt) = (d.join("stg-a"), d.join("pods/a/mount"));
    publish_to(&mut c, &vol, NODE, cap.clone()).await;
    stage(&mut n, &vol, &stg, cap.clone()).await;
    publish(&mut n, &vol, &stg, &tgt, cap.clone(), false).await;
    assert!(is_mountpoint(&tgt));
    let sum = write_data(&tgt.join("data.bin"), 0, DATA, 42);

    let snap = snapshot(&mut c, "snap-life-fs", &vol.volume_id).await;
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes, GIB as i64);
    let restored = create(
        &mut c,
        "pvc-life-fs-restored",
        &pool,
        GIB,
        cap.clone(),
        from_snapshot(&snap.snapshot_id),
    )
    .await;
    let cloned = create(
        &mut c,
        "pvc-life-fs-clone",
        &pool,
        GIB,
        cap.clone(),
        from_volume(&vol.volume_id),
    )
    .await;
    assert!(restored.content_source.is_some() && cloned.content_source.is_some());

    // Expand the original to 2 GiB while it is published: controller, then node (XFS grows online).
    let before = statvfs_total(&tgt);
    let r = c
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: range(2 * GIB),
            secrets: secrets(),
            volume_capability: Some(cap.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 2 * GIB as i64);
    assert!(r.node_expansion_required);
    let ne = n
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: tgt.to_string_lossy().into(),
            capacity_range: range(2 * GIB),
            staging_target_path: stg.to_string_lossy().into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ne.capacity_bytes, 2 * GIB as i64);
    let after = statvfs_total(&tgt);
    assert!(after > before + 900 * MIB, "xfs did not grow: {before} -> {after}");
    let stats = n
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: tgt.to_string_lossy().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].total as u64, after);
    assert!(stats.usage[0].used as u64 >= DATA, "stats must see the 100 MiB written");
    assert!(!stats.volume_condition.unwrap().abnormal);

    // Every copy holds the data.
    for (v, name) in [(&restored, "restored"), (&cloned, "clone")] {
        let (s2, t2) = (d.join(format!("stg-{name}")), d.join(format!("pods/{name}/mount")));
        publish_to(&mut c, v, NODE, cap.clone()).await;
        stage(&mut n, v, &s2, cap.clone()).await;
        publish(&mut n, v, &s2, &t2, cap.clone(), true).await;
        assert_eq!(
            read_sha(&t2.join("data.bin"), 0, DATA),
            sum,
            "data in the {name} volume differs"
        );
        assert!(
            std::fs::write(t2.join("x"), b"x").is_err(),
            "a read-only publish must refuse writes"
        );
        unpublish(&mut n, v, &t2).await;
        unstage(&mut n, v, &s2).await;
    }
    assert_eq!(read_sha(&tgt.join("data.bin"), 0, DATA), sum);

    unpublish(&mut n, &vol, &tgt).await;
    unstage(&mut n, &vol, &stg).await;
    assert!(!is_mountpoint(&stg));
    // Delete the original first: its snapshot image and the clone still depend on it,
    // so it waits in the RBD trash and must be purged when they go.
    delete(&mut c, &vol.volume_id).await;
    delete_snapshot(&mut c, &snap.snapshot_id).await;
    delete(&mut c, &restored.volume_id).await;
    delete(&mut c, &cloned.volume_id).await;
    pool.assert_empty();
    assert_node_clean(&d);
    let m = drv.metrics_text();
    assert!(
        m.contains(r#"strake_csi_rpc_total{method="CreateVolume",code="Ok"} 3"#),
        "{m}"
    );
    assert!(m.contains("strake_csi_rpc_duration_seconds_bucket"), "{m}");
    assert!(
        m.contains(r#"strake_csi_attached_volumes{attacher="fuse-loop"} 0"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_whole_life() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("life-blk");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let (mut c, mut n) = (drv.controller().await, drv.node().await);
    let cap = block_cap();
    let d = drv.dir.clone();

    let vol = create(&mut c, "pvc-life-blk", &pool, GIB, cap.clone(), None).await;
    let (stg, tgt) = (d.join("stg-a"), d.join("pods/a/dev"));
    publish_to(&mut c, &vol, NODE, cap.clone()).await;
    stage(&mut n, &vol, &stg, cap.clone()).await;
    publish(&mut n, &vol, &stg, &tgt, cap.clone(), false).await;
    assert!(strake_csi::mount::is_block_device(&tgt));
    assert_eq!(strake_csi::mount::device_size(&tgt).unwrap(), GIB);
    // Data at an offset, so a copy that starts at the wrong place cannot match.
    let sum = write_data(&tgt, 7 * MIB, DATA, 7);
    // The FUSE server's per-volume counters reach the plugin's /metrics.
    let m = drv.metrics_text();
    let written: f64 = m
        .lines()
        .find(|l| {
            l.starts_with(&format!("strake_csi_fuse_bytes_total{{volume=\"{}/", pool.name))
                && l.contains(r#"op="write""#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no FUSE write bytes for the volume in /metrics:\n{m}"));
    assert!(written >= DATA as f64, "{written} bytes counted, {DATA} written");
    assert!(m.contains("strake_csi_fuse_request_duration_seconds_bucket{"), "{m}");

    let snap = snapshot(&mut c, "snap-life-blk", &vol.volume_id).await;
    let restored = create(
        &mut c,
        "pvc-life-blk-restored",
        &pool,
        GIB,
        cap.clone(),
        from_snapshot(&snap.snapshot_id),
    )
    .await;
    let cloned = create(
        &mut c,
        "pvc-life-blk-clone",
        &pool,
        GIB,
        cap.clone(),
        from_volume(&vol.volume_id),
    )
    .await;

    let r = c
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: range(2 * GIB),
            secrets: secrets(),
            volume_capability: Some(cap.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 2 * GIB as i64);
    let ne = n
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: tgt.to_string_lossy().into(),
            staging_target_path: stg.to_string_lossy().into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ne.capacity_bytes, 2 * GIB as i64);
    assert_eq!(
        strake_csi::mount::device_size(&tgt).unwrap(),
        2 * GIB,
        "the published device must show the new size"
    );
    let stats = n
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: tgt.to_string_lossy().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].total, 2 * GIB as i64);

    for (v, name) in [(&restored, "restored"), (&cloned, "clone")] {
        let (s2, t2) = (d.join(format!("stg-{name}")), d.join(format!("pods/{name}/dev")));
        publish_to(&mut c, v, NODE, cap.clone()).await;
        stage(&mut n, v, &s2, cap.clone()).await;
        publish(&mut n, v, &s2, &t2, cap.clone(), false).await;
        assert_eq!(read_sha(&t2, 7 * MIB, DATA), sum, "data in the {name} volume differs");
        unpublish(&mut n, v, &t2).await;
        unstage(&mut n, v, &s2).await;
    }
    assert_eq!(read_sha(&tgt, 7 * MIB, DATA), sum);
    unpublish(&mut n, &vol, &tgt).await;
    unstage(&mut n, &vol, &stg).await;
    delete_snapshot(&mut c, &snap.snapshot_id).await;
    delete(&mut c, &vol.volume_id).await;
    delete(&mut c, &cloned.volume_id).await;
    delete(&mut c, &restored.volume_id).await;
    pool.assert_empty();
    assert_node_clean(&d);
}

/// ext4 cannot grow online without CAP_SYS_RESOURCE: NodeExpandVolume says so and
/// what happens next; the next stage grows it offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_expansion_without_cap_sys_resource_grows_offline_at_next_stage() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("ext4-grow");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let (mut c, mut n) = (drv.controller().await, drv.node().await);
    let cap = mount_cap("ext4");
    let d = drv.dir.clone();
    let vol = create(&mut c, "pvc-ext4", &pool, 256 * MIB, cap.clone(), None).await;
    let (stg, tgt) = (d.join("stg"), d.join("pods/p/mount"));
    publish_to(&mut c, &vol, NODE, cap.clone()).await;
    stage(&mut n, &vol, &stg, cap.clone()).await;
    publish(&mut n, &vol, &stg, &tgt, cap.clone(), false).await;
    let sum = write_data(&tgt.join("f"), 0, 20 * MIB, 3);
    let before = statvfs_total(&tgt);
    c.controller_expand_volume(ControllerExpandVolumeRequest {
        volume_id: vol.volume_id.clone(),
        capacity_range: range(512 * MIB),
        secrets: secrets(),
        volume_capability: Some(cap.clone()),
    })
    .await
    .unwrap();
    let r = n
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: tgt.to_string_lossy().into(),
            staging_target_path: stg.to_string_lossy().into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await;
    if has_cap_sys_resource() {
        r.expect("with CAP_SYS_RESOURCE ext4 grows online");
    } else {
        let e = r.expect_err("without CAP_SYS_RESOURCE the online grow must fail");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("CAP_SYS_RESOURCE") && e.message().contains("next NodeStageVolume"),
            "{}",
            e.message()
        );
        assert_eq!(statvfs_total(&tgt), before);
        // The pod restarts: unpublish, unstage, stage, publish.
        unpublish(&mut n, &vol, &tgt).await;
        unstage(&mut n, &vol, &stg).await;
        stage(&mut n, &vol, &stg, cap.clone()).await;
        publish(&mut n, &vol, &stg, &tgt, cap.clone(), false).await;
    }
    let after = statvfs_total(&tgt);
    assert!(after > before + 200 * MIB, "ext4 did not grow: {before} -> {after}");
    assert_eq!(read_sha(&tgt.join("f"), 0, 20 * MIB), sum);
    unpublish(&mut n, &vol, &tgt).await;
    unstage(&mut n, &vol, &stg).await;
    delete(&mut c, &vol.volume_id).await;
    pool.assert_empty();
    assert_node_clean(&d);
}
