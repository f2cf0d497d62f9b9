//! Turning Ceph errors into CSI gRPC statuses with messages that say what to do.
use strake_ceph::CephError;
use tonic::Status;

/// Maps a failed Ceph call to a gRPC status. `ctx` says what we were doing
/// ("creating image csi-strake-vol-…"). Every mapped error is counted in metrics.
pub fn ceph(ctx: &str, e: CephError) -> Status {
    crate::metrics::ceph_error(&e);
    let msg = format!("{ctx}: {e}");
    match e.errno {
        libc::EACCES | libc::EPERM => Status::permission_denied(format!(
            "{msg}. Ceph rejected the credentials or the user lacks caps: check userID/userKey in the \
             secret named by csi.storage.k8s.io/*-secret-name and that the user has \
             mon 'profile rbd' and osd 'profile rbd pool=<pool>'"
        )),
        libc::ENOENT => Status::not_found(msg),
        libc::ENOSPC | libc::EDQUOT => Status::resource_exhausted(format!("{msg}. The pool is full or over quota")),
        libc::ETIMEDOUT | libc::EINTR => Status::unavailable(format!(
            "{msg}. The Ceph cluster did not answer in time; check `ceph -s` and the mon addresses in ceph.conf"
        )),
        libc::ESHUTDOWN => Status::unavailable(format!("{msg}. This client was blocklisted by the cluster; retry")),
        _ => Status::internal(msg),
    }
}

/// Connection failures get their own wording: they are usually credentials or reachability.
pub fn connect(user: &str, e: CephError) -> Status {
    crate::metrics::ceph_error(&e);
    match e.errno {
        libc::EACCES | libc::EPERM | libc::EINVAL => Status::permission_denied(format!(
            "cephx authentication as client.{user} failed ({e}); check userKey in the secret \
             (csi.storage.k8s.io/*-secret-name) matches `ceph auth get-key client.{user}`"
        )),
        libc::ETIMEDOUT | libc::EINTR | libc::ENOENT => Status::unavailable(format!(
            "cannot reach the Ceph monitors as client.{user} ({e}); check `mon host` in the ceph.conf given by --ceph-conf"
        )),
        _ => Status::unavailable(format!("connecting to Ceph as client.{user}: {e}")),
    }
}

/// Runs blocking Ceph work on the blocking pool; a panic there becomes INTERNAL.
pub async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, Status> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker task failed: {e}")))?
}
