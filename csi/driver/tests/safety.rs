//! No volume is ever written by mistake: devices that hold something are never
//! formatted, reader-only volumes are read-only on every node (checked byte for byte
//! on the whole image), and an image that a client has open is never deleted or
//! trashed.
mod common;

use std::time::Duration;

use common::*;
use strake_csi::csi::volume_capability::access_mode::Mode;
use strake_csi::csi::*;
use tonic::Code;

/// A DOS partition table with one Linux partition and nothing else, as `fdisk` leaves
/// a disk before anyone runs mkfs on the partition.
fn mbr() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[446 + 4] = 0x83; // partition type: Linux
    b[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes()); // first LBA
    b[446 + 12..446 + 16].copy_from_slice(&100_000u32.to_le_bytes()); // sectors
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_holding_only_a_partition_table_is_never_formatted() {
    let pool = TestPool::new("ptable");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let _cleanup = CleanupOnDrop(drv.dir.clone());
    let mut c = drv.controller().await;
    let mut n = drv.node().await;
    let v = create(&mut c, "pvc-ptable", &pool, 64 * MIB, mount_cap("ext4"), None).await;
    {
        let img = pool.io().open(&image_name(&v)).unwrap();
        img.write_at(0, &mbr()).unwrap();
        img.flush().unwrap();
    }
    let before = image_sha(&pool, &image_name(&v));
    let stg = drv.dir.join("stg");
    for fs in ["ext4", "xfs"] {
        let e = n
            .node_stage_volume(NodeStageVolumeRequest {
                volume_id: v.volume_id.clone(),
                staging_target_path: stg.to_string_lossy().into(),
                volume_capability: Some(mount_cap(fs)),
                secrets: secrets(),
                volume_context: v.volume_context.clone(),
                ..Default::default()
            })
            .await
            .expect_err("a device with a partition table must not be formatted");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("dos partition table") && e.message().contains("never"),
            "{}",
            e.message()
        );
        unstage(&mut n, &v, &stg).await;
    }
    assert!(!is_mountpoint(&stg));
    assert_eq!(
        image_sha(&pool, &image_name(&v)),
        before,
        "a refused NodeStageVolume changed the image"
    );
    delete(&mut c, &v.volume_id).await;
    pool.assert_empty();
    assert_node_clean(&drv.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_an_image_with_watchers_is_refused_and_the_image_stays_out_of_the_trash() {
    let pool = TestPool::new("busy");
    // Pauses between its in-use check and rbd_remove, so a client can open the image
    // in that window: the removal's own EBUSY/ENOTEMPTY must then be read right.
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        extra_env: vec![("STRAKE_CSI_DELAY".into(), "delete:before-remove=2500".into())],
        ..Default::default()
    });
    let mut c = drv.controller().await;
    let v = create(&mut c, "pvc-busy", &pool, 64 * MIB, block_cap(), None).await;
    // A clone makes the image one that would go to the trash if it were free.
    let clone = create(
        &mut c,
        "pvc-busy-clone",
        &pool,
        64 * MIB,
        block_cap(),
        from_volume(&v.volume_id),
    )
    .await;
    let img = image_name(&v);
    let listed = |c: &mut strake_csi::csi::controller_client::ControllerClient<_>| {
        let mut c = c.clone();
        async move {
            c.list_volumes(ListVolumesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id)
                .collect::<Vec<_>>()
        }
    };

    // 1. A client has it open before DeleteVolume starts.
    let holder = pool.io().open(&img).unwrap();
    let addr = {
        let w = pool.io().open_read_only(&img).unwrap().watchers().unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        w[0].addr.clone()
    };
    let e = c
        .delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            secrets: secrets(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(&addr),
        "the refusal names the watcher: {}",
        e.message()
    );
    assert!(pool.images().contains(&img), "{:?}", pool.images());
    assert!(listed(&mut c).await.contains(&v.volume_id));
    drop(holder);

    // 2. A client opens it after the check, before the removal.
    let mut c2 = c.clone();
    let vid = v.volume_id.clone();
    let del = tokio::spawn(async move {
        c2.delete_volume(DeleteVolumeRequest {
            volume_id: vid,
            secrets: secrets(),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let holder = pool.io().open(&img).unwrap();
    let e = del.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("still in use"), "{}", e.message());
    let images = pool.images();
    assert!(images.contains(&img), "{images:?}");
    assert!(
        !images.contains(&format!("trash:{img}")),
        "an image in use was moved to the trash: {images:?}"
    );
    assert!(
        listed(&mut c).await.contains(&v.volume_id),
        "the refused volume is ready again"
    );
    drop(holder);

    // Once nobody has it open: the source goes to the trash (its clone needs it),
    // and everything is gone once the clone is deleted.
    delete(&mut c, &v.volume_id).await;
    assert!(pool.images().contains(&format!("trash:{img}")), "{:?}", pool.images());
    delete(&mut c, &clone.volume_id).await;
    pool.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_node_reader_only_filesystem_is_read_only_on_every_node_and_the_image_unchanged() {
    let pool = TestPool::new("rox");
    let a = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        node_id: "node-a",
        ..Default::default()
    });
    let b = Driver::start(DriverOpts {
        mode: "node",
        node_id: "node-b",
        ..Default::default()
    });
    let _ca = CleanupOnDrop(a.dir.clone());
    let _cb = CleanupOnDrop(b.dir.clone());
    let mut c = a.controller().await;
    let (mut na, mut nb) = (a.node().await, b.node().await);
    for fs in ["ext4", "xfs"] {
        let rw = mount_cap(fs);
        let rox = cap_with_mode(mount_cap(fs), Mode::MultiNodeReaderOnly);
        let v = c
            .create_volume(CreateVolumeRequest {
                name: format!("pvc-rox-{fs}"),
                capacity_range: range(320 * MIB),
                volume_capabilities: vec![rw.clone(), rox.clone()],
                parameters: pool.params(),
                secrets: secrets(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        // Written once, read-write, on node A.
        let stg = a.dir.join(format!("stg-rw-{fs}"));
        stage(&mut na, &v, &stg, rw.clone()).await;
        let sum = write_data(&stg.join("data"), 0, 16 * MIB, 7);
        unstage(&mut na, &v, &stg).await;
        let before = image_sha(&pool, &image_name(&v));

        // Then staged and published on both nodes with MULTI_NODE_READER_ONLY.
        let mut targets = vec![];
        for (node, n, dir) in [("a", &mut na, &a.dir), ("b", &mut nb, &b.dir)] {
            let stg = dir.join(format!("stg-ro-{fs}"));
            let tgt = dir.join(format!("tgt-ro-{fs}"));
            stage(n, &v, &stg, rox.clone()).await;
            publish(n, &v, &stg, &tgt, rox.clone(), false).await;
            assert!(
                strake_csi::mount::is_read_only(&stg) && strake_csi::mount::is_read_only(&tgt),
                "node {node}: staging and target must be mounted ro:\n{}",
                std::fs::read_to_string("/proc/self/mountinfo").unwrap()
            );
            assert_eq!(
                read_sha(&tgt.join("data"), 0, 16 * MIB),
                sum,
                "node {node} reads the data"
            );
            let w = std::fs::write(tgt.join("new"), b"x").unwrap_err();
            assert_eq!(w.raw_os_error(), Some(libc::EROFS), "node {node}: {w}");
            targets.push((stg, tgt));
        }
        for ((stg, tgt), n) in targets.iter().zip([&mut na, &mut nb]) {
            unpublish(n, &v, tgt).await;
            unstage(n, &v, stg).await;
        }
        assert_eq!(
            image_sha(&pool, &image_name(&v)),
            before,
            "{fs}: staging read-only on two nodes changed the image"
        );
        delete(&mut c, &v.volume_id).await;
    }
    pool.assert_empty();
    assert_node_clean(&a.dir);
    assert_node_clean(&b.dir);
}
