//! RBD groups and group snapshots, and copying an image out of one of its snapshots.
use std::ffi::CString;
use std::ptr;

use strake_ceph_sys as sys;

use crate::rbd::ImageOptions;
use crate::{check, cstr, owned, Image, IoCtx, Result};

/// A group snapshot and whether librbd finished it (an interrupted create leaves
/// an incomplete one, which only removal may touch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnap {
    pub name: String,
    pub complete: bool,
}

impl IoCtx {
    /// Creates a group in this pool. EEXIST if it exists.
    pub fn group_create(&self, name: &str) -> Result<()> {
        let c = cstr("rbd_group_create", name)?;
        check("rbd_group_create", name, unsafe {
            sys::rbd_group_create(self.io, c.as_ptr())
        })?;
        Ok(())
    }

    /// Removes a group with its group snapshots and memberships. ENOENT if absent.
    pub fn group_remove(&self, name: &str) -> Result<()> {
        let c = cstr("rbd_group_remove", name)?;
        check("rbd_group_remove", name, unsafe {
            sys::rbd_group_remove(self.io, c.as_ptr())
        })?;
        Ok(())
    }

    pub fn group_list(&self) -> Result<Vec<String>> {
        let mut size: libc::size_t = 1024;
        loop {
            let mut buf = vec![0 as libc::c_char; size];
            let r = unsafe { sys::rbd_group_list(self.io, buf.as_mut_ptr(), &mut size) };
            if r == -libc::ERANGE {
                continue;
            }
            check("rbd_group_list", self.pool(), r)?;
            let bytes: Vec<u8> = buf[..size.min(buf.len())].iter().map(|c| *c as u8).collect();
            return Ok(bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
    }

    /// Adds `image` (in `image_io`'s pool) to the group. EEXIST if it is a member.
    pub fn group_image_add(&self, group: &str, image_io: &IoCtx, image: &str) -> Result<()> {
        let (g, i) = (cstr("rbd_group_image_add", group)?, cstr("rbd_group_image_add", image)?);
        check("rbd_group_image_add", &format!("{group} + {image}"), unsafe {
            sys::rbd_group_image_add(self.io, g.as_ptr(), image_io.io, i.as_ptr())
        })?;
        Ok(())
    }

    pub fn group_image_remove(&self, group: &str, image_io: &IoCtx, image: &str) -> Result<()> {
        let (g, i) = (
            cstr("rbd_group_image_remove", group)?,
            cstr("rbd_group_image_remove", image)?,
        );
        check("rbd_group_image_remove", &format!("{group} - {image}"), unsafe {
            sys::rbd_group_image_remove(self.io, g.as_ptr(), image_io.io, i.as_ptr())
        })?;
        Ok(())
    }

    /// Member image names.
    pub fn group_image_list(&self, group: &str) -> Result<Vec<String>> {
        let g = cstr("rbd_group_image_list", group)?;
        let mut cap: usize = 16;
        loop {
            let mut buf: Vec<sys::rbd_group_image_info_t> = (0..cap)
                .map(|_| sys::rbd_group_image_info_t {
                    name: ptr::null_mut(),
                    pool: 0,
                    state: 0,
                })
                .collect();
            let mut n = cap;
            let r = unsafe {
                sys::rbd_group_image_list(
                    self.io,
                    g.as_ptr(),
                    buf.as_mut_ptr(),
                    std::mem::size_of::<sys::rbd_group_image_info_t>(),
                    &mut n,
                )
            };
            if r == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_group_image_list", group, r)?;
            let out = buf[..n].iter().map(|i| unsafe { owned(i.name) }).collect();
            unsafe {
                sys::rbd_group_image_list_cleanup(
                    buf.as_mut_ptr(),
                    std::mem::size_of::<sys::rbd_group_image_info_t>(),
                    n,
                )
            };
            return Ok(out);
        }
    }

    /// Snapshots every member at one point in time. EEXIST if the name is taken.
    pub fn group_snap_create(&self, group: &str, snap: &str) -> Result<()> {
        let (g, s) = (
            cstr("rbd_group_snap_create", group)?,
            cstr("rbd_group_snap_create", snap)?,
        );
        check("rbd_group_snap_create", &format!("{group}@{snap}"), unsafe {
            sys::rbd_group_snap_create(self.io, g.as_ptr(), s.as_ptr())
        })?;
        Ok(())
    }

    pub fn group_snap_remove(&self, group: &str, snap: &str) -> Result<()> {
        let (g, s) = (
            cstr("rbd_group_snap_remove", group)?,
            cstr("rbd_group_snap_remove", snap)?,
        );
        check("rbd_group_snap_remove", &format!("{group}@{snap}"), unsafe {
            sys::rbd_group_snap_remove(self.io, g.as_ptr(), s.as_ptr())
        })?;
        Ok(())
    }

    pub fn group_snap_list(&self, group: &str) -> Result<Vec<GroupSnap>> {
        let g = cstr("rbd_group_snap_list", group)?;
        let mut cap: usize = 16;
        loop {
            let mut buf: Vec<sys::rbd_group_snap_info_t> = (0..cap)
                .map(|_| sys::rbd_group_snap_info_t {
                    name: ptr::null_mut(),
                    state: 0,
                })
                .collect();
            let mut n = cap;
            let size = std::mem::size_of::<sys::rbd_group_snap_info_t>();
            let r = unsafe { sys::rbd_group_snap_list(self.io, g.as_ptr(), buf.as_mut_ptr(), size, &mut n) };
            if r == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check("rbd_group_snap_list", group, r)?;
            let out = buf[..n]
                .iter()
                .map(|s| GroupSnap {
                    name: unsafe { owned(s.name) },
                    complete: s.state == sys::RBD_GROUP_SNAP_STATE_COMPLETE,
                })
                .collect();
            unsafe { sys::rbd_group_snap_list_cleanup(buf.as_mut_ptr(), size, n) };
            return Ok(out);
        }
    }
}

impl Image {
    /// The snapshot of this image that group snapshot `group@snap` made, by id.
    pub fn group_snap_id(&self, group: &str, snap: &str) -> Result<Option<u64>> {
        for s in self.snaps()? {
            let mut ns: libc::c_int = 0;
            check("rbd_snap_get_namespace_type", &self.name, unsafe {
                sys::rbd_snap_get_namespace_type(self.img, s.id, &mut ns)
            })?;
            if ns != sys::RBD_SNAP_NAMESPACE_TYPE_GROUP {
                continue;
            }
            let mut g = sys::rbd_snap_group_namespace_t {
                group_pool: 0,
                group_name: ptr::null_mut(),
                group_snap_name: ptr::null_mut(),
            };
            let size = std::mem::size_of::<sys::rbd_snap_group_namespace_t>();
            check("rbd_snap_get_group_namespace", &self.name, unsafe {
                sys::rbd_snap_get_group_namespace(self.img, s.id, &mut g, size)
            })?;
            let (gn, sn) = unsafe { (owned(g.group_name), owned(g.group_snap_name)) };
            unsafe { sys::rbd_snap_group_namespace_cleanup(&mut g, size) };
            if gn == group && sn == snap {
                return Ok(Some(s.id));
            }
        }
        Ok(None)
    }

    /// Reads on this handle come from snapshot `id` from now on.
    pub fn snap_set_by_id(&self, id: u64) -> Result<()> {
        check("rbd_snap_set_by_id", &self.name, unsafe {
            sys::rbd_snap_set_by_id(self.img, id)
        })?;
        Ok(())
    }

    /// Copies what this handle reads into a new image `dest` (sparse: zero runs are
    /// not written). EEXIST if `dest` exists.
    pub fn copy_to(&self, dest_io: &IoCtx, dest: &str, opts: &ImageOptions) -> Result<()> {
        let d: CString = cstr("rbd_copy4", dest)?;
        let o = opts.build("rbd_copy4", dest, true)?;
        check("rbd_copy4", &format!("{} -> {dest}", self.name), unsafe {
            sys::rbd_copy4(self.img, dest_io.io, d.as_ptr(), o.0, 4096)
        })?;
        Ok(())
    }
}
