//! The filesystem: a root directory holding one regular file per RBD image, whose
//! bytes are the image's bytes. Requests are answered here whatever transport
//! brought them (classic /dev/fuse or io_uring): the transport hands over a
//! [`Request`], an output buffer, and a [`Complete`] to call exactly once.
//!
//! Reads, writes, flushes and hole punches go to librbd's asynchronous API and are
//! answered from librbd's completion threads, so as many requests are in flight as
//! the kernel sends; the rest (lookup, getattr, readdir, ...) is answered inline.
use std::ffi::OsStr;
use std::mem::size_of;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use strake_ceph::{AioDone, Image};

use crate::abi::{self, opcode, Pod};
use crate::stats::{Op, VolumeStats};

/// How long the kernel may cache a file's attributes. Short, so a resize made
/// elsewhere shows up even if the header-watch notification were lost.
const ATTR_VALID_SECS: u64 = 1;
/// Names never change while mounted.
const ENTRY_VALID_SECS: u64 = 60;
const BLKSIZE: u32 = 4096;

/// One image served as a file.
pub struct Volume {
    pub pool: String,
    /// Also the file name.
    pub image_name: String,
    pub image: Image,
    pub read_only: bool,
    pub stats: VolumeStats,
}

/// One request as the transport received it. `op` is the opcode's in-struct, `data`
/// what follows it (a name, or the bytes of a write).
pub struct Request<'a> {
    pub header: abi::InHeader,
    pub op: &'a [u8],
    pub data: &'a [u8],
}

/// The answer to a request. `Data(n)`: the first `n` bytes of the output buffer are
/// the reply's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Data(usize),
    Error(i32),
    /// FORGET and INTERRUPT take no answer.
    None,
}

pub type Complete = Box<dyn FnOnce(Reply) + Send>;

/// librbd's 0-or-negative-errno as a reply without data.
fn status(ret: isize) -> Reply {
    if ret >= 0 {
        Reply::Data(0)
    } else {
        Reply::Error(-ret as i32)
    }
}

/// Where a reply's arguments are written: `cap` bytes at `ptr`, owned by the
/// transport until the request's `Complete` has run.
#[derive(Clone, Copy)]
pub struct OutBuf {
    pub ptr: *mut u8,
    pub cap: usize,
}
unsafe impl Send for OutBuf {}

impl OutBuf {
    fn put<T: Pod>(&self, v: &T) -> Reply {
        let b = abi::bytes(v);
        if b.len() > self.cap {
            return Reply::Error(libc::EIO);
        }
        // SAFETY: the transport guarantees `cap` writable bytes until completion.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr, b.len()) };
        Reply::Data(b.len())
    }
}

pub struct Fs {
    pub volumes: Vec<Volume>,
    mounted_at: u64,
    uid: u32,
    gid: u32,
}

impl Fs {
    pub fn new(volumes: Vec<Volume>) -> Arc<Fs> {
        let mounted_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Arc::new(Fs {
            volumes,
            mounted_at,
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
        })
    }

    /// Inode 1 is the root; volume `i` is inode `i + 2`.
    fn volume(&self, ino: u64) -> Option<&Volume> {
        ino.checked_sub(2).and_then(|i| self.volumes.get(i as usize))
    }

    pub fn ino_of(&self, image: &str) -> Option<u64> {
        self.volumes
            .iter()
            .position(|v| v.image_name == image)
            .map(|i| i as u64 + 2)
    }

    fn attr(&self, ino: u64) -> Result<abi::Attr, i32> {
        let t = self.mounted_at;
        let mut a = abi::Attr {
            ino,
            atime: t,
            mtime: t,
            ctime: t,
            uid: self.uid,
            gid: self.gid,
            blksize: BLKSIZE,
            ..Default::default()
        };
        if ino == abi::ROOT_ID {
            a.mode = libc::S_IFDIR | 0o755;
            a.nlink = 2;
            return Ok(a);
        }
        let v = self.volume(ino).ok_or(libc::ENOENT)?;
        // rbd_get_size sees a resize as soon as librbd has refreshed the header
        // (it watches it), without a remount.
        a.size = v.image.size().map_err(|e| e.errno)?;
        a.blocks = a.size.div_ceil(512);
        a.mode = libc::S_IFREG | if v.read_only { 0o400 } else { 0o600 };
        a.nlink = 1;
        Ok(a)
    }

