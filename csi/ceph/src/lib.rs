//! Safe wrapper over the librados and librbd C APIs (declared in `strake-ceph-sys`).
//!
//! Everything here blocks the calling thread: async callers run it on a blocking pool.
//! Handles are RAII: dropping a [`Cluster`], [`IoCtx`] or [`Image`] releases it.
//! Errors carry the call, its target and the errno ([`CephError`]) so a log line says
//! exactly what failed.

mod aio;
mod error;
mod group;
mod rados;
mod rbd;

pub use aio::{AioDone, Encryption, EncryptionFormat, UpdateWatch};
pub use error::{errno_name, CephError, Result};
pub use group::GroupSnap;
pub use rados::{Cluster, ConnectOptions, Credentials, IoCtx, OmapPage};
pub use rbd::{features, librbd_version, Image, ImageOptions, ImageSpec, ParentSpec, SnapInfo, TrashEntry, Watcher};

use std::ffi::CString;

/// Converts a Rust string to a C string, rejecting interior NULs as EINVAL so callers
/// never panic on user-provided names.
pub(crate) fn cstr(op: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| CephError::new(op, s.replace('\0', "\\0"), -libc::EINVAL))
}

pub(crate) fn check(op: &'static str, target: &str, ret: i32) -> Result<i32> {
    if ret < 0 {
        Err(CephError::new(op, target, ret))
    } else {
        Ok(ret)
    }
}

/// Copies a C string owned by librados/librbd into an owned `String` (lossy on bad UTF-8).
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string valid for the call.
pub(crate) unsafe fn owned(p: *const libc::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
