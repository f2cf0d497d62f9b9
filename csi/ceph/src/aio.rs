//! librbd's asynchronous IO, header-update watches and LUKS encryption on an open
//! [`Image`].
//!
//! An asynchronous call returns as soon as librbd has queued the request; `done` runs
//! later on one of librbd's own threads with the call's result (bytes read, or 0, or a
//! negative errno). `done` runs exactly once: if librbd refuses to queue the request,
//! it runs at once, on the caller's thread, with that error. Many requests may be in flight on one image at once: that is what
//! lets one process keep a whole queue depth busy against RADOS.
use std::ffi::c_void;
use std::ptr;

use strake_ceph_sys as sys;

use crate::{check, CephError, Image, Result};

/// Runs once, on a librbd thread, with the request's return value.
pub type AioDone = Box<dyn FnOnce(isize) + Send>;

unsafe extern "C" fn aio_complete(c: sys::rbd_completion_t, arg: *mut c_void) {
    let r = sys::rbd_aio_get_return_value(c);
    sys::rbd_aio_release(c);
    let done = Box::from_raw(arg as *mut AioDone);
    done(r as isize);
}

/// The two LUKS versions librbd can load (Ceph 16 has no auto-detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptionFormat {
    Luks1,
    Luks2,
}

impl EncryptionFormat {
    fn raw(self) -> i32 {
        match self {
            EncryptionFormat::Luks1 => sys::RBD_ENCRYPTION_FORMAT_LUKS1,
            EncryptionFormat::Luks2 => sys::RBD_ENCRYPTION_FORMAT_LUKS2,
        }
    }
}

impl std::str::FromStr for EncryptionFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "luks1" => Ok(EncryptionFormat::Luks1),
            "luks2" => Ok(EncryptionFormat::Luks2),
            _ => Err(format!("unknown encryption format {s:?}; use luks1 or luks2")),
        }
    }
}

/// What to load on an image before it is served: the format and the passphrase.
/// The passphrase is wiped from memory when this is dropped, and never printed.
pub struct Encryption {
    pub format: EncryptionFormat,
    passphrase: Vec<u8>,
}

impl Encryption {
    pub fn new(format: EncryptionFormat, passphrase: Vec<u8>) -> Self {
        Encryption { format, passphrase }
    }
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption")
            .field("format", &self.format)
            .field("passphrase", &"<redacted>")
            .finish()
    }
}

impl Drop for Encryption {
    fn drop(&mut self) {
        // Volatile writes so the compiler cannot drop the wipe of a buffer about to be freed.
        for b in self.passphrase.iter_mut() {
            unsafe { ptr::write_volatile(b, 0) };
        }
    }
}

/// A registered header watch; give it back to [`Image::unwatch_updates`] before closing.
#[derive(Debug)]
pub struct UpdateWatch {
    handle: u64,
    callback: *mut Box<dyn Fn() + Send + Sync>,
}

unsafe impl Send for UpdateWatch {}

unsafe extern "C" fn update_notify(arg: *mut c_void) {
    let f = &*(arg as *const Box<dyn Fn() + Send + Sync>);
    f();
}

impl Image {
    /// Queues one request; on refusal runs `done` with the error and returns it.
    fn submit(&self, op: &'static str, done: AioDone, f: impl FnOnce(sys::rbd_completion_t) -> i32) -> Result<()> {
        let arg = Box::into_raw(Box::new(done)) as *mut c_void;
        let mut c: sys::rbd_completion_t = ptr::null_mut();
        let r = unsafe { sys::rbd_aio_create_completion(arg, Some(aio_complete), &mut c) };
        if r < 0 {
            let done = unsafe { Box::from_raw(arg as *mut AioDone) };
            done(r as isize);
            return Err(CephError::new("rbd_aio_create_completion", &self.name, r));
        }
        let r = f(c);
        if r < 0 {
            // Not queued: librbd will never call back, so answer here.
            unsafe { sys::rbd_aio_release(c) };
            let done = unsafe { Box::from_raw(arg as *mut AioDone) };
            done(r as isize);
            return Err(CephError::new(op, &self.name, r));
        }
        Ok(())
    }

    /// Reads `len` bytes at `off` into `buf`; `done` gets the bytes read or -errno.
    ///
    /// # Safety
    /// `buf` must stay valid for writes of `len` bytes, and untouched by anyone else,
    /// until `done` has run.
    pub unsafe fn aio_read(&self, off: u64, buf: *mut u8, len: usize, fadvise: i32, done: AioDone) -> Result<()> {
        self.submit("rbd_aio_read2", done, |c| unsafe {
            sys::rbd_aio_read2(self.img, off, len, buf as *mut libc::c_char, c, fadvise)
        })
    }

