//! Who holds a volume, and fencing a holder that is gone.
//!
//! Kubernetes' attach/detach controller calls ControllerPublishVolume before a node
//! may stage a volume (`attachRequired: true`) and ControllerUnpublishVolume after it
//! has unstaged, or when it gives up on a node (a node shut down for good, tainted
//! `node.kubernetes.io/out-of-service`, or past its force-detach timeout). The journal
//! keeps, per volume:
//!
//! * `pub.<uuid>` → [`Holders`]: the nodes it is published to, each with its access
//!   mode. Written by the controller with an OSD-side compare-and-swap, so two
//!   controller processes cannot both hand a single-writer volume to different nodes.
//! * `claim.<uuid>.<node>` → [`Claim`]: the Ceph client addresses (`ip:port/nonce`) the
//!   node's attachment opened the image with. Written by the node plugin right after
//!   it attaches, so the controller knows exactly which clients are that node's.
//!
//! Rules:
//! 1. A single-node mode (every mode but `MULTI_NODE_*`) has one holder; publishing to
//!    a second node is FAILED_PRECONDITION naming the holder.
//! 2. NodeStageVolume attaches only if the journal says this node holds the volume,
//!    and, for a single-node mode, no other client has the image open (its watchers):
//!    a node that crashed, or is partitioned but still running, keeps its watch.
//! 3. ControllerUnpublishVolume first fences what the departing node may still have
//!    open: it blocklists exactly those client instances (never an address range: the
//!    instance nonce identifies one librados client), waits until their watches are
//!    gone, and only then drops the holder. A node that lost its claim cannot keep
//!    writing: the OSDs refuse its writes. A clean unstage leaves nothing to fence.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::errors::Error;
use serde::{Deserialize, Serialize};
use strake_ceph::{Cluster, IoCtx};
use uuid::Uuid;

use crate::csi::volume_capability::access_mode::Mode;
use crate::images::other_watchers;
use crate::journal::{now_secs, Journal};

/// One node a volume is published to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    /// The CSI access mode name, e.g. `SINGLE_NODE_WRITER`.
    pub mode: String,
    pub readonly: bool,
    pub block: bool,
    pub since: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holders {
    pub holders: Vec<Holder>,
}

/// The Ceph clients a node's attachment of a volume uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: String,
    pub clients: Vec<String>,
    pub at: u64,
}

pub fn holders_key(uuid: &Uuid) -> String {
    format!("pub.{uuid}")
}

pub fn claim_key(uuid: &Uuid, node: &str) -> String {
    format!("claim.{uuid}.{node}")
}

impl Holder {
    pub fn new(node: &str, mode: Mode, readonly: bool, block: bool) -> Self {
        Holder {
            node: node.to_string(),
            mode: mode.as_str_name().to_string(),
            readonly,
            block,
            since: now_secs(),
        }
    }

    fn mode(&self) -> Mode {
        Mode::from_str_name(&self.mode).unwrap_or(Mode::Unknown)
    }

    /// Shared between nodes by design (`MULTI_NODE_*`).
    pub fn multi_node(&self) -> bool {
        matches!(self.mode(), Mode::MultiNodeReaderOnly | Mode::MultiNodeMultiWriter)
    }

    pub fn writer(&self) -> bool {
        !self.readonly && !matches!(self.mode(), Mode::MultiNodeReaderOnly | Mode::SingleNodeReaderOnly)
    }

    /// Whether this holder and `other` (on another node) may hold the volume at once:
    /// both multi-node, and no reader of a filesystem (`MULTI_NODE_READER_ONLY`) next
    /// to a writer, whose changes it would read half-done.
    pub fn shares_with(&self, other: &Holder) -> bool {
        let reader_only = |h: &Holder| h.mode() == Mode::MultiNodeReaderOnly;
        self.multi_node()
            && other.multi_node()
            && !(reader_only(self) && other.writer())
            && !(reader_only(other) && self.writer())
    }

    fn same_capability(&self, other: &Holder) -> bool {
        (&self.mode, self.readonly, self.block) == (&other.mode, other.readonly, other.block)
    }

    fn describe(&self) -> String {
        format!(
            "node {} ({}{})",
            self.node,
            self.mode,
            if self.readonly { ", read-only" } else { "" }
        )
    }
}

