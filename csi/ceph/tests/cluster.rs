//! Exercises the wrapper against the real dev cluster (deploy/dev/ceph-up.sh).
use std::path::PathBuf;

use strake_ceph::{features, Cluster, ConnectOptions, Credentials, ImageOptions};

fn conf() -> PathBuf {
    let p = PathBuf::from(std::env::var("CEPH_CONF").unwrap_or_else(|_| "/var/lib/strake/ceph-dev/ceph.conf".into()));
    assert!(
        p.exists(),
        "no Ceph cluster: {} does not exist. Start one with deploy/dev/ceph-up.sh (or set CEPH_CONF)",
        p.display()
    );
    p
}

fn admin() -> Cluster {
    Cluster::connect(&ConnectOptions::new(conf())).expect("connect as client.admin")
}

fn uniq(p: &str) -> String {
    format!("{p}-{}", &uuid::Uuid::new_v4().to_string()[..8])
}

#[test]
fn image_lifecycle_snapshot_protect_clone_flatten() {
    if !strake_test_support::ceph() {
        return;
    }
    let c = admin();
    let io = c.ioctx("rbd").unwrap();
    let parent = uniq("t-parent");
    let child = uniq("t-child");
    let opts = ImageOptions {
        features: Some(features::parse("layering,exclusive-lock,object-map,fast-diff,deep-flatten").unwrap()),
        ..Default::default()
    };
    io.create_image(&parent, 64 << 20, &opts).unwrap();
    assert!(io.create_image(&parent, 64 << 20, &opts).unwrap_err().is_exists());
    let img = io.open(&parent).unwrap();
    assert_eq!(img.size().unwrap(), 64 << 20);
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    img.write_at(4096, &data).unwrap();
    img.flush().unwrap();
    img.resize(128 << 20).unwrap();
    assert_eq!(img.size().unwrap(), 128 << 20);
    img.snap_create("s1").unwrap();
    assert!(img.snap_exists("s1").unwrap());
    img.snap_protect("s1").unwrap();
    assert!(img.snap_is_protected("s1").unwrap());
    // a protected snapshot cannot be removed
    assert!(img.snap_remove("s1").is_err());
    // writes after the snapshot must not show in the clone
    img.write_at(4096, &vec![0xAB; 4096]).unwrap();
    io.clone_image(
        &parent,
        "s1",
        &io,
        &child,
        &ImageOptions {
            clone_format: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let ch = io.open(&child).unwrap();
    let p = ch.parent().unwrap().expect("clone has a parent");
    assert_eq!((p.image_name.as_str(), p.snap_name.as_str()), (parent.as_str(), "s1"));
    assert_eq!(img.children().unwrap().len(), 1);
    let mut buf = vec![0u8; data.len()];
    ch.read_at(4096, &mut buf).unwrap();
    assert_eq!(buf, data, "clone reads the parent's snapshot data");
    ch.flatten().unwrap();
    assert!(ch.parent().unwrap().is_none());
    drop(ch);
    img.snap_unprotect("s1").unwrap();
    img.snap_remove("s1").unwrap();
    img.metadata_set("strake.test", "v").unwrap();
    assert_eq!(img.metadata_get("strake.test").unwrap().as_deref(), Some("v"));
    assert_eq!(img.metadata_get("absent").unwrap(), None);
    assert_eq!(
        img.watchers().unwrap().len(),
        1,
        "our own open handle watches the image"
    );
    drop(img);
    let names: Vec<String> = io.list_images().unwrap().into_iter().map(|s| s.name).collect();
    assert!(names.contains(&parent) && names.contains(&child));
    io.remove_image(&child).unwrap();
    io.remove_image(&parent).unwrap();
    assert!(io.remove_image(&parent).unwrap_err().is_not_found());
}

#[test]
fn clone_v2_parent_snapshot_goes_to_trash_namespace_and_parent_to_rbd_trash() {
    if !strake_test_support::ceph() {
        return;
    }
    let c = admin();
    let io = c.ioctx("rbd").unwrap();
    let parent = uniq("t2-parent");
    let child = uniq("t2-child");
    io.create_image(&parent, 8 << 20, &ImageOptions::default()).unwrap();
    let img = io.open(&parent).unwrap();
    img.snap_create("s").unwrap();
    io.clone_image(
        &parent,
        "s",
        &io,
        &child,
        &ImageOptions {
            clone_format: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    // clone v2: removing a snapshot with clones moves it to the trash namespace
    img.snap_remove("s").unwrap();
    let snaps = img.snaps().unwrap();
    assert!(snaps.len() == 1 && snaps[0].trashed, "{snaps:?}");
    drop(img);
    let err = io.remove_image(&parent).unwrap_err();
    assert!(matches!(err.errno, libc::ENOTEMPTY | libc::EBUSY), "{err}");
    io.trash_move(&parent).unwrap();
    let trash = io.trash_list().unwrap();
    let entry = trash
        .iter()
        .find(|e| e.name == parent)
        .expect("parent in trash")
        .clone();
    assert!(io.trash_remove(&entry.id).is_err(), "still has a clone");
    io.remove_image(&child).unwrap();
    io.trash_remove(&entry.id).unwrap();
}

#[test]
fn omap_compare_and_set_and_paging() {
    if !strake_test_support::ceph() {
        return;
    }
    let c = admin();
    let io = c.ioctx("rbd").unwrap();
    let oid = uniq("t-omap");
    io.ensure_object(&oid).unwrap();
    assert!(io.omap_update(&oid, &["k1"], &[("k1", b"v1")], &[]).unwrap());
    assert!(
        !io.omap_update(&oid, &["k1"], &[("k1", b"v2")], &[]).unwrap(),
        "second reservation must lose"
    );
    assert_eq!(io.omap_get(&oid, "k1").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(io.omap_get(&oid, "k").unwrap(), None, "prefix of a key is not the key");
    let many: Vec<(String, Vec<u8>)> = (0..1100).map(|i| (format!("p/{i:05}"), vec![b'x'; 3])).collect();
    for chunk in many.chunks(100) {
        let set: Vec<(&str, &[u8])> = chunk.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        io.omap_set(&oid, &set).unwrap();
    }
    let page = io.omap_list(&oid, "p/", "", 10).unwrap();
    assert_eq!(page.entries.len(), 10);
    assert!(page.more);
    assert_eq!(io.omap_list_all(&oid, "p/").unwrap().len(), 1100);
    io.omap_remove(&oid, &["k1"]).unwrap();
    assert_eq!(io.omap_get(&oid, "k1").unwrap(), None);
    io.remove_object(&oid).unwrap();
    assert!(io.omap_list(&oid, "", "", 10).unwrap().entries.is_empty());
}

#[test]
fn cephx_key_is_checked_and_mon_command_reports_status() {
    if !strake_test_support::ceph() {
        return;
    }
    let c = admin();
    let out = c.mon_command(r#"{"prefix":"auth get-or-create","entity":"client.strake-wrapper-test","caps":["mon","allow r","osd","allow rwx pool=rbd"],"format":"json"}"#).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let key = v[0]["key"].as_str().unwrap().to_string();
    let mut opts = ConnectOptions::new(conf());
    opts.credentials = Some(Credentials::new("strake-wrapper-test", key.clone()));
    let user = Cluster::connect(&opts).expect("connect with a good key");
    assert!(user.pool_exists("rbd").unwrap());
    assert!(!format!("{:?}", opts).contains(&key), "Debug must redact the key");
    opts.credentials = Some(Credentials::new(
        "strake-wrapper-test",
        "AQBbadbadbadbadbadbadbadbadbadbadbadbadA==",
    ));
    opts.op_timeout = std::time::Duration::from_secs(5);
    let err = Cluster::connect(&opts).unwrap_err();
    assert!(err.is_permission() || err.errno == libc::EINVAL, "{err}");
    let err = c
        .mon_command(r#"{"prefix":"osd pool get","pool":"no-such-pool","var":"size"}"#)
        .unwrap_err();
    assert!(err.is_not_found() && err.detail.contains("no-such-pool"), "{err}");
    c.mon_command(r#"{"prefix":"auth rm","entity":"client.strake-wrapper-test"}"#)
        .unwrap();
}
