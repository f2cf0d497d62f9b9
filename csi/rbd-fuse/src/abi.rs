//! The FUSE kernel protocol, as far as a server of block-image files needs it.
//!
//! Written from the kernel's `include/uapi/linux/fuse.h` (protocol 7.x; the io_uring
//! structures arrived in 7.42, Linux 6.14). Every struct here is `repr(C)` with the
//! kernel's exact layout; `tests` pins the sizes the kernel checks.
#![allow(dead_code)]

pub const KERNEL_VERSION: u32 = 7;
/// The newest minor whose structures this file matches; we answer INIT with the
/// smaller of this and the kernel's.
pub const KERNEL_MINOR_VERSION: u32 = 44;
/// The kernel refuses /dev/fuse reads into smaller buffers.
pub const MIN_READ_BUFFER: usize = 8192;
pub const ROOT_ID: u64 = 1;

pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
}

/// FUSE_INIT flags (`flags`, and `flags2` for bits 32..63 when INIT_EXT is set).
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const NO_OPENDIR_SUPPORT: u64 = 1 << 24;
    pub const INIT_EXT: u64 = 1 << 30;
    /// The server will serve requests over io_uring (`FUSE_IO_URING_CMD_*`).
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// FOPEN_* flags in `fuse_open_out.open_flags`.
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    /// Without it the kernel takes the inode lock exclusively for every direct
    /// write, so writes from a loop device would be serialised.
    pub const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
}

pub const FATTR_SIZE: u32 = 1 << 3;
pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
pub const FALLOC_FL_ZERO_RANGE: u32 = 0x10;
/// `fuse_out_header.error` of an unsolicited notification (`unique` = 0).
pub const NOTIFY_INVAL_INODE: i32 = 2;

/// Marker for plain-old-data kernel structs: any byte pattern is a valid value.
///
/// # Safety
/// Only for `repr(C)` structs made of integers (and arrays of them) with no padding
/// the kernel does not also have.
pub unsafe trait Pod: Copy + Default {}

/// Reads a `T` from the front of `b`; None if `b` is too short.
pub fn read<T: Pod>(b: &[u8]) -> Option<T> {
    if b.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is Pod; read_unaligned has no alignment needs.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) })
}

pub fn bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod, so all its bytes are initialised.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

macro_rules! pod {
    ($($name:ident { $($f:ident : $t:ty),* $(,)? })*) => {
        $(
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default)]
            pub struct $name { $(pub $f: $t),* }
            unsafe impl Pod for $name {}
        )*
    };
}

pod! {
    InHeader { len: u32, opcode: u32, unique: u64, nodeid: u64, uid: u32, gid: u32, pid: u32, total_extlen: u16, padding: u16 }
    OutHeader { len: u32, error: i32, unique: u64 }
    InitIn { major: u32, minor: u32, max_readahead: u32, flags: u32, flags2: u32, unused: [u32; 11] }
    InitOut {
        major: u32, minor: u32, max_readahead: u32, flags: u32,
        max_background: u16, congestion_threshold: u16, max_write: u32, time_gran: u32,
        max_pages: u16, map_alignment: u16, flags2: u32, unused: [u32; 7]
    }
    Attr {
        ino: u64, size: u64, blocks: u64, atime: u64, mtime: u64, ctime: u64,
        atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32, nlink: u32,
        uid: u32, gid: u32, rdev: u32, blksize: u32, flags: u32
    }
    EntryOut { nodeid: u64, generation: u64, entry_valid: u64, attr_valid: u64, entry_valid_nsec: u32, attr_valid_nsec: u32, attr: Attr }
    AttrOut { attr_valid: u64, attr_valid_nsec: u32, dummy: u32, attr: Attr }
    GetattrIn { getattr_flags: u32, dummy: u32, fh: u64 }
    SetattrIn {
        valid: u32, padding: u32, fh: u64, size: u64, lock_owner: u64,
        atime: u64, mtime: u64, ctime: u64, atimensec: u32, mtimensec: u32, ctimensec: u32,
        mode: u32, unused4: u32, uid: u32, gid: u32, unused5: u32
    }
    OpenIn { flags: u32, open_flags: u32 }
    OpenOut { fh: u64, open_flags: u32, backing_id: i32 }
    ReleaseIn { fh: u64, flags: u32, release_flags: u32, lock_owner: u64 }
    FlushIn { fh: u64, unused: u32, padding: u32, lock_owner: u64 }
    ReadIn { fh: u64, offset: u64, size: u32, read_flags: u32, lock_owner: u64, flags: u32, padding: u32 }
    WriteIn { fh: u64, offset: u64, size: u32, write_flags: u32, lock_owner: u64, flags: u32, padding: u32 }
    WriteOut { size: u32, padding: u32 }
    FsyncIn { fh: u64, fsync_flags: u32, padding: u32 }
    FallocateIn { fh: u64, offset: u64, length: u64, mode: u32, padding: u32 }
    Kstatfs { blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64, bsize: u32, namelen: u32, frsize: u32, padding: u32, spare: [u32; 6] }
    ForgetIn { nlookup: u64 }
    BatchForgetIn { count: u32, dummy: u32 }
    InterruptIn { unique: u64 }
    DirentHeader { ino: u64, off: u64, namelen: u32, typ: u32 }
    NotifyInvalInodeOut { ino: u64, off: i64, len: i64 }

    // FUSE-over-io_uring (protocol 7.42).
    UringEntInOut { flags: u64, commit_id: u64, payload_sz: u32, padding: u32, reserved: u64 }
    UringCmdReq { flags: u64, commit_id: u64, qid: u16, padding: [u8; 6] }
}