fn decode<T: for<'de> Deserialize<'de> + Default>(key: &str, v: Option<&[u8]>) -> Result<T, Error> {
    match v {
        None => Ok(T::default()),
        Some(b) => {
            serde_json::from_slice(b).map_err(|e| Error::internal(format!("journal entry {key} is corrupt: {e}")))
        }
    }
}

pub fn holders(j: &Journal, uuid: &Uuid) -> Result<Holders, Error> {
    let key = holders_key(uuid);
    decode(&key, j.get_raw(&key)?.as_deref())
}

pub fn claim(j: &Journal, uuid: &Uuid, node: &str) -> Result<Option<Claim>, Error> {
    let key = claim_key(uuid, node);
    j.get_raw(&key)?.map(|b| decode::<Claim>(&key, Some(&b))).transpose()
}

/// Node ids become journal keys and appear in errors: Kubernetes node names
/// (DNS subdomains) fit.
pub fn validate_node_id(node: &str) -> Result<(), Error> {
    if node.is_empty() {
        return Err(Error::invalid_argument("node_id is required"));
    }
    if node.len() > 253
        || !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(Error::invalid_argument(format!(
            "node_id {node:?} is not a node name (letters, digits, '.', '-', '_'; at most 253)"
        )));
    }
    Ok(())
}

/// The publish_context NodeStageVolume receives.
pub fn publish_context(h: &Holder) -> HashMap<String, String> {
    HashMap::from([
        ("strake.csi/node".to_string(), h.node.clone()),
        ("strake.csi/readonly".to_string(), h.readonly.to_string()),
    ])
}

/// ControllerPublishVolume: adds `want` as a holder, or answers why not.
pub fn publish(j: &Journal, uuid: &Uuid, volume_id: &str, want: Holder) -> Result<Holder, Error> {
    let key = holders_key(uuid);
    loop {
        let raw = j.get_raw(&key)?;
        let mut hs: Holders = decode(&key, raw.as_deref())?;
        if let Some(h) = hs.holders.iter().find(|h| h.node == want.node) {
            if h.same_capability(&want) {
                return Ok(h.clone());
            }
            return Err(Error::already_exists(format!(
                "volume {volume_id} is already published to {} with another capability; unpublish it first",
                h.describe()
            )));
        }
        if let Some(h) = hs.holders.iter().find(|h| !h.shares_with(&want)) {
            return Err(Error::failed_precondition(format!(
                "volume {volume_id} is published to {}: a {} volume has one node at a time. \
                 Unpublish it from {} first (Kubernetes does once the pod there is gone); if that node is lost \
                 for good, taint it node.kubernetes.io/out-of-service and the detach fences it (csi/README.md, Fencing)",
                h.describe(),
                want.mode,
                h.node
            )));
        }
        hs.holders.push(want.clone());
        let v = serde_json::to_vec(&hs).expect("holders serialise");
        if j.swap(&key, raw.as_deref(), Some(&v))? {
            return Ok(want);
        }
    }
}

/// How fencing blocklists.
#[derive(Debug, Clone, Copy)]
pub struct FenceOptions {
    /// Blocklist entry lifetime (0 = the cluster default, one hour).
    pub expire_secs: u32,
    /// How long to wait for a fenced client's watch to disappear.
    pub wait: Duration,
}

impl Default for FenceOptions {
    fn default() -> Self {
        FenceOptions {
            expire_secs: 0,
            wait: Duration::from_secs(45),
        }
    }
}

/// `[v2:127.0.0.1:0/1234,v1:127.0.0.1:0/1234]` and `127.0.0.1:0/1234` → `127.0.0.1:0/1234`.
fn normalize_addrs(s: &str) -> Vec<String> {
    s.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|a| {
            a.trim()
                .trim_start_matches("v1:")
                .trim_start_matches("v2:")
                .trim_start_matches("any:")
                .to_string()
        })
        .filter(|a| !a.is_empty())
        .collect()
}