    fn attr_out(&self, ino: u64, out: OutBuf) -> Reply {
        match self.attr(ino) {
            Ok(attr) => out.put(&abi::AttrOut {
                attr_valid: ATTR_VALID_SECS,
                attr,
                ..Default::default()
            }),
            Err(e) => Reply::Error(e),
        }
    }

    /// Answers `req`, now or later, by calling `done` exactly once.
    pub fn dispatch(self: &Arc<Self>, req: Request<'_>, out: OutBuf, done: Complete) {
        let h = req.header;
        let r = match h.opcode {
            opcode::LOOKUP => self.lookup(h.nodeid, req.data, out),
            opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT => Reply::None,
            opcode::GETATTR => self.attr_out(h.nodeid, out),
            opcode::SETATTR => self.setattr(h.nodeid, req.op, out),
            opcode::OPEN => self.open(h.nodeid, req.op, out),
            opcode::OPENDIR | opcode::RELEASE | opcode::RELEASEDIR | opcode::FSYNCDIR | opcode::DESTROY => {
                match h.opcode {
                    opcode::OPENDIR => out.put(&abi::OpenOut::default()),
                    _ => Reply::Data(0),
                }
            }
            opcode::READDIR => self.readdir(h.nodeid, req.op, out),
            opcode::STATFS => self.statfs(out),
            opcode::READ => return self.read(h.nodeid, req.op, out, done),
            opcode::WRITE => return self.write(h.nodeid, req.op, req.data, out, done),
            opcode::FLUSH | opcode::FSYNC => return self.flush(h.nodeid, done),
            opcode::FALLOCATE => return self.fallocate(h.nodeid, req.op, done),
            // Kernels remember ENOSYS per operation and stop asking (xattrs, locks, ...).
            _ => Reply::Error(libc::ENOSYS),
        };
        done(r)
    }

    fn lookup(&self, parent: u64, name: &[u8], out: OutBuf) -> Reply {
        if parent != abi::ROOT_ID {
            return Reply::Error(libc::ENOTDIR);
        }
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        let Some(ino) = self.ino_of(&String::from_utf8_lossy(name)) else {
            return Reply::Error(libc::ENOENT);
        };
        match self.attr(ino) {
            Ok(attr) => out.put(&abi::EntryOut {
                nodeid: ino,
                entry_valid: ENTRY_VALID_SECS,
                attr_valid: ATTR_VALID_SECS,
                attr,
                ..Default::default()
            }),
            Err(e) => Reply::Error(e),
        }
    }

    fn setattr(&self, ino: u64, op: &[u8], out: OutBuf) -> Reply {
        let Some(s) = abi::read::<abi::SetattrIn>(op) else {
            return Reply::Error(libc::EINVAL);
        };
        if s.valid & abi::FATTR_SIZE != 0 {
            // Truncating or growing the file would resize the image: that is the
            // controller's job (ControllerExpandVolume), never a side effect of open(O_TRUNC).
            let current = match self.attr(ino) {
                Ok(a) => a.size,
                Err(e) => return Reply::Error(e),
            };
            if s.size != current {
                return Reply::Error(libc::EPERM);
            }
        }
        // Modes, owners and times are fixed; accept and ignore (touch, cp -p).
        self.attr_out(ino, out)
    }

    fn open(&self, ino: u64, op: &[u8], out: OutBuf) -> Reply {
        let Some(o) = abi::read::<abi::OpenIn>(op) else {
            return Reply::Error(libc::EINVAL);
        };
        let Some(v) = self.volume(ino) else {
            return Reply::Error(if ino == abi::ROOT_ID {
                libc::EISDIR
            } else {
                libc::ENOENT
            });
        };
        if v.read_only && (o.flags as i32 & libc::O_ACCMODE) != libc::O_RDONLY {
            return Reply::Error(libc::EROFS);
        }
        out.put(&abi::OpenOut {
            open_flags: abi::fopen::PARALLEL_DIRECT_WRITES,
            ..Default::default()
        })
    }

