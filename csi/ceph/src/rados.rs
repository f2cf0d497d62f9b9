use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use strake_ceph_sys as sys;

use crate::{check, cstr, CephError, Result};

/// A cephx identity: the user id without the `client.` prefix and its base64 key.
/// The key never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub user: String,
    key: String,
}

impl Credentials {
    pub fn new(user: impl Into<String>, key: impl Into<String>) -> Self {
        Credentials {
            user: user.into(),
            key: key.into(),
        }
    }
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// ceph.conf with `mon host` (and, when `credentials` is None, a keyring).
    pub conf: PathBuf,
    /// cephx identity; None means the conf file's default identity (client.admin).
    pub credentials: Option<Credentials>,
    /// Bound for connecting and for every mon/OSD operation, so a sick cluster
    /// turns into an error instead of a hung RPC.
    pub op_timeout: Duration,
}

impl ConnectOptions {
    pub fn new(conf: impl AsRef<Path>) -> Self {
        ConnectOptions {
            conf: conf.as_ref().to_path_buf(),
            credentials: None,
            op_timeout: Duration::from_secs(30),
        }
    }
}

struct Handle(sys::rados_t);
// librados cluster handles are documented as thread-safe.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}
impl Drop for Handle {
    fn drop(&mut self) {
        unsafe { sys::rados_shutdown(self.0) }
    }
}

/// A connected cluster handle. Cheap to clone (shared).
#[derive(Clone)]
pub struct Cluster {
    h: Arc<Handle>,
    user: String,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster").field("user", &self.user).finish()
    }
}

