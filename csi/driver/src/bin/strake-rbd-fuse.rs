//! The FUSE server of the `fuse-loop` attach path; all of it lives in the
//! strake-rbd-fuse crate (csi/rbd-fuse).
fn main() {
    strake_rbd_fuse::cli::main()
}