/// `struct fuse_uring_req_header`: iov[0] of every ring entry. The kernel puts the
/// `fuse_in_header` in `in_out` and the opcode's own in-struct in `op_in`; the server
/// answers with a `fuse_out_header` in `in_out` and the reply's arguments in the
/// payload buffer (iov[1]), their length in `ring_ent_in_out.payload_sz`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct UringReqHeader {
    pub in_out: [u8; 128],
    pub op_in: [u8; 128],
    pub ring_ent_in_out: UringEntInOut,
}

impl Default for UringReqHeader {
    fn default() -> Self {
        UringReqHeader {
            in_out: [0; 128],
            op_in: [0; 128],
            ring_ent_in_out: UringEntInOut::default(),
        }
    }
}

/// `enum fuse_uring_cmd`: the `cmd_op` of an IORING_OP_URING_CMD on /dev/fuse.
pub const URING_CMD_REGISTER: u32 = 1;
pub const URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// Size of the opcode's own in-struct that precedes its variable data in a classic
/// /dev/fuse request (over io_uring the kernel hands it over separately, in `op_in`).
pub fn op_header_len(opcode: u32) -> usize {
    use std::mem::size_of;
    match opcode {
        opcode::FORGET => size_of::<ForgetIn>(),
        opcode::GETATTR => size_of::<GetattrIn>(),
        opcode::SETATTR => size_of::<SetattrIn>(),
        opcode::OPEN | opcode::OPENDIR => size_of::<OpenIn>(),
        opcode::READ | opcode::READDIR => size_of::<ReadIn>(),
        opcode::WRITE => size_of::<WriteIn>(),
        opcode::RELEASE | opcode::RELEASEDIR => size_of::<ReleaseIn>(),
        opcode::FSYNC | opcode::FSYNCDIR => size_of::<FsyncIn>(),
        opcode::FLUSH => size_of::<FlushIn>(),
        opcode::INIT => size_of::<InitIn>(),
        opcode::INTERRUPT => size_of::<InterruptIn>(),
        opcode::BATCH_FORGET => size_of::<BatchForgetIn>(),
        opcode::FALLOCATE => size_of::<FallocateIn>(),
        // LOOKUP carries only a name; the rest we answer ENOSYS without reading.
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<InitIn>(), 64);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<FallocateIn>(), 32);
        assert_eq!(size_of::<Kstatfs>(), 80);
        assert_eq!(size_of::<UringEntInOut>(), 32);
        assert_eq!(size_of::<UringReqHeader>(), 288);
        assert_eq!(size_of::<UringCmdReq>(), 24);
    }

    #[test]
    fn read_refuses_short_input() {
        assert!(read::<WriteIn>(&[0u8; 39]).is_none());
        let w = WriteIn {
            offset: 4096,
            size: 512,
            ..Default::default()
        };
        let back: WriteIn = read(bytes(&w)).unwrap();
        assert_eq!((back.offset, back.size), (4096, 512));
    }
}
