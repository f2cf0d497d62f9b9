//! RBD groups and group snapshots (crash-consistent snapshots of several images at
//! once), and what turns a group snapshot's per-image snapshot into an image of its
//! own: select a snapshot by id (group snapshots live in the group namespace, which
//! name lookups never see) and copy from it.
use libc::{c_char, c_int, size_t};

use crate::{rados_ioctx_t, rbd_image_options_t, rbd_image_t};

pub const RBD_GROUP_SNAP_STATE_INCOMPLETE: c_int = 0;
pub const RBD_GROUP_SNAP_STATE_COMPLETE: c_int = 1;

#[repr(C)]
pub struct rbd_group_snap_info_t {
    pub name: *mut c_char,
    pub state: c_int,
}

#[repr(C)]
pub struct rbd_group_image_info_t {
    pub name: *mut c_char,
    pub pool: i64,
    pub state: c_int,
}

#[repr(C)]
pub struct rbd_snap_group_namespace_t {
    pub group_pool: i64,
    pub group_name: *mut c_char,
    pub group_snap_name: *mut c_char,
}

#[link(name = "rbd")]
extern "C" {
    /// -EEXIST if the group exists.
    pub fn rbd_group_create(p: rados_ioctx_t, name: *const c_char) -> c_int;
    /// Removes the group, its group snapshots and the images' memberships.
    pub fn rbd_group_remove(p: rados_ioctx_t, name: *const c_char) -> c_int;
    /// `names` gets NUL-separated names; -ERANGE with `*size` set when short.
    pub fn rbd_group_list(p: rados_ioctx_t, names: *mut c_char, size: *mut size_t) -> c_int;
    /// -EEXIST if the image is in this group already (-EMLINK: in another group).
    pub fn rbd_group_image_add(
        group_p: rados_ioctx_t,
        group_name: *const c_char,
        image_p: rados_ioctx_t,
        image_name: *const c_char,
    ) -> c_int;
    pub fn rbd_group_image_remove(
        group_p: rados_ioctx_t,
        group_name: *const c_char,
        image_p: rados_ioctx_t,
        image_name: *const c_char,
    ) -> c_int;
    pub fn rbd_group_image_list(
        group_p: rados_ioctx_t,
        group_name: *const c_char,
        images: *mut rbd_group_image_info_t,
        group_image_info_size: size_t,
        num_entries: *mut size_t,
    ) -> c_int;
    pub fn rbd_group_image_list_cleanup(
        images: *mut rbd_group_image_info_t,
        group_image_info_size: size_t,
        num_entries: size_t,
    ) -> c_int;
    /// Quiesces and snapshots every image of the group at one point in time.
    pub fn rbd_group_snap_create(group_p: rados_ioctx_t, group_name: *const c_char, snap_name: *const c_char) -> c_int;
    pub fn rbd_group_snap_remove(group_p: rados_ioctx_t, group_name: *const c_char, snap_name: *const c_char) -> c_int;
    pub fn rbd_group_snap_list(
        group_p: rados_ioctx_t,
        group_name: *const c_char,
        snaps: *mut rbd_group_snap_info_t,
        group_snap_info_size: size_t,
        num_entries: *mut size_t,
    ) -> c_int;
    pub fn rbd_group_snap_list_cleanup(
        snaps: *mut rbd_group_snap_info_t,
        group_snap_info_size: size_t,
        num_entries: size_t,
    ) -> c_int;
    pub fn rbd_snap_get_group_namespace(
        image: rbd_image_t,
        snap_id: u64,
        group_snap: *mut rbd_snap_group_namespace_t,
        group_snap_size: size_t,
    ) -> c_int;
    pub fn rbd_snap_group_namespace_cleanup(
        group_snap: *mut rbd_snap_group_namespace_t,
        group_snap_size: size_t,
    ) -> c_int;
    /// Reads on the handle now come from that snapshot (any namespace).
    pub fn rbd_snap_set_by_id(image: rbd_image_t, snap_id: u64) -> c_int;
    /// Copies what `src` reads (its head, or the snapshot set) into a new image,
    /// skipping runs of `sparse_size` zero bytes.
    pub fn rbd_copy4(
        src: rbd_image_t,
        dest_io_ctx: rados_ioctx_t,
        destname: *const c_char,
        dest_opts: rbd_image_options_t,
        sparse_size: size_t,
    ) -> c_int;
}
