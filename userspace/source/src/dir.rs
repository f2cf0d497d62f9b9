//! Standalone mode: desired state from directories of ordinary Kubernetes YAML
//! (multi-document files welcome), watched for changes.
//!
//! Directories are read in order. When an object appears again with no
//! `spec`, only its `status` is taken, merged into the earlier one: that is
//! how the lab plays kubelet, writing pod IPs to a status directory of its own
//! without touching the user's files.

use crate::state::{ClusterState, CustomResource, Object, ObjectRef, Op, BGP_API_VERSION};
use crate::{Batch, BatchSender};
use anyhow::{anyhow, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One parsed document.
#[derive(Debug, Clone)]
pub enum Document {
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    /// `bgp.strake.dev/v1` BGPConfiguration and BGPPeer.
    BgpConfiguration(Box<CustomResource>),
    BgpPeer(Box<CustomResource>),
    /// A kind the agent does not consume (Deployments, the lab's own kinds,
    /// ...): kept by name so callers can tell what was skipped.
    Other {
        api_version: String,
        kind: String,
        value: serde_yaml::Value,
    },
}

/// Parses every document of a YAML (or JSON) text. A document that fails to
/// parse yields an error naming its index; the others still come through.
pub fn parse_documents(text: &str) -> Vec<Result<Document>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize_from(doc) {
            Ok(serde_yaml::Value::Null) => continue, // empty document
            Ok(v) => v,
            Err(e) => {
                // A syntax error ends the stream: the parser cannot find the
                // next document boundary reliably (and keeps failing).
                out.push(Err(anyhow!("document {}: not valid YAML: {e}", i + 1)));
                break;
            }
        };
        out.push(parse_value(value).with_context(|| format!("document {}", i + 1)));
    }
    out
}

trait DeserializeFrom {
    fn deserialize_from(
        d: serde_yaml::Deserializer<'_>,
    ) -> Result<serde_yaml::Value, serde_yaml::Error>;
}
impl DeserializeFrom for serde_yaml::Value {
    fn deserialize_from(
        d: serde_yaml::Deserializer<'_>,
    ) -> Result<serde_yaml::Value, serde_yaml::Error> {
        serde::Deserialize::deserialize(d)
    }
}

