//! No volume is ever written by mistake: devices that hold something are never
//! formatted, reader-only volumes are read-only on every node (checked byte for byte
//! on the whole image), and an image that a client has open is never deleted or
//! trashed.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    if !strake_test_support::ceph() {
        return;
    }
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
    publish_to(&mut c, &v, NODE, mount_cap("ext4")).await;
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
    if !strake_test_support::ceph() {
        return;
    }
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
    if !strake_test_support::ceph() {
        return;
    }
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
        publish_to(&mut c, &v, "node-a", rw.clone()).await;
        stage(&mut na, &v, &stg, rw.clone()).await;
        let sum = write_data(&stg.join("data"), 0, 16 * MIB, 7);
        unstage(&mut na, &v, &stg).await;
        unpublish_from(&mut c, &v.volume_id, "node-a").await;
        let before = image_sha(&pool, &image_name(&v));

        // Then staged and published on both nodes with MULTI_NODE_READER_ONLY.
        let mut targets = vec![];
        for (node, n, dir) in [("a", &mut na, &a.dir), ("b", &mut nb, &b.dir)] {
            let stg = dir.join(format!("stg-ro-{fs}"));
            let tgt = dir.join(format!("tgt-ro-{fs}"));
            publish_to(&mut c, &v, &format!("node-{node}"), rox.clone()).await;
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
        for node in ["node-a", "node-b"] {
            unpublish_from(&mut c, &v.volume_id, node).await;
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

/// Rewrites the first MiB of `dev` with fsync, block `n` starting with `n`, until a
/// write or fsync fails or `stop` is set; `done` counts the blocks that completed.
fn writer(
    dev: std::path::PathBuf,
    done: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Option<std::io::Error> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
    let mut buf = vec![0xa5u8; MIB as usize];
    let mut n = 1u64;
    while !stop.load(Ordering::SeqCst) {
        buf[..8].copy_from_slice(&n.to_le_bytes());
        let r = f
            .seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&buf))
            .and_then(|_| f.sync_data());
        if let Err(e) = r {
            return Some(e);
        }
        done.store(n, Ordering::SeqCst);
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The first 8 bytes of the image, read through librbd (what RADOS holds).
fn head(pool: &TestPool, image: &str) -> u64 {
    let img = pool.io().open_read_only(image).unwrap();
    let mut b = [0u8; 8];
    img.read_at(0, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// The helper process of the one volume a node plugin has attached.
fn helper_pid(d: &Driver) -> Option<i32> {
    let dir = std::fs::read_dir(d.state_dir.join("volumes")).ok()?.next()?.ok()?;
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).ok()?).ok()?;
    st["attachment"]["helper_pid"].as_i64().map(|p| p as i32)
}

struct KillOnDrop(Option<i32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// `ceph osd blocklist ls`: what the operator sees.
fn blocklist() -> Vec<String> {
    let out = std::process::Command::new("ceph")
        .args(["osd", "blocklist", "ls", "--format", "json", "-c"])
        .arg(conf())
        .output()
        .unwrap();
    // Two JSON documents: the client entries, then (Pacific) the range entries.
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Vec<serde_json::Value>>()
        .flat_map(|d| d.unwrap_or_else(|e| panic!("ceph osd blocklist ls: {e}")))
        .filter_map(|e| e["addr"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_writer_volume_has_one_node_and_a_lost_node_is_fenced() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("fence");
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
    let cap = block_cap();
    let v = create(&mut c, "pvc-fence", &pool, 64 * MIB, cap.clone(), None).await;
    let publish_b = |c: &mut strake_csi::csi::controller_client::ControllerClient<_>| {
        let mut c = c.clone();
        let (v, cap) = (v.clone(), cap.clone());
        async move {
            c.controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: v.volume_id.clone(),
                node_id: "node-b".into(),
                volume_capability: Some(cap),
                secrets: secrets(),
                ..Default::default()
            })
            .await
        }
    };

    // One writer node at a time; a clean handover works.
    publish_to(&mut c, &v, "node-a", cap.clone()).await;
    publish_to(&mut c, &v, "node-a", cap.clone()).await;
    let e = publish_b(&mut c).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("published to node node-a"), "{}", e.message());
    unpublish_from(&mut c, &v.volume_id, "node-a").await;
    publish_b(&mut c).await.expect("after Unpublish from A, B may have it");
    unpublish_from(&mut c, &v.volume_id, "node-b").await;

    // A stages it and writes.
    publish_to(&mut c, &v, "node-a", cap.clone()).await;
    let (sa, ta) = (a.dir.join("stg"), a.dir.join("pods/a/dev"));
    stage(&mut na, &v, &sa, cap.clone()).await;
    publish(&mut na, &v, &sa, &ta, cap.clone(), false).await;
    // A fenced helper may retry forever; whatever happens, it goes before the cleanup.
    let a_helper = KillOnDrop(helper_pid(&a));
    let listed = c
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.entries[0].status.as_ref().unwrap().published_node_ids,
        vec!["node-a".to_string()]
    );

    // B may not stage what A holds and has open.
    let stage_b = NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: b.dir.join("stg").to_string_lossy().into(),
        volume_capability: Some(cap.clone()),
        secrets: secrets(),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    };
    let e = nb.node_stage_volume(stage_b.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("not published to node node-b") && e.message().contains("(node node-a)"),
        "{}",
        e.message()
    );
    assert!(!is_mountpoint(&b.dir.join("stg")));

    // A writes; then A is declared lost and the CO detaches it without any
    // NodeUnstageVolume there (a force detach): A's client is fenced.
    let io = pool.io();
    let j = strake_csi::journal::Journal::new(&io, INSTANCE);
    let uuid = strake_csi::ids::VolumeId::parse(&v.volume_id).unwrap().uuid;
    let claim = strake_csi::publish::claim(&j, &uuid, "node-a")
        .unwrap()
        .expect("A recorded its claim");
    assert_eq!(claim.clients.len(), 1, "{claim:?}");
    let (done, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let w = {
        let (dev, done, stop) = (ta.clone(), done.clone(), stop.clone());
        std::thread::spawn(move || writer(dev, done, stop))
    };
    let t0 = std::time::Instant::now();
    while done.load(Ordering::SeqCst) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(30), "A's writer made no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unpublish_from(&mut c, &v.volume_id, "node-a").await;
    assert!(
        blocklist().contains(&claim.clients[0]),
        "A's client {} is blocklisted: {:?}",
        claim.clients[0],
        blocklist()
    );
    assert!(a.log_text().contains("fenced"), "the controller logs the fencing");
    // From now on nothing A writes lands: its writes fail (or, with a helper that
    // retries, never complete), and the image keeps what it had.
    let fenced_at = done.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = done.load(Ordering::SeqCst);
    assert!(
        after <= fenced_at + 1,
        "A completed {} writes after it was fenced",
        after - fenced_at
    );
    let landed = head(&pool, &image_name(&v));
    assert!(
        landed <= fenced_at + 1,
        "block {landed} reached the image after the fence ({fenced_at})"
    );
    // B takes over and its data is what B wrote.
    publish_b(&mut c).await.expect("B may have it once A is fenced");
    nb.node_stage_volume(stage_b).await.expect("B stages once A is fenced");
    let tb = b.dir.join("pods/b/dev");
    publish(&mut nb, &v, &b.dir.join("stg"), &tb, cap.clone(), false).await;
    let sum = write_data(&tb, 0, 8 * MIB, 99);
    assert_eq!(read_sha(&tb, 0, 8 * MIB), sum);
    let b_head = head(&pool, &image_name(&v));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(head(&pool, &image_name(&v)), b_head, "A overwrote what B wrote");
    // A is rebooted (or its stuck helper killed): the writer there sees its IO fail.
    stop.store(true, Ordering::SeqCst);
    drop(a_helper);
    let err = tokio::task::spawn_blocking(move || w.join().unwrap()).await.unwrap();
    eprintln!("A's writer stopped after {fenced_at} blocks before the fence: {err:?}");
    assert!(err.is_some(), "A's writes must fail after the fence");
    unpublish(&mut nb, &v, &tb).await;
    unstage(&mut nb, &v, &b.dir.join("stg")).await;
    unpublish_from(&mut c, &v.volume_id, "node-b").await;
    // A comes back: its kubelet tears down what it had; the fenced client is gone.
    unpublish(&mut na, &v, &ta).await;
    unstage(&mut na, &v, &sa).await;
    delete(&mut c, &v.volume_id).await;
    pool.assert_empty();
    assert_node_clean(&a.dir);
    assert_node_clean(&b.dir);
    for addr in &claim.clients {
        let _ = admin().mon_command(
            &serde_json::json!({"prefix": "osd blocklist", "blocklistop": "rm", "addr": addr}).to_string(),
        );
    }
}