    /// Writes `len` bytes from `buf` at `off`; `done` gets 0 or -errno.
    ///
    /// # Safety
    /// `buf` must stay valid for reads of `len` bytes, unchanged, until `done` has run.
    pub unsafe fn aio_write(&self, off: u64, buf: *const u8, len: usize, fadvise: i32, done: AioDone) -> Result<()> {
        self.submit("rbd_aio_write2", done, |c| unsafe {
            sys::rbd_aio_write2(self.img, off, len, buf as *const libc::c_char, c, fadvise)
        })
    }

    /// Releases the range's space in RADOS (objects removed or truncated; reads return zeros).
    pub fn aio_discard(&self, off: u64, len: u64, done: AioDone) -> Result<()> {
        self.submit("rbd_aio_discard", done, |c| unsafe {
            sys::rbd_aio_discard(self.img, off, len, c)
        })
    }

    /// Makes the range read back as zeros (librbd discards whole objects and zeroes the edges).
    pub fn aio_write_zeroes(&self, off: u64, len: usize, done: AioDone) -> Result<()> {
        self.submit("rbd_aio_write_zeroes", done, |c| unsafe {
            sys::rbd_aio_write_zeroes(self.img, off, len, c, 0, 0)
        })
    }

    /// Completes when every write queued before it is durable in RADOS (librbd's
    /// writeback cache flushed and every OSD write acknowledged).
    pub fn aio_flush(&self, done: AioDone) -> Result<()> {
        self.submit("rbd_aio_flush", done, |c| unsafe { sys::rbd_aio_flush(self.img, c) })
    }

    fn luks_opts(passphrase: &[u8]) -> sys::rbd_encryption_luks_format_options_t {
        sys::rbd_encryption_luks_format_options_t {
            alg: sys::RBD_ENCRYPTION_ALGORITHM_AES256,
            passphrase: passphrase.as_ptr() as *const libc::c_char,
            passphrase_size: passphrase.len(),
        }
    }

    fn luks(
        &self,
        op: &'static str,
        enc: &Encryption,
        call: unsafe extern "C" fn(sys::rbd_image_t, i32, *mut c_void, usize) -> i32,
    ) -> Result<()> {
        let mut o = Self::luks_opts(&enc.passphrase);
        check(op, &self.name, unsafe {
            call(
                self.img,
                enc.format.raw(),
                &mut o as *mut _ as *mut c_void,
                std::mem::size_of_val(&o),
            )
        })?;
        Ok(())
    }

    /// Loads the image's LUKS header: from now on IO through this handle is decrypted
    /// and encrypted by librbd, and [`Image::size`] is the payload size. A wrong
    /// passphrase is EPERM; an image without that header is EINVAL.
    pub fn encryption_load(&self, enc: &Encryption) -> Result<()> {
        self.luks("rbd_encryption_load", enc, sys::rbd_encryption_load)
    }

    /// Writes a fresh LUKS header (AES-256) protected by the passphrase. Destroys
    /// access to whatever the image held before.
    pub fn encryption_format(&self, enc: &Encryption) -> Result<()> {
        self.luks("rbd_encryption_format", enc, sys::rbd_encryption_format)
    }

    /// Calls `f` on a librbd thread whenever the image header changes (resize,
    /// snapshot, lock owner), so a server can tell the kernel about a new size at once.
    pub fn watch_updates(&self, f: Box<dyn Fn() + Send + Sync>) -> Result<UpdateWatch> {
        let callback = Box::into_raw(Box::new(f));
        let mut handle = 0u64;
        let r = unsafe { sys::rbd_update_watch(self.img, &mut handle, Some(update_notify), callback as *mut c_void) };
        if r < 0 {
            drop(unsafe { Box::from_raw(callback) });
            return Err(CephError::new("rbd_update_watch", &self.name, r));
        }
        Ok(UpdateWatch { handle, callback })
    }

    /// Removes a watch; after this returns the callback never runs again.
    pub fn unwatch_updates(&self, w: UpdateWatch) -> Result<()> {
        check("rbd_update_unwatch", &self.name, unsafe {
            sys::rbd_update_unwatch(self.img, w.handle)
        })?;
        drop(unsafe { Box::from_raw(w.callback) });
        Ok(())
    }
}