fn parse_value(value: serde_yaml::Value) -> Result<Document> {
    let field = |k: &str| {
        value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if kind.is_empty() {
        anyhow::bail!("no `kind`: every document must be a Kubernetes object");
    }
    fn typed<T: serde::de::DeserializeOwned>(v: serde_yaml::Value, kind: &str) -> Result<Box<T>> {
        serde_yaml::from_value(v)
            .map(Box::new)
            .with_context(|| format!("not a valid {kind}"))
    }
    Ok(match (api_version.as_str(), kind.as_str()) {
        ("v1", "Node") => Document::Node(typed(value, &kind)?),
        ("v1", "Namespace") => Document::Namespace(typed(value, &kind)?),
        ("v1", "Pod") => Document::Pod(typed(value, &kind)?),
        ("v1", "Service") => Document::Service(typed(value, &kind)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => Document::EndpointSlice(typed(value, &kind)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => Document::NetworkPolicy(typed(value, &kind)?),
        (BGP_API_VERSION, "BGPConfiguration") => Document::BgpConfiguration(typed(value, &kind)?),
        (BGP_API_VERSION, "BGPPeer") => Document::BgpPeer(typed(value, &kind)?),
        (BGP_API_VERSION, other) => anyhow::bail!(
            "{BGP_API_VERSION} has no kind {other} (BGPConfiguration and BGPPeer exist)"
        ),
        _ => Document::Other {
            api_version,
            kind,
            value,
        },
    })
}

impl Document {
    /// The object a document stands for, if it is of a kind the data plane
    /// reads.
    pub fn into_object(self) -> Option<Object> {
        Some(match self {
            Document::Node(n) => Object::Node(Arc::new(*n)),
            Document::Namespace(n) => Object::Namespace(Arc::new(*n)),
            Document::Pod(p) => Object::Pod(Arc::new(*p)),
            Document::Service(s) => Object::Service(Arc::new(*s)),
            Document::EndpointSlice(e) => Object::EndpointSlice(Arc::new(*e)),
            Document::NetworkPolicy(p) => Object::NetworkPolicy(Arc::new(*p)),
            Document::BgpConfiguration(c) => Object::BgpConfiguration(Arc::new(*c)),
            Document::BgpPeer(c) => Object::BgpPeer(Arc::new(*c)),
            Document::Other { .. } => return None,
        })
    }
}

/// Folds a later document for the same object into an earlier one: a
/// document without `spec` (Nodes, Pods, Services) adds only its `status`,
/// as the lab writes pod IPs the way kubelet would; any other replaces it.
pub fn merge(earlier: Object, later: Object) -> Object {
    fn status_only<T: Clone, S: Clone>(
        base: &Arc<T>,
        later: &Arc<T>,
        spec: impl Fn(&T) -> Option<&S>,
        set_status: impl Fn(&mut T, &T),
    ) -> Option<Arc<T>> {
        if spec(later).is_some() {
            return None;
        }
        let mut b = (**base).clone();
        set_status(&mut b, later);
        Some(Arc::new(b))
    }
    let merged = match (&earlier, &later) {
        (Object::Node(a), Object::Node(b)) => status_only(
            a,
            b,
            |n| n.spec.as_ref(),
            |n, l| n.status = l.status.clone(),
        )
        .map(Object::Node),
        (Object::Pod(a), Object::Pod(b)) => status_only(
            a,
            b,
            |n| n.spec.as_ref(),
            |n, l| n.status = l.status.clone(),
        )
        .map(Object::Pod),
        (Object::Service(a), Object::Service(b)) => status_only(
            a,
            b,
            |n| n.spec.as_ref(),
            |n, l| n.status = l.status.clone(),
        )
        .map(Object::Service),
        _ => None,
    };
    merged.unwrap_or(later)
}

/// A state from one YAML text, documents merged as the directory source
/// merges them (for tests and tools).
pub fn state_from_yaml(text: &str) -> Result<ClusterState> {
    let mut merged: BTreeMap<ObjectRef, Object> = BTreeMap::new();
    for d in parse_documents(text) {
        let Some(o) = d?.into_object() else { continue };
        let r = o
            .reference()
            .ok_or_else(|| anyhow!("{} without metadata.name", o.kind().name()))?;
        let o = match merged.remove(&r) {
            Some(e) => merge(e, o),
            None => o,
        };
        merged.insert(r, o);
    }
    let mut st = ClusterState::from_objects(merged.into_values());
    st.synced = true;
    Ok(st)
}

/// Directories of YAML, read in order and watched.
#[derive(Debug, Clone)]
pub struct DirSource {
    dirs: Vec<PathBuf>,
    /// Fallback re-read period, for changes inotify cannot see (a directory
    /// that did not exist yet, network filesystems).
    pub resync: Duration,
}

/// Where an object's document sits: directory order, file, place in file.
type Place = (usize, PathBuf, usize);

/// What the source remembers between scans: per file, its stamp and the
/// objects it contributed; per object, its contributions in order and what
/// was published. Objects are trimmed and shared with the consumer, so this
/// costs little beyond the consumer's own copy.
#[derive(Default)]
struct Scan {
    files: BTreeMap<PathBuf, FileEntry>,
    contributions: BTreeMap<ObjectRef, BTreeMap<Place, Object>>,
    published: BTreeMap<ObjectRef, Object>,
}

struct FileEntry {
    stamp: (SystemTime, u64),
    places: Vec<(ObjectRef, Place)>,
    errors: Vec<String>,
}

impl Scan {
    /// Reads what changed since the last scan; returns the operations that
    /// bring a consumer from the last published state to the current one.
    fn rescan(&mut self, dirs: &[PathBuf]) -> Vec<Op> {
        let mut touched: BTreeSet<ObjectRef> = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for (di, dir) in dirs.iter().enumerate() {
            for file in yaml_files(dir) {
                let stamp = match std::fs::metadata(&file) {
                    Ok(m) => (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()),
                    Err(_) => continue, // removed while we listed
                };
                seen.insert(file.clone());
                if self.files.get(&file).is_some_and(|f| f.stamp == stamp) {
                    continue;
                }
                self.forget_file(&file, &mut touched);
                let docs = match std::fs::read_to_string(&file) {
                    Ok(text) => parse_documents(&text),
                    Err(e) => vec![Err(anyhow!("reading: {e}"))],
                };
                let mut entry = FileEntry {
                    stamp,
                    places: Vec::new(),
                    errors: Vec::new(),
                };
                for (i, d) in docs.into_iter().enumerate() {
                    let obj = match d {
                        Ok(d) => match d.into_object() {
                            Some(o) => o,
                            None => continue,
                        },
                        Err(e) => {
                            entry.errors.push(format!("{}: {e:#}", file.display()));
                            continue;
                        }
                    };
                    let Some(r) = obj.reference() else {
                        entry.errors.push(format!(
                            "{}: document {}: {} without metadata.name",
                            file.display(),
                            i + 1,
                            obj.kind().name()
                        ));
                        continue;
                    };
                    let place = (di, file.clone(), i);
                    self.contributions
                        .entry(r.clone())
                        .or_default()
                        .insert(place.clone(), obj.trimmed());
                    touched.insert(r.clone());
                    entry.places.push((r, place));
                }
                self.files.insert(file, entry);
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|f| !seen.contains(*f))
            .cloned()
            .collect();
        for f in gone {
            self.forget_file(&f, &mut touched);
        }
        let mut ops = Vec::new();
        for r in touched {
            let merged = self
                .contributions
                .get(&r)
                .and_then(|c| c.values().cloned().reduce(merge));
            match merged {
                Some(o) => {
                    if self.published.get(&r) != Some(&o) {
                        self.published.insert(r, o.clone());
                        ops.push(Op::Upsert(o));
                    }
                }
                None => {
                    if self.published.remove(&r).is_some() {
                        ops.push(Op::Delete(r));
                    }
                }
            }
        }
        ops
    }

    fn forget_file(&mut self, file: &Path, touched: &mut BTreeSet<ObjectRef>) {
        let Some(old) = self.files.remove(file) else {
            return;
        };
        for (r, place) in old.places {
            if let Some(c) = self.contributions.get_mut(&r) {
                c.remove(&place);
                if c.is_empty() {
                    self.contributions.remove(&r);
                }
            }
            touched.insert(r);
        }
    }

    fn errors(&self) -> Vec<String> {
        self.files
            .values()
            .flat_map(|f| f.errors.iter().cloned())
            .collect()
    }
}

impl DirSource {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        DirSource {
            dirs,
            resync: Duration::from_secs(10),
        }
    }

    /// Reads everything once.
    pub fn load(&self) -> ClusterState {
        let position = content_stamp(&self.dirs);
        let mut scan = Scan::default();
        let mut st = ClusterState::default();
        st.apply_batch(Batch {
            ops: scan.rescan(&self.dirs),
            synced: true,
            position,
            errors: Some(scan.errors()),
        });
        st
    }

    /// Publishes the directories' contents now and what changes after,
    /// forever. Errors in individual documents are reported in the batches'
    /// `errors` and logged; they never stop the source.
    pub async fn run(self, tx: BatchSender) -> Result<()> {
        let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Our own reads raise access events: only changes count.
            if let Ok(ev) = res {
                if matches!(
                    ev.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                ) {
                    let _ = ev_tx.send(());
                }
            }
        })
        .context("starting the directory watcher (inotify)")?;
        for dir in &self.dirs {
            if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; falling back to periodic re-reads");
            }
        }
        let mut scan = Scan::default();
        let mut last_errors = Vec::new();
        let mut last_position = None;
        loop {
            // The stamp first: what is read after it is at least that new.
            let position = content_stamp(&self.dirs);
            if last_position == Some(position) {
                // Nothing changed (a resync tick, or an event for a file we
                // do not read): consumers already have this state.
                wait_for_change(&mut ev_rx, self.resync).await;
                continue;
            }
            let dirs = self.dirs.clone();
            let (s, ops) = tokio::task::spawn_blocking(move || {
                let ops = scan.rescan(&dirs);
                (scan, ops)
            })
            .await?;
            scan = s;
            let errors = scan.errors();
            if errors != last_errors {
                for e in &errors {
                    tracing::warn!(error = %e, "ignoring an invalid document in the desired-state directory");
                }
                last_errors = errors.clone();
            }
            last_position = Some(position);
            let batch = Batch {
                ops,
                synced: true,
                position,
                errors: Some(errors),
            };
            if tx.send(batch).is_err() {
                return Ok(()); // nobody listens any more
            }
            wait_for_change(&mut ev_rx, self.resync).await;
        }
    }
}