impl Cluster {
    pub fn connect(opts: &ConnectOptions) -> Result<Cluster> {
        let user = opts
            .credentials
            .as_ref()
            .map(|c| c.user.clone())
            .unwrap_or_else(|| "admin".to_string());
        let target = format!("client.{user}");
        let id = cstr("rados_create", &user)?;
        let mut h: sys::rados_t = ptr::null_mut();
        check("rados_create", &target, unsafe {
            sys::rados_create(&mut h, id.as_ptr())
        })?;
        let handle = Handle(h);
        let conf = cstr("rados_conf_read_file", &opts.conf.to_string_lossy())?;
        check("rados_conf_read_file", &opts.conf.to_string_lossy(), unsafe {
            sys::rados_conf_read_file(h, conf.as_ptr())
        })?;
        let secs = opts.op_timeout.as_secs().max(1).to_string();
        let mut settings: Vec<(&str, String)> = vec![
            ("client_mount_timeout", secs.clone()),
            ("rados_mon_op_timeout", secs.clone()),
            ("rados_osd_op_timeout", secs),
            // librados logs to stderr by default; the driver has its own structured logs.
            ("log_to_stderr", "false".into()),
            ("err_to_stderr", "false".into()),
        ];
        if let Some(c) = &opts.credentials {
            // Use only the key from the request, never a keyring file that the conf
            // names for another identity.
            settings.push(("keyring", String::new()));
            settings.push(("key", c.key.clone()));
        }
        for (k, v) in &settings {
            let kc = cstr("rados_conf_set", k)?;
            let vc = CString::new(v.as_str()).map_err(|_| CephError::new("rados_conf_set", *k, -libc::EINVAL))?;
            check("rados_conf_set", k, unsafe {
                sys::rados_conf_set(h, kc.as_ptr(), vc.as_ptr())
            })?;
        }
        check("rados_connect", &target, unsafe { sys::rados_connect(h) })?;
        Ok(Cluster {
            h: Arc::new(handle),
            user,
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn pool_exists(&self, pool: &str) -> Result<bool> {
        let p = cstr("rados_pool_lookup", pool)?;
        let r = unsafe { sys::rados_pool_lookup(self.h.0, p.as_ptr()) };
        if r >= 0 {
            Ok(true)
        } else if r == -(libc::ENOENT as i64) {
            Ok(false)
        } else {
            Err(CephError::new("rados_pool_lookup", pool, r as i32))
        }
    }

    pub fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        let p = cstr("rados_ioctx_create", pool)?;
        let mut io: sys::rados_ioctx_t = ptr::null_mut();
        check("rados_ioctx_create", pool, unsafe {
            sys::rados_ioctx_create(self.h.0, p.as_ptr(), &mut io)
        })?;
        Ok(IoCtx {
            io,
            pool: pool.to_string(),
            _cluster: self.clone(),
        })
    }

    /// Sends a JSON mon command (e.g. `{"prefix":"df","format":"json"}`) and returns
    /// the output buffer. Errors carry the mon's status string.
    pub fn mon_command(&self, cmd: &str) -> Result<Vec<u8>> {
        let c = cstr("rados_mon_command", cmd)?;
        let mut cmds = [c.as_ptr()];
        let mut outbuf: *mut libc::c_char = ptr::null_mut();
        let mut outbuf_len: libc::size_t = 0;
        let mut outs: *mut libc::c_char = ptr::null_mut();
        let mut outs_len: libc::size_t = 0;
        let r = unsafe {
            sys::rados_mon_command(
                self.h.0,
                cmds.as_mut_ptr(),
                1,
                ptr::null(),
                0,
                &mut outbuf,
                &mut outbuf_len,
                &mut outs,
                &mut outs_len,
            )
        };
        // Both buffers are length-delimited, not NUL-terminated: copy by length, then free.
        let take = |p: *mut libc::c_char, len: usize| -> Vec<u8> {
            if p.is_null() {
                return Vec::new();
            }
            let v = unsafe { std::slice::from_raw_parts(p as *const u8, len) }.to_vec();
            unsafe { sys::rados_buffer_free(p) };
            v
        };
        let out = take(outbuf, outbuf_len);
        let status = String::from_utf8_lossy(&take(outs, outs_len)).into_owned();
        if r < 0 {
            return Err(CephError::new("rados_mon_command", cmd, r).with_detail(status));
        }
        Ok(out)
    }

    /// Raw cluster capacity in bytes: (total, available).
    /// Blocklists `addr` on every OSD: one client instance (`ip:port/nonce`, as
    /// `rbd_watchers_list` reports it) or every client of a host (`ip:0/0`). Its
    /// watches and locks are dropped and its writes refused until the entry expires
    /// (`expire_secs`, 0 = the cluster default of one hour).
    pub fn blocklist_add(&self, addr: &str, expire_secs: u32) -> Result<()> {
        let c = cstr("rados_blocklist_add", addr)?;
        check("rados_blocklist_add", addr, unsafe {
            sys::rados_blocklist_add(self.h.0, c.as_ptr() as *mut libc::c_char, expire_secs)
        })?;
        Ok(())
    }

    /// This client's own addresses (`[v2:ip:port/nonce,v1:...]`), as watchers and
    /// blocklists name them.
    pub fn addrs(&self) -> Result<String> {
        let mut p: *mut libc::c_char = ptr::null_mut();
        check("rados_getaddrs", &self.user, unsafe {
            sys::rados_getaddrs(self.h.0, &mut p)
        })?;
        let s = unsafe { crate::owned(p) };
        unsafe { libc::free(p as *mut libc::c_void) };
        Ok(s)
    }

    pub fn cluster_stat(&self) -> Result<(u64, u64)> {
        let mut st = sys::rados_cluster_stat_t {
            kb: 0,
            kb_used: 0,
            kb_avail: 0,
            num_objects: 0,
        };
        check("rados_cluster_stat", "cluster", unsafe {
            sys::rados_cluster_stat(self.h.0, &mut st)
        })?;
        Ok((st.kb * 1024, st.kb_avail * 1024))
    }
}

/// An I/O context bound to one pool.
pub struct IoCtx {
    pub(crate) io: sys::rados_ioctx_t,
    pool: String,
    // Keeps the cluster handle alive as long as any ioctx uses it.
    _cluster: Cluster,
}

// An ioctx may be used from one thread at a time; moving it between threads is fine.
unsafe impl Send for IoCtx {}

impl Drop for IoCtx {
    fn drop(&mut self) {
        unsafe { sys::rados_ioctx_destroy(self.io) }
    }
}

impl fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoCtx").field("pool", &self.pool).finish()
    }
}

/// One page of an omap listing.
#[derive(Debug, Default, Clone)]
pub struct OmapPage {
    pub entries: Vec<(String, Vec<u8>)>,
    /// True when more keys follow the last one returned.
    pub more: bool,
}

