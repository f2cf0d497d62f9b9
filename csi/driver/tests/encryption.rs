//! Encryption at rest: an encrypted volume's whole life (create, stage, write 100 MiB,
//! snapshot, restore, expand, unstage) through fuse-loop (strake-rbd-fuse loads librbd's
//! LUKS2): the header is LUKS2 as cryptsetup reads it, the raw images hold none of the
//! plaintext, and neither the passphrase nor the key-encryption key appears in the
//! driver's log or state dir.
mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use strake_csi::csi::*;
use strake_csi::kms::{Kms, SecretKms};
use tonic::Code;

const KEK: &str = "strake-test-key-encryption-key-0123456789";
const PATTERN: &[u8; 32] = b"STRAKE-PLAINTEXT-PATTERN-0xC0FFE";

fn enc_secrets() -> HashMap<String, String> {
    let mut s = secrets();
    s.insert(strake_csi::kms::SECRET_KEY.into(), KEK.into());
    s
}

/// Every byte of the raw image (no encryption loaded): what RADOS stores.
fn raw(pool: &TestPool, image: &str) -> Vec<u8> {
    let img = pool.io().open_read_only(image).unwrap();
    let mut buf = vec![0u8; img.size().unwrap() as usize];
    let mut off = 0;
    while off < buf.len() {
        let n = (buf.len() - off).min(4 << 20);
        assert_eq!(img.read_at(off as u64, &mut buf[off..off + n]).unwrap(), n);
        off += n;
    }
    buf
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Writes `len` bytes of PATTERN to `dev`, fsyncs, returns the sha256.
fn write_pattern(dev: &std::path::Path, len: u64) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    let chunk: Vec<u8> = PATTERN.iter().copied().cycle().take(MIB as usize).collect();
    let mut h = Sha256::new();
    for _ in 0..len / MIB {
        f.write_all(&chunk).unwrap();
        h.update(&chunk);
    }
    f.sync_all().unwrap();
    format!("{:x}", h.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_volume_lives_its_whole_life_without_plaintext_or_passphrase_at_rest() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("enc");
    let drv = Driver::start(DriverOpts {
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let _cleanup = CleanupOnDrop(drv.dir.clone());
    let (mut c, mut n) = (drv.controller().await, drv.node().await);
    let cap = block_cap();
    let mut params = pool.params();
    params.insert("encrypted".into(), "true".into());
    let req = |name: &str, source: Option<volume_content_source::Type>| CreateVolumeRequest {
        name: name.into(),
        capacity_range: range(256 * MIB),
        volume_capabilities: vec![cap.clone()],
        parameters: params.clone(),
        secrets: enc_secrets(),
        volume_content_source: source.map(|t| VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    };

    // Without the key-encryption key in the Secret: refused, nothing made.
    let mut no_kek = req("pvc-enc", None);
    no_kek.secrets = secrets();
    let e = c.create_volume(no_kek).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("encryptionPassphrase"), "{}", e.message());
    assert!(pool.images().is_empty());

    let v = c
        .create_volume(req("pvc-enc", None))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        v.capacity_bytes,
        256 * MIB as i64,
        "the volume holds what was asked, the header aside"
    );
    assert_eq!(v.volume_context["encrypted"], "true");
    let again = c
        .create_volume(req("pvc-enc", None))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);

    // The header is LUKS2 as cryptsetup reads it (reading a header needs no dm-crypt).
    let hdr = drv.dir.join("header");
    std::fs::write(&hdr, &raw(&pool, &image_name(&v))[..32 * MIB as usize]).unwrap();
    let dump = Command::new("cryptsetup").arg("luksDump").arg(&hdr).output().unwrap();
    let dump_text = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(dump_text.contains("Version:") && dump_text.contains('2'), "{dump_text}");
    assert!(dump_text.contains("aes-xts-plain64"), "{dump_text}");
    // Our header's keyslot uses PBKDF2 (a 256-bit random passphrase needs no slow KDF;
    // see csi/driver/src/luks.rs), the payload where librbd puts it.
    assert!(dump_text.contains("PBKDF:      pbkdf2"), "{dump_text}");
    assert!(dump_text.contains("offset: 16777216 [bytes]"), "{dump_text}");
    std::fs::remove_file(&hdr).unwrap();

    // Stage, write 100 MiB of a recognisable plaintext, snapshot, restore, expand.
    publish_to(&mut c, &v, NODE, cap.clone()).await;
    let stage_enc = |n: &mut strake_csi::csi::node_client::NodeClient<_>, v: &Volume, stg: &std::path::Path| {
        let mut n = n.clone();
        let r = NodeStageVolumeRequest {
            volume_id: v.volume_id.clone(),
            staging_target_path: stg.to_string_lossy().into(),
            volume_capability: Some(cap.clone()),
            secrets: enc_secrets(),
            volume_context: v.volume_context.clone(),
            ..Default::default()
        };
        async move { n.node_stage_volume(r).await }
    };
    let (stg, tgt) = (drv.dir.join("stg"), drv.dir.join("pods/e/dev"));
    let e = stage_enc(&mut n, &v, &stg).await;
    assert!(e.is_ok(), "NodeStageVolume of the encrypted volume: {e:?}");
    publish(&mut n, &v, &stg, &tgt, cap.clone(), false).await;
    assert_eq!(strake_csi::mount::device_size(&tgt).unwrap(), 256 * MIB);
    let sum = write_pattern(&tgt, 100 * MIB);

    let mut snap_req = CreateSnapshotRequest {
        source_volume_id: v.volume_id.clone(),
        name: "snap-enc".into(),
        secrets: enc_secrets(),
        ..Default::default()
    };
    let s = c
        .create_snapshot(snap_req.clone())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    snap_req.secrets = secrets();
    let r = c
        .create_volume(req("pvc-enc-restore", from_snapshot(&s.snapshot_id)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(r.volume_context["encrypted"], "true");
    publish_to(&mut c, &r, NODE, cap.clone()).await;
    let (stg2, tgt2) = (drv.dir.join("stg2"), drv.dir.join("pods/r/dev"));
    stage_enc(&mut n, &r, &stg2)
        .await
        .expect("NodeStageVolume of the restore");
    publish(&mut n, &r, &stg2, &tgt2, cap.clone(), false).await;
    assert_eq!(
        read_sha(&tgt2, 0, 100 * MIB),
        sum,
        "the restore decrypts to the same data"
    );

    let grown = c
        .controller_expand_volume(ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: range(384 * MIB),
            secrets: enc_secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 384 * MIB as i64);
    n.node_expand_volume(NodeExpandVolumeRequest {
        volume_id: v.volume_id.clone(),
        volume_path: tgt.to_string_lossy().into(),
        staging_target_path: stg.to_string_lossy().into(),
        volume_capability: Some(cap.clone()),
        capacity_range: range(384 * MIB),
        ..Default::default()
    })
    .await
    .expect("NodeExpandVolume of the encrypted volume");
    assert_eq!(
        strake_csi::mount::device_size(&tgt).unwrap(),
        384 * MIB,
        "the decrypted device grew"
    );
    assert_eq!(read_sha(&tgt, 0, 100 * MIB), sum);

    for (vol, t, st) in [(&v, &tgt, &stg), (&r, &tgt2, &stg2)] {
        unpublish(&mut n, vol, t).await;
        unstage(&mut n, vol, st).await;
    }

    // At rest: no plaintext in any raw image, and the key only wrapped.
    let images: Vec<String> = pool.images().into_iter().filter(|i| !i.starts_with("trash:")).collect();
    assert_eq!(images.len(), 3, "{images:?}");
    for i in &images {
        assert!(!contains(&raw(&pool, i), PATTERN), "{i} holds plaintext");
    }
    let kms = SecretKms::from_secrets(&enc_secrets(), "test", "node-stage").unwrap();
    let uuid = strake_csi::ids::VolumeId::parse(&v.volume_id).unwrap().uuid;
    let passphrase = kms
        .fetch(&pool.io().open_read_only(&image_name(&v)).unwrap(), &uuid)
        .unwrap();
    let pass = String::from_utf8(passphrase.bytes().to_vec()).unwrap();
    // librbd itself loads the header with that passphrase (what strake-rbd-fuse did
    // above), and with no other. Read-only handles: no watch left on the image.
    {
        let load = |p: &[u8]| {
            let img = pool.io().open_read_only(&image_name(&v)).unwrap();
            let raw_size = img.size().unwrap();
            img.encryption_load(&strake_ceph::Encryption::new(
                strake_ceph::EncryptionFormat::Luks2,
                p.to_vec(),
            ))
            .map(|_| (raw_size, img.size().unwrap()))
        };
        assert!(
            load(b"not-the-passphrase").is_err(),
            "librbd opened the header with a wrong passphrase"
        );
        let (raw_size, payload) = load(passphrase.bytes()).expect("librbd loads the header CreateVolume wrote");
        assert_eq!(payload, raw_size - 16 * MIB, "librbd sees the payload after the header");
        assert_eq!(payload, 384 * MIB);
    }
    let log = drv.log_text();
    assert!(
        !log.contains(&pass) && !log.contains(KEK),
        "the passphrase or the KEK reached the log"
    );
    let grep = Command::new("grep")
        .args(["-rlaF", "-e", &pass, "-e", KEK])
        .arg(&drv.state_dir)
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "found in the state dir: {}",
        String::from_utf8_lossy(&grep.stdout)
    );

    delete(&mut c, &r.volume_id).await;
    c.delete_snapshot(DeleteSnapshotRequest {
        snapshot_id: s.snapshot_id.clone(),
        secrets: secrets(),
    })
    .await
    .unwrap();
    delete(&mut c, &v.volume_id).await;
    pool.assert_empty();
    assert_node_clean(&drv.dir);
}