/// Waits for a change event (or the resync tick), then lets a burst of
/// writes settle before the caller reads again.
async fn wait_for_change(ev_rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>, resync: Duration) {
    tokio::select! {
        _ = ev_rx.recv() => {},
        _ = tokio::time::sleep(resync) => {}
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    while ev_rx.try_recv().is_ok() {}
}

/// A stamp of everything `dirs` hold: each YAML file's path, length and
/// modification time (nanoseconds) and each directory's modification time,
/// folded with FNV-1a. A snapshot read after computing the stamp reflects at
/// least that content, so `strake wait` compares stamps for equality.
/// Lengths matter: a file created empty and written within one coarse clock
/// tick keeps its modification time but not its length.
pub fn content_stamp(dirs: &[PathBuf]) -> u64 {
    fn fold(h: &mut u64, bytes: &[u8]) {
        for b in bytes {
            *h ^= u64::from(*b);
            *h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut stamp = |p: &Path| {
        let (ns, len) = std::fs::metadata(p)
            .map(|m| {
                let ns = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                (ns, m.len())
            })
            .unwrap_or((0, 0));
        fold(&mut h, p.as_os_str().as_encoded_bytes());
        fold(&mut h, &ns.to_le_bytes());
        fold(&mut h, &len.to_le_bytes());
    };
    for d in dirs {
        stamp(d);
        for f in yaml_files(d) {
            if let Some(parent) = f.parent().filter(|p| p != d) {
                stamp(parent);
            }
            stamp(&f);
        }
    }
    h
}

/// YAML and JSON files below `dir`, sorted, skipping hidden entries.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if [".yaml", ".yml", ".json"].iter().any(|s| name.ends_with(s)) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: a}
spec: {podCIDR: 10.244.1.0/24}
status:
  addresses: [{type: InternalIP, address: 10.0.0.1}]
---
apiVersion: v1
kind: Node
metadata: {name: b}
spec: {podCIDR: 10.244.2.0/24}
status:
  addresses: [{type: InternalIP, address: 10.0.0.2}]
"#;

    #[test]
    fn multi_document_files_parse_into_typed_objects() {
        assert_eq!(parse_documents(NODES).len(), 2);
        let st = state_from_yaml(NODES).unwrap();
        assert_eq!(
            st.node_pod_cidr("b"),
            Some(("10.244.2.0".parse().unwrap(), 24))
        );
        assert_eq!(st.node_internal_ip("a"), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bgp_resources_are_kept_with_their_spec_and_node_labels_survive() {
        let text = "apiVersion: bgp.strake.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.1.1, asNumber: 65001}\n---\n\
apiVersion: bgp.strake.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n---\n\
apiVersion: v1\nkind: Node\nmetadata: {name: a, labels: {rack: a}, annotations: {bgp.strake.dev/as-number: '65001', other: x}}\n";
        let st = state_from_yaml(text).unwrap();
        assert_eq!(st.bgp_peers["tor"].spec["peerIP"], "10.0.1.1");
        assert!(st.bgp_configurations["default"].spec.is_null());
        let Object::Node(a) = Object::Node(st.nodes["a"].clone()).trimmed() else {
            unreachable!()
        };
        let a = &a.metadata;
        assert_eq!(a.labels.as_ref().unwrap()["rack"], "a");
        let ann = a.annotations.as_ref().unwrap();
        assert!(ann.contains_key("bgp.strake.dev/as-number") && !ann.contains_key("other"));
        let bad =
            parse_documents("apiVersion: bgp.strake.dev/v1\nkind: BgpPeer\nmetadata: {name: x}\n");
        let e = format!("{:#}", bad[0].as_ref().unwrap_err());
        assert!(
            e.contains(
                "bgp.strake.dev/v1 has no kind BgpPeer (BGPConfiguration and BGPPeer exist)"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_bad_document_is_reported_and_the_rest_kept() {
        let text = format!("{NODES}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec: {{containers: 7}}\n---\nfoo: [\n");
        let objs = parse_documents(&text);
        let ok = objs.iter().filter(|o| o.is_ok()).count();
        let errs: Vec<String> = objs
            .iter()
            .filter_map(|o| o.as_ref().err())
            .map(|e| format!("{e:#}"))
            .collect();
        assert_eq!(ok, 2, "both nodes survive");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains("document 3") && errs[0].contains("not a valid Pod"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn status_only_documents_merge_into_earlier_objects() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("spec");
        let status = dir.path().join("status");
        std::fs::create_dir_all(&spec).unwrap();
        std::fs::create_dir_all(&status).unwrap();
        std::fs::write(
            spec.join("pod.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, labels: {app: web}}\nspec: {nodeName: a, containers: [{name: c}]}\n",
        )
        .unwrap();
        std::fs::write(
            status.join("p.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nstatus: {podIP: 10.244.1.5}\n",
        )
        .unwrap();
        let st = DirSource::new(vec![spec, status]).load();
        let pod = &st.pods[&crate::ObjectKey::new("x", "p")];
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(
            pod.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.244.1.5")
        );
        assert!(st.errors.is_empty(), "{:?}", st.errors);
    }

    #[tokio::test]
    async fn changes_to_the_directory_are_sent_as_changes_of_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nodes.yaml"), NODES).unwrap();
        let (tx, mut rx) = crate::channel();
        let src = DirSource::new(vec![dir.path().to_path_buf()]);
        tokio::spawn(src.run(tx));
        let first = rx.recv().await.unwrap();
        assert!(first.synced);
        assert_eq!(first.ops.len(), 2, "both nodes, complete");
        let mut st = ClusterState::default();
        st.apply_batch(first);
        std::fs::write(
            dir.path().join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {team: a}}\n",
        )
        .unwrap();
        let b = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .expect("the new file is seen within 3 s")
            .unwrap();
        // Only the new object: the unchanged file is not read again.
        assert_eq!(b.ops.len(), 1, "{:?}", b.ops);
        st.apply_batch(b);
        assert_eq!(st.namespace_labels("prod")["team"], "a");
        // One node edited in place: one upsert.
        std::fs::write(
            dir.path().join("nodes.yaml"),
            NODES.replace("10.0.0.2", "10.0.0.9"),
        )
        .unwrap();
        let b = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.ops.len(), 1, "{:?}", b.ops);
        let changes = st.apply_batch(b);
        assert_eq!(changes[0].reference.key.name, "b");
        assert!(changes[0].old.is_some());
        std::fs::remove_file(dir.path().join("nodes.yaml")).unwrap();
        tokio::time::timeout(
            Duration::from_secs(3),
            crate::follow_until(&mut rx, &mut st, |s| s.nodes.is_empty()),
        )
        .await
        .expect("removal is seen")
        .unwrap();
        assert_eq!(st.namespaces.len(), 1);
    }
}
