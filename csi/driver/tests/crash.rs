//! Crash safety: the real binary is killed (SIGKILL, via STRAKE_CSI_FAILPOINT) at every
//! step of create, clone, snapshot and delete; a fresh process then retries the same
//! call, and the pool listing and the omap journal must show exactly the converged
//! result: one image per name, no image without a record, no record without an image.
//! Also: `strake-csi sweep` finds and removes provable orphans and nothing else.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use strake_csi::csi::*;

/// Runs `call` against a driver armed with `failpoint` and checks the process died
/// there (not earlier with an error); then returns a fresh, unarmed driver.
async fn crash_then_restart<F, Fut>(pool: &TestPool, failpoint: &str, call: F) -> Driver
where
    F: FnOnce(Driver) -> Fut,
    Fut: std::future::Future<Output = (Driver, Result<(), tonic::Status>)>,
{
    let armed = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        failpoint: Some(failpoint.into()),
        ..Default::default()
    });
    let (mut armed, res) = call(armed).await;
    let err = res.expect_err("the call must not succeed: the process is killed mid-way");
    assert!(
        armed.wait_dead(Duration::from_secs(10)),
        "driver did not die at failpoint {failpoint} (call failed with {err:?}); log:\n{}",
        armed.log_text()
    );
    assert!(
        armed.log_text().contains(&format!("failpoint {failpoint} hit")),
        "died elsewhere than {failpoint}:\n{}",
        armed.log_text()
    );
    Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    })
}

async fn create_req(pool: &TestPool, name: &str, source: Option<volume_content_source::Type>) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: range(64 * MIB),
        volume_capabilities: vec![block_cap()],
        parameters: pool.params(),
        secrets: secrets(),
        volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    }
}