    fn readdir(&self, ino: u64, op: &[u8], out: OutBuf) -> Reply {
        if ino != abi::ROOT_ID {
            return Reply::Error(libc::ENOTDIR);
        }
        let Some(r) = abi::read::<abi::ReadIn>(op) else {
            return Reply::Error(libc::EINVAL);
        };
        let mut names: Vec<(u64, &OsStr, u32)> = vec![
            (abi::ROOT_ID, OsStr::new("."), libc::DT_DIR as u32),
            (abi::ROOT_ID, OsStr::new(".."), libc::DT_DIR as u32),
        ];
        for (i, v) in self.volumes.iter().enumerate() {
            names.push((i as u64 + 2, OsStr::new(&v.image_name), libc::DT_REG as u32));
        }
        let cap = (r.size as usize).min(out.cap);
        let mut used = 0;
        for (idx, (ino, name, typ)) in names.iter().enumerate().skip(r.offset as usize) {
            let name = name.as_bytes();
            let rec = (size_of::<abi::DirentHeader>() + name.len()).next_multiple_of(8);
            if used + rec > cap {
                break;
            }
            let hdr = abi::DirentHeader {
                ino: *ino,
                off: idx as u64 + 1,
                namelen: name.len() as u32,
                typ: *typ,
            };
            // SAFETY: `used + rec <= cap`, within the transport's buffer.
            unsafe {
                let p = out.ptr.add(used);
                std::ptr::write_bytes(p, 0, rec);
                std::ptr::copy_nonoverlapping(abi::bytes(&hdr).as_ptr(), p, size_of::<abi::DirentHeader>());
                std::ptr::copy_nonoverlapping(name.as_ptr(), p.add(size_of::<abi::DirentHeader>()), name.len());
            }
            used += rec;
        }
        Reply::Data(used)
    }

    fn statfs(&self, out: OutBuf) -> Reply {
        let bytes: u64 = self.volumes.iter().filter_map(|v| v.image.size().ok()).sum();
        out.put(&abi::Kstatfs {
            blocks: bytes / BLKSIZE as u64,
            files: self.volumes.len() as u64 + 1,
            bsize: BLKSIZE,
            frsize: BLKSIZE,
            namelen: 255,
            ..Default::default()
        })
    }

    /// Counts a request in flight on `v` now and returns the librbd callback that
    /// times it, turns librbd's result into the reply (and bytes moved) with `finish`,
    /// and answers the kernel.
    fn track(
        self: &Arc<Self>,
        v: &Volume,
        ino: u64,
        op: Op,
        done: Complete,
        finish: impl FnOnce(isize) -> (Reply, u64) + Send + 'static,
    ) -> AioDone {
        v.stats.start();
        let (fs, t0) = (self.clone(), Instant::now());
        Box::new(move |ret: isize| {
            let (reply, bytes) = finish(ret);
            if let Some(v) = fs.volume(ino) {
                v.stats.finish(op, t0.elapsed(), ret >= 0, bytes);
            }
            done(reply)
        })
    }

    /// Resolves the target of an IO request: the volume and its current size.
    fn io_target(&self, ino: u64) -> Result<(&Volume, u64), i32> {
        let v = self.volume(ino).ok_or(if ino == abi::ROOT_ID {
            libc::EISDIR
        } else {
            libc::ENOENT
        })?;
        let size = v.image.size().map_err(|e| e.errno)?;
        Ok((v, size))
    }

    fn read(self: &Arc<Self>, ino: u64, op: &[u8], out: OutBuf, done: Complete) {
        let Some(r) = abi::read::<abi::ReadIn>(op) else {
            return done(Reply::Error(libc::EINVAL));
        };
        let (v, size) = match self.io_target(ino) {
            Ok(t) => t,
            Err(e) => return done(Reply::Error(e)),
        };
        if r.offset >= size || r.size == 0 {
            return done(Reply::Data(0)); // end of file
        }
        let len = (r.size as u64).min(size - r.offset).min(out.cap as u64) as usize;
        let cb = self.track(v, ino, Op::Read, done, |ret| match ret {
            n if n >= 0 => (Reply::Data(n as usize), n as u64),
            e => (Reply::Error(-e as i32), 0),
        });
        // SAFETY: `out` stays valid and untouched until `done`, which runs after librbd
        // has finished writing into it.
        if let Err(e) = unsafe { v.image.aio_read(r.offset, out.ptr, len, 0, cb) } {
            // Not queued: the callback has already answered with the error.
            tracing::error!(image = v.image_name, error = %e, "rbd_aio_read2 was not queued");
        }
    }

