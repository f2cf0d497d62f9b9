use std::ffi::CString;
use std::fmt;
use std::ptr;

use strake_ceph_sys as sys;

use crate::{check, cstr, owned, CephError, IoCtx, Result};

/// RBD image feature bits and their names (as `rbd create --image-feature` spells them).
pub mod features {
    use strake_ceph_sys as sys;
    pub const LAYERING: u64 = sys::RBD_FEATURE_LAYERING;
    pub const EXCLUSIVE_LOCK: u64 = sys::RBD_FEATURE_EXCLUSIVE_LOCK;
    pub const OBJECT_MAP: u64 = sys::RBD_FEATURE_OBJECT_MAP;
    pub const FAST_DIFF: u64 = sys::RBD_FEATURE_FAST_DIFF;
    pub const DEEP_FLATTEN: u64 = sys::RBD_FEATURE_DEEP_FLATTEN;
    pub const JOURNALING: u64 = sys::RBD_FEATURE_JOURNALING;

    /// Features a user may request, by name.
    pub const NAMED: &[(&str, u64)] = &[
        ("layering", LAYERING),
        ("exclusive-lock", EXCLUSIVE_LOCK),
        ("object-map", OBJECT_MAP),
        ("fast-diff", FAST_DIFF),
        ("deep-flatten", DEEP_FLATTEN),
        ("journaling", JOURNALING),
    ];

    /// Parses `layering,exclusive-lock,...`; enforces the dependencies librbd has
    /// (object-map needs exclusive-lock, fast-diff needs object-map, journaling needs
    /// exclusive-lock) so the error names the missing feature instead of EINVAL.
    pub fn parse(list: &str) -> Result<u64, String> {
        let mut bits = 0u64;
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match NAMED.iter().find(|(n, _)| *n == name) {
                Some((_, b)) => bits |= b,
                None => {
                    let known: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
                    return Err(format!("unknown image feature {name:?}; known: {}", known.join(",")));
                }
            }
        }
        let needs = [
            (OBJECT_MAP, EXCLUSIVE_LOCK, "object-map", "exclusive-lock"),
            (FAST_DIFF, OBJECT_MAP, "fast-diff", "object-map"),
            (JOURNALING, EXCLUSIVE_LOCK, "journaling", "exclusive-lock"),
        ];
        for (f, dep, fname, dname) in needs {
            if bits & f != 0 && bits & dep == 0 {
                return Err(format!("image feature {fname} requires {dname}"));
            }
        }
        Ok(bits)
    }

    pub fn names(bits: u64) -> String {
        NAMED
            .iter()
            .filter(|(_, b)| bits & b != 0)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// librbd's version triple (major, minor, extra).
pub fn librbd_version() -> (i32, i32, i32) {
    let (mut a, mut b, mut c) = (0, 0, 0);
    unsafe { sys::rbd_version(&mut a, &mut b, &mut c) };
    (a, b, c)
}

/// Options for creating or cloning an image.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// Feature bits; None leaves librbd's default (`rbd_default_features`).
    pub features: Option<u64>,
    /// log2 of the object size; None = librbd default (22, 4 MiB).
    pub order: Option<u64>,
    /// Separate pool for data objects (erasure-coded pools).
    pub data_pool: Option<String>,
    /// Clone format; 2 lets a parent snapshot be removed while clones exist.
    pub clone_format: Option<u64>,
}

pub(crate) struct Opts(pub(crate) sys::rbd_image_options_t);
impl Drop for Opts {
    fn drop(&mut self) {
        unsafe { sys::rbd_image_options_destroy(self.0) }
    }
}

