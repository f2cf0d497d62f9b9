//! strake-rbd-fuse: serves RBD images as files of a FUSE filesystem, for nodes whose
//! kernel has neither the rbd nor the nbd driver. A loop device over the file makes
//! it a block device (the `fuse-loop` attach path of strake-csi).
//!
//! | module | one job |
//! |---|---|
//! | [`abi`] | the FUSE kernel protocol structures (incl. FUSE-over-io_uring) |
//! | [`fs`] | the filesystem: one file per image, IO through librbd's asynchronous API |
//! | [`session`] | mount, INIT handshake, replies and notifications on /dev/fuse |
//! | [`classic`] | transport: worker threads reading /dev/fuse |
//! | [`uring`] | transport: one io_uring per kernel queue (per CPU) |
//! | [`stats`] | per-volume counters and latency histograms, served as JSON on a socket |
//! | [`cli`] | the `strake-rbd-fuse` command: flags, daemonizing, start-up and shutdown |
//! | [`secret`] | reading cephx keys and LUKS passphrases from descriptors or tmpfs files |
//!
//! The design, and why the protocol is spoken directly rather than through a FUSE
//! crate, is in docs/rbd-fuse.md.
pub mod abi;
pub mod classic;
pub mod cli;
pub mod fs;
pub mod secret;
pub mod session;
pub mod stats;
pub mod uring;

/// Where the kernel's switch for FUSE-over-io_uring lives.
pub const ENABLE_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether the running kernel will offer FUSE-over-io_uring to a new mount.
pub fn uring_enabled() -> bool {
    std::fs::read_to_string(ENABLE_URING_PARAM)
        .map(|s| matches!(s.trim(), "Y" | "y" | "1"))
        .unwrap_or(false)
}