fn image_set(pool: &TestPool) -> Vec<String> {
    pool.images()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_delete_converge_after_a_crash_at_every_step() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("crash-vol");
    for fp in ["create:after-reserve", "create:after-image"] {
        let name = format!("pvc-{}", fp.replace(':', "-"));
        let req = create_req(&pool, &name, None).await;
        let r2 = req.clone();
        let drv = crash_then_restart(&pool, fp, |d| async move {
            let mut c = d.controller().await;
            let r = c.create_volume(r2).await.map(|_| ());
            (d, r)
        })
        .await;
        let mut c = drv.controller().await;
        let v = c.create_volume(req.clone()).await.unwrap().into_inner().volume.unwrap();
        let again = c.create_volume(req).await.unwrap().into_inner().volume.unwrap();
        assert_eq!(
            v.volume_id, again.volume_id,
            "retry after {fp} must return the same volume"
        );
        let imgs: Vec<String> = image_set(&pool).into_iter().filter(|i| i.contains("vol-")).collect();
        assert_eq!(
            imgs,
            vec![v.volume_context["imageName"].clone()],
            "after {fp}: exactly one image for the name"
        );
        assert_eq!(
            pool.journal_keys().len(),
            2,
            "after {fp}: one name key + one id key: {:?}",
            pool.journal_keys()
        );

        c.delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            secrets: secrets(),
        })
        .await
        .unwrap();
        pool.assert_empty();
    }
    // DeleteVolume killed at each of its steps, then retried.
    for fp in ["delete:after-mark", "delete:after-image"] {
        let d = Driver::start(DriverOpts {
            list_pools: vec![pool.name.clone()],
            ..Default::default()
        });
        let mut c = d.controller().await;
        let v = c
            .create_volume(create_req(&pool, "pvc-del", None).await)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        drop(d);
        let vid = v.volume_id.clone();
        let drv = crash_then_restart(&pool, fp, |d| async move {
            let mut c = d.controller().await;
            let r = c
                .delete_volume(DeleteVolumeRequest {
                    volume_id: vid,
                    secrets: secrets(),
                })
                .await
                .map(|_| ());
            (d, r)
        })
        .await;
        let mut c = drv.controller().await;
        // A CreateVolume for the name while its delete is unfinished must not resurrect it.
        let e = c
            .create_volume(create_req(&pool, "pvc-del", None).await)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
        c.delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            secrets: secrets(),
        })
        .await
        .unwrap();
        pool.assert_empty();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_clone_and_snapshot_delete_converge_after_a_crash_at_every_step() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("crash-snap");
    let base = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let mut c = base.controller().await;
    let src = c
        .create_volume(create_req(&pool, "pvc-src", None).await)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let src_image = src.volume_context["imageName"].clone();
    drop(c);

    // CreateSnapshot, killed at each step, then retried.
    let mut snaps = vec![];
    for fp in [
        "snapshot:after-reserve",
        "snapshot:after-source-snap",
        "snapshot:after-clone",
        "snapshot:after-snap",
    ] {
        let name = format!("snap-{}", fp.replace(':', "-"));
        let (n2, s2) = (name.clone(), src.volume_id.clone());
        let drv = crash_then_restart(&pool, fp, |d| async move {
            let mut c = d.controller().await;
            let r = c
                .create_snapshot(CreateSnapshotRequest {
                    source_volume_id: s2,
                    name: n2,
                    secrets: secrets(),
                    ..Default::default()
                })
                .await
                .map(|_| ());
            (d, r)
        })
        .await;
        let mut c = drv.controller().await;
        let s = snapshot(&mut c, &name, &src.volume_id).await;
        assert!(s.ready_to_use);
        assert_eq!(snapshot(&mut c, &name, &src.volume_id).await.snapshot_id, s.snapshot_id);
        // The temporary snapshot on the source must be gone (or in the trash namespace).
        let io = pool.io();
        let live: Vec<String> = io
            .open(&src_image)
            .unwrap()
            .snaps()
            .unwrap()
            .into_iter()
            .filter(|s| !s.trashed)
            .map(|s| s.name)
            .collect();
        assert!(live.is_empty(), "after {fp}: source still has snapshots {live:?}");
        snaps.push(s);
    }
    let snap_images: Vec<String> = image_set(&pool).into_iter().filter(|i| i.contains("snap-")).collect();
    assert_eq!(snap_images.len(), 4, "one image per snapshot: {snap_images:?}");

    // Clone from a volume, killed at each step, then retried.
    let mut clones = vec![];
    for fp in ["clone:after-temp-snap", "clone:after-clone", "create:after-image"] {
        let name = format!("pvc-clone-{}", fp.replace(':', "-"));
        let req = create_req(&pool, &name, from_volume(&src.volume_id)).await;
        let r2 = req.clone();
        let drv = crash_then_restart(&pool, fp, |d| async move {
            let mut c = d.controller().await;
            let r = c.create_volume(r2).await.map(|_| ());
            (d, r)
        })
        .await;
        let mut c = drv.controller().await;
        let v = c.create_volume(req).await.unwrap().into_inner().volume.unwrap();
        let io = pool.io();
        let live: Vec<String> = io
            .open(&src_image)
            .unwrap()
            .snaps()
            .unwrap()
            .into_iter()
            .filter(|s| !s.trashed)
            .map(|s| s.name)
            .collect();
        assert!(
            live.is_empty(),
            "after {fp}: the clone's temporary snapshot was left on the source: {live:?}"
        );
        clones.push(v);
    }
    // Restore from a snapshot, killed after the clone.
    let req = create_req(&pool, "pvc-restore", from_snapshot(&snaps[0].snapshot_id)).await;
    let r2 = req.clone();
    let drv = crash_then_restart(&pool, "create:after-image", |d| async move {
        let mut c = d.controller().await;
        let r = c.create_volume(r2).await.map(|_| ());
        (d, r)
    })
    .await;
    let mut c = drv.controller().await;
    clones.push(c.create_volume(req).await.unwrap().into_inner().volume.unwrap());

    let vol_images: Vec<String> = image_set(&pool)
        .into_iter()
        .filter(|i| i.contains("vol-") && !i.starts_with("trash:"))
        .collect();
    assert_eq!(
        vol_images.len(),
        1 + clones.len(),
        "one image per volume name: {vol_images:?}"
    );

    // DeleteSnapshot killed at each step, then retried.
    for (i, fp) in ["delete-snapshot:after-mark", "delete-snapshot:after-image"]
        .iter()
        .enumerate()
    {
        let sid = snaps[i].snapshot_id.clone();
        let drv = crash_then_restart(&pool, fp, |d| async move {
            let mut c = d.controller().await;
            let r = c
                .delete_snapshot(DeleteSnapshotRequest {
                    snapshot_id: sid,
                    secrets: secrets(),
                })
                .await
                .map(|_| ());
            (d, r)
        })
        .await;
        let mut c = drv.controller().await;
        delete_snapshot(&mut c, &snaps[i].snapshot_id).await;
    }
    // Everything else goes normally; then nothing may be left.
    for s in &snaps[2..] {
        delete_snapshot(&mut c, &s.snapshot_id).await;
    }
    for v in clones.iter().chain(std::iter::once(&src)) {
        delete(&mut c, &v.volume_id).await;
    }
    pool.assert_empty();
}

