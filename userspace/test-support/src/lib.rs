//! What a test needs of the machine, checked the same way by every test
//! that needs it: root (network namespaces, veths, bpffs, BPF programs,
//! cgroups, loop devices), and a Ceph cluster.
//!
//! Without it the test says why, on stderr, and returns early: `cargo test
//! --workspace` as an ordinary user runs everything else. CI runs as root
//! with a cluster and sets `STRAKE_TESTS_REQUIRE=all` (scripts/test.sh), so
//! there a missing requirement fails the test instead of skipping it: a
//! suite that silently skipped would prove nothing.
//!
//! ```ignore
//! #[test]
//! fn pods_reach_each_other() {
//!     if !strake_test_support::root() {
//!         return;
//!     }
//!     // ...
//! }
//! ```

use std::io::Write;
use std::path::PathBuf;

/// The environment variable that turns skips into failures.
pub const REQUIRE_ENV: &str = "STRAKE_TESTS_REQUIRE";

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The Ceph configuration the Ceph-backed tests use: `$CEPH_CONF`, or the
/// dev cluster's (deploy/dev/ceph-up.sh).
pub fn ceph_conf() -> PathBuf {
    std::env::var_os("CEPH_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/strake/ceph-dev/ceph.conf"))
}

/// Why a test that needs root cannot run here, or None if it can.
pub fn missing_root() -> Option<String> {
    (!is_root()).then(|| {
        // SAFETY: as above.
        let uid = unsafe { libc::geteuid() };
        format!(
            "needs root (uid {uid} here): it builds network namespaces, veths, bpffs pins and BPF \
             programs; run the suite as root (scripts/test.sh)"
        )
    })
}

/// Why a test that needs root and a Ceph cluster cannot run here, or None.
pub fn missing_ceph() -> Option<String> {
    if let Some(why) = missing_root() {
        return Some(why);
    }
    let conf = ceph_conf();
    (!conf.exists()).then(|| {
        format!(
            "needs a Ceph cluster: {} does not exist; start one with deploy/dev/ceph-up.sh or set \
             CEPH_CONF",
            conf.display()
        )
    })
}

/// Whether a test may run given `missing` (what it lacks, if anything):
/// prints why it skips, or panics with the reason when skips are refused
/// (`STRAKE_TESTS_REQUIRE=all`).
pub fn may_run(missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "all") {
        panic!("{test}: {why} ({REQUIRE_ENV}=all refuses to skip)");
    }
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
    false
}

/// For a test that needs root: true to go on, false to return at once.
pub fn root() -> bool {
    may_run(missing_root())
}

/// For a test that needs root and a Ceph cluster.
pub fn ceph() -> bool {
    may_run(missing_ceph())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_requirement_runs_and_a_missing_one_skips_with_its_reason() {
        assert!(may_run(None));
        // The variable is process-wide: this is the only test here that
        // reads it.
        std::env::remove_var(REQUIRE_ENV);
        assert!(!may_run(Some("needs a unicorn".into())));
        std::env::set_var(REQUIRE_ENV, "all");
        let refused = std::panic::catch_unwind(|| may_run(Some("needs a unicorn".into())));
        std::env::remove_var(REQUIRE_ENV);
        let msg = refused.expect_err("skips refused: it must fail");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("needs a unicorn"), "{msg}");
    }

    #[test]
    fn without_root_the_reason_names_the_uid_and_what_to_do() {
        match missing_root() {
            None => assert!(is_root()),
            Some(why) => {
                assert!(!is_root());
                assert!(why.contains("needs root") && why.contains("scripts/test.sh"));
            }
        }
    }
}
