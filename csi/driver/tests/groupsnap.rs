//! Volume group snapshots: three volumes written to in lockstep while the group
//! snapshot is taken; every member restores as an ordinary snapshot with its data, and
//! the restored sequence numbers show one consistent cut across the three. Also the
//! GroupController contract: idempotency, bad input codes, unknown ids.
mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use strake_csi::csi::*;
use tonic::Code;

const DATA_AT: u64 = MIB;
const DATA: u64 = 8 * MIB;

/// Writes sequence number n to block 0 of each device in turn, fsync after each
/// write, n = 1, 2, ...: at any instant, dev[0] ≥ dev[1] ≥ dev[2] ≥ dev[0] - 1.
fn lockstep(devs: Vec<std::path::PathBuf>, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut fs: Vec<std::fs::File> = devs
        .iter()
        .map(|d| std::fs::OpenOptions::new().write(true).open(d).unwrap())
        .collect();
    let mut n = 1u64;
    while !stop.load(Ordering::SeqCst) {
        for f in &mut fs {
            let mut b = [0u8; 4096];
            b[..8].copy_from_slice(&n.to_le_bytes());
            f.seek(SeekFrom::Start(0)).unwrap();
            f.write_all(&b).unwrap();
            f.sync_data().unwrap();
        }
        done.store(n, Ordering::SeqCst);
        n += 1;
    }
}

fn seq(dev: &std::path::Path) -> u64 {
    let mut f = std::fs::File::open(dev).unwrap();
    let mut b = [0u8; 8];
    f.read_exact(&mut b).unwrap();
    u64::from_le_bytes(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_snapshot_of_three_volumes_being_written_is_one_cut_and_every_member_restores() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("gsnap");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let _cleanup = CleanupOnDrop(drv.dir.clone());
    let (mut c, mut n, mut g) = (drv.controller().await, drv.node().await, drv.group().await);
    let cap = block_cap();
    let mut vols = vec![];
    let mut devs = vec![];
    let mut sums = vec![];
    for i in 0..3 {
        let v = create(&mut c, &format!("pvc-app-{i}"), &pool, 64 * MIB, cap.clone(), None).await;
        publish_to(&mut c, &v, NODE, cap.clone()).await;
        let (stg, tgt) = (drv.dir.join(format!("stg-{i}")), drv.dir.join(format!("pods/{i}/dev")));
        stage(&mut n, &v, &stg, cap.clone()).await;
        publish(&mut n, &v, &stg, &tgt, cap.clone(), false).await;
        sums.push(write_data(&tgt, DATA_AT, DATA, 10 + i));
        devs.push((stg, tgt));
        vols.push(v);
    }

    // Writers keep going while the group snapshot is taken.
    let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let w = {
        let (d, s, n) = (
            devs.iter().map(|(_, t)| t.clone()).collect(),
            stop.clone(),
            done.clone(),
        );
        std::thread::spawn(move || lockstep(d, s, n))
    };
    while done.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refs: Vec<&Volume> = vols.iter().collect();
    let gs = group_snapshot(&mut g, "app-consistent", &refs)
        .await
        .expect("CreateVolumeGroupSnapshot");
    let during = done.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    assert!(
        done.load(Ordering::SeqCst) > during,
        "the writers kept writing through the snapshot"
    );
    assert!(gs.ready_to_use);
    assert_eq!(gs.snapshots.len(), 3);
    for s in &gs.snapshots {
        assert_eq!(s.group_snapshot_id, gs.group_snapshot_id);
        assert!(s.ready_to_use);
    }

    // Idempotent; Get returns the same; members are ordinary snapshots to list.
    let again = group_snapshot(&mut g, "app-consistent", &refs).await.unwrap();
    assert_eq!(again, gs);
    let got = g
        .get_volume_group_snapshot(GetVolumeGroupSnapshotRequest {
            group_snapshot_id: gs.group_snapshot_id.clone(),
            secrets: secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(got, gs);
    let listed = c
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let (snaps, groups) = snapshots_and_groups(&pool);
    assert_eq!(
        (snaps, groups),
        (vec![], vec![]),
        "no RBD group nor source snapshot is left"
    );

    // Every member restores as a normal snapshot: its data, and one cut across all three.
    let mut restored = vec![];
    let mut seqs = vec![0u64; 3];
    for s in &gs.snapshots {
        let k = vols.iter().position(|v| v.volume_id == s.source_volume_id).unwrap();
        let r = create(
            &mut c,
            &format!("pvc-restore-{k}"),
            &pool,
            64 * MIB,
            cap.clone(),
            from_snapshot(&s.snapshot_id),
        )
        .await;
        publish_to(&mut c, &r, NODE, cap.clone()).await;
        let (stg, tgt) = (
            drv.dir.join(format!("stg-r{k}")),
            drv.dir.join(format!("pods/r{k}/dev")),
        );
        stage(&mut n, &r, &stg, cap.clone()).await;
        publish(&mut n, &r, &stg, &tgt, cap.clone(), false).await;
        assert_eq!(read_sha(&tgt, DATA_AT, DATA), sums[k], "member {k} restores its data");
        seqs[k] = seq(&tgt);
        unpublish(&mut n, &r, &tgt).await;
        unstage(&mut n, &r, &stg).await;
        restored.push(r);
    }
    eprintln!("restored sequence numbers: {seqs:?} (writers were at {during} when the call returned)");
    assert!(seqs[0] >= 1, "{seqs:?}");
    assert!(
        seqs[0] >= seqs[1] && seqs[1] >= seqs[2] && seqs[2] + 1 >= seqs[0],
        "not one point in time across the volumes: {seqs:?}"
    );

    // Bad input and unknown ids.
    let e = g.create_volume_group_snapshot(CreateVolumeGroupSnapshotRequest {
        name: "x".into(),
        secrets: secrets(),
        ..Default::default()
    });
    assert_eq!(e.await.unwrap_err().code(), Code::InvalidArgument);
    let e = group_snapshot(&mut g, "", &refs).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = group_snapshot(&mut g, "app-consistent", &refs[..2]).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let bogus = Volume {
        volume_id: format!("strake:vol:{}:{}", pool.name, uuid::Uuid::new_v4()),
        ..Default::default()
    };
    let e = group_snapshot(&mut g, "other", &[refs[0], &bogus]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = group_snapshot(&mut g, "twice", &[refs[0], refs[0]]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = g
        .get_volume_group_snapshot(GetVolumeGroupSnapshotRequest {
            group_snapshot_id: format!("strake:gsnap:{}:{}", pool.name, uuid::Uuid::new_v4()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: gs.snapshots[0].snapshot_id.clone(),
            secrets: secrets(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "a member goes only with its group: {e:?}"
    );
    delete_group_snapshot(&mut g, &format!("strake:gsnap:{}:{}", pool.name, uuid::Uuid::new_v4())).await;
    delete_group_snapshot(&mut g, "not-ours").await;

    for (v, (stg, tgt)) in vols.iter().zip(&devs) {
        unpublish(&mut n, v, tgt).await;
        unstage(&mut n, v, stg).await;
    }
    for _ in 0..2 {
        delete_group_snapshot(&mut g, &gs.group_snapshot_id).await;
    }
    for v in vols.iter().chain(&restored) {
        delete(&mut c, &v.volume_id).await;
    }
    pool.assert_empty();
    assert_eq!(snapshots_and_groups(&pool), (vec![], vec![]));
    assert_node_clean(&drv.dir);
}
