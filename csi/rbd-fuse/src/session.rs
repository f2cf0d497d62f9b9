//! One FUSE connection: mounting, the INIT handshake, replies and notifications on
//! /dev/fuse, and unmounting.
use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::abi::{self, init};
use crate::fs::Reply;

/// The largest read or write the kernel sends us (also the io_uring payload size).
pub const MAX_WRITE: usize = 1 << 20;
/// Background (asynchronous) requests the kernel keeps in flight before it throttles
/// writers. The kernel's default (12) would cap a loop device's queue depth at 12.
const MAX_BACKGROUND: u16 = 256;

/// The open /dev/fuse of a mounted filesystem. Replies may be written from any
/// thread: each one is a single writev, which the kernel handles atomically.
pub struct Channel {
    fd: OwnedFd,
    pub mountpoint: PathBuf,
}

impl Channel {
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends the reply to request `unique`; `payload` holds the reply's arguments
    /// for `Reply::Data`. ENOENT (the request was interrupted) is not an error.
    pub fn reply(&self, unique: u64, reply: Reply, payload: *const u8) {
        let (error, len) = match reply {
            Reply::None => return,
            Reply::Data(n) => (0, n),
            Reply::Error(e) => (-e, 0),
        };
        let h = abi::OutHeader {
            len: (size_of::<abi::OutHeader>() + len) as u32,
            error,
            unique,
        };
        let iov = [
            libc::iovec {
                iov_base: &h as *const _ as *mut libc::c_void,
                iov_len: size_of::<abi::OutHeader>(),
            },
            libc::iovec {
                iov_base: payload as *mut libc::c_void,
                iov_len: len,
            },
        ];
        let n = if len == 0 { 1 } else { 2 };
        let r = unsafe { libc::writev(self.fd(), iov.as_ptr(), n) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) && e.raw_os_error() != Some(libc::ENODEV) {
                tracing::warn!(unique, error = %e, "writing a reply to /dev/fuse failed");
            }
        }
    }

    /// Tells the kernel a file's attributes changed (a resize): its cached size is
    /// dropped and the next stat or loop-device refresh asks us again.
    pub fn notify_inval_inode(&self, ino: u64) {
        let body = abi::NotifyInvalInodeOut { ino, off: -1, len: 0 };
        let h = abi::OutHeader {
            len: (size_of::<abi::OutHeader>() + size_of::<abi::NotifyInvalInodeOut>()) as u32,
            error: abi::NOTIFY_INVAL_INODE,
            unique: 0,
        };
        let mut msg = abi::bytes(&h).to_vec();
        msg.extend_from_slice(abi::bytes(&body));
        let r = unsafe { libc::write(self.fd(), msg.as_ptr() as *const libc::c_void, msg.len()) };
        if r < 0 {
            tracing::warn!(ino, error = %io::Error::last_os_error(), "inode invalidation was refused");
        }
    }
}

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    /// Shown as the mount's source in /proc/mounts (`pool/image`).
    pub fsname: String,
    pub read_only: bool,
}

/// Opens /dev/fuse and mounts a FUSE filesystem on it, the way fusermount does for
/// root: `mount(2)` with the descriptor in the options.
pub fn mount(o: &MountOptions) -> Result<Channel> {
    let dev = CString::new("/dev/fuse").unwrap();
    let fd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!(
            "opening /dev/fuse: {} (the node needs the fuse device: /dev/fuse in the container)",
            io::Error::last_os_error()
        );
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let target = CString::new(o.mountpoint.as_os_str().as_encoded_bytes()).context("mountpoint has a NUL byte")?;
    let source = CString::new(o.fsname.replace(',', "_")).context("fsname has a NUL byte")?;
    let fstype = CString::new("fuse.strake-rbd-fuse").unwrap();
    let data = CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,max_read={}",
        fd.as_raw_fd(),
        MAX_WRITE
    ))
    .unwrap();
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if o.read_only {
        flags |= libc::MS_RDONLY;
    }
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr() as *const libc::c_void,
        )
    };
    if r < 0 {
        bail!(
            "mounting FUSE on {}: {}",
            o.mountpoint.display(),
            io::Error::last_os_error()
        );
    }
    Ok(Channel {
        fd,
        mountpoint: o.mountpoint.clone(),
    })
}

/// Detaches the mount. Lazy (MNT_DETACH) only when asked: a plain unmount fails
/// with EBUSY while a loop device still holds the file, which is what protects it.
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let target = CString::new(mountpoint.as_os_str().as_encoded_bytes())?;
    let r = unsafe { libc::umount2(target.as_ptr(), if lazy { libc::MNT_DETACH } else { 0 }) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What INIT settled.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    pub minor: u32,
    /// Requests will come over io_uring once its queues are registered.
    pub uring: bool,
    /// The kernel offered io_uring (the `enable_uring` module parameter is on).
    pub uring_offered: bool,
}

/// Answers the kernel's FUSE_INIT, which is always the first request on /dev/fuse.
pub fn handshake(ch: &Channel, want_uring: bool) -> Result<Negotiated> {
    let mut buf = vec![0u8; MAX_WRITE + 4096];
    let n = loop {
        let r = unsafe { libc::read(ch.fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            bail!("reading FUSE_INIT from /dev/fuse: {e}");
        }
    };
    let h: abi::InHeader = abi::read(&buf[..n]).context("short FUSE_INIT")?;
    if h.opcode != abi::opcode::INIT {
        bail!("first FUSE request was opcode {}, not INIT", h.opcode);
    }
    let mut i: abi::InitIn = abi::InitIn::default();
    // Old kernels send a shorter init_in; missing fields stay zero.
    let body = &buf[size_of::<abi::InHeader>()..n];
    let take = body.len().min(size_of::<abi::InitIn>());
    unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), &mut i as *mut _ as *mut u8, take) };
    if i.major != abi::KERNEL_VERSION || i.minor < 31 {
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION,
            ..Default::default()
        };
        ch.reply(h.unique, Reply::Error(libc::EPROTO), abi::bytes(&out).as_ptr());
        bail!("kernel FUSE protocol {}.{} is too old (need 7.31)", i.major, i.minor);
    }
    let offered = i.flags as u64
        | if i.flags as u64 & init::INIT_EXT != 0 {
            (i.flags2 as u64) << 32
        } else {
            0
        };
    let mut want = init::ASYNC_READ
        | init::BIG_WRITES
        | init::ASYNC_DIO
        | init::PARALLEL_DIROPS
        | init::MAX_PAGES
        | init::NO_OPENDIR_SUPPORT
        | init::INIT_EXT;
    if want_uring {
        want |= init::OVER_IO_URING;
    }
    let flags = want & offered;
    let out = abi::InitOut {
        major: abi::KERNEL_VERSION,
        minor: i.minor.min(abi::KERNEL_MINOR_VERSION),
        max_readahead: i.max_readahead.min(MAX_WRITE as u32),
        flags: flags as u32,
        flags2: (flags >> 32) as u32,
        max_background: MAX_BACKGROUND,
        congestion_threshold: MAX_BACKGROUND * 3 / 4,
        max_write: MAX_WRITE as u32,
        time_gran: 1,
        max_pages: (MAX_WRITE / 4096) as u16,
        ..Default::default()
    };
    ch.reply(
        h.unique,
        Reply::Data(size_of::<abi::InitOut>()),
        abi::bytes(&out).as_ptr(),
    );
    Ok(Negotiated {
        minor: out.minor,
        uring: flags & init::OVER_IO_URING != 0,
        uring_offered: offered & init::OVER_IO_URING != 0,
    })
}