impl ImageOptions {
    pub(crate) fn build(&self, op: &'static str, target: &str, format2: bool) -> Result<Opts> {
        let mut o: sys::rbd_image_options_t = ptr::null_mut();
        unsafe { sys::rbd_image_options_create(&mut o) };
        let opts = Opts(o);
        let set = |name: i32, v: u64| check(op, target, unsafe { sys::rbd_image_options_set_uint64(o, name, v) });
        if format2 {
            set(sys::RBD_IMAGE_OPTION_FORMAT, 2)?;
        }
        if let Some(f) = self.features {
            set(sys::RBD_IMAGE_OPTION_FEATURES, f)?;
        }
        if let Some(ord) = self.order {
            set(sys::RBD_IMAGE_OPTION_ORDER, ord)?;
        }
        if let Some(cf) = self.clone_format {
            set(sys::RBD_IMAGE_OPTION_CLONE_FORMAT, cf)?;
        }
        if let Some(dp) = &self.data_pool {
            let c = cstr(op, dp)?;
            check(op, target, unsafe {
                sys::rbd_image_options_set_string(o, sys::RBD_IMAGE_OPTION_DATA_POOL, c.as_ptr())
            })?;
        }
        Ok(opts)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashEntry {
    pub id: String,
    pub name: String,
    pub deletion_time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    pub id: u64,
    pub name: String,
    pub size: u64,
    /// In the trash namespace: removed by the user but kept for clones (clone v2).
    pub trashed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentSpec {
    pub pool: String,
    pub image_name: String,
    pub image_id: String,
    /// The parent image is in the RBD trash.
    pub trash: bool,
    pub snap_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// Client address, e.g. `127.0.0.1:0/123456`.
    pub addr: String,
    pub id: i64,
    pub cookie: u64,
}

impl IoCtx {
    /// Names and ids of every image in the pool (not in the trash).
    pub fn list_images(&self) -> Result<Vec<ImageSpec>> {
        let mut cap: usize = 64;
        loop {
            let mut buf: Vec<sys::rbd_image_spec_t> = (0..cap)
                .map(|_| sys::rbd_image_spec_t {
                    id: ptr::null_mut(),
                    name: ptr::null_mut(),
                })
                .collect();
            let mut n = cap;
            let r = unsafe { sys::rbd_list2(self.io, buf.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_list2", self.pool(), r)?;
            let out = buf[..n]
                .iter()
                .map(|s| ImageSpec {
                    id: unsafe { owned(s.id) },
                    name: unsafe { owned(s.name) },
                })
                .collect();
            unsafe { sys::rbd_image_spec_list_cleanup(buf.as_mut_ptr(), n) };
            return Ok(out);
        }
    }

    /// Creates a format-2 image. EEXIST if the name is taken.
    pub fn create_image(&self, name: &str, size: u64, opts: &ImageOptions) -> Result<()> {
        let c = cstr("rbd_create4", name)?;
        let o = opts.build("rbd_create4", name, true)?;
        check("rbd_create4", name, unsafe {
            sys::rbd_create4(self.io, c.as_ptr(), size, o.0)
        })?;
        Ok(())
    }

    /// Clones `parent@snap` (in this pool) into `child` (in `child_io`'s pool).
    pub fn clone_image(
        &self,
        parent: &str,
        snap: &str,
        child_io: &IoCtx,
        child: &str,
        opts: &ImageOptions,
    ) -> Result<()> {
        let target = format!("{}/{parent}@{snap} -> {}/{child}", self.pool(), child_io.pool());
        let p = cstr("rbd_clone3", parent)?;
        let s = cstr("rbd_clone3", snap)?;
        let c = cstr("rbd_clone3", child)?;
        let o = opts.build("rbd_clone3", &target, false)?;
        check("rbd_clone3", &target, unsafe {
            sys::rbd_clone3(self.io, p.as_ptr(), s.as_ptr(), child_io.io, c.as_ptr(), o.0)
        })?;
        Ok(())
    }

    /// Removes an image. ENOENT if absent, EBUSY if it has watchers, ENOTEMPTY if it
    /// still has snapshots (including trashed ones that clones depend on).
    pub fn remove_image(&self, name: &str) -> Result<()> {
        let c = cstr("rbd_remove", name)?;
        check("rbd_remove", name, unsafe { sys::rbd_remove(self.io, c.as_ptr()) })?;
        Ok(())
    }

    /// Moves an image to the RBD trash (kept until `trash_remove`).
    pub fn trash_move(&self, name: &str) -> Result<()> {
        let c = cstr("rbd_trash_move", name)?;
        check("rbd_trash_move", name, unsafe {
            sys::rbd_trash_move(self.io, c.as_ptr(), 0)
        })?;
        Ok(())
    }

    pub fn trash_list(&self) -> Result<Vec<TrashEntry>> {
        let mut cap: usize = 32;
        loop {
            let mut buf: Vec<sys::rbd_trash_image_info_t> = (0..cap)
                .map(|_| sys::rbd_trash_image_info_t {
                    id: ptr::null_mut(),
                    name: ptr::null_mut(),
                    source: 0,
                    deletion_time: 0,
                    deferment_end_time: 0,
                })
                .collect();
            let mut n = cap;
            let r = unsafe { sys::rbd_trash_list(self.io, buf.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_trash_list", self.pool(), r)?;
            let out = buf[..n]
                .iter()
                .map(|e| TrashEntry {
                    id: unsafe { owned(e.id) },
                    name: unsafe { owned(e.name) },
                    deletion_time: e.deletion_time,
                })
                .collect();
            unsafe { sys::rbd_trash_list_cleanup(buf.as_mut_ptr(), n) };
            return Ok(out);
        }
    }

    pub fn trash_remove(&self, id: &str) -> Result<()> {
        let c = cstr("rbd_trash_remove", id)?;
        check("rbd_trash_remove", id, unsafe {
            sys::rbd_trash_remove(self.io, c.as_ptr(), false)
        })?;
        Ok(())
    }

    /// Opens an image for read/write at its head.
    pub fn open(&self, name: &str) -> Result<Image> {
        let c = cstr("rbd_open", name)?;
        let mut img: sys::rbd_image_t = ptr::null_mut();
        check("rbd_open", name, unsafe {
            sys::rbd_open(self.io, c.as_ptr(), &mut img, ptr::null())
        })?;
        Ok(Image {
            img,
            name: name.to_string(),
        })
    }

    /// Opens an image read-only: librbd refuses every write on the handle (EROFS) and
    /// takes no exclusive lock, so readers never fence a writer.
    pub fn open_read_only(&self, name: &str) -> Result<Image> {
        let c = cstr("rbd_open_read_only", name)?;
        let mut img: sys::rbd_image_t = ptr::null_mut();
        check("rbd_open_read_only", name, unsafe {
            sys::rbd_open_read_only(self.io, c.as_ptr(), &mut img, ptr::null())
        })?;
        Ok(Image {
            img,
            name: name.to_string(),
        })
    }

    /// Opens an image by its id (works for images in the trash too).
    pub fn open_by_id(&self, id: &str) -> Result<Image> {
        let c = cstr("rbd_open_by_id", id)?;
        let mut img: sys::rbd_image_t = ptr::null_mut();
        check("rbd_open_by_id", id, unsafe {
            sys::rbd_open_by_id(self.io, c.as_ptr(), &mut img, ptr::null())
        })?;
        Ok(Image {
            img,
            name: format!("id:{id}"),
        })
    }

    /// Opens an image, mapping ENOENT to None.
    pub fn open_if_exists(&self, name: &str) -> Result<Option<Image>> {
        match self.open(name) {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// An open image handle. Closed on drop.
pub struct Image {
    pub(crate) img: sys::rbd_image_t,
    pub(crate) name: String,
}

// librbd image handles may move between threads, and librbd serialises access to an
// image's state internally (ImageCtx locks), so IO from many threads at once is
// supported: that is how its own clients (rbd-nbd, qemu) use one handle. Closing needs
// `&mut`/ownership, so no call can race the close.
unsafe impl Send for Image {}
unsafe impl Sync for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        unsafe { sys::rbd_close(self.img) };
    }
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image").field("name", &self.name).finish()
    }
}

impl Image {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn c(&self, op: &'static str, s: &str) -> Result<CString> {
        cstr(op, s)
    }

    pub fn size(&self) -> Result<u64> {
        let mut s = 0u64;
        check("rbd_get_size", &self.name, unsafe {
            sys::rbd_get_size(self.img, &mut s)
        })?;
        Ok(s)
    }

    pub fn features(&self) -> Result<u64> {
        let mut f = 0u64;
        check("rbd_get_features", &self.name, unsafe {
            sys::rbd_get_features(self.img, &mut f)
        })?;
        Ok(f)
    }

    /// The image's immutable id (survives renames and trash moves).
    pub fn id(&self) -> Result<String> {
        let mut buf = vec![0 as libc::c_char; 64];
        check("rbd_get_id", &self.name, unsafe {
            sys::rbd_get_id(self.img, buf.as_mut_ptr(), buf.len())
        })?;
        Ok(unsafe { owned(buf.as_ptr()) })
    }

    /// Grows (or shrinks) the image to `size` bytes.
    pub fn resize(&self, size: u64) -> Result<()> {
        check("rbd_resize", &self.name, unsafe { sys::rbd_resize(self.img, size) })?;
        Ok(())
    }

    /// (object size, number of objects).
    pub fn layout(&self) -> Result<(u64, u64)> {
        let mut info: sys::rbd_image_info_t = unsafe { std::mem::zeroed() };
        check("rbd_stat", &self.name, unsafe {
            sys::rbd_stat(self.img, &mut info, std::mem::size_of::<sys::rbd_image_info_t>())
        })?;
        Ok((info.obj_size, info.num_objs))
    }

    pub fn parent(&self) -> Result<Option<ParentSpec>> {
        let mut img: sys::rbd_linked_image_spec_t = unsafe { std::mem::zeroed() };
        let mut snap: sys::rbd_snap_spec_t = unsafe { std::mem::zeroed() };
        let r = unsafe { sys::rbd_get_parent(self.img, &mut img, &mut snap) };
        if r == -libc::ENOENT {
            return Ok(None);
        }
        check("rbd_get_parent", &self.name, r)?;
        let p = ParentSpec {
            pool: unsafe { owned(img.pool_name) },
            image_name: unsafe { owned(img.image_name) },
            image_id: unsafe { owned(img.image_id) },
            trash: img.trash,
            snap_name: unsafe { owned(snap.name) },
        };
        unsafe {
            sys::rbd_linked_image_spec_cleanup(&mut img);
            sys::rbd_snap_spec_cleanup(&mut snap);
        }
        Ok(Some(p))
    }

    /// Images cloned from any snapshot of this image (including trashed ones).
    pub fn children(&self) -> Result<Vec<ParentSpec>> {
        let mut cap: usize = 16;
        loop {
            let mut buf: Vec<sys::rbd_linked_image_spec_t> = (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut n = cap;
            let r = unsafe { sys::rbd_list_children3(self.img, buf.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_list_children3", &self.name, r)?;
            let out = buf[..n]
                .iter()
                .map(|c| ParentSpec {
                    pool: unsafe { owned(c.pool_name) },
                    image_name: unsafe { owned(c.image_name) },
                    image_id: unsafe { owned(c.image_id) },
                    trash: c.trash,
                    snap_name: String::new(),
                })
                .collect();
            unsafe { sys::rbd_linked_image_spec_list_cleanup(buf.as_mut_ptr(), n) };
            return Ok(out);
        }
    }

    /// Snapshots, including trashed ones (see [`SnapInfo::trashed`]).
    pub fn snaps(&self) -> Result<Vec<SnapInfo>> {
        let mut cap: i32 = 16;
        loop {
            let mut buf: Vec<sys::rbd_snap_info_t> = (0..cap + 1)
                .map(|_| sys::rbd_snap_info_t {
                    id: 0,
                    size: 0,
                    name: ptr::null(),
                })
                .collect();
            let mut n = cap;
            let r = unsafe { sys::rbd_snap_list(self.img, buf.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            let count = check("rbd_snap_list", &self.name, r)? as usize;
            let mut out: Vec<SnapInfo> = buf[..count]
                .iter()
                .map(|s| SnapInfo {
                    id: s.id,
                    name: unsafe { owned(s.name) },
                    size: s.size,
                    trashed: false,
                })
                .collect();
            unsafe { sys::rbd_snap_list_end(buf.as_mut_ptr()) };
            for s in &mut out {
                let mut ns: libc::c_int = 0;
                check("rbd_snap_get_namespace_type", &self.name, unsafe {
                    sys::rbd_snap_get_namespace_type(self.img, s.id, &mut ns)
                })?;
                s.trashed = ns == sys::RBD_SNAP_NAMESPACE_TYPE_TRASH;
            }
            return Ok(out);
        }
    }

    pub fn snap_exists(&self, snap: &str) -> Result<bool> {
        let c = self.c("rbd_snap_exists", snap)?;
        let mut e = false;
        check("rbd_snap_exists", &format!("{}@{snap}", self.name), unsafe {
            sys::rbd_snap_exists(self.img, c.as_ptr(), &mut e)
        })?;
        Ok(e)
    }

    pub fn snap_create(&self, snap: &str) -> Result<()> {
        let c = self.c("rbd_snap_create", snap)?;
        check("rbd_snap_create", &format!("{}@{snap}", self.name), unsafe {
            sys::rbd_snap_create(self.img, c.as_ptr())
        })?;
        Ok(())
    }

    /// Removes a snapshot. With clone v2 a snapshot that still has clones moves to
    /// the trash namespace and disappears when its last clone goes.
    pub fn snap_remove(&self, snap: &str) -> Result<()> {
        let c = self.c("rbd_snap_remove", snap)?;
        check("rbd_snap_remove", &format!("{}@{snap}", self.name), unsafe {
            sys::rbd_snap_remove(self.img, c.as_ptr())
        })?;
        Ok(())
    }

    pub fn snap_protect(&self, snap: &str) -> Result<()> {
        let c = self.c("rbd_snap_protect", snap)?;
        check("rbd_snap_protect", &format!("{}@{snap}", self.name), unsafe {
            sys::rbd_snap_protect(self.img, c.as_ptr())
        })?;
        Ok(())
    }

    pub fn snap_unprotect(&self, snap: &str) -> Result<()> {
        let c = self.c("rbd_snap_unprotect", snap)?;
        check("rbd_snap_unprotect", &format!("{}@{snap}", self.name), unsafe {
            sys::rbd_snap_unprotect(self.img, c.as_ptr())
        })?;
        Ok(())
    }

    pub fn snap_is_protected(&self, snap: &str) -> Result<bool> {
        let c = self.c("rbd_snap_is_protected", snap)?;
        let mut p: libc::c_int = 0;
        check("rbd_snap_is_protected", &format!("{}@{snap}", self.name), unsafe {
            sys::rbd_snap_is_protected(self.img, c.as_ptr(), &mut p)
        })?;
        Ok(p != 0)
    }

    /// Copies every parent block into this image and detaches it from its parent.
    pub fn flatten(&self) -> Result<()> {
        check("rbd_flatten", &self.name, unsafe { sys::rbd_flatten(self.img) })?;
        Ok(())
    }

    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let r = unsafe { sys::rbd_write(self.img, offset, data.len(), data.as_ptr() as *const libc::c_char) };
        if r < 0 {
            return Err(CephError::new("rbd_write", &self.name, r as i32));
        }
        if r as usize != data.len() {
            return Err(CephError::new("rbd_write(short)", &self.name, -libc::EIO));
        }
        Ok(())
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let r = unsafe { sys::rbd_read(self.img, offset, buf.len(), buf.as_mut_ptr() as *mut libc::c_char) };
        if r < 0 {
            return Err(CephError::new("rbd_read", &self.name, r as i32));
        }
        Ok(r as usize)
    }

    pub fn flush(&self) -> Result<()> {
        check("rbd_flush", &self.name, unsafe { sys::rbd_flush(self.img) })?;
        Ok(())
    }

    pub fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        let k = self.c("rbd_metadata_set", key)?;
        let v = self.c("rbd_metadata_set", value)?;
        check("rbd_metadata_set", &format!("{}:{key}", self.name), unsafe {
            sys::rbd_metadata_set(self.img, k.as_ptr(), v.as_ptr())
        })?;
        Ok(())
    }

    pub fn metadata_get(&self, key: &str) -> Result<Option<String>> {
        let k = self.c("rbd_metadata_get", key)?;
        let mut len: libc::size_t = 256;
        loop {
            let mut buf = vec![0 as libc::c_char; len];
            let r = unsafe { sys::rbd_metadata_get(self.img, k.as_ptr(), buf.as_mut_ptr(), &mut len) };
            if r == -libc::ERANGE {
                continue;
            }
            if r == -libc::ENOENT {
                return Ok(None);
            }
            check("rbd_metadata_get", &format!("{}:{key}", self.name), r)?;
            return Ok(Some(unsafe { owned(buf.as_ptr()) }));
        }
    }

    /// Removes a metadata key; absent counts as removed.
    pub fn metadata_remove(&self, key: &str) -> Result<()> {
        let k = self.c("rbd_metadata_remove", key)?;
        let r = unsafe { sys::rbd_metadata_remove(self.img, k.as_ptr()) };
        if r == -libc::ENOENT {
            return Ok(());
        }
        check("rbd_metadata_remove", &format!("{}:{key}", self.name), r)?;
        Ok(())
    }

    /// Clients that have the image open (mapped or attached somewhere).
    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        let mut cap: usize = 8;
        loop {
            let mut buf: Vec<sys::rbd_image_watcher_t> = (0..cap)
                .map(|_| sys::rbd_image_watcher_t {
                    addr: ptr::null_mut(),
                    id: 0,
                    cookie: 0,
                })
                .collect();
            let mut n = cap;
            let r = unsafe { sys::rbd_watchers_list(self.img, buf.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_watchers_list", &self.name, r)?;
            let out = buf[..n]
                .iter()
                .map(|w| Watcher {
                    addr: unsafe { owned(w.addr) },
                    id: w.id,
                    cookie: w.cookie,
                })
                .collect();
            unsafe { sys::rbd_watchers_list_cleanup(buf.as_mut_ptr(), n) };
            return Ok(out);
        }
    }
}