struct WriteOp(sys::rados_write_op_t);
impl Drop for WriteOp {
    fn drop(&mut self) {
        unsafe { sys::rados_release_write_op(self.0) }
    }
}
struct ReadOp(sys::rados_read_op_t);
impl Drop for ReadOp {
    fn drop(&mut self) {
        unsafe { sys::rados_release_read_op(self.0) }
    }
}

impl IoCtx {
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The cluster this ioctx belongs to (to open other pools, e.g. a clone's parent).
    pub fn cluster(&self) -> &Cluster {
        &self._cluster
    }

    /// Creates `oid` if it does not exist (no-op otherwise).
    pub fn ensure_object(&self, oid: &str) -> Result<()> {
        let o = cstr("rados_write_op_create", oid)?;
        let op = WriteOp(unsafe { sys::rados_create_write_op() });
        unsafe { sys::rados_write_op_create(op.0, sys::LIBRADOS_CREATE_IDEMPOTENT, ptr::null()) };
        check("rados_write_op_create", oid, unsafe {
            sys::rados_write_op_operate(op.0, self.io, o.as_ptr(), ptr::null_mut(), 0)
        })?;
        Ok(())
    }

    pub fn remove_object(&self, oid: &str) -> Result<()> {
        let o = cstr("rados_remove", oid)?;
        check("rados_remove", oid, unsafe { sys::rados_remove(self.io, o.as_ptr()) })?;
        Ok(())
    }

    /// Atomically applies, in one OSD transaction: the assertions that each key in
    /// `absent` has no value, then sets `set`, then removes `remove`.
    /// Returns Ok(false) when an assertion failed (nothing was written), which is how
    /// two writers racing for one key are told apart on the OSD rather than in memory.
    pub fn omap_update(&self, oid: &str, absent: &[&str], set: &[(&str, &[u8])], remove: &[&str]) -> Result<bool> {
        let expect: Vec<(&str, &[u8])> = absent.iter().map(|k| (*k, &[][..])).collect();
        self.omap_update_if(oid, &expect, set, remove)
    }

    /// Like [`IoCtx::omap_update`], asserting that each key in `expect` holds exactly
    /// that value (an empty value: the key is absent): a compare-and-swap on the OSD.
    pub fn omap_update_if(
        &self,
        oid: &str,
        expect: &[(&str, &[u8])],
        set: &[(&str, &[u8])],
        remove: &[&str],
    ) -> Result<bool> {
        let o = cstr("rados_write_op_operate", oid)?;
        let op = WriteOp(unsafe { sys::rados_create_write_op() });
        let expect_c: Vec<CString> = expect.iter().map(|(k, _)| cstr("omap_cmp", k)).collect::<Result<_>>()?;
        let mut prvals = vec![0i32; expect_c.len()];
        for ((k, pr), (_, v)) in expect_c.iter().zip(prvals.iter_mut()).zip(expect) {
            // A missing key compares equal to the empty value; we never store empty values.
            unsafe {
                sys::rados_write_op_omap_cmp(
                    op.0,
                    k.as_ptr(),
                    sys::LIBRADOS_CMPXATTR_OP_EQ,
                    v.as_ptr() as *const libc::c_char,
                    v.len(),
                    pr,
                )
            };
        }
        let set_keys: Vec<CString> = set.iter().map(|(k, _)| cstr("omap_set", k)).collect::<Result<_>>()?;
        let key_ptrs: Vec<*const libc::c_char> = set_keys.iter().map(|k| k.as_ptr()).collect();
        let val_ptrs: Vec<*const libc::c_char> = set.iter().map(|(_, v)| v.as_ptr() as *const libc::c_char).collect();
        let lens: Vec<libc::size_t> = set.iter().map(|(_, v)| v.len()).collect();
        if !set.is_empty() {
            unsafe {
                sys::rados_write_op_omap_set(op.0, key_ptrs.as_ptr(), val_ptrs.as_ptr(), lens.as_ptr(), set.len())
            };
        }
        let rm_keys: Vec<CString> = remove.iter().map(|k| cstr("omap_rm_keys", k)).collect::<Result<_>>()?;
        let rm_ptrs: Vec<*const libc::c_char> = rm_keys.iter().map(|k| k.as_ptr()).collect();
        if !remove.is_empty() {
            unsafe { sys::rados_write_op_omap_rm_keys(op.0, rm_ptrs.as_ptr(), rm_ptrs.len()) };
        }
        let r = unsafe { sys::rados_write_op_operate(op.0, self.io, o.as_ptr(), ptr::null_mut(), 0) };
        if r == -libc::ECANCELED {
            return Ok(false);
        }
        check("rados_write_op_operate(omap)", oid, r)?;
        Ok(true)
    }

    pub fn omap_set(&self, oid: &str, set: &[(&str, &[u8])]) -> Result<()> {
        self.omap_update(oid, &[], set, &[]).map(|_| ())
    }

    pub fn omap_remove(&self, oid: &str, keys: &[&str]) -> Result<()> {
        self.omap_update(oid, &[], &[], keys).map(|_| ())
    }

    /// Lists up to `max` omap entries of `oid` whose keys start with `prefix`, after
    /// `start_after` (exclusive). A missing object reads as empty.
    pub fn omap_list(&self, oid: &str, prefix: &str, start_after: &str, max: u64) -> Result<OmapPage> {
        let o = cstr("rados_read_op_operate", oid)?;
        let p = cstr("omap_get_vals2", prefix)?;
        let s = cstr("omap_get_vals2", start_after)?;
        let op = ReadOp(unsafe { sys::rados_create_read_op() });
        let mut iter: sys::rados_omap_iter_t = ptr::null_mut();
        let mut more: u8 = 0;
        let mut prval: i32 = 0;
        unsafe {
            sys::rados_read_op_omap_get_vals2(op.0, s.as_ptr(), p.as_ptr(), max, &mut iter, &mut more, &mut prval)
        };
        let r = unsafe { sys::rados_read_op_operate(op.0, self.io, o.as_ptr(), 0) };
        if r == -libc::ENOENT {
            if !iter.is_null() {
                unsafe { sys::rados_omap_get_end(iter) };
            }
            return Ok(OmapPage::default());
        }
        let iter_guard = OmapIter(iter);
        check("rados_read_op_operate(omap_get_vals2)", oid, r)?;
        check("omap_get_vals2", oid, prval)?;
        let mut page = OmapPage {
            entries: Vec::new(),
            more: more != 0,
        };
        loop {
            let mut k: *mut libc::c_char = ptr::null_mut();
            let mut v: *mut libc::c_char = ptr::null_mut();
            let mut klen: libc::size_t = 0;
            let mut vlen: libc::size_t = 0;
            check("rados_omap_get_next2", oid, unsafe {
                sys::rados_omap_get_next2(iter_guard.0, &mut k, &mut v, &mut klen, &mut vlen)
            })?;
            if k.is_null() {
                break;
            }
            let key = unsafe { std::slice::from_raw_parts(k as *const u8, klen) };
            let val = if v.is_null() {
                &[][..]
            } else {
                unsafe { std::slice::from_raw_parts(v as *const u8, vlen) }
            };
            page.entries
                .push((String::from_utf8_lossy(key).into_owned(), val.to_vec()));
        }
        Ok(page)
    }

    /// Every omap entry with `prefix`, paging internally.
    pub fn omap_list_all(&self, oid: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.omap_list(oid, prefix, &after, 512)?;
            let n = page.entries.len();
            if let Some((k, _)) = page.entries.last() {
                after = k.clone();
            }
            out.extend(page.entries);
            if !page.more || n == 0 {
                return Ok(out);
            }
        }
    }

    /// The value of one omap key, if present.
    pub fn omap_get(&self, oid: &str, key: &str) -> Result<Option<Vec<u8>>> {
        // A key sorts before every longer key it prefixes, so the first entry decides.
        let page = self.omap_list(oid, key, "", 1)?;
        Ok(page.entries.into_iter().find(|(k, _)| k == key).map(|(_, v)| v))
    }
}

struct OmapIter(sys::rados_omap_iter_t);
impl Drop for OmapIter {
    fn drop(&mut self) {
        if !self.0.is_null() {
            unsafe { sys::rados_omap_get_end(self.0) }
        }
    }
}
