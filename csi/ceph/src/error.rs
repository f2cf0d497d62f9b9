use std::fmt;

/// A failed librados/librbd call: which call, on what, and the errno it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CephError {
    pub op: &'static str,
    pub target: String,
    /// Positive errno (librados/librbd return `-errno`).
    pub errno: i32,
    /// Extra text from the cluster (mon command status string), if any.
    pub detail: String,
}

impl CephError {
    pub fn new(op: &'static str, target: impl Into<String>, ret: i32) -> Self {
        CephError {
            op,
            target: target.into(),
            errno: ret.abs(),
            detail: String::new(),
        }
    }
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
    pub fn is_not_found(&self) -> bool {
        self.errno == libc::ENOENT
    }
    pub fn is_exists(&self) -> bool {
        self.errno == libc::EEXIST
    }
    pub fn is_busy(&self) -> bool {
        self.errno == libc::EBUSY
    }
    /// Authentication/authorisation failures (bad cephx key, missing caps).
    pub fn is_permission(&self) -> bool {
        matches!(self.errno, libc::EACCES | libc::EPERM)
    }
    pub fn is_timeout(&self) -> bool {
        matches!(self.errno, libc::ETIMEDOUT | libc::EINTR)
    }
    /// Short symbolic errno name for metrics labels and log fields.
    pub fn errno_name(&self) -> &'static str {
        errno_name(self.errno)
    }
}

pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECANCELED => "ECANCELED",
        libc::EDQUOT => "EDQUOT",
        // librados reports a blocklisted client as ESHUTDOWN
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "EOTHER",
    }
}

impl fmt::Display for CephError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = std::io::Error::from_raw_os_error(self.errno);
        write!(
            f,
            "{}({}) failed: {} ({})",
            self.op,
            self.target,
            msg,
            errno_name(self.errno)
        )?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for CephError {}

pub type Result<T> = std::result::Result<T, CephError>;
