//! The classic transport: worker threads `read(2)` requests from /dev/fuse into
//! buffers from a pool and hand them to the filesystem; replies are `writev(2)`s from
//! whichever thread finishes the request (a librbd completion thread for IO).
//!
//! Threads only read, so the number of requests in flight is bounded by the buffer
//! pool (`--queue-depth`), not by the thread count. Used when the kernel offers no
//! FUSE-over-io_uring, and always (with one thread) beside io_uring for what the
//! kernel keeps on /dev/fuse: FORGET and INTERRUPT.
use std::io;
use std::mem::size_of;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::abi;
use crate::fs::{Fs, OutBuf, Reply, Request};
use crate::session::{Channel, MAX_WRITE};

/// Request buffers: big enough for the largest write plus its headers.
struct Pool {
    free: Mutex<Vec<Box<[u8]>>>,
    available: Condvar,
}

impl Pool {
    fn new(n: usize) -> Arc<Pool> {
        let free = (0..n).map(|_| vec![0u8; MAX_WRITE + 4096].into_boxed_slice()).collect();
        Arc::new(Pool {
            free: Mutex::new(free),
            available: Condvar::new(),
        })
    }

    fn take(&self) -> Box<[u8]> {
        let mut free = self.free.lock().unwrap();
        loop {
            if let Some(b) = free.pop() {
                return b;
            }
            free = self.available.wait(free).unwrap();
        }
    }

    fn put(&self, b: Box<[u8]>) {
        self.free.lock().unwrap().push(b);
        self.available.notify_one();
    }
}

struct RawBuf(*mut [u8]);
unsafe impl Send for RawBuf {}

/// Starts `threads` readers sharing `depth` buffers. They return when the
/// filesystem is unmounted (the kernel answers reads with ENODEV).
pub fn start(ch: Arc<Channel>, fs: Arc<Fs>, threads: usize, depth: usize) -> io::Result<Vec<JoinHandle<()>>> {
    let pool = Pool::new(depth.max(threads));
    (0..threads)
        .map(|i| {
            let (ch, fs, pool) = (ch.clone(), fs.clone(), pool.clone());
            std::thread::Builder::new()
                .name(format!("fuse-dev-{i}"))
                .spawn(move || worker(&ch, &fs, &pool))
        })
        .collect()
}

fn worker(ch: &Arc<Channel>, fs: &Arc<Fs>, pool: &Arc<Pool>) {
    loop {
        let mut buf = pool.take();
        let r = unsafe { libc::read(ch.fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            pool.put(buf);
            match e.raw_os_error() {
                // ENOENT: the request was interrupted before we read it.
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                Some(libc::ENODEV) => return, // unmounted
                _ => {
                    tracing::error!(error = %e, "reading /dev/fuse failed; this worker stops");
                    return;
                }
            }
        }
        let n = r as usize;
        let Some(header) = abi::read::<abi::InHeader>(&buf[..n]) else {
            tracing::error!(len = n, "short FUSE request");
            pool.put(buf);
            continue;
        };
        let hl = size_of::<abi::InHeader>();
        let ol = abi::op_header_len(header.opcode).min(n - hl);
        let cap = buf.len();
        // The buffer leaves the Box while the request is served, so that the slices
        // below and the completion may both point into it; the completion rebuilds the
        // Box and returns it to the pool, after which nothing uses the pointer.
        let raw = RawBuf(Box::into_raw(buf));
        let base = raw.0 as *mut u8;
        let op = unsafe { std::slice::from_raw_parts(base.add(hl), ol) };
        let data = unsafe { std::slice::from_raw_parts(base.add(hl + ol), n - hl - ol) };
        let out = OutBuf { ptr: base, cap };
        let (ch2, pool2, unique) = (ch.clone(), pool.clone(), header.unique);
        let done = Box::new(move |reply: Reply| {
            let raw = raw;
            ch2.reply(unique, reply, raw.0 as *const u8);
            pool2.put(unsafe { Box::from_raw(raw.0) });
        });
        fs.dispatch(Request { header, op, data }, out, done);
    }
}
