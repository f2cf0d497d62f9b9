//! The driver's own error type, and Ceph errors turned into it with messages that say
//! what to do.
//!
//! The domain layer (journal, params, images, kms, luks, publish, the volume, snapshot
//! and group-snapshot workflows, sweep) returns [`Error`]: a [`Kind`] in CSI's terms
//! and a message for the operator. Only the gRPC edge (the `Controller`,
//! `GroupController`, `Node` and `Identity` trait impls) turns it into a
//! `tonic::Status`, through `From`, so `?` there does the conversion.
use strake_ceph::CephError;
use tonic::Status;

/// What kind of failure, as the CSI spec names the codes a CO acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    PermissionDenied,
    Unavailable,
    /// Another operation on the same object is in flight: retry.
    Aborted,
    OutOfRange,
    Internal,
}

/// A failure of the driver's domain layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: Kind,
    message: String,
}

macro_rules! constructors {
    ($($f:ident => $k:ident),* $(,)?) => {
        impl Error {
            $(pub fn $f(message: impl Into<String>) -> Self {
                Error { kind: Kind::$k, message: message.into() }
            })*
        }
    };
}

constructors! {
    invalid_argument => InvalidArgument,
    not_found => NotFound,
    already_exists => AlreadyExists,
    failed_precondition => FailedPrecondition,
    resource_exhausted => ResourceExhausted,
    permission_denied => PermissionDenied,
    unavailable => Unavailable,
    aborted => Aborted,
    out_of_range => OutOfRange,
    internal => Internal,
}

impl Error {
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The one place a domain error becomes a gRPC status.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match e.kind {
            Kind::InvalidArgument => tonic::Code::InvalidArgument,
            Kind::NotFound => tonic::Code::NotFound,
            Kind::AlreadyExists => tonic::Code::AlreadyExists,
            Kind::FailedPrecondition => tonic::Code::FailedPrecondition,
            Kind::ResourceExhausted => tonic::Code::ResourceExhausted,
            Kind::PermissionDenied => tonic::Code::PermissionDenied,
            Kind::Unavailable => tonic::Code::Unavailable,
            Kind::Aborted => tonic::Code::Aborted,
            Kind::OutOfRange => tonic::Code::OutOfRange,
            Kind::Internal => tonic::Code::Internal,
        };
        Status::new(code, e.message)
    }
}

/// Maps a failed Ceph call to a gRPC status. `ctx` says what we were doing
/// ("creating image csi-strake-vol-…"). Every mapped error is counted in metrics.
pub fn ceph(ctx: &str, e: CephError) -> Error {
    crate::metrics::ceph_error(&e);
    let msg = format!("{ctx}: {e}");
    match e.errno {
        libc::EACCES | libc::EPERM => Error::permission_denied(format!(
            "{msg}. Ceph rejected the credentials or the user lacks caps: check userID/userKey in the \
             secret named by csi.storage.k8s.io/*-secret-name and that the user has \
             mon 'profile rbd' and osd 'profile rbd pool=<pool>'"
        )),
        libc::ENOENT => Error::not_found(msg),
        libc::ENOSPC | libc::EDQUOT => Error::resource_exhausted(format!("{msg}. The pool is full or over quota")),
        libc::ETIMEDOUT | libc::EINTR => Error::unavailable(format!(
            "{msg}. The Ceph cluster did not answer in time; check `ceph -s` and the mon addresses in ceph.conf"
        )),
        libc::ESHUTDOWN => Error::unavailable(format!("{msg}. This client was blocklisted by the cluster; retry")),
        _ => Error::internal(msg),
    }
}

/// Connection failures get their own wording: they are usually credentials or reachability.
pub fn connect(user: &str, e: CephError) -> Error {
    crate::metrics::ceph_error(&e);
    match e.errno {
        libc::EACCES | libc::EPERM | libc::EINVAL => Error::permission_denied(format!(
            "cephx authentication as client.{user} failed ({e}); check userKey in the secret \
             (csi.storage.k8s.io/*-secret-name) matches `ceph auth get-key client.{user}`"
        )),
        libc::ETIMEDOUT | libc::EINTR | libc::ENOENT => Error::unavailable(format!(
            "cannot reach the Ceph monitors as client.{user} ({e}); check `mon host` in the ceph.conf given by --ceph-conf"
        )),
        _ => Error::unavailable(format!("connecting to Ceph as client.{user}: {e}")),
    }
}

/// Runs blocking Ceph work on the blocking pool; a panic there becomes INTERNAL.
pub async fn blocking<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("worker task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_keeps_its_code_and_message_at_the_edge() {
        for (e, code) in [
            (Error::invalid_argument("a"), tonic::Code::InvalidArgument),
            (Error::not_found("a"), tonic::Code::NotFound),
            (Error::already_exists("a"), tonic::Code::AlreadyExists),
            (Error::failed_precondition("a"), tonic::Code::FailedPrecondition),
            (Error::resource_exhausted("a"), tonic::Code::ResourceExhausted),
            (Error::permission_denied("a"), tonic::Code::PermissionDenied),
            (Error::unavailable("a"), tonic::Code::Unavailable),
            (Error::aborted("a"), tonic::Code::Aborted),
            (Error::out_of_range("a"), tonic::Code::OutOfRange),
            (Error::internal("a"), tonic::Code::Internal),
        ] {
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, "a"));
        }
        let e = ceph(
            "opening image x",
            CephError {
                op: "rbd_open",
                target: "x".into(),
                errno: libc::ENOENT,
                detail: String::new(),
            },
        );
        assert_eq!(e.kind(), Kind::NotFound);
        assert!(e.message().starts_with("opening image x: "), "{e}");
    }
}
