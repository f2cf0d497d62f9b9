//! VolumeAttributesClass: QoS limits set on a live volume take effect in the running
//! attachment (fio through the fuse-loop path, limited vs unlimited in the same run),
//! are what `rbd config image list` shows, and bad parameters are refused.
mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use strake_csi::csi::*;
use tonic::Code;

/// `rbd config image list` for the image: option → (value, source).
fn rbd_config(pool: &TestPool, image: &str) -> HashMap<String, (String, String)> {
    let out = Command::new("rbd")
        .args(["config", "image", "list", "--format", "json", "-c"])
        .arg(conf())
        .arg(format!("{}/{image}", pool.name))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .into_iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                (
                    o["value"].as_str().unwrap_or_default().to_string(),
                    o["source"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

/// 4 KiB random writes, O_DIRECT, queue depth 16, for `secs`: IOPS.
fn fio_iops(dev: &std::path::Path, secs: u32) -> f64 {
    let out = Command::new("fio")
        .args([
            "--name=qos",
            "--rw=randwrite",
            "--bs=4k",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--size=32m",
            "--time_based",
            &format!("--runtime={secs}"),
            "--output-format=json",
        ])
        .arg(format!("--filename={}", dev.display()))
        .output()
        .expect("running fio");
    assert!(out.status.success(), "fio: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["jobs"][0]["write"]["iops"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_volume_sets_qos_on_a_live_volume_and_fio_sees_the_limit() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("qos");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let _cleanup = CleanupOnDrop(drv.dir.clone());
    let (mut c, mut n) = (drv.controller().await, drv.node().await);
    let cap = block_cap();
    let modify = |c: &mut strake_csi::csi::controller_client::ControllerClient<_>, id: &str, kv: &[(&str, &str)]| {
        let mut c = c.clone();
        let req = ControllerModifyVolumeRequest {
            volume_id: id.into(),
            secrets: secrets(),
            mutable_parameters: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        async move { c.controller_modify_volume(req).await }
    };

    // CreateVolume honours mutable_parameters.
    let v = c
        .create_volume(CreateVolumeRequest {
            name: "pvc-qos".into(),
            capacity_range: range(128 * MIB),
            volume_capabilities: vec![cap.clone()],
            parameters: pool.params(),
            secrets: secrets(),
            mutable_parameters: HashMap::from([("rbd_qos_bps_limit".to_string(), "209715200".to_string())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let img = image_name(&v);
    assert_eq!(
        rbd_config(&pool, &img)["rbd_qos_bps_limit"],
        ("209715200".to_string(), "image".to_string())
    );

    // Attached and written to, unlimited IOPS.
    publish_to(&mut c, &v, NODE, cap.clone()).await;
    let (stg, tgt) = (drv.dir.join("stg"), drv.dir.join("pods/q/dev"));
    stage(&mut n, &v, &stg, cap.clone()).await;
    publish(&mut n, &v, &stg, &tgt, cap.clone(), false).await;
    let free = fio_iops(&tgt, 5);

    // A limit well under what the volume does, set while it is attached.
    let limit = 100u64;
    modify(&mut c, &v.volume_id, &[("rbd_qos_iops_limit", &limit.to_string())])
        .await
        .expect("ControllerModifyVolume");
    modify(&mut c, &v.volume_id, &[("rbd_qos_iops_limit", &limit.to_string())])
        .await
        .expect("ControllerModifyVolume is idempotent");
    assert_eq!(
        rbd_config(&pool, &img)["rbd_qos_iops_limit"],
        (limit.to_string(), "image".to_string())
    );
    let limited = fio_iops(&tgt, 5);
    eprintln!(
        "4k randwrite qd16: unlimited {free:.0} IOPS, limited to {limit}: {limited:.0} IOPS ({:.2}x)",
        limited / free
    );
    assert!(
        free > 3.0 * limit as f64,
        "the unlimited run ({free:.0} IOPS) must be well above the limit to show anything"
    );
    assert!(
        limited < 1.5 * limit as f64 && limited < 0.5 * free,
        "the limit of {limit} IOPS did not take effect on the live volume: {limited:.0} IOPS (unlimited {free:.0})"
    );

    // 0 lifts it: the override is gone from the image's config.
    modify(
        &mut c,
        &v.volume_id,
        &[("rbd_qos_iops_limit", "0"), ("rbd_qos_bps_limit", "0")],
    )
    .await
    .unwrap();
    let cfg = rbd_config(&pool, &img);
    assert_ne!(cfg["rbd_qos_iops_limit"].1, "image", "{:?}", cfg["rbd_qos_iops_limit"]);
    assert_ne!(cfg["rbd_qos_bps_limit"].1, "image");

    // Bad input: unknown keys, values that are not numbers, unknown volumes.
    let e = modify(&mut c, &v.volume_id, &[("rbd_cache", "false")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("rbd_qos_iops_limit"), "{}", e.message());
    let e = modify(&mut c, &v.volume_id, &[("rbd_qos_iops_limit", "fast")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = modify(
        &mut c,
        &format!("strake:vol:{}:{}", pool.name, uuid::Uuid::new_v4()),
        &[("rbd_qos_iops_limit", "10")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = modify(&mut c, "", &[("rbd_qos_iops_limit", "10")]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .create_volume(CreateVolumeRequest {
            name: "pvc-qos-bad".into(),
            capacity_range: range(64 * MIB),
            volume_capabilities: vec![cap.clone()],
            parameters: pool.params(),
            secrets: secrets(),
            mutable_parameters: HashMap::from([("qos".to_string(), "1".to_string())]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    unpublish(&mut n, &v, &tgt).await;
    unstage(&mut n, &v, &stg).await;
    delete(&mut c, &v.volume_id).await;
    pool.assert_empty();
    assert_node_clean(&drv.dir);
}
