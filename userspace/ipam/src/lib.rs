//! Pod address allocation from a node's pod CIDR block.
//!
//! An allocation is keyed by the CNI attachment key (network name, container
//! id, interface name), so a retried ADD gets the address it already has and
//! never a second one. Addresses are handed out round-robin from a cursor, as
//! host-local does, so a freed address is not reused at once (conntrack and
//! peers' caches still remember it). Each allocation carries a record `T`
//! (what the agent knows of the endpoint) and the whole table is saved
//! atomically (write, fsync, rename), so a crash leaves either the old or the
//! new table, never a torn one.
//!
//! Concurrency is the caller's: the agent serializes calls behind one lock,
//! which is what makes 50 parallel CNI ADDs safe.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// CNI's identity of an attachment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address in {cidr} ({used} of {usable} in use); release pods or give the node a larger podCIDR")]
    Exhausted {
        cidr: String,
        used: usize,
        usable: usize,
    },
    #[error("no pod CIDR is known for this node yet (Node spec.podCIDR is empty)")]
    NoBlock,
    #[error("saving IPAM state to {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading IPAM state from {path}: {source}")]
    Load {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "IPAM state in {path} is corrupt ({source}); move it aside to start empty, then run CNI GC"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// A pod CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Block {
    pub fn new(network: Ipv4Addr, prefix: u8) -> Self {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix as u32)
        };
        Block {
            network: Ipv4Addr::from(u32::from(network) & mask),
            prefix,
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        Block::new(ip, self.prefix).network == self.network
    }

    /// First and last usable address. The network and broadcast addresses are
    /// left out even though /32 routing could use them: too many tools treat
    /// them specially.
    fn usable_range(&self) -> (u32, u32) {
        let base = u32::from(self.network);
        let size = 1u64 << (32 - self.prefix as u32);
        if size <= 2 {
            return (base, base + size as u32 - 1);
        }
        (base + 1, base + size as u32 - 2)
    }

    pub fn usable(&self) -> usize {
        let (a, b) = self.usable_range();
        (b - a + 1) as usize
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocation<T> {
    pub key: AttachmentKey,
    pub ip: Ipv4Addr,
    pub record: T,
}

#[derive(Serialize, Deserialize)]
struct Persisted<T> {
    version: u32,
    block: Option<Block>,
    cursor: u32,
    allocations: Vec<Allocation<T>>,
}

/// The allocation table of one node.
pub struct Ipam<T> {
    path: PathBuf,
    block: Option<Block>,
    cursor: u32,
    by_key: BTreeMap<AttachmentKey, Allocation<T>>,
    by_ip: BTreeMap<Ipv4Addr, AttachmentKey>,
}

impl<T: Serialize + DeserializeOwned + Clone> Ipam<T> {
    /// Opens the table saved at `path`, or an empty one if there is none.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, IpamError> {
        let path = path.into();
        let mut ipam = Ipam {
            path: path.clone(),
            block: None,
            cursor: 0,
            by_key: BTreeMap::new(),
            by_ip: BTreeMap::new(),
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let p: Persisted<T> =
                    serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                ipam.block = p.block;
                ipam.cursor = p.cursor;
                for a in p.allocations {
                    ipam.by_ip.insert(a.ip, a.key.clone());
                    ipam.by_key.insert(a.key.clone(), a);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(IpamError::Load { path, source }),
        }
        Ok(ipam)
    }

    pub fn block(&self) -> Option<Block> {
        self.block
    }

    /// Sets the block new addresses come from. Existing allocations outside
    /// it stay valid until released (pods keep their addresses).
    pub fn set_block(&mut self, block: Block) -> Result<(), IpamError> {
        if self.block != Some(block) {
            self.block = Some(block);
            self.cursor = 0;
            self.save()?;
        }
        Ok(())
    }

    pub fn get(&self, key: &AttachmentKey) -> Option<&Allocation<T>> {
        self.by_key.get(key)
    }

    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Allocation<T>> {
        self.by_ip.get(&ip).and_then(|k| self.by_key.get(k))
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation<T>> {
        self.by_key.values()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Whether an ADD could get an address now.
    pub fn has_free(&self) -> bool {
        self.block.is_some_and(|b| self.used_in(b) < b.usable())
    }

    fn used_in(&self, b: Block) -> usize {
        self.by_ip.keys().filter(|ip| b.contains(**ip)).count()
    }

    /// The address for `key`: the one it already has, or a new one.
    /// Saved before it returns.
    pub fn allocate(&mut self, key: AttachmentKey, record: T) -> Result<Ipv4Addr, IpamError> {
        if let Some(a) = self.by_key.get(&key) {
            return Ok(a.ip);
        }
        let block = self.block.ok_or(IpamError::NoBlock)?;
        let (first, last) = block.usable_range();
        let span = last - first + 1;
        let start = if (first..=last).contains(&self.cursor) {
            self.cursor
        } else {
            first
        };
        let found = (0..span)
            .map(|i| first + (start - first + i) % span)
            .find(|c| !self.by_ip.contains_key(&Ipv4Addr::from(*c)))
            .ok_or_else(|| IpamError::Exhausted {
                cidr: block.to_string(),
                used: self.used_in(block),
                usable: block.usable(),
            })?;
        let ip = Ipv4Addr::from(found);
        self.cursor = if found == last { first } else { found + 1 };
        self.by_ip.insert(ip, key.clone());
        self.by_key.insert(
            key.clone(),
            Allocation {
                key: key.clone(),
                ip,
                record,
            },
        );
        if let Err(e) = self.save() {
            // Not durable means not allocated.
            self.by_ip.remove(&ip);
            self.by_key.remove(&key);
            return Err(e);
        }
        Ok(ip)
    }

    /// Replaces the record of an existing allocation in memory only: it is
    /// saved with the next change that is saved. For what the caller can
    /// also recover from elsewhere after a crash (the agent: that an
    /// endpoint is attached, which its data-plane entry shows), so the hot
    /// path pays one fsync per address, not one per step.
    pub fn note(&mut self, key: &AttachmentKey, record: T) -> bool {
        match self.by_key.get_mut(key) {
            Some(a) => {
                a.record = record;
                true
            }
            None => false,
        }
    }

    /// Replaces the record of an existing allocation.
    pub fn update(&mut self, key: &AttachmentKey, record: T) -> Result<bool, IpamError> {
        match self.by_key.get_mut(key) {
            Some(a) => {
                a.record = record;
                self.save()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Releases `key`'s address. Releasing an unknown key is not an error
    /// (DEL is idempotent).
    pub fn release(&mut self, key: &AttachmentKey) -> Result<Option<Allocation<T>>, IpamError> {
        let Some(a) = self.by_key.remove(key) else {
            return Ok(None);
        };
        self.by_ip.remove(&a.ip);
        self.save()?;
        Ok(Some(a))
    }

    fn save(&self) -> Result<(), IpamError> {
        let p = Persisted {
            version: 1,
            block: self.block,
            cursor: self.cursor,
            allocations: self.by_key.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&p).expect("serializable");
        write_atomic(&self.path, &bytes).map_err(|source| IpamError::Save {
            path: self.path.clone(),
            source,
        })
    }
}

/// Writes `bytes` to `path` so that readers and crashes see either the old or
/// the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        // The data must be on disk before the rename makes it the table.
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey {
            network: "k8s-pod-network".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn ipam(dir: &tempfile::TempDir, prefix: u8) -> Ipam<String> {
        let mut i = Ipam::open(dir.path().join("ipam.json")).unwrap();
        i.set_block(Block::new("10.244.1.0".parse().unwrap(), prefix))
            .unwrap();
        i
    }

    #[test]
    fn allocation_is_idempotent_per_attachment() {
        let d = tempfile::tempdir().unwrap();
        let mut i = ipam(&d, 24);
        let a = i.allocate(key("c1"), "x".into()).unwrap();
        assert_eq!(i.allocate(key("c1"), "y".into()).unwrap(), a);
        assert_eq!(i.len(), 1);
        assert_eq!(a, "10.244.1.1".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn addresses_are_unique_and_never_network_or_broadcast() {
        let d = tempfile::tempdir().unwrap();
        let mut i = ipam(&d, 28);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..14 {
            let ip = i.allocate(key(&format!("c{n}")), String::new()).unwrap();
            assert!(seen.insert(ip), "{ip} handed out twice");
            assert!(
                ip != "10.244.1.0".parse::<Ipv4Addr>().unwrap()
                    && ip != "10.244.1.15".parse::<Ipv4Addr>().unwrap()
            );
        }
        match i.allocate(key("one-too-many"), String::new()) {
            Err(IpamError::Exhausted { used, usable, .. }) => assert_eq!((used, usable), (14, 14)),
            other => panic!("expected exhaustion, got {other:?}"),
        }
        assert!(!i.has_free());
    }

    #[test]
    fn freed_addresses_are_not_reused_at_once() {
        let d = tempfile::tempdir().unwrap();
        let mut i = ipam(&d, 24);
        let a = i.allocate(key("a"), String::new()).unwrap();
        i.release(&key("a")).unwrap();
        let b = i.allocate(key("b"), String::new()).unwrap();
        assert_ne!(a, b, "round-robin moves on");
        assert!(i.release(&key("never-allocated")).unwrap().is_none());
    }

    #[test]
    fn a_noted_record_is_saved_with_the_next_change_only() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ipam.json");
        let mut i = ipam(&d, 24);
        i.allocate(key("a"), "allocated".into()).unwrap();
        assert!(i.note(&key("a"), "attached".into()));
        assert!(!i.note(&key("unknown"), "x".into()));
        assert_eq!(i.get(&key("a")).unwrap().record, "attached");
        let reopened: Ipam<String> = Ipam::open(&path).unwrap();
        assert_eq!(reopened.get(&key("a")).unwrap().record, "allocated");
        i.allocate(key("b"), String::new()).unwrap();
        let reopened: Ipam<String> = Ipam::open(&path).unwrap();
        assert_eq!(reopened.get(&key("a")).unwrap().record, "attached");
    }

    #[test]
    fn state_survives_reopening() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = {
            let mut i = ipam(&d, 24);
            let a = i.allocate(key("a"), "rec-a".into()).unwrap();
            let b = i.allocate(key("b"), "rec-b".into()).unwrap();
            i.release(&key("a")).unwrap();
            (a, b)
        };
        let mut i: Ipam<String> = Ipam::open(d.path().join("ipam.json")).unwrap();
        assert_eq!(i.get(&key("b")).unwrap().ip, b);
        assert_eq!(i.get(&key("b")).unwrap().record, "rec-b");
        assert!(i.get(&key("a")).is_none());
        // The cursor was saved too: no reuse of a or b.
        let c = i.allocate(key("c"), String::new()).unwrap();
        assert!(c != a && c != b);
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ipam.json"), b"{not json").unwrap();
        let e = Ipam::<String>::open(d.path().join("ipam.json"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn no_block_means_try_later() {
        let d = tempfile::tempdir().unwrap();
        let mut i: Ipam<String> = Ipam::open(d.path().join("x.json")).unwrap();
        assert!(matches!(
            i.allocate(key("a"), String::new()),
            Err(IpamError::NoBlock)
        ));
    }
}
