//! A node plugin restart must not break a published volume: with a writer running,
//! the plugin's whole process group is SIGKILLed (what a container restart does to
//! the processes inside it), a new plugin starts on the same state dir, the writer
//! never notices, the new plugin re-adopts the attachment, and after unstage + stage
//! the data reads back intact.
mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use strake_csi::csi::*;

fn lines(path: &std::path::Path) -> Vec<String> {
    match std::fs::File::open(path) {
        Ok(f) => std::io::BufReader::new(f).lines().map(|l| l.unwrap()).collect(),
        Err(_) => vec![], // the writer has not created it yet
    }
}

fn wait_for_growth(path: &std::path::Path, beyond: usize, timeout: Duration) -> usize {
    let t0 = Instant::now();
    loop {
        let n = lines(path).len();
        if n > beyond {
            return n;
        }
        assert!(
            t0.elapsed() < timeout,
            "the writer made no progress in {timeout:?} (stuck at {n} lines)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_plugin_restart_keeps_a_published_volume_working() {
    if !strake_test_support::ceph() {
        return;
    }
    let pool = TestPool::new("restart");
    let ctrl = Driver::start(DriverOpts {
        mode: "controller",
        list_pools: vec![pool.name.clone()],
        ..Default::default()
    });
    let mut c = ctrl.controller().await;
    let cap = mount_cap("xfs");
    let vol = create(&mut c, "pvc-restart", &pool, 512 * MIB, cap.clone(), None).await;

    let node_dir = tempfile::Builder::new().prefix("strake-csi-node").tempdir().unwrap();
    let nd = node_dir.path().to_path_buf();
    let _cleanup = CleanupOnDrop(nd.clone());
    let mut node = Driver::start_in(
        nd.clone(),
        None,
        DriverOpts {
            mode: "node",
            ..Default::default()
        },
    );
    let mut n = node.node().await;
    let (stg, tgt) = (nd.join("stg"), nd.join("pods/p/mount"));
    publish_to(&mut c, &vol, NODE, cap.clone()).await;
    stage(&mut n, &vol, &stg, cap.clone()).await;
    publish(&mut n, &vol, &stg, &tgt, cap.clone(), false).await;

    // The writer: appends numbered lines, fsyncing each, until killed.
    let file = tgt.join("log.txt");
    let script = format!(
        "import os,time\nf=open({:?},'a')\ni=0\nwhile True:\n  f.write('%08d\\n'%i); f.flush(); os.fsync(f.fileno()); i+=1; time.sleep(0.005)\n",
        file.to_string_lossy()
    );
    let mut writer = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let before = wait_for_growth(&file, 50, Duration::from_secs(20));

    // Kill the plugin's whole process group, like a container restart.
    let pgid = node.child.id() as i32;
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    assert!(node.wait_dead(Duration::from_secs(5)));
    let during = wait_for_growth(&file, before + 100, Duration::from_secs(20));
    assert!(writer.try_wait().unwrap().is_none(), "the writer died with the plugin");

    // A new plugin process on the same state dir takes over.
    let node2 = Driver::start_in(
        nd.clone(),
        None,
        DriverOpts {
            mode: "node",
            ..Default::default()
        },
    );
    let log = node2.log_text();
    assert!(
        log.contains("re-adopted attachment"),
        "no re-adoption in the new plugin's log:\n{log}"
    );
    assert!(node2
        .metrics_text()
        .contains(r#"strake_csi_attached_volumes{attacher="fuse-loop"} 1"#));
    let mut n2 = node2.node().await;
    let stats = n2
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: tgt.to_string_lossy().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.volume_condition.unwrap().abnormal);
    wait_for_growth(&file, during + 100, Duration::from_secs(20));

    writer.kill().unwrap();
    writer.wait().unwrap();
    let written = lines(&file);
    for (i, l) in written.iter().enumerate() {
        assert_eq!(
            l,
            &format!("{i:08}"),
            "line {i} is wrong: the writer lost or reordered data"
        );
    }
    let sum = read_sha(&file, 0, std::fs::metadata(&file).unwrap().len());

    // The new plugin can tear down what the old one set up (it knows the loop device
    // and the rbd-fuse pid), then stage it afresh: the data is there.
    unpublish(&mut n2, &vol, &tgt).await;
    unstage(&mut n2, &vol, &stg).await;
    assert_node_clean(&nd);
    assert!(
        pool.io()
            .open(&vol.volume_context["imageName"])
            .unwrap()
            .watchers()
            .unwrap()
            .len()
            == 1,
        "rbd-fuse still watches the image after unstage"
    );
    stage(&mut n2, &vol, &stg, cap.clone()).await;
    publish(&mut n2, &vol, &stg, &tgt, cap.clone(), true).await;
    assert_eq!(read_sha(&file, 0, std::fs::metadata(&file).unwrap().len()), sum);
    assert_eq!(lines(&file).len(), written.len());
    unpublish(&mut n2, &vol, &tgt).await;
    unstage(&mut n2, &vol, &stg).await;
    delete(&mut c, &vol.volume_id).await;
    pool.assert_empty();
    assert_node_clean(&nd);
    drop(node);
}
