//! Cluster connections, cached per cephx identity.
//!
//! Connecting costs ~10-15 ms and a mon round trip, so a connection is made once per
//! (user, key) and reused. Keys are held only in memory. Requests without secrets
//! (ListVolumes, GetCapacity) use the driver's own identity (`--ceph-user`,
//! `--ceph-key-file`, or the ceph.conf keyring).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::errors::Error;
use strake_ceph::{Cluster, ConnectOptions, Credentials};

pub struct Connections {
    conf: PathBuf,
    timeout: Duration,
    own: Option<Credentials>,
    cache: Mutex<HashMap<Option<Credentials>, Cluster>>,
}

impl Connections {
    pub fn new(conf: PathBuf, timeout: Duration, own: Option<Credentials>) -> Self {
        Connections {
            conf,
            timeout,
            own,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn conf(&self) -> &std::path::Path {
        &self.conf
    }

    /// Every connection made so far (their clients are ours: fencing spares them).
    pub fn all(&self) -> Vec<Cluster> {
        self.cache.lock().unwrap().values().cloned().collect()
    }

    /// A connection as `creds`, or as the driver's own identity when None. Blocking.
    pub fn get(&self, creds: Option<&Credentials>) -> Result<Cluster, Error> {
        let key = creds.cloned().or_else(|| self.own.clone());
        if let Some(c) = self.cache.lock().unwrap().get(&key) {
            return Ok(c.clone());
        }
        let opts = ConnectOptions {
            conf: self.conf.clone(),
            credentials: key.clone(),
            op_timeout: self.timeout,
        };
        let user = key.as_ref().map(|c| c.user.clone()).unwrap_or_else(|| "admin".into());
        let c = Cluster::connect(&opts).map_err(|e| crate::errors::connect(&user, e))?;
        // Two racing connects both succeed; one wins the slot, the other is dropped.
        Ok(self.cache.lock().unwrap().entry(key).or_insert(c).clone())
    }
}

/// Reads cephx credentials from a CSI `secrets` map (keys `userID`, `userKey`, as
/// ceph-csi's secrets use). Never logs the key.
pub fn credentials(secrets: &HashMap<String, String>, rpc: &str, secret_param: &str) -> Result<Credentials, Error> {
    let user = secrets.get("userID").map(|s| s.trim()).filter(|s| !s.is_empty());
    let key = secrets.get("userKey").map(|s| s.trim()).filter(|s| !s.is_empty());
    match (user, key) {
        (Some(u), Some(k)) => {
            let u = u.strip_prefix("client.").unwrap_or(u);
            // Both end up in a keyring file and on helpers' command lines.
            crate::validate::ceph_user(u)
                .and_then(|_| crate::validate::cephx_key(k))
                .map_err(|e| Error::invalid_argument(format!("{rpc}: the secret's {e}")))?;
            Ok(Credentials::new(u, k))
        }
        _ => Err(Error::invalid_argument(format!(
            "{rpc} needs Ceph credentials: the request's secrets must contain userID and userKey. \
             Point csi.storage.k8s.io/{secret_param}-secret-name and -namespace in the StorageClass \
             (or VolumeSnapshotClass) at a Secret with those keys"
        ))),
    }
}