fn sweep(pool: &TestPool, delete: bool) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strake-csi"));
    cmd.args(["sweep", "--pool", &pool.name, "--grace-secs", "0", "--ceph-conf"])
        .arg(conf());
    if delete {
        cmd.arg("--delete");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "sweep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_proven_orphans_and_keeps_live_volumes() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("sweep");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let mut c = drv.controller().await;
    let live = c
        .create_volume(create_req(&pool, "pvc-live", None).await)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let live_snap = snapshot(&mut c, "snap-live", &live.volume_id).await;

    // Orphan 1: an image with our prefix and no record (what a lost record looks like).
    let io = pool.io();
    let orphan = format!("{PREFIX}vol-{}", uuid::Uuid::new_v4());
    io.create_image(&orphan, 4 * MIB, &Default::default()).unwrap();
    // Orphan 2: a record whose image was removed behind our back.
    let gone = c
        .create_volume(create_req(&pool, "pvc-gone", None).await)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    io.remove_image(&gone.volume_context["imageName"]).unwrap();
    // Orphan 3: an abandoned reservation (crash right after reserve, CO gave up).
    let armed = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        failpoint: Some("create:after-reserve".into()),
        ..Default::default()
    });
    let mut ca = armed.controller().await;
    assert!(ca
        .create_volume(create_req(&pool, "pvc-abandoned", None).await)
        .await
        .is_err());
    // Not ours: an image another driver (ceph-csi) could own.
    io.create_image("csi-vol-not-ours", 4 * MIB, &Default::default())
        .unwrap();

    let report = sweep(&pool, false);
    let objects: Vec<&str> = report.iter().map(|f| f["object"].as_str().unwrap()).collect();
    assert!(objects.contains(&orphan.as_str()), "{report:?}");
    assert!(objects.contains(&"pvc-gone"), "{report:?}");
    assert!(objects.contains(&"pvc-abandoned"), "{report:?}");
    assert!(
        !objects
            .iter()
            .any(|o| o.contains("not-ours") || *o == "pvc-live" || *o == "snap-live"),
        "{report:?}"
    );
    assert!(
        report.iter().all(|f| f["removed"] == false),
        "report mode removes nothing"
    );
    assert!(pool.images().contains(&orphan));

    let report = sweep(&pool, true);
    assert!(
        report
            .iter()
            .filter(|f| f["proven"] == true)
            .all(|f| f["removed"] == true),
        "{report:?}"
    );
    let images = pool.images();
    assert!(!images.contains(&orphan), "{images:?}");
    assert!(images.contains(&"csi-vol-not-ours".to_string()));
    assert!(
        images.contains(&live.volume_context["imageName"]),
        "live volume must survive"
    );
    assert!(sweep(&pool, false).is_empty(), "second sweep finds nothing");

    // The live volume and snapshot still work and delete cleanly.
    delete_snapshot(&mut c, &live_snap.snapshot_id).await;
    delete(&mut c, &live.volume_id).await;
    io.remove_image("csi-vol-not-ours").unwrap();
    pool.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_sweeps_orphans_by_itself_when_asked() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("autosweep");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let mut c = drv.controller().await;
    let live = c
        .create_volume(create_req(&pool, "pvc-live", None).await)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let orphan = format!("{PREFIX}vol-{}", uuid::Uuid::new_v4());
    pool.io().create_image(&orphan, 4 * MIB, &Default::default()).unwrap();

    // A second controller process with the periodic sweep on.
    let dir = tempfile::Builder::new().prefix("strake-csi-test").tempdir().unwrap();
    let log = dir.path().join("log");
    let mut sweeper = Command::new(env!("CARGO_BIN_EXE_strake-csi"))
        .args([
            "--mode",
            "controller",
            "--metrics-addr",
            "",
            "--sweep-interval-secs",
            "1",
            "--list-pools",
            &pool.name,
            "--endpoint",
        ])
        .arg(dir.path().join("csi.sock"))
        .arg("--ceph-conf")
        .arg(conf())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    // The sweeper logs its findings once its pass is over, a moment after the removal.
    while pool.images().contains(&orphan) || !std::fs::read_to_string(&log).unwrap().contains("sweep finding") {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = sweeper.kill();
            panic!(
                "the periodic sweep did not remove {orphan}:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = sweeper.kill();
    let _ = sweeper.wait();
    assert!(
        pool.images().contains(&live.volume_context["imageName"]),
        "the live volume must survive"
    );
    delete(&mut c, &live.volume_id).await;
    pool.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_snapshots_converge_after_a_crash_at_every_step_and_leak_no_snapshot_or_group() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("crash-gsnap");
    let base = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let mut c = base.controller().await;
    let mut vols = vec![];
    for i in 0..3 {
        let v = c
            .create_volume(create_req(&pool, &format!("pvc-g{i}"), None).await)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let img = pool.io().open(&v.volume_context["imageName"]).unwrap();
        img.write_at(0, &[i as u8 + 1; 4096]).unwrap();
        vols.push(v);
    }
    let volume_images: Vec<String> = vols.iter().map(|v| v.volume_context["imageName"].clone()).collect();
    let refs: Vec<&Volume> = vols.iter().collect();
    for fp in [
        "group-snapshot:after-reserve",
        "group-snapshot:after-group",
        "group-snapshot:after-group-snap",
        "group-snapshot:after-copy",
        "group-snapshot:after-group-removed",
    ] {
        let name = format!("gs-{}", fp.replace(':', "-"));
        let srcs: Vec<Volume> = vols.clone();
        let n2 = name.clone();
        let d = crash_then_restart(&pool, fp, |d| async move {
            let mut g = d.group().await;
            let r = group_snapshot(&mut g, &n2, &srcs.iter().collect::<Vec<_>>())
                .await
                .map(|_| ());
            (d, r)
        })
        .await;
        let mut g = d.group().await;
        let gs = group_snapshot(&mut g, &name, &refs)
            .await
            .unwrap_or_else(|e| panic!("{fp}: the retry must finish the group snapshot: {e:?}"));
        assert!(gs.ready_to_use, "{fp}");
        assert_eq!(gs.snapshots.len(), 3, "{fp}");
        let (snaps, groups) = snapshots_and_groups(&pool);
        assert_eq!(
            (snaps, groups),
            (vec![], vec![]),
            "{fp}: a finished group snapshot leaves no RBD group nor snapshot on its sources"
        );
        // Each member holds its source's data: restore one and read it back.
        for s in &gs.snapshots {
            assert_eq!(s.group_snapshot_id, gs.group_snapshot_id);
            let img = pool
                .io()
                .open_read_only(&format!("{PREFIX}snap-{}", s.snapshot_id.rsplit(':').next().unwrap()))
                .unwrap();
            let k = vols.iter().position(|v| v.volume_id == s.source_volume_id).unwrap();
            let mut b = [0u8; 4096];
            img.read_at(0, &mut b).unwrap();
            assert_eq!(
                b,
                [k as u8 + 1; 4096],
                "{fp}: member of {} holds its data",
                s.source_volume_id
            );
        }
        delete_group_snapshot(&mut g, &gs.group_snapshot_id).await;
        let mut left = pool.images();
        left.sort();
        let mut want = volume_images.clone();
        want.sort();
        assert_eq!(left, want, "{fp}: only the source volumes are left");
        assert!(
            !pool
                .journal_keys()
                .iter()
                .any(|k| k.starts_with("gsnap.") || k.starts_with("snap.")),
            "{fp}: {:?}",
            pool.journal_keys()
        );
    }
    // Deletion interrupted after marking: the retry finishes it.
    let mut g = base.group().await;
    let gs = group_snapshot(&mut g, "gs-delete", &refs).await.unwrap();
    let id = gs.group_snapshot_id.clone();
    let d = crash_then_restart(&pool, "delete-group-snapshot:after-mark", |d| async move {
        let mut g = d.group().await;
        let r = g
            .delete_volume_group_snapshot(DeleteVolumeGroupSnapshotRequest {
                group_snapshot_id: id,
                secrets: secrets(),
                ..Default::default()
            })
            .await
            .map(|_| ());
        (d, r)
    })
    .await;
    delete_group_snapshot(&mut d.group().await, &gs.group_snapshot_id).await;
    for v in &vols {
        delete(&mut c, &v.volume_id).await;
    }
    pool.assert_empty();
    assert_eq!(snapshots_and_groups(&pool), (vec![], vec![]));
}
