//! The RPC contract: idempotency of every RPC, concurrency on one name, the CSI error
//! codes for bad input (with messages that say what to fix), listing and pagination,
//! capabilities, and secrets never reaching the logs.
mod common;

use std::collections::HashMap;

use common::*;
use strake_csi::csi::volume_capability::access_mode::Mode;
use strake_csi::csi::volume_capability::AccessMode;
use strake_csi::csi::*;
use tonic::Code;

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let e = r.expect_err(&format!("expected {code:?}"));
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(needle),
        "message {:?} should mention {needle:?}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_idempotent_and_ten_concurrent_creates_make_one_image() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("idem");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let mut c = drv.controller().await;
    let mut n = drv.node().await;

    // 10 concurrent CreateVolume calls with one name → one image, one answer.
    let mut tasks = vec![];
    for _ in 0..10 {
        let mut c = drv.controller().await;
        let p = pool.params();
        tasks.push(tokio::spawn(async move {
            c.create_volume(CreateVolumeRequest {
                name: "pvc-concurrent".into(),
                capacity_range: range(64 * MIB),
                volume_capabilities: vec![mount_cap("ext4")],
                parameters: p,
                secrets: secrets(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().volume.unwrap().volume_id)
        }));
    }
    let mut ids = vec![];
    for t in tasks {
        ids.push(t.await.unwrap().expect("every concurrent CreateVolume succeeds"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "concurrent creates returned different volumes: {ids:?}");
    assert_eq!(pool.images().len(), 1, "{:?}", pool.images());

    // Two driver processes (two controller replicas) racing for one new name: the
    // in-process lock cannot help, the OSD-side compare-and-set must.
    // Both processes pause between reading the journal and reserving, so both see the
    // name free: only the compare-and-set can keep them from making two images.
    let delay = || vec![("STRAKE_CSI_DELAY".to_string(), "create:before-reserve=500".to_string())];
    let drv_a = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        extra_env: delay(),
        ..Default::default()
    });
    let other_drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        extra_env: delay(),
        ..Default::default()
    });
    let mut tasks = vec![];
    for i in 0..10 {
        let mut c = if i % 2 == 0 {
            drv_a.controller().await
        } else {
            other_drv.controller().await
        };
        let p = pool.params();
        tasks.push(tokio::spawn(async move {
            c.create_volume(CreateVolumeRequest {
                name: "pvc-two-processes".into(),
                capacity_range: range(64 * MIB),
                volume_capabilities: vec![block_cap()],
                parameters: p,
                secrets: secrets(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().volume.unwrap().volume_id)
        }));
    }
    let mut two = vec![];
    for t in tasks {
        two.push(t.await.unwrap().expect("CreateVolume across two processes succeeds"));
    }
    two.sort();
    two.dedup();
    assert_eq!(
        two.len(),
        1,
        "two processes created different volumes for one name: {two:?}"
    );
    assert_eq!(pool.images().len(), 2, "{:?}", pool.images());
    delete(&mut c, &two[0]).await;
    drop(other_drv);
    drop(drv_a);

    // Same name, same arguments → same volume; same name, incompatible size → ALREADY_EXISTS.
    let v = create(&mut c, "pvc-concurrent", &pool, 64 * MIB, mount_cap("ext4"), None).await;
    assert_eq!(v.volume_id, ids[0]);
    let r = c
        .create_volume(CreateVolumeRequest {
            name: "pvc-concurrent".into(),
            capacity_range: range(GIB),
            volume_capabilities: vec![mount_cap("ext4")],
            parameters: pool.params(),
            secrets: secrets(),
            ..Default::default()
        })
        .await;
    assert_code(r, Code::AlreadyExists, "outside the requested capacity range");

    // Snapshots: repeat → same id; same name, other source → ALREADY_EXISTS.
    let s1 = snapshot(&mut c, "snap-idem", &v.volume_id).await;
    let s2 = snapshot(&mut c, "snap-idem", &v.volume_id).await;
    assert_eq!(
        (s1.snapshot_id.clone(), s1.creation_time),
        (s2.snapshot_id.clone(), s2.creation_time)
    );
    let other = create(&mut c, "pvc-other", &pool, 64 * MIB, mount_cap("ext4"), None).await;
    let r = c
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: other.volume_id.clone(),
            name: "snap-idem".into(),
            secrets: secrets(),
            ..Default::default()
        })
        .await;
    assert_code(r, Code::AlreadyExists, "different source");

    // Node RPCs twice each.
    let d = drv.dir.clone();
    let (stg, tgt) = (d.join("stg"), d.join("tgt"));
    for _ in 0..2 {
        publish_to(&mut c, &v, NODE, mount_cap("ext4")).await;
    }
    for _ in 0..2 {
        stage(&mut n, &v, &stg, mount_cap("ext4")).await;
    }
    for _ in 0..2 {
        publish(&mut n, &v, &stg, &tgt, mount_cap("ext4"), false).await;
    }
    // Deleting a volume that a node still has attached is refused, and says why.
    let e = c
        .delete_volume(DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            secrets: secrets(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("published to test-node") && e.message().contains("ControllerUnpublishVolume"),
        "{}",
        e.message()
    );
    assert!(
        pool.journal_keys()
            .iter()
            .any(|k| k.starts_with("vol.name.pvc-concurrent")),
        "a refused delete must keep the record"
    );
    let m = drv.metrics_text();
    assert!(
        m.contains(r#"strake_csi_attached_volumes{attacher="fuse-loop"} 1"#),
        "{m}"
    );
    for _ in 0..2 {
        unpublish(&mut n, &v, &tgt).await;
    }
    for _ in 0..2 {
        unstage(&mut n, &v, &stg).await;
    }
    // Expansion twice → same size.
    for _ in 0..2 {
        let r = c
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: v.volume_id.clone(),
                capacity_range: range(128 * MIB),
                secrets: secrets(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, 128 * MIB as i64);
    }
    // Deletes twice each; unknown ids succeed.
    for _ in 0..2 {
        delete_snapshot(&mut c, &s1.snapshot_id).await;
        delete(&mut c, &v.volume_id).await;
        delete(&mut c, &other.volume_id).await;
    }
    delete(&mut c, &format!("strake:vol:{}:{}", pool.name, uuid::Uuid::new_v4())).await;
    delete(&mut c, "strake:vol:no-such-pool:00000000-0000-0000-0000-000000000000").await;
    delete(&mut c, "some-other-drivers-id").await;
    delete_snapshot(&mut c, &format!("strake:snap:{}:{}", pool.name, uuid::Uuid::new_v4())).await;
    pool.assert_empty();
    assert_node_clean(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_csi_codes_and_secrets_never_reach_the_logs() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("bad");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let mut c = drv.controller().await;
    let mut n = drv.node().await;
    let ok = || CreateVolumeRequest {
        name: "pvc-bad".into(),
        capacity_range: range(64 * MIB),
        volume_capabilities: vec![mount_cap("ext4")],
        parameters: pool.params(),
        secrets: secrets(),
        ..Default::default()
    };
    assert_code(
        c.create_volume(CreateVolumeRequest {
            name: "".into(),
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "name is required",
    );
    assert_code(
        c.create_volume(CreateVolumeRequest {
            volume_capabilities: vec![],
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "volume_capabilities is required",
    );
    let mut rwx = mount_cap("ext4");
    rwx.access_mode = Some(AccessMode {
        mode: Mode::MultiNodeMultiWriter as i32,
    });
    assert_code(
        c.create_volume(CreateVolumeRequest {
            volume_capabilities: vec![rwx.clone()],
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "MULTI_NODE_MULTI_WRITER",
    );
    assert_code(
        c.create_volume(CreateVolumeRequest {
            volume_capabilities: vec![mount_cap("btrfs")],
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "btrfs",
    );
    assert_code(
        c.create_volume(CreateVolumeRequest {
            capacity_range: Some(CapacityRange {
                required_bytes: 0,
                limit_bytes: 0,
            }),
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "neither required_bytes nor limit_bytes",
    );
    assert_code(
        c.create_volume(CreateVolumeRequest {
            capacity_range: range(1 << 60),
            ..ok()
        })
        .await,
        Code::OutOfRange,
        "--max-volume-size",
    );
    assert_code(
        c.create_volume(CreateVolumeRequest {
            parameters: HashMap::new(),
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "\"pool\" is required",
    );
    let mut typo = pool.params();
    typo.insert("imageFeature".into(), "layering".into());
    assert_code(
        c.create_volume(CreateVolumeRequest {
            parameters: typo,
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "imageFeature",
    );
    let nopool = HashMap::from([("pool".to_string(), "no-such-pool".to_string())]);
    assert_code(
        c.create_volume(CreateVolumeRequest {
            parameters: nopool,
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "does not exist",
    );
    assert_code(
        c.create_volume(CreateVolumeRequest {
            secrets: HashMap::new(),
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "userID and userKey",
    );
    let mut wrong = secrets();
    // A well-formed key that is not this user's.
    wrong.insert("userKey".into(), "AQCcLyJpAAAAABAAx5cJ0nB3E5W7bBAi8v3vvQ==".into());
    assert_code(
        c.create_volume(CreateVolumeRequest {
            secrets: wrong.clone(),
            ..ok()
        })
        .await,
        Code::PermissionDenied,
        "userKey",
    );
    let mut unknown_user = secrets();
    unknown_user.insert("userID".into(), "nobody".into());
    assert_code(
        c.create_volume(CreateVolumeRequest {
            secrets: unknown_user,
            ..ok()
        })
        .await,
        Code::PermissionDenied,
        "client.nobody",
    );
    // Identifiers from a Secret or a request reach keyrings, helpers' command lines and
    // CEPH_ARGS: what Ceph would not accept is refused before anything runs.
    let mut injected = secrets();
    injected.insert(
        "userID".into(),
        "admin --keyring /etc/ceph/ceph.client.admin.keyring".into(),
    );
    assert_code(
        c.create_volume(CreateVolumeRequest {
            secrets: injected,
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "userID",
    );
    let mut key_lines = secrets();
    key_lines.insert(
        "userKey".into(),
        format!("{}\n[client.admin]\n\tkey = x", secrets()["userKey"]),
    );
    let e = c
        .create_volume(CreateVolumeRequest {
            secrets: key_lines,
            ..ok()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("base64") && !e.message().contains(&secrets()["userKey"]),
        "{}",
        e.message()
    );
    for (k, v) in [("pool", "-p"), ("pool", "rbd/x"), ("dataPool", "ec pool")] {
        let mut p = pool.params();
        p.insert(k.into(), v.into());
        assert_code(
            c.create_volume(CreateVolumeRequest { parameters: p, ..ok() }).await,
            Code::InvalidArgument,
            k,
        );
    }
    let mut flags = mount_cap("ext4");
    if let Some(volume_capability::AccessType::Mount(m)) = &mut flags.access_type {
        m.mount_flags = vec!["noatime,exec".into()];
    }
    assert_code(
        c.create_volume(CreateVolumeRequest {
            volume_capabilities: vec![flags],
            ..ok()
        })
        .await,
        Code::InvalidArgument,
        "mount flag",
    );
    let src = |t| Some(VolumeContentSource { r#type: Some(t) });
    assert_code(
        c.create_volume(CreateVolumeRequest {
            volume_content_source: src(
                from_snapshot(&format!("strake:snap:{}:{}", pool.name, uuid::Uuid::new_v4())).unwrap(),
            ),
            ..ok()
        })
        .await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        c.create_volume(CreateVolumeRequest {
            volume_content_source: src(from_volume("bogus").unwrap()),
            ..ok()
        })
        .await,
        Code::NotFound,
        "does not exist",
    );
    assert_eq!(
        pool.images(),
        Vec::<String>::new(),
        "no bad request may create anything"
    );

    // Snapshot and expansion errors.
    assert_code(
        c.create_snapshot(CreateSnapshotRequest {
            source_volume_id: "".into(),
            name: "s".into(),
            secrets: secrets(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "source_volume_id",
    );
    assert_code(
        c.create_snapshot(CreateSnapshotRequest {
            source_volume_id: "x".into(),
            name: "".into(),
            secrets: secrets(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "name",
    );
    assert_code(
        c.create_snapshot(CreateSnapshotRequest {
            source_volume_id: format!("strake:vol:{}:{}", pool.name, uuid::Uuid::new_v4()),
            name: "s".into(),
            secrets: secrets(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        c.controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: format!("strake:vol:{}:{}", pool.name, uuid::Uuid::new_v4()),
            capacity_range: range(GIB),
            secrets: secrets(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        c.controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: "x".into(),
            capacity_range: None,
            secrets: secrets(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "capacity_range",
    );
    assert_code(
        c.delete_volume(DeleteVolumeRequest {
            volume_id: "".into(),
            secrets: secrets(),
        })
        .await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        c.delete_volume(DeleteVolumeRequest {
            volume_id: "strake:vol:rbd:00000000-0000-0000-0000-000000000000".into(),
            secrets: HashMap::new(),
        })
        .await,
        Code::InvalidArgument,
        "userKey",
    );
    assert_code(
        c.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: format!("strake:vol:{}:{}", pool.name, uuid::Uuid::new_v4()),
            volume_capabilities: vec![mount_cap("ext4")],
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        c.list_volumes(ListVolumesRequest {
            max_entries: 1,
            starting_token: "garbage".into(),
        })
        .await,
        Code::Aborted,
        "starting_token",
    );

    // Node errors.
    let v = create(&mut c, "pvc-node", &pool, 64 * MIB, mount_cap("ext4"), None).await;
    let d = drv.dir.clone();
    let v_ctx = v.volume_context.clone();
    let stage_req = |cap: Option<VolumeCapability>, secrets: HashMap<String, String>| NodeStageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: d.join("stg").to_string_lossy().into(),
        volume_capability: cap,
        secrets,
        volume_context: v.volume_context.clone(),
        ..Default::default()
    };
    assert_code(
        n.node_stage_volume(stage_req(None, secrets())).await,
        Code::InvalidArgument,
        "volume_capability",
    );
    assert_code(
        n.node_stage_volume(stage_req(Some(mount_cap("ext4")), HashMap::new()))
            .await,
        Code::InvalidArgument,
        "userID and userKey",
    );
    assert_code(
        n.node_stage_volume(stage_req(Some(mount_cap("ext4")), wrong.clone()))
            .await,
        Code::PermissionDenied,
        "userKey",
    );
    assert_code(
        n.node_stage_volume(stage_req(Some(rwx), secrets())).await,
        Code::InvalidArgument,
        "MULTI_NODE_MULTI_WRITER",
    );
    assert_code(
        n.node_stage_volume(NodeStageVolumeRequest {
            staging_target_path: "relative/stg".into(),
            ..stage_req(Some(mount_cap("ext4")), secrets())
        })
        .await,
        Code::InvalidArgument,
        "absolute",
    );
    for (k, v) in [("imageName", "--help"), ("pool", "rbd -c /tmp/evil.conf")] {
        let mut ctx = v_ctx.clone();
        ctx.insert(k.into(), v.into());
        assert_code(
            n.node_stage_volume(NodeStageVolumeRequest {
                volume_context: ctx,
                ..stage_req(Some(mount_cap("ext4")), secrets())
            })
            .await,
            Code::InvalidArgument,
            "volume_context",
        );
    }
    assert_code(
        n.node_stage_volume(NodeStageVolumeRequest {
            volume_id: format!("strake:vol:{}:{}", pool.name, uuid::Uuid::new_v4()),
            volume_context: HashMap::new(),
            ..stage_req(Some(mount_cap("ext4")), secrets())
        })
        .await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        n.node_publish_volume(NodePublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: d.join("stg").to_string_lossy().into(),
            target_path: d.join("t").to_string_lossy().into(),
            volume_capability: Some(mount_cap("ext4")),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "NodeStageVolume first",
    );
    assert_code(
        n.node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: "/nonexistent/x".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        n.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: "".into(),
            target_path: "/x".into(),
        })
        .await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        n.node_expand_volume(NodeExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            volume_path: "/x".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "not staged",
    );

    // Listing: pagination over more volumes than a page.
    for i in 0..4 {
        create(&mut c, &format!("pvc-list-{i}"), &pool, 8 * MIB, block_cap(), None).await;
    }
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let r = c
            .list_volumes(ListVolumesRequest {
                max_entries: 2,
                starting_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 2);
        seen.extend(r.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
    }
    let mut uniq = seen.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(
        (seen.len(), uniq.len()),
        (5, 5),
        "ListVolumes pages must cover every volume once: {seen:?}"
    );
    let cap = c
        .get_capacity(GetCapacityRequest {
            parameters: pool.params(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > GIB as i64, "{cap:?}");
    let ok_caps = c
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![block_cap()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok_caps.confirmed.is_some());
    let bad_caps = c
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![mount_cap("zfs")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(bad_caps.confirmed.is_none() && bad_caps.message.contains("zfs"));
    let id = drv
        .identity()
        .await
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(id.name, "rbd.csi.strake.io");

    for e in c
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
    {
        delete(&mut c, &e.volume.unwrap().volume_id).await;
    }
    pool.assert_empty();

    // The key was sent in ~20 requests (valid and wrong); the debug-level log must hold neither.
    let log = drv.log_text();
    assert!(
        log.len() > 1000 && log.contains("CreateVolume"),
        "the log is suspiciously empty"
    );
    let key = &secrets()["userKey"];
    assert!(!log.contains(key.as_str()), "the cephx key leaked into the logs");
    assert!(!log.contains(&wrong["userKey"]), "a wrong key leaked into the logs");
    // Nor is it left on the node's disk.
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", key.as_str()])
        .arg(&drv.dir)
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "key found in files: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

/// csi-sanity-style checks of the RPCs issue 13 added: ControllerPublish/Unpublish,
/// ControllerModifyVolume and the GroupController. Each is idempotent, bad input gets
/// INVALID_ARGUMENT naming the field, unknown ids NOT_FOUND (or success for the
/// deletes and unpublishes, as the spec asks), and a conflicting repeat ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_modify_and_group_snapshot_rpcs_follow_the_csi_contract() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("api-new");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let mut c = drv.controller().await;
    let mut g = drv.group().await;
    let unknown = |id: &str| {
        let (head, _) = id.rsplit_once(':').unwrap();
        format!("{head}:{}", uuid::Uuid::new_v4())
    };

    // Capabilities say what is offered.
    let caps: Vec<i32> = c
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(controller_service_capability::Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    use controller_service_capability::rpc::Type as Cap;
    for want in [
        Cap::PublishUnpublishVolume,
        Cap::PublishReadonly,
        Cap::ListVolumesPublishedNodes,
        Cap::ModifyVolume,
    ] {
        assert!(caps.contains(&(want as i32)), "{want:?} missing from {caps:?}");
    }
    let gcaps = g
        .group_controller_get_capabilities(GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert_eq!(gcaps.len(), 1, "{gcaps:?}");
    assert_eq!(
        gcaps[0].r#type,
        Some(group_controller_service_capability::Type::Rpc(
            group_controller_service_capability::Rpc {
                r#type: group_controller_service_capability::rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32,
            }
        ))
    );

    let cap = block_cap();
    let v1 = create(&mut c, "pvc-api-1", &pool, 64 * MIB, cap.clone(), None).await;
    let v2 = create(&mut c, "pvc-api-2", &pool, 64 * MIB, cap.clone(), None).await;

    // ControllerPublishVolume.
    let pubreq = |id: &str, node: &str, cap: Option<VolumeCapability>, readonly: bool| ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: cap,
        readonly,
        secrets: secrets(),
        ..Default::default()
    };
    let first = c
        .controller_publish_volume(pubreq(&v1.volume_id, "node-a", Some(cap.clone()), false))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .controller_publish_volume(pubreq(&v1.volume_id, "node-a", Some(cap.clone()), false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.publish_context, again.publish_context,
        "a repeated publish answers the same"
    );
    assert_eq!(first.publish_context["strake.csi/node"], "node-a");
    assert_code(
        c.controller_publish_volume(pubreq(&v1.volume_id, "node-a", Some(cap.clone()), true))
            .await,
        Code::AlreadyExists,
        "another capability",
    );
    assert_code(
        c.controller_publish_volume(pubreq("", "node-a", Some(cap.clone()), false))
            .await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        c.controller_publish_volume(pubreq(&v1.volume_id, "", Some(cap.clone()), false))
            .await,
        Code::InvalidArgument,
        "node_id",
    );
    // A node id becomes a journal key and appears in messages: no shell or key syntax.
    assert_code(
        c.controller_publish_volume(pubreq(&v1.volume_id, "node-a;rm -rf /", Some(cap.clone()), false))
            .await,
        Code::InvalidArgument,
        "not a node name",
    );
    assert_code(
        c.controller_publish_volume(pubreq(&v1.volume_id, "node-a", None, false))
            .await,
        Code::InvalidArgument,
        "volume_capability",
    );
    assert_code(
        c.controller_publish_volume(pubreq(&unknown(&v1.volume_id), "node-a", Some(cap.clone()), false))
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        c.controller_publish_volume(pubreq("no-such-volume", "node-a", Some(cap.clone()), false))
            .await,
        Code::NotFound,
        "does not exist",
    );
    let mut no_secrets = pubreq(&v1.volume_id, "node-a", Some(cap.clone()), false);
    no_secrets.secrets.clear();
    assert_code(
        c.controller_publish_volume(no_secrets).await,
        Code::InvalidArgument,
        "controller-publish",
    );
    // ControllerUnpublishVolume: idempotent, and success for what is not published.
    let unpub = |id: &str, node: &str| ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        secrets: secrets(),
    };
    for req in [
        unpub(&v1.volume_id, "node-a"),
        unpub(&v1.volume_id, "node-a"),
        unpub(&v1.volume_id, "node-never"),
        unpub(&unknown(&v1.volume_id), "node-a"),
        unpub("no-such-volume", "node-a"),
    ] {
        let what = format!("{req:?}");
        c.controller_unpublish_volume(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    }
    assert_code(
        c.controller_unpublish_volume(unpub("", "node-a")).await,
        Code::InvalidArgument,
        "volume_id",
    );
    // Unpublished, another node may have it.
    c.controller_publish_volume(pubreq(&v1.volume_id, "node-b", Some(cap.clone()), false))
        .await
        .expect("after the unpublish from node-a, node-b may have it");
    unpublish_from(&mut c, &v1.volume_id, "node-b").await;

    // ControllerModifyVolume.
    let modify = |id: &str, kv: &[(&str, &str)]| ControllerModifyVolumeRequest {
        volume_id: id.into(),
        secrets: secrets(),
        mutable_parameters: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    for _ in 0..2 {
        c.controller_modify_volume(modify(&v1.volume_id, &[("rbd_qos_iops_limit", "500")]))
            .await
            .expect("ModifyVolume, and the same again");
    }
    assert_code(
        c.controller_modify_volume(modify(&v1.volume_id, &[("rbd_cache", "false")]))
            .await,
        Code::InvalidArgument,
        "rbd_cache",
    );
    assert_code(
        c.controller_modify_volume(modify(&v1.volume_id, &[("rbd_qos_iops_limit", "fast")]))
            .await,
        Code::InvalidArgument,
        "rbd_qos_iops_limit",
    );
    assert_code(
        c.controller_modify_volume(modify("", &[("rbd_qos_iops_limit", "5")]))
            .await,
        Code::InvalidArgument,
        "volume_id",
    );
    assert_code(
        c.controller_modify_volume(modify(&unknown(&v1.volume_id), &[("rbd_qos_iops_limit", "5")]))
            .await,
        Code::NotFound,
        "does not exist",
    );

    // The GroupController.
    let a = group_snapshot(&mut g, "gs-api", &[&v1, &v2]).await.unwrap();
    let b = group_snapshot(&mut g, "gs-api", &[&v1, &v2]).await.unwrap();
    assert_eq!(
        a.group_snapshot_id, b.group_snapshot_id,
        "a repeated create answers the same"
    );
    let ids = |gs: &VolumeGroupSnapshot| {
        let mut v: Vec<String> = gs.snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.snapshots.len(), 2);
    assert!(a.ready_to_use);
    assert_code(
        group_snapshot(&mut g, "gs-api", &[&v1]).await,
        Code::AlreadyExists,
        "gs-api",
    );
    assert_code(group_snapshot(&mut g, "", &[&v1]).await, Code::InvalidArgument, "name");
    assert_code(
        group_snapshot(&mut g, "gs-none", &[]).await,
        Code::InvalidArgument,
        "source_volume_ids",
    );
    assert_code(
        group_snapshot(&mut g, "gs-dup", &[&v1, &v1]).await,
        Code::InvalidArgument,
        "listed twice",
    );
    let ghost = Volume {
        volume_id: unknown(&v1.volume_id),
        ..Default::default()
    };
    assert_code(
        group_snapshot(&mut g, "gs-ghost", &[&v1, &ghost]).await,
        Code::NotFound,
        "does not exist",
    );
    let mut odd = CreateVolumeGroupSnapshotRequest {
        name: "gs-param".into(),
        source_volume_ids: vec![v1.volume_id.clone()],
        secrets: secrets(),
        ..Default::default()
    };
    odd.parameters.insert("consistency".into(), "app".into());
    assert_code(
        g.create_volume_group_snapshot(odd).await,
        Code::InvalidArgument,
        "consistency",
    );
    let get = |id: &str, snaps: Vec<String>| GetVolumeGroupSnapshotRequest {
        group_snapshot_id: id.into(),
        snapshot_ids: snaps,
        secrets: secrets(),
    };
    let got = g
        .get_volume_group_snapshot(get(&a.group_snapshot_id, ids(&a)))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(got.group_snapshot_id, a.group_snapshot_id);
    assert_eq!(ids(&got), ids(&a));
    assert_code(
        g.get_volume_group_snapshot(get(&a.group_snapshot_id, vec![ids(&a)[0].clone()]))
            .await,
        Code::InvalidArgument,
        "snapshot_ids",
    );
    assert_code(
        g.get_volume_group_snapshot(get(&unknown(&a.group_snapshot_id), vec![]))
            .await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        g.get_volume_group_snapshot(get("garbage", vec![])).await,
        Code::NotFound,
        "does not exist",
    );
    assert_code(
        g.get_volume_group_snapshot(get("", vec![])).await,
        Code::InvalidArgument,
        "group_snapshot_id",
    );
    let del = |id: &str| DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: id.into(),
        secrets: secrets(),
        ..Default::default()
    };
    for id in [
        a.group_snapshot_id.clone(),
        a.group_snapshot_id.clone(),
        unknown(&a.group_snapshot_id),
        "garbage".to_string(),
    ] {
        g.delete_volume_group_snapshot(del(&id))
            .await
            .unwrap_or_else(|e| panic!("DeleteVolumeGroupSnapshot {id}: {e:?}"));
    }
    assert_code(
        g.delete_volume_group_snapshot(del("")).await,
        Code::InvalidArgument,
        "group_snapshot_id",
    );
    assert_code(
        g.get_volume_group_snapshot(get(&a.group_snapshot_id, vec![])).await,
        Code::NotFound,
        "does not exist",
    );
    // Its members went with it.
    let left = c
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(left.is_empty(), "{left:?}");

    delete(&mut c, &v1.volume_id).await;
    delete(&mut c, &v2.volume_id).await;
    pool.assert_empty();
    assert_eq!(snapshots_and_groups(&pool), (vec![], vec![]));
}
