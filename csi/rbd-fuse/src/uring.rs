//! FUSE-over-io_uring (Linux 6.14+, `CONFIG_FUSE_IO_URING`, switched on by the fuse
//! module parameter `enable_uring`).
//!
//! The kernel keeps one queue per possible CPU and hands a request to the queue of
//! the CPU the requesting task runs on. Each queue here is one thread, pinned to its
//! CPU, with its own io_uring of 128-byte SQEs. The thread registers `depth` entries
//! (`FUSE_IO_URING_CMD_REGISTER`: an SQE whose `addr` points at two iovecs, a 288-byte
//! header buffer and a payload buffer of at least max_write bytes). A request arrives
//! as the completion of one of those SQEs, with its headers and data already copied
//! into that entry's buffers; the answer goes back in the same buffers with
//! `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also re-arms the entry for the next
//! request. So one `io_uring_enter` answers a batch of requests and waits for the
//! next batch: no read/write system call per request.
//!
//! Requests finished by librbd on its own threads are handed back to the queue thread
//! (a list and an eventfd the ring also waits on), because only the thread that owns
//! the ring may submit to it. The kernel copies request data in the ring owner's task
//! context, which is another reason each queue has exactly one thread.
//!
//! No released crate speaks this protocol (fuser 0.18 has no io_uring), so it is
//! written here on the io-uring crate; see docs/rbd-fuse.md.
use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};

use anyhow::{anyhow, Result};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::abi::{self, UringReqHeader};
use crate::fs::{Fs, OutBuf, Reply, Request};
use crate::session::{Channel, MAX_WRITE};

const EVENTFD_TAG: u64 = u64::MAX;

