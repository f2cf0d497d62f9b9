//! Standalone mode: desired state from directories of ordinary Kubernetes YAML
//! (multi-document files welcome), watched for changes.
//!
//! Directories are read in order. When an object appears again with no
//! `spec`, only its `status` is taken, merged into the earlier one: that is
//! how the lab plays kubelet, writing pod IPs to a status directory of its own
//! without touching the user's files.

use crate::state::{ClusterState, ObjectKey};
use crate::StateSender;
use anyhow::{anyhow, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One parsed document.
#[derive(Debug, Clone)]
pub enum Object {
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
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
pub fn parse_documents(text: &str) -> Vec<Result<Object>> {
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

fn parse_value(value: serde_yaml::Value) -> Result<Object> {
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
        ("v1", "Node") => Object::Node(typed(value, &kind)?),
        ("v1", "Namespace") => Object::Namespace(typed(value, &kind)?),
        ("v1", "Pod") => Object::Pod(typed(value, &kind)?),
        ("v1", "Service") => Object::Service(typed(value, &kind)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => Object::EndpointSlice(typed(value, &kind)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(typed(value, &kind)?),
        _ => Object::Other {
            api_version,
            kind,
            value,
        },
    })
}

fn ns_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<ObjectKey> {
    let name = meta
        .name
        .clone()
        .ok_or_else(|| anyhow!("metadata.name is missing"))?;
    Ok(ObjectKey::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name,
    ))
}

/// Adds one object to a state, merging status-only documents.
pub fn apply_object(state: &mut ClusterState, obj: Object) -> Result<()> {
    match obj {
        Object::Node(n) => {
            let name = n
                .metadata
                .name
                .clone()
                .ok_or_else(|| anyhow!("Node without metadata.name"))?;
            match state.nodes.get_mut(&name) {
                Some(old) if n.spec.is_none() => old.status = n.status,
                _ => {
                    state.nodes.insert(name, *n);
                }
            }
        }
        Object::Namespace(n) => {
            let name = n
                .metadata
                .name
                .clone()
                .ok_or_else(|| anyhow!("Namespace without metadata.name"))?;
            state.namespaces.insert(name, *n);
        }
        Object::Pod(p) => {
            let key = ns_key(&p.metadata)?;
            match state.pods.get_mut(&key) {
                Some(old) if p.spec.is_none() => old.status = p.status,
                _ => {
                    state.pods.insert(key, *p);
                }
            }
        }
        Object::Service(s) => {
            let key = ns_key(&s.metadata)?;
            match state.services.get_mut(&key) {
                Some(old) if s.spec.is_none() => old.status = s.status,
                _ => {
                    state.services.insert(key, *s);
                }
            }
        }
        Object::EndpointSlice(e) => {
            state.endpoint_slices.insert(ns_key(&e.metadata)?, *e);
        }
        Object::NetworkPolicy(p) => {
            state.network_policies.insert(ns_key(&p.metadata)?, *p);
        }
        Object::Other { .. } => {}
    }
    Ok(())
}

/// Directories of YAML, read in order and watched.
#[derive(Debug, Clone)]
pub struct DirSource {
    dirs: Vec<PathBuf>,
    /// Fallback re-read period, for changes inotify cannot see (a directory
    /// that did not exist yet, network filesystems).
    pub resync: Duration,
}

/// Parsed contents of one file, reused while the file is unchanged.
struct CachedFile {
    stamp: (SystemTime, u64),
    objects: Vec<Result<Object>>,
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
        self.load_cached(&mut BTreeMap::new())
    }

    fn load_cached(&self, cache: &mut BTreeMap<PathBuf, CachedFile>) -> ClusterState {
        let mut state = ClusterState {
            synced: true,
            content_stamp: content_stamp(&self.dirs),
            ..Default::default()
        };
        let mut seen = Vec::new();
        for dir in &self.dirs {
            for file in yaml_files(dir) {
                seen.push(file.clone());
                let stamp = match std::fs::metadata(&file) {
                    Ok(m) => (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()),
                    Err(_) => continue, // removed while we listed
                };
                let fresh = cache.get(&file).is_none_or(|c| c.stamp != stamp);
                if fresh {
                    let objects = match std::fs::read_to_string(&file) {
                        Ok(text) => parse_documents(&text),
                        Err(e) => vec![Err(anyhow!("reading: {e}"))],
                    };
                    cache.insert(file.clone(), CachedFile { stamp, objects });
                }
                for obj in &cache[&file].objects {
                    match obj {
                        Ok(o) => {
                            if let Err(e) = apply_object(&mut state, o.clone()) {
                                state.errors.push(format!("{}: {e:#}", file.display()));
                            }
                        }
                        Err(e) => state.errors.push(format!("{}: {e:#}", file.display())),
                    }
                }
            }
        }
        cache.retain(|k, _| seen.contains(k));
        state
    }

    /// Publishes the directories' contents now and after every change,
    /// forever. Errors in individual documents are reported in
    /// `ClusterState::errors` and logged; they never stop the source.
    pub async fn run(self, tx: StateSender) -> Result<()> {
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
        let mut cache = BTreeMap::new();
        let mut revision = 0u64;
        let mut last_errors = Vec::new();
        let mut last_stamp = None;
        loop {
            let mut state = self.load_cached(&mut cache);
            if last_stamp == Some(state.content_stamp) {
                // Nothing changed (a resync tick, or an event for a file we
                // do not read): consumers already have this state.
                wait_for_change(&mut ev_rx, self.resync).await;
                continue;
            }
            last_stamp = Some(state.content_stamp);
            if state.errors != last_errors {
                for e in &state.errors {
                    tracing::warn!(error = %e, "ignoring an invalid document in the desired-state directory");
                }
                last_errors = state.errors.clone();
            }
            revision += 1;
            state.revision = revision;
            if tx.send(Arc::new(state)).is_err() {
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
        let objs = parse_documents(NODES);
        assert_eq!(objs.len(), 2);
        let mut st = ClusterState::default();
        for o in objs {
            apply_object(&mut st, o.unwrap()).unwrap();
        }
        assert_eq!(
            st.node_pod_cidr("b"),
            Some(("10.244.2.0".parse().unwrap(), 24))
        );
        assert_eq!(st.node_internal_ip("a"), Some("10.0.0.1".parse().unwrap()));
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
        let pod = &st.pods[&ObjectKey::new("x", "p")];
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(
            pod.status.as_ref().unwrap().pod_ip.as_deref(),
            Some("10.244.1.5")
        );
        assert!(st.errors.is_empty(), "{:?}", st.errors);
    }

    #[tokio::test]
    async fn changes_to_the_directory_are_published() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nodes.yaml"), NODES).unwrap();
        let (tx, mut rx) = crate::channel();
        let src = DirSource::new(vec![dir.path().to_path_buf()]);
        tokio::spawn(src.run(tx));
        rx.wait_for(|s| s.nodes.len() == 2).await.unwrap();
        std::fs::write(
            dir.path().join("ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {team: a}}\n",
        )
        .unwrap();
        let st = tokio::time::timeout(
            Duration::from_secs(3),
            rx.wait_for(|s| s.namespaces.contains_key("prod")),
        )
        .await
        .expect("the new file is seen within 3 s")
        .unwrap()
        .clone();
        assert_eq!(st.namespace_labels("prod")["team"], "a");
        std::fs::remove_file(dir.path().join("nodes.yaml")).unwrap();
        tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|s| s.nodes.is_empty()))
            .await
            .expect("removal is seen")
            .unwrap();
    }
}
