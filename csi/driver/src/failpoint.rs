//! Crash injection for the crash-safety tests.
//!
//! `STRAKE_CSI_FAILPOINT=create:after-reserve[,other...]` makes the process SIGKILL
//! itself when it reaches that step, so tests can run the real binary, kill it at
//! every step of an operation, restart it and check that a retry converges. The
//! variable is read once; unset (production) it costs one atomic load per step.
use std::collections::HashSet;
use std::sync::OnceLock;

/// Every failpoint the driver defines, in the order an operation reaches them.
pub const ALL: &[&str] = &[
    "create:after-reserve",
    "create:after-image",
    "clone:after-temp-snap",
    "clone:after-clone",
    "snapshot:after-reserve",
    "snapshot:after-source-snap",
    "snapshot:after-clone",
    "snapshot:after-snap",
    "delete:after-mark",
    "delete:after-image",
    "delete-snapshot:after-mark",
    "delete-snapshot:after-image",
    "group-snapshot:after-reserve",
    "group-snapshot:after-group",
    "group-snapshot:after-group-snap",
    "group-snapshot:after-copy",
    "group-snapshot:after-group-removed",
    "delete-group-snapshot:after-mark",
];

fn armed() -> &'static HashSet<String> {
    static ARMED: OnceLock<HashSet<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("STRAKE_CSI_FAILPOINT")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// Kills the process with SIGKILL (no destructors, no flushing: a real crash) if
/// `name` is armed.
pub fn hit(name: &str) {
    debug_assert!(ALL.contains(&name), "undeclared failpoint {name}");
    if armed().contains(name) {
        eprintln!("strake-csi: failpoint {name} hit: killing the process");
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL to self is delivered before kill() returns; never reached.
        std::process::abort();
    }
}

/// Race injection: `STRAKE_CSI_DELAY=create:before-reserve=400` sleeps 400 ms at that
/// point, so a test can line two driver processes up between "read the journal" and
/// "reserve the name" and prove the OSD-side compare-and-set decides.
pub fn delay(name: &str) {
    static DELAYS: OnceLock<Vec<(String, u64)>> = OnceLock::new();
    let delays = DELAYS.get_or_init(|| {
        std::env::var("STRAKE_CSI_DELAY")
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| {
                let (k, v) = s.trim().split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    });
    if let Some((_, ms)) = delays.iter().find(|(k, _)| k == name) {
        std::thread::sleep(std::time::Duration::from_millis(*ms));
    }
}