    fn write(self: &Arc<Self>, ino: u64, op: &[u8], data: &[u8], out: OutBuf, done: Complete) {
        let Some(w) = abi::read::<abi::WriteIn>(op) else {
            return done(Reply::Error(libc::EINVAL));
        };
        let (v, size) = match self.io_target(ino) {
            Ok(t) => t,
            Err(e) => return done(Reply::Error(e)),
        };
        if v.read_only {
            return done(Reply::Error(libc::EROFS));
        }
        if (w.size as usize) > data.len() {
            return done(Reply::Error(libc::EINVAL));
        }
        if w.offset >= size && w.size > 0 {
            return done(Reply::Error(libc::ENOSPC)); // an image never grows by writing
        }
        let len = (w.size as u64).min(size - w.offset) as usize;
        // librbd is done with the data when it answers, so the reply may then
        // overwrite the buffer.
        let cb = self.track(v, ino, Op::Write, done, move |ret| match ret {
            n if n >= 0 => (
                out.put(&abi::WriteOut {
                    size: len as u32,
                    padding: 0,
                }),
                len as u64,
            ),
            e => (Reply::Error(-e as i32), 0),
        });
        // SAFETY: the data lives in the transport's buffer until `done` runs.
        if let Err(e) = unsafe { v.image.aio_write(w.offset, data.as_ptr(), len, 0, cb) } {
            tracing::error!(image = v.image_name, error = %e, "rbd_aio_write2 was not queued");
        }
    }

    /// FSYNC and FLUSH (close) both become a librbd flush: once it completes, every
    /// write acknowledged before is durable in RADOS.
    fn flush(self: &Arc<Self>, ino: u64, done: Complete) {
        let v = match self.volume(ino) {
            Some(v) if !v.read_only => v,
            _ => return done(Reply::Data(0)),
        };
        let cb = self.track(v, ino, Op::Flush, done, |ret| (status(ret), 0));
        if let Err(e) = v.image.aio_flush(cb) {
            tracing::error!(image = v.image_name, error = %e, "rbd_aio_flush was not queued");
        }
    }

    /// `fallocate`: punching a hole or zeroing a range releases the space in RADOS
    /// (a loop device turns discard and write-zeroes into exactly these).
    fn fallocate(self: &Arc<Self>, ino: u64, op: &[u8], done: Complete) {
        let Some(f) = abi::read::<abi::FallocateIn>(op) else {
            return done(Reply::Error(libc::EINVAL));
        };
        let (v, size) = match self.io_target(ino) {
            Ok(t) => t,
            Err(e) => return done(Reply::Error(e)),
        };
        if v.read_only {
            return done(Reply::Error(libc::EROFS));
        }
        let end = f.offset.saturating_add(f.length);
        let zeroing = f.mode & (abi::FALLOC_FL_PUNCH_HOLE | abi::FALLOC_FL_ZERO_RANGE) != 0;
        let known = abi::FALLOC_FL_KEEP_SIZE | abi::FALLOC_FL_PUNCH_HOLE | abi::FALLOC_FL_ZERO_RANGE;
        if f.mode & !known != 0 || (f.mode & abi::FALLOC_FL_PUNCH_HOLE != 0 && f.mode & abi::FALLOC_FL_KEEP_SIZE == 0) {
            return done(Reply::Error(libc::EOPNOTSUPP));
        }
        if !zeroing {
            // Plain allocation: an RBD image is thin; within its size there is nothing
            // to do, and it never grows by fallocate.
            return done(if end <= size {
                Reply::Data(0)
            } else {
                Reply::Error(libc::EOPNOTSUPP)
            });
        }
        if f.offset >= size {
            return done(Reply::Data(0));
        }
        let len = (end.min(size) - f.offset) as usize;
        let cb = self.track(v, ino, Op::Discard, done, move |ret| {
            (status(ret), if ret >= 0 { len as u64 } else { 0 })
        });
        // librbd's write-zeroes is its discard with no granularity: whole objects are
        // removed, partial ones zeroed, so the range reads back as zeros exactly as
        // punch-hole promises (plain rbd_aio_discard skips pieces smaller than
        // rbd_discard_granularity_bytes and would leave old data there).
        if let Err(e) = v.image.aio_write_zeroes(f.offset, len, cb) {
            tracing::error!(image = v.image_name, error = %e, "rbd_aio_write_zeroes was not queued");
        }
    }
}