/// ControllerUnpublishVolume: fences what `node` may still have open, then drops it
/// as a holder and forgets its claim. Returns the client addresses it blocklisted.
///
/// Which clients are the node's: with no other holder left, every client that has the
/// image open but us (no other node may have it, so whatever is there is a leftover
/// of this node, also one that crashed before recording its claim); with other holders
/// (multi-node modes), exactly the clients in its claim.
pub fn unpublish(
    io: &IoCtx,
    j: &Journal,
    uuid: &Uuid,
    image: &str,
    node: &str,
    ours: &[String],
    opts: FenceOptions,
) -> Result<Vec<String>, Error> {
    let key = holders_key(uuid);
    let ck = claim_key(uuid, node);
    loop {
        let raw = j.get_raw(&key)?;
        let mut hs: Holders = decode(&key, raw.as_deref())?;
        let Some(i) = hs.holders.iter().position(|h| h.node == node) else {
            j.remove_keys(&[&ck])?;
            return Ok(vec![]);
        };
        let gone = hs.holders.remove(i);
        // Fence before the holder goes: a crash in between leaves the holder, and the
        // CO's retry fences again.
        let fenced = fence(io, j, uuid, image, &gone, &hs.holders, ours, opts)?;
        let new = (!hs.holders.is_empty()).then(|| serde_json::to_vec(&hs).expect("holders serialise"));
        if j.swap(&key, raw.as_deref(), new.as_deref())? {
            j.remove_keys(&[&ck])?;
            return Ok(fenced);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fence(
    io: &IoCtx,
    j: &Journal,
    uuid: &Uuid,
    image: &str,
    gone: &Holder,
    remaining: &[Holder],
    ours: &[String],
    opts: FenceOptions,
) -> Result<Vec<String>, Error> {
    let watchers = || -> Result<Vec<String>, Error> {
        Ok(other_watchers(io, image)?
            .unwrap_or_default()
            .into_iter()
            .map(|w| w.addr)
            .collect())
    };
    let open = watchers()?;
    if open.is_empty() {
        return Ok(vec![]);
    }
    let mut keep: HashSet<String> = ours.iter().flat_map(|a| normalize_addrs(a)).collect();
    for h in remaining {
        if let Some(c) = claim(j, uuid, &h.node)? {
            keep.extend(c.clients);
        }
    }
    let mine: Option<HashSet<String>> = if remaining.is_empty() {
        None
    } else {
        Some(
            claim(j, uuid, &gone.node)?
                .map(|c| c.clients)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        )
    };
    let targets: Vec<String> = open
        .into_iter()
        .filter(|a| !keep.contains(a) && mine.as_ref().is_none_or(|m| m.contains(a)))
        .collect();
    for t in &targets {
        io.cluster()
            .blocklist_add(t, opts.expire_secs)
            .map_err(|e| crate::errors::ceph(&format!("blocklisting {t} (fencing node {})", gone.node), e))?;
        tracing::warn!(
            node = gone.node,
            client = t,
            image,
            "fenced: the node left without unstaging; its client is blocklisted and can no longer write"
        );
    }
    // The OSDs drop a blocklisted client's watch once they see the new OSD map.
    let t0 = Instant::now();
    loop {
        let still: Vec<String> = watchers()?.into_iter().filter(|a| targets.contains(a)).collect();
        if still.is_empty() {
            return Ok(targets);
        }
        if t0.elapsed() > opts.wait {
            return Err(Error::unavailable(format!(
                "blocklisted {} for node {} but the OSDs still list their watches after {:?}; retry",
                still.join(", "),
                gone.node,
                opts.wait
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every client address of the connections this process holds (never fenced).
pub fn own_addrs(clusters: &[Cluster]) -> Vec<String> {
    clusters.iter().filter_map(|c| c.addrs().ok()).collect()
}

/// NodeStageVolume, before attaching: the holder record for `node`, or why this node
/// may not attach the volume.
pub fn claim_for_stage(
    io: &IoCtx,
    j: &Journal,
    uuid: &Uuid,
    image: &str,
    volume_id: &str,
    node: &str,
) -> Result<(Holder, Vec<String>), Error> {
    let hs = holders(j, uuid)?;
    let open: Vec<String> = other_watchers(io, image)?
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.addr)
        .collect();
    let me = hs.holders.iter().find(|h| h.node == node).cloned();
    let holders_text = || {
        if hs.holders.is_empty() {
            "no node".to_string()
        } else {
            hs.holders.iter().map(Holder::describe).collect::<Vec<_>>().join(", ")
        }
    };
    let open_text = |open: &[String]| -> Result<String, Error> {
        let mut parts = vec![];
        for a in open {
            let by = hs
                .holders
                .iter()
                .filter(|h| h.node != node)
                .find_map(|h| claim(j, uuid, &h.node).ok().flatten().filter(|c| c.clients.contains(a)))
                .map(|c| format!(" (node {})", c.node))
                .unwrap_or_default();
            parts.push(format!("{a}{by}"));
        }
        Ok(parts.join(", "))
    };
    let Some(me) = me else {
        let still = if open.is_empty() {
            String::new()
        } else {
            format!("; it is open by {}", open_text(&open)?)
        };
        return Err(Error::failed_precondition(format!(
            "volume {volume_id} is not published to node {node} (it is published to {}){still}: \
             ControllerPublishVolume must succeed for this node first",
            holders_text()
        )));
    };
    if !me.multi_node() && !open.is_empty() {
        return Err(Error::failed_precondition(format!(
            "volume {volume_id} is still open by {}: another node has not let go of it. Wait for it to \
             unstage; if that node is lost, ControllerUnpublishVolume from it fences it",
            open_text(&open)?
        )));
    }
    Ok((me, open))
}

/// Records which clients `node`'s attachment uses: the image's watchers now, less
/// those that were there before it attached (other nodes of a multi-node volume).
/// The helper registers its watch when it opens the image; wait a little for it.
pub fn record_claim(
    io: &IoCtx,
    j: &Journal,
    uuid: &Uuid,
    image: &str,
    node: &str,
    before: &[String],
) -> Result<Claim, Error> {
    let t0 = Instant::now();
    let clients = loop {
        let now: Vec<String> = other_watchers(io, image)?
            .unwrap_or_default()
            .into_iter()
            .map(|w| w.addr)
            .filter(|a| !before.contains(a))
            .collect();
        if !now.is_empty() || t0.elapsed() > Duration::from_secs(5) {
            break now;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let c = Claim {
        node: node.to_string(),
        clients,
        at: now_secs(),
    };
    let key = claim_key(uuid, node);
    let v = serde_json::to_vec(&c).expect("claims serialise");
    j.swap(&key, j.get_raw(&key)?.as_deref(), Some(&v))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(node: &str, mode: Mode, ro: bool) -> Holder {
        Holder::new(node, mode, ro, true)
    }

    #[test]
    fn who_may_share_a_volume() {
        let snw = h("a", Mode::SingleNodeWriter, false);
        assert!(!snw.shares_with(&h("b", Mode::SingleNodeWriter, false)));
        assert!(!snw.shares_with(&h("b", Mode::MultiNodeReaderOnly, true)));
        assert!(!h("a", Mode::SingleNodeReaderOnly, true).shares_with(&h("b", Mode::SingleNodeReaderOnly, true)));
        let rox = h("a", Mode::MultiNodeReaderOnly, true);
        assert!(rox.shares_with(&h("b", Mode::MultiNodeReaderOnly, true)));
        let rwx = h("a", Mode::MultiNodeMultiWriter, false);
        assert!(rwx.shares_with(&h("b", Mode::MultiNodeMultiWriter, false)));
        assert!(!rox.shares_with(&rwx), "a read-only filesystem next to a writer");
        assert!(rwx.shares_with(&h("b", Mode::MultiNodeMultiWriter, true)));
    }

    #[test]
    fn addresses_normalize() {
        assert_eq!(
            normalize_addrs("[v2:127.0.0.1:0/3456,v1:127.0.0.1:0/3456]"),
            vec!["127.0.0.1:0/3456", "127.0.0.1:0/3456"]
        );
        assert_eq!(normalize_addrs("127.0.0.1:0/99"), vec!["127.0.0.1:0/99"]);
    }

    #[test]
    fn node_ids() {
        assert!(validate_node_id("worker-1.example").is_ok());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("a/b").is_err());
        assert!(validate_node_id("a\nb").is_err());
    }
}
