//! In-process mutual exclusion per key (volume name, volume id, snapshot name).
//!
//! CSI COs retry aggressively and the sidecars run calls for one object in parallel;
//! one lock per key serialises them so the journal logic only has to handle
//! other *processes* (done with omap compare-and-set), not other tasks. A waiter gives
//! up after a bound and gets ABORTED, which the CO retries.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyLocks {
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

pub struct KeyGuard {
    _guard: OwnedMutexGuard<()>,
    key: String,
    locks: Arc<KeyLocks>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        // Forget the entry when nobody else holds or waits for it, so the map stays
        // as small as the number of operations in flight.
        let mut map = self.locks.map.lock().unwrap();
        if let Some(m) = map.get(&self.key) {
            if Arc::strong_count(m) <= 2 {
                map.remove(&self.key);
            }
        }
    }
}

impl KeyLocks {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Waits up to `timeout` for the lock on `key`; None on timeout.
    pub async fn lock(self: &Arc<Self>, key: &str, timeout: Duration) -> Option<KeyGuard> {
        let m = {
            let mut map = self.map.lock().unwrap();
            map.entry(key.to_string()).or_default().clone()
        };
        let guard = tokio::time::timeout(timeout, m.lock_owned()).await.ok()?;
        Some(KeyGuard {
            _guard: guard,
            key: key.to_string(),
            locks: self.clone(),
        })
    }
}
