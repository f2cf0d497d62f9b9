//! Ceph image operations the controller's workflows share: opening pools and images,
//! clone chains, and removal that tells "in use" from "has clones".
use strake_ceph::{CephError, Image, IoCtx, Watcher};

use crate::errors::{self, Error};
use crate::failpoint;
use crate::ids::Naming;

pub(crate) fn ioctx(cluster: &strake_ceph::Cluster, pool: &str) -> Result<IoCtx, Error> {
    cluster.ioctx(pool).map_err(|e| {
        if e.is_not_found() {
            Error::invalid_argument(format!(
                "pool {pool:?} does not exist; create it or fix the pool parameter"
            ))
        } else {
            errors::ceph(&format!("opening pool {pool}"), e)
        }
    })
}

/// The ioctx of an image that lives in `own` rather than `io`'s pool (topology
/// pools); None when it is `io`'s. Use as `let io = x.as_ref().unwrap_or(io)`.
pub(crate) fn other_pool(io: &IoCtx, own: &Option<String>) -> Result<Option<IoCtx>, Error> {
    match own {
        Some(p) if p != io.pool() => Ok(Some(ioctx(io.cluster(), p)?)),
        _ => Ok(None),
    }
}

/// ioctx for a pool named inside an id: a missing pool means the object is gone.
pub(crate) fn ioctx_for_id(cluster: &strake_ceph::Cluster, pool: &str) -> Result<Option<IoCtx>, Error> {
    match cluster.ioctx(pool) {
        Ok(io) => Ok(Some(io)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(errors::ceph(&format!("opening pool {pool}"), e)),
    }
}

pub(crate) fn ok_if<T>(r: Result<T, CephError>, pred: impl Fn(&CephError) -> bool, ctx: &str) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if pred(&e) => Ok(()),
        Err(e) => Err(errors::ceph(ctx, e)),
    }
}

pub(crate) fn open(io: &IoCtx, image: &str) -> Result<Image, Error> {
    io.open(image)
        .map_err(|e| errors::ceph(&format!("opening image {}/{image}", io.pool()), e))
}

/// Number of ancestors of an image (0 for a plain image).
pub(crate) fn clone_depth(io: &IoCtx, img: &Image) -> Result<u32, Error> {
    let mut depth = 0;
    let mut parent = img.parent().map_err(|e| errors::ceph("reading clone parent", e))?;
    while let Some(p) = parent {
        depth += 1;
        if depth > 64 {
            break;
        }
        let pio = if p.pool == io.pool() {
            None
        } else {
            Some(ioctx(io.cluster(), &p.pool)?)
        };
        let pio_ref = pio.as_ref().unwrap_or(io);
        // by id: the parent may be in the RBD trash
        let pimg = pio_ref
            .open_by_id(&p.image_id)
            .map_err(|e| errors::ceph("opening clone parent", e))?;
        parent = pimg.parent().map_err(|e| errors::ceph("reading clone parent", e))?;
    }
    Ok(depth)
}

pub(crate) fn flatten_if_deep(io: &IoCtx, img: &Image, max: u32) -> Result<(), Error> {
    let d = clone_depth(io, img)?;
    if d > max {
        tracing::info!(image = img.name(), depth = d, max, "clone chain too deep: flattening");
        img.flatten()
            .map_err(|e| errors::ceph(&format!("flattening {}", img.name()), e))?;
    }
    Ok(())
}