/// Number of queues the kernel expects: one per possible CPU (it indexes queues by
/// CPU id and serves nothing until every queue has an entry).
pub fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    s.trim()
        .split(',')
        .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .map(|m| m + 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Completions handed from librbd threads to the queue thread.
struct Handoff {
    done: Mutex<Vec<(usize, Reply)>>,
    efd: RawFd,
    owner: ThreadId,
    stop: AtomicBool,
}

impl Handoff {
    fn push(&self, ent: usize, reply: Reply) {
        self.done.lock().unwrap().push((ent, reply));
        if std::thread::current().id() != self.owner {
            self.wake();
        }
    }
    fn wake(&self) {
        let one = 1u64;
        unsafe { libc::write(self.efd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// A registered ring entry. The buffers are leaked on purpose: the kernel holds
/// their addresses for as long as the connection lives, which may outlast the thread.
struct Ent {
    hdr: *mut UringReqHeader,
    payload: *mut u8,
    iov: *mut [libc::iovec; 2],
    commit_id: u64,
}

impl Ent {
    fn new() -> Ent {
        let hdr = Box::into_raw(Box::<UringReqHeader>::default());
        let payload = Box::into_raw(vec![0u8; MAX_WRITE].into_boxed_slice()) as *mut u8;
        let iov = Box::into_raw(Box::new([
            libc::iovec {
                iov_base: hdr as *mut libc::c_void,
                iov_len: size_of::<UringReqHeader>(),
            },
            libc::iovec {
                iov_base: payload as *mut libc::c_void,
                iov_len: MAX_WRITE,
            },
        ]));
        Ent {
            hdr,
            payload,
            iov,
            commit_id: 0,
        }
    }
}

/// A running set of queues. Dropping it does not stop them; they end at unmount.
pub struct Queues {
    pub threads: Vec<JoinHandle<()>>,
    handoffs: Vec<Arc<Handoff>>,
}

impl Queues {
    /// Makes every queue thread exit (used when registration failed somewhere and
    /// the kernel went back to /dev/fuse).
    pub fn stop(self) {
        for h in &self.handoffs {
            h.stop.store(true, Ordering::SeqCst);
            h.wake();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Registers `depth` entries on each of the kernel's queues. Returns once every
/// queue has registered (or the first error: then the kernel has already fallen
/// back to /dev/fuse and the caller should stop the queues).
pub fn start(ch: Arc<Channel>, fs: Arc<Fs>, depth: usize, pin: bool) -> Result<Queues> {
    let nq = possible_cpus();
    let (tx, rx) = mpsc::channel::<(usize, Result<Arc<Handoff>, String>)>();
    let mut threads = Vec::new();
    for qid in 0..nq {
        let (ch, fs, tx) = (ch.clone(), fs.clone(), tx.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("fuse-uring-{qid}"))
                .spawn(move || queue(qid, &ch, &fs, depth, pin, tx))?,
        );
    }
    drop(tx);
    let mut handoffs = Vec::new();
    let mut first_err = None;
    for _ in 0..nq {
        match rx.recv() {
            Ok((_, Ok(h))) => handoffs.push(h),
            Ok((qid, Err(e))) => {
                first_err.get_or_insert(anyhow!("io_uring queue {qid}: {e}"));
            }
            Err(_) => {
                first_err.get_or_insert(anyhow!("an io_uring queue thread died while registering"));
            }
        }
    }
    let q = Queues { threads, handoffs };
    match first_err {
        None => Ok(q),
        Some(e) => {
            q.stop();
            Err(e)
        }
    }
}

fn cmd_bytes(qid: usize, commit_id: u64) -> [u8; 80] {
    let req = abi::UringCmdReq {
        commit_id,
        qid: qid as u16,
        ..Default::default()
    };
    let mut cmd = [0u8; 80];
    cmd[..size_of::<abi::UringCmdReq>()].copy_from_slice(abi::bytes(&req));
    cmd
}

fn register_sqe(fd: RawFd, qid: usize, i: usize, e: &Ent) -> squeue::Entry128 {
    let mut sqe = opcode::UringCmd80::new(types::Fd(fd), abi::URING_CMD_REGISTER)
        .cmd(cmd_bytes(qid, 0))
        .addr(Some(e.iov as u64))
        .build()
        .user_data(i as u64);
    // The kernel wants `sqe->len` = 2 (header and payload iovecs); the crate's
    // UringCmd80 builder has no setter for it. `len` is the u32 at byte 24 of every
    // io_uring SQE (after opcode, flags, ioprio, fd, off and addr).
    unsafe {
        let p = &mut sqe as *mut squeue::Entry128 as *mut u8;
        std::ptr::write_unaligned(p.add(24) as *mut u32, 2);
    }
    sqe
}

fn commit_sqe(fd: RawFd, qid: usize, i: usize, e: &Ent) -> squeue::Entry128 {
    opcode::UringCmd80::new(types::Fd(fd), abi::URING_CMD_COMMIT_AND_FETCH)
        .cmd(cmd_bytes(qid, e.commit_id))
        .build()
        .user_data(i as u64)
}

fn push(ring: &mut IoUring<squeue::Entry128, cqueue::Entry>, sqe: squeue::Entry128) -> io::Result<()> {
    loop {
        // SAFETY: every buffer an SQE points at (iovecs, entry buffers, the eventfd
        // counter) lives until the process exits.
        if unsafe { ring.submission().push(&sqe) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

type Ready = mpsc::Sender<(usize, Result<Arc<Handoff>, String>)>;

fn queue(qid: usize, ch: &Arc<Channel>, fs: &Arc<Fs>, depth: usize, pin: bool, ready: Ready) {
    if let Err(e) = run_queue(qid, ch, fs, depth, pin, &ready) {
        let _ = ready.send((qid, Err(format!("{e:#}"))));
    }
}

fn run_queue(qid: usize, ch: &Arc<Channel>, fs: &Arc<Fs>, depth: usize, pin: bool, ready: &Ready) -> Result<()> {
    if pin {
        pin_to_cpu(qid);
    }
    let entries = ((depth + 2) * 2).next_power_of_two() as u32;
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .build(entries)
        .map_err(|e| anyhow!("creating an io_uring with 128-byte SQEs: {e}"))?;
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(anyhow!("eventfd: {}", io::Error::last_os_error()));
    }
    let handoff = Arc::new(Handoff {
        done: Mutex::new(Vec::new()),
        efd,
        owner: std::thread::current().id(),
        stop: AtomicBool::new(false),
    });
    let ents: Vec<Ent> = (0..depth).map(|_| Ent::new()).collect();
    let mut ents = ents;
    let efd_buf = Box::into_raw(Box::new(0u64));
    let efd_read = squeue::Entry128::from(
        opcode::Read::new(types::Fd(efd), efd_buf as *mut u8, 8)
            .build()
            .user_data(EVENTFD_TAG),
    );
    let fd = ch.fd();
    for (i, e) in ents.iter().enumerate() {
        push(&mut ring, register_sqe(fd, qid, i, e))?;
    }
    push(&mut ring, efd_read.clone())?;
    ring.submit()?;
    // A refused REGISTER completes at once with the error; accepted ones complete
    // only when a request arrives.
    if let Some(c) = ring
        .completion()
        .find(|c| c.user_data() != EVENTFD_TAG && c.result() < 0)
    {
        return Err(anyhow!(
            "FUSE_IO_URING_CMD_REGISTER refused: {}",
            io::Error::from_raw_os_error(-c.result())
        ));
    }
    let _ = ready.send((qid, Ok(handoff.clone())));

    let mut live = depth;
    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(entries as usize);
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(anyhow!("io_uring_enter: {e}")),
        }
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            if ud == EVENTFD_TAG {
                if handoff.stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                push(&mut ring, efd_read.clone())?;
                continue;
            }
            let i = ud as usize;
            if res < 0 {
                // The connection is going away (unmount: ENOTCONN) or the ring is
                // being cancelled: this entry is gone for good.
                if res != -libc::ENOTCONN && res != -libc::ECANCELED {
                    tracing::warn!(qid, entry = i, error = %io::Error::from_raw_os_error(-res), "ring entry failed");
                }
                live -= 1;
                if live == 0 {
                    return Ok(());
                }
                continue;
            }
            serve(qid, fs, &handoff, i, &mut ents[i]);
        }
        let done: Vec<(usize, Reply)> = std::mem::take(&mut *handoff.done.lock().unwrap());
        for (i, reply) in done {
            let e = &ents[i];
            let (error, len) = match reply {
                Reply::Data(n) => (0, n),
                Reply::Error(err) => (-err, 0),
                // FORGET/INTERRUPT never come over the ring; answer anything that
                // claims to need no answer with ENOSYS so the entry is recycled.
                Reply::None => (-libc::ENOSYS, 0),
            };
            let h = abi::OutHeader {
                len: (size_of::<abi::OutHeader>() + len) as u32,
                error,
                unique: e.commit_id,
            };
            // SAFETY: the entry is ours (in userspace) until the commit is submitted.
            unsafe {
                let hdr = &mut *e.hdr;
                hdr.in_out[..size_of::<abi::OutHeader>()].copy_from_slice(abi::bytes(&h));
                hdr.ring_ent_in_out.payload_sz = len as u32;
            }
            push(&mut ring, commit_sqe(fd, qid, i, e))?;
        }
    }
}

/// Hands the request now in entry `i` to the filesystem.
fn serve(qid: usize, fs: &Arc<Fs>, handoff: &Arc<Handoff>, i: usize, e: &mut Ent) {
    // SAFETY: the kernel finished writing the entry before completing its SQE, and
    // does not touch it again until we commit.
    let hdr = unsafe { &*e.hdr };
    let Some(header) = abi::read::<abi::InHeader>(&hdr.in_out) else {
        return handoff.push(i, Reply::Error(libc::EIO));
    };
    e.commit_id = hdr.ring_ent_in_out.commit_id;
    let payload_len = (hdr.ring_ent_in_out.payload_sz as usize).min(MAX_WRITE);
    let ol = abi::op_header_len(header.opcode).min(hdr.op_in.len());
    let op = unsafe { std::slice::from_raw_parts(hdr.op_in.as_ptr(), ol) };
    let mut data = unsafe { std::slice::from_raw_parts(e.payload as *const u8, payload_len) };
    if ol == 0 && payload_len == 0 {
        // Kernels before the "empty first argument" change put LOOKUP's name, its
        // only argument, where the op header goes.
        data = unsafe { std::slice::from_raw_parts(hdr.op_in.as_ptr(), hdr.op_in.len()) };
    }
    let out = OutBuf {
        ptr: e.payload,
        cap: MAX_WRITE,
    };
    let h = handoff.clone();
    let _ = qid;
    fs.dispatch(Request { header, op, data }, out, Box::new(move |r| h.push(i, r)));
}