/// Clients other than us that have `image` open (mapped or attached on a node). Read
/// through a read-only handle, which registers no watch of its own.
pub fn other_watchers(io: &IoCtx, image: &str) -> Result<Option<Vec<Watcher>>, Error> {
    match io.open_read_only(image) {
        Ok(img) => img
            .watchers()
            .map(Some)
            .map_err(|e| errors::ceph(&format!("listing watchers of {}/{image}", io.pool()), e)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(errors::ceph(&format!("opening {}/{image}", io.pool()), e)),
    }
}

/// FAILED_PRECONDITION naming who has `image` open.
pub fn in_use(io: &IoCtx, image: &str, watchers: &[Watcher]) -> Error {
    let addrs: Vec<&str> = watchers.iter().map(|w| w.addr.as_str()).collect();
    Error::failed_precondition(format!(
        "image {}/{image} is still in use, open by {}: unstage the volume on its node first. \
         A client left by a crashed node loses its watch within ~30 s; if the node is lost for \
         good, fence that exact client with `ceph osd blocklist add <addr>` (see csi/README.md, Fencing)",
        io.pool(),
        addrs.join(", ")
    ))
}

/// Fails with [`in_use`] when any client has the image open; Ok when it is absent.
pub fn refuse_if_open(io: &IoCtx, image: &str) -> Result<(), Error> {
    match other_watchers(io, image)? {
        Some(w) if !w.is_empty() => Err(in_use(io, image, &w)),
        _ => Ok(()),
    }
}

/// Removes an image, or parks it in the RBD trash when clones still depend on it.
///
/// What librbd's refusal means decides what happens: EBUSY (a client has the image
/// open) is FAILED_PRECONDITION naming that client, and the image stays where it is;
/// only ENOTEMPTY with clones proven to depend on its snapshots sends it to the trash.
/// An image in use is never moved: a trashed image that a node still writes to would
/// be purged under it.
pub fn remove_or_trash(io: &IoCtx, image: &str) -> Result<(), Error> {
    if io
        .open_if_exists(image)
        .map_err(|e| errors::ceph(&format!("opening {image}"), e))?
        .is_none()
    {
        return Ok(());
    }
    refuse_if_open(io, image)?;
    {
        let img = open(io, image)?;
        let snaps = img
            .snaps()
            .map_err(|e| errors::ceph(&format!("listing snapshots of {image}"), e))?;
        for s in snaps.iter().filter(|s| !s.trashed) {
            ok_if(
                img.snap_remove(&s.name),
                CephError::is_not_found,
                &format!("removing snapshot {image}@{}", s.name),
            )?;
        }
    }
    failpoint::delay("delete:before-remove");
    match io.remove_image(image) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) if e.is_busy() => {
            let w = other_watchers(io, image)?.unwrap_or_default();
            Err(in_use(io, image, &w))
        }
        Err(e) if e.errno == libc::EMLINK => Err(Error::failed_precondition(format!(
            "image {}/{image} is a member of an RBD group (a volume group snapshot in progress?); \
             retry once it finishes",
            io.pool()
        ))),
        Err(e) if e.errno == libc::ENOTEMPTY => {
            // Snapshots remain: the trashed ones clone v2 keeps for clones. Trash the
            // image only when that is really why, and nobody has it open.
            let img = open(io, image)?;
            let children = img
                .children()
                .map_err(|e| errors::ceph(&format!("listing clones of {image}"), e))?;
            drop(img);
            if children.is_empty() {
                return Err(errors::ceph(
                    &format!(
                        "removing image {}/{image}: it still has snapshots but no clones",
                        io.pool()
                    ),
                    e,
                ));
            }
            refuse_if_open(io, image)?;
            tracing::info!(
                image,
                clones = children.len(),
                "image still has clones: moving it to the RBD trash until they are gone"
            );
            ok_if(
                io.trash_move(image),
                CephError::is_not_found,
                &format!("moving {image} to trash"),
            )
        }
        Err(e) => Err(errors::ceph(&format!("removing image {}/{image}", io.pool()), e)),
    }
}

/// Removes our images from the RBD trash once nothing depends on them. Best effort:
/// runs after every delete, and `sweep` runs it too.
pub fn purge_trash(io: &IoCtx, naming: &Naming) -> usize {
    let mut removed = 0;
    loop {
        let Ok(entries) = io.trash_list() else { return removed };
        let mut progressed = false;
        for e in entries.iter().filter(|e| naming.parse_image(&e.name).is_some()) {
            if io.trash_remove(&e.id).is_ok() {
                tracing::info!(image = e.name, "purged from the RBD trash");
                removed += 1;
                progressed = true;
            }
        }
        if !progressed {
            return removed;
        }
    }
}

/// rbd_clone3 with clone format 2 fails with EINVAL-ish errors when the cluster still
/// allows pre-mimic clients; say so.
pub(crate) fn clone_hint(s: Error) -> Error {
    if s.kind() == errors::Kind::Internal && (s.message().contains("EINVAL") || s.message().contains("EOPNOTSUPP")) {
        Error::failed_precondition(format!(
            "{}. Clone v2 needs `ceph osd set-require-min-compat-client mimic` on the cluster",
            s.message()
        ))
    } else {
        s
    }
}
