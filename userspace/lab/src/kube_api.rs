//! A stand-in Kubernetes API server for the lab (`STRAKE_LAB_SOURCE=kube`):
//! the agents run `--source kube` and talk to it with kube-rs over an
//! ordinary kubeconfig, on 127.0.0.1 of their own node's namespace.
//!
//! It serves what the lab's directories hold, as an API server would hold it:
//! every object gets a resourceVersion from one counter (an etcd revision),
//! lists carry the collection's resourceVersion, watches replay the history
//! after the one asked for, send bookmarks when asked, and answer a version
//! older than the retained history with `410 Gone` (an ERROR event, as the
//! API server does), after which a client must relist. It plays two
//! controllers as well: the endpoints controller writes EndpointSlices from
//! Services' selectors and the pods' readiness (so the agents' EndpointSlice
//! path runs, not their standalone fallback from Pods), and it creates the
//! Namespaces objects live in, labelled `kubernetes.io/metadata.name`. Pod
//! status (podIP, phase, conditions) is what the lab writes into its status
//! directory after CNI ADD, playing kubelet.
//!
//! One process serves every node: it opens a listening socket inside each
//! node's namespace (a socket stays in the namespace it was made in). Tests
//! steer it through a unix socket in the lab's root (`kube-api.sock`, one
//! command per line): `sync` (read the directories now; answers the
//! resourceVersion that covers them), `disconnect` (break every open watch),
//! `expire` (compact the history and send `410 Gone` on every open watch),
//! `stats` (lists and watches served per collection).

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strake_source::{ClusterState, Object, SERVICE_NAME_LABEL};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

/// Where the agents find it, in their node's namespace.
pub const PORT: u16 = 6443;
/// The control socket, in the lab's root.
pub const CONTROL_SOCKET: &str = "kube-api.sock";
/// The agents' kubeconfig, in the lab's root.
pub const KUBECONFIG: &str = "kubeconfig";

/// Who manages the EndpointSlices it writes (the label the real controller sets).
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// Events kept for watches to resume from; older versions get `410 Gone`.
const HISTORY: usize = 10_000;
/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// The collections served: (path, kind, apiVersion).
const COLLECTIONS: [(&str, &str, &str); 8] = [
    ("/api/v1/nodes", "Node", "v1"),
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    ("/api/v1/services", "Service", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
        "networking.k8s.io/v1",
    ),
    (
        "/apis/bgp.strake.dev/v1/bgpconfigurations",
        "BGPConfiguration",
        "bgp.strake.dev/v1",
    ),
    (
        "/apis/bgp.strake.dev/v1/bgppeers",
        "BGPPeer",
        "bgp.strake.dev/v1",
    ),
];

/// An object's place: (collection, namespace/name).
type Key = (usize, String);

#[derive(Clone)]
struct WatchEvent {
    rv: u64,
    coll: usize,
    kind: &'static str,
    object: Value,
}

/// How open watches are ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Break {
    None,
    /// The connection breaks mid-stream.
    Disconnect,
    /// The history is gone: `410 Gone`, then the stream ends.
    Expire,
}

#[derive(Default)]
struct Store {
    /// The last revision handed out.
    rv: u64,
    /// Watches must start at or after this revision.
    compacted: u64,
    /// Per object: its content as the directories give it (to tell a
    /// change), and as served (with resourceVersion and uid).
    objects: BTreeMap<Key, (Value, Value)>,
    history: std::collections::VecDeque<WatchEvent>,
    lists: BTreeMap<&'static str, u64>,
    watches: BTreeMap<&'static str, u64>,
    disconnects: u64,
    expiries: u64,
    /// Every (API group, resource, verb) a client asked for: what the
    /// agents' ClusterRole must grant.
    access: BTreeSet<(String, String, String)>,
}

/// (API group, resource) of a collection path.
fn group_resource(path: &str) -> (String, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", _, resource] => (String::new(), resource.to_string()),
        ["apis", group, _, resource] => (group.to_string(), resource.to_string()),
        _ => (String::new(), path.to_string()),
    }
}

impl Store {
    fn asked(&mut self, path: &str, verb: &str) {
        let (g, r) = group_resource(path);
        self.access.insert((g, r, verb.to_string()));
    }
}

pub struct ApiServer {
    dirs: Vec<PathBuf>,
    store: Mutex<Store>,
    /// One sync at a time: a slow read must not land after a newer one.
    syncing: Mutex<()>,
    events: broadcast::Sender<WatchEvent>,
    breaks: watch::Sender<(u64, Break)>,
}

impl ApiServer {
    pub fn new(dirs: Vec<PathBuf>) -> Arc<Self> {
        Arc::new(ApiServer {
            dirs,
            store: Mutex::default(),
            syncing: Mutex::default(),
            events: broadcast::channel(4096).0,
            breaks: watch::channel((0, Break::None)).0,
        })
    }

    /// Reads the directories and brings the store to what they say (with
    /// the controllers' objects); returns the revision that covers them.
    pub fn sync(&self) -> u64 {
        let _one = self.syncing.lock().unwrap();
        let st = strake_source::dir::DirSource::new(self.dirs.clone()).load();
        let desired = desired_objects(&st);
        let mut s = self.store.lock().unwrap();
        let gone: Vec<Key> = s
            .objects
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let (_, mut served) = s.objects.remove(&key).unwrap();
            s.rv += 1;
            served["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            let ev = WatchEvent {
                rv: s.rv,
                coll: key.0,
                kind: "DELETED",
                object: served,
            };
            self.record(&mut s, ev);
        }
        for (key, content) in desired {
            let (kind, uid) = match s.objects.get(&key) {
                Some((c, _)) if *c == content => continue,
                Some((_, served)) => ("MODIFIED", served["metadata"]["uid"].clone()),
                None => ("ADDED", Value::Null),
            };
            s.rv += 1;
            let mut served = content.clone();
            served["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            served["metadata"]["uid"] = if uid.is_null() {
                json!(format!("00000000-0000-4000-8000-{:012x}", s.rv))
            } else {
                uid
            };
            s.objects.insert(key.clone(), (content, served.clone()));
            let ev = WatchEvent {
                rv: s.rv,
                coll: key.0,
                kind,
                object: served,
            };
            self.record(&mut s, ev);
        }
        s.rv
    }

    fn record(&self, s: &mut Store, ev: WatchEvent) {
        s.history.push_back(ev.clone());
        if s.history.len() > HISTORY {
            // What etcd's compaction does: older revisions are gone.
            while s.history.len() > HISTORY / 2 {
                let old = s.history.pop_front().unwrap();
                s.compacted = old.rv;
            }
        }
        let _ = self.events.send(ev);
    }

    /// Breaks every open watch.
    pub fn disconnect(&self) {
        self.store.lock().unwrap().disconnects += 1;
        self.breaks
            .send_modify(|b| *b = (b.0 + 1, Break::Disconnect));
    }

    /// Forgets the whole history: every open watch gets `410 Gone`, and so
    /// does any that resumes from before now.
    pub fn expire(&self) {
        {
            let mut s = self.store.lock().unwrap();
            s.compacted = s.rv;
            s.history.clear();
            s.expiries += 1;
        }
        self.breaks.send_modify(|b| *b = (b.0 + 1, Break::Expire));
    }

    pub fn stats(&self) -> Value {
        let s = self.store.lock().unwrap();
        json!({
            "resourceVersion": s.rv,
            "lists": s.lists,
            "watches": s.watches,
            "disconnects": s.disconnects,
            "expiries": s.expiries,
            "access": s.access,
        })
    }

    fn list(&self, coll: usize) -> Value {
        let mut s = self.store.lock().unwrap();
        *s.lists.entry(COLLECTIONS[coll].1).or_default() += 1;
        s.asked(COLLECTIONS[coll].0, "list");
        let items: Vec<Value> = s
            .objects
            .range((coll, String::new())..(coll + 1, String::new()))
            .map(|(_, (_, served))| served.clone())
            .collect();
        json!({
            "apiVersion": COLLECTIONS[coll].2,
            "kind": format!("{}List", COLLECTIONS[coll].1),
            "metadata": {"resourceVersion": s.rv.to_string()},
            "items": items,
        })
    }

    /// A watch from `from` (exclusive; `None` or 0: the current objects
    /// first, as ADDED), as a stream of JSON lines.
    fn watch(
        self: &Arc<Self>,
        coll: usize,
        from: Option<u64>,
        bookmarks: bool,
        timeout: Duration,
    ) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(256);
        let mut live = self.events.subscribe();
        let mut breaks = self.breaks.subscribe();
        breaks.mark_unchanged();
        let (backlog, too_old, mut last) = {
            let mut s = self.store.lock().unwrap();
            *s.watches.entry(COLLECTIONS[coll].1).or_default() += 1;
            s.asked(COLLECTIONS[coll].0, "watch");
            match from.filter(|v| *v > 0) {
                Some(v) if v < s.compacted => (Vec::new(), Some((v, s.compacted)), s.rv),
                Some(v) => (
                    s.history
                        .iter()
                        .filter(|e| e.rv > v && e.coll == coll)
                        .map(|e| line(e.kind, &e.object))
                        .collect(),
                    None,
                    s.rv,
                ),
                None => (
                    s.objects
                        .range((coll, String::new())..(coll + 1, String::new()))
                        .map(|(_, (_, served))| line("ADDED", served))
                        .collect(),
                    None,
                    s.rv,
                ),
            }
        };
        let me = self.clone();
        tokio::spawn(async move {
            if let Some((asked, oldest)) = too_old {
                let _ = tx.send(Ok(gone(asked, oldest))).await;
                return;
            }
            for l in backlog {
                if tx.send(Ok(l)).await.is_err() {
                    return;
                }
            }
            let end = tokio::time::sleep(timeout);
            tokio::pin!(end);
            let mut tick = tokio::time::interval(BOOKMARK_EVERY);
            tick.tick().await;
            loop {
                let out = tokio::select! {
                    _ = &mut end => return, // the watch's timeoutSeconds
                    b = breaks.changed() => {
                        if b.is_err() {
                            return;
                        }
                        let how = breaks.borrow_and_update().1;
                        match how {
                            Break::Disconnect => {
                                let _ = tx.send(Err(std::io::Error::other("the lab broke this watch"))).await;
                                return;
                            }
                            Break::Expire => {
                                let oldest = me.store.lock().unwrap().compacted;
                                let _ = tx.send(Ok(gone(last, oldest))).await;
                                return;
                            }
                            Break::None => continue,
                        }
                    }
                    _ = tick.tick(), if bookmarks => {
                        let rv = me.store.lock().unwrap().rv;
                        let (_, kind, api_version) = COLLECTIONS[coll];
                        line("BOOKMARK", &json!({"apiVersion": api_version, "kind": kind,
                            "metadata": {"resourceVersion": rv.to_string()}}))
                    }
                    e = live.recv() => match e {
                        Ok(e) if e.coll == coll && e.rv > last => {
                            last = e.rv;
                            line(e.kind, &e.object)
                        }
                        Ok(_) => continue,
                        // Too slow a reader: the API server closes such a
                        // watch too; the client resumes from its version.
                        Err(_) => return,
                    },
                };
                if tx.send(Ok(out)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|x| (x, rx))
        }))
    }
}

fn line(kind: &str, object: &Value) -> String {
    format!("{}\n", json!({"type": kind, "object": object}))
}

/// What the API server sends on a watch from a compacted revision.
fn gone(asked: u64, oldest: u64) -> String {
    line(
        "ERROR",
        &json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "reason": "Expired", "code": 410,
            "message": format!("too old resource version: {asked} ({oldest})")}),
    )
}

/// Everything the store should hold for a state read from the directories:
/// the objects themselves, the Namespaces they live in, and the endpoints
/// controller's EndpointSlices.
fn desired_objects(st: &ClusterState) -> BTreeMap<Key, Value> {
    let mut out = BTreeMap::new();
    let mut namespaces = BTreeSet::new();
    for o in st.objects() {
        let Some(r) = o.reference() else { continue };
        let Some((coll, value)) = api_object(&o) else {
            continue;
        };
        if !r.key.namespace.is_empty() {
            namespaces.insert(r.key.namespace.clone());
        }
        out.insert((coll, r.key.to_string()), value);
    }
    // The namespaces objects live in exist (kubectl create namespace), and
    // the API server labels every namespace with its name.
    let ns_coll = 1;
    for ns in namespaces {
        out.entry((ns_coll, ns.clone())).or_insert_with(
            || json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
    for ((coll, _), v) in out.iter_mut() {
        if *coll == ns_coll {
            let name = v["metadata"]["name"].clone();
            if !v["metadata"]["labels"].is_object() {
                v["metadata"]["labels"] = json!({});
            }
            v["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
        }
    }
    for (svc_key, svc) in &st.services {
        for slice in endpoint_slices(&svc_key.namespace, &svc_key.name, svc, st) {
            let name = slice.metadata.name.clone().unwrap_or_default();
            let mut v = serde_json::to_value(&slice).expect("an EndpointSlice serializes");
            v["apiVersion"] = json!("discovery.k8s.io/v1");
            v["kind"] = json!("EndpointSlice");
            out.insert((4, format!("{}/{name}", svc_key.namespace)), v);
        }
    }
    out
}

/// An object as the API serves it (apiVersion, kind, namespace defaulted).
fn api_object(o: &Object) -> Option<(usize, Value)> {
    fn typed<T: serde::Serialize>(o: &T, coll: usize) -> Option<(usize, Value)> {
        let mut v = serde_json::to_value(o).ok()?;
        v["apiVersion"] = json!(COLLECTIONS[coll].2);
        v["kind"] = json!(COLLECTIONS[coll].1);
        Some((coll, v))
    }
    let (coll, mut v) = match o {
        Object::Node(x) => typed(&**x, 0)?,
        Object::Namespace(x) => typed(&**x, 1)?,
        Object::Pod(x) => typed(&**x, 2)?,
        Object::Service(x) => typed(&**x, 3)?,
        Object::EndpointSlice(x) => typed(&**x, 4)?,
        Object::NetworkPolicy(x) => typed(&**x, 5)?,
        Object::BgpConfiguration(x) => typed(&**x, 6)?,
        Object::BgpPeer(x) => typed(&**x, 7)?,
    };
    if o.kind().namespaced() && v["metadata"]["namespace"].as_str().unwrap_or("").is_empty() {
        v["metadata"]["namespace"] = json!("default");
    }
    Some((coll, v))
}

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The EndpointSlices the endpoints controller keeps for a Service with a
/// selector: every pod of its namespace the selector matches that has an
/// address and has not finished, with its conditions (ready: running, Ready
/// and not terminating; serving: Ready; terminating: being deleted), grouped
/// by the ports its named targetPorts resolve to. A Service whose selector
/// matches nothing still has one slice, with no endpoints.
pub fn endpoint_slices(
    ns: &str,
    name: &str,
    svc: &Service,
    st: &ClusterState,
) -> Vec<EndpointSlice> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new(); // endpoints managed by hand
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let mut groups: BTreeMap<Vec<(String, String, i32)>, Vec<Endpoint>> = BTreeMap::new();
    for (pk, pod) in st.pods_in(ns) {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let status = pod.status.as_ref();
        let Some(ip) = status.and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let target = match &p.target_port {
                None => Some(p.port),
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(n)) => container_port(pod, n, &proto),
            };
            if let Some(t) = target {
                ports.push((p.name.clone().unwrap_or_default(), proto, t));
            }
        }
        let pod_ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        // The controller copies the node's zone, and for
        // trafficDistribution PreferClose hints that zone (as the
        // EndpointSlice controller's PreferClose heuristic does).
        let zone = node.as_deref().and_then(|n| {
            st.nodes
                .get(n)?
                .metadata
                .labels
                .as_ref()?
                .get(ZONE_LABEL)
                .cloned()
        });
        let prefer_close = matches!(
            spec.traffic_distribution.as_deref(),
            Some("PreferClose" | "PreferSameZone")
        );
        groups.entry(ports).or_default().push(Endpoint {
            hints: zone.clone().filter(|_| prefer_close).map(|z| {
                k8s_openapi::api::discovery::v1::EndpointHints {
                    for_zones: Some(vec![k8s_openapi::api::discovery::v1::ForZone { name: z }]),
                    ..Default::default()
                }
            }),
            zone,
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(phase == "Running" && pod_ready && !terminating),
                serving: Some(pod_ready),
                terminating: Some(terminating),
            }),
            node_name: node,
            target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(pk.namespace.clone()),
                name: Some(pk.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let slice = |suffix: String, ports: Option<Vec<EndpointPort>>, endpoints: Vec<Endpoint>| {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{suffix}")),
                namespace: Some(ns.to_string()),
                labels: Some(
                    [
                        (SERVICE_NAME_LABEL.to_string(), name.to_string()),
                        (MANAGED_BY.to_string(), CONTROLLER.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports,
        }
    };
    if groups.is_empty() {
        return vec![slice("none".into(), None, Vec::new())];
    }
    groups
        .into_iter()
        .map(|(ports, mut endpoints)| {
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            let suffix = format!("{:08x}", fnv(&format!("{ports:?}")));
            let ports = ports
                .into_iter()
                .map(|(name, protocol, port)| EndpointPort {
                    name: Some(name),
                    protocol: Some(protocol),
                    port: Some(port),
                    app_protocol: None,
                })
                .collect();
            slice(suffix, Some(ports), endpoints)
        })
        .collect()
}

/// A container port by name and protocol (a named targetPort, per pod).
fn container_port(pod: &Pod, name: &str, proto: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == proto
        })
        .map(|p| p.container_port)
}

fn fnv(s: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// The query parameters a watch or list reads.
fn query(req: &Request) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn json_response(status: u16, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

async fn handle(State(api): State<Arc<ApiServer>>, req: Request) -> Response {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let Some(coll) = COLLECTIONS.iter().position(|(p, _, _)| *p == path) else {
        let watch = query(&req).get("watch").is_some_and(|w| w == "true");
        api.store
            .lock()
            .unwrap()
            .asked(&path, if watch { "watch" } else { "list" });
        // What an API server answers for a resource it does not serve.
        return json_response(
            404,
            &json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "reason": "NotFound", "code": 404,
                "message": format!("the server could not find the requested resource ({path})")}),
        );
    };
    if req.method() != axum::http::Method::GET {
        let verb = match req.method().as_str() {
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            other => other,
        };
        api.store.lock().unwrap().asked(&path, &verb.to_lowercase());
        return json_response(
            405,
            &json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "reason": "MethodNotAllowed", "code": 405,
                "message": "the lab's API server is read-only for agents"}),
        );
    }
    let q = query(&req);
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let from = q.get("resourceVersion").and_then(|v| v.parse().ok());
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        return Response::builder()
            .header("content-type", "application/json")
            .body(api.watch(coll, from, bookmarks, timeout))
            .unwrap();
    }
    json_response(200, &api.list(coll))
}

/// Serves the lab: listens on 127.0.0.1:PORT inside each of `netns`,
/// follows `dirs`, answers the control socket at `control`. Runs forever.
pub async fn serve(dirs: Vec<PathBuf>, netns: Vec<PathBuf>, control: PathBuf) -> Result<()> {
    let api = ApiServer::new(dirs.clone());
    api.sync();
    let app = axum::Router::new().fallback(handle).with_state(api.clone());
    for ns in &netns {
        let l = strake_netlink::netns::run_in(ns, || {
            let l = std::net::TcpListener::bind(("127.0.0.1", PORT))
                .with_context(|| format!("listening on 127.0.0.1:{PORT}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .with_context(|| format!("in {}", ns.display()))?;
        let l = tokio::net::TcpListener::from_std(l)?;
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "the lab's API server stopped serving");
            }
        });
    }
    // Follow the directories: a poll of their stamp is cheap at lab scale.
    {
        let api = api.clone();
        tokio::spawn(async move {
            let mut last = strake_source::dir::content_stamp(&dirs);
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = strake_source::dir::content_stamp(&dirs);
                if now != last {
                    last = now;
                    let api = api.clone();
                    let _ = tokio::task::spawn_blocking(move || api.sync()).await;
                }
            }
        });
    }
    let _ = std::fs::remove_file(&control);
    let ctl = tokio::net::UnixListener::bind(&control)
        .with_context(|| format!("binding {}", control.display()))?;
    tracing::info!(
        port = PORT,
        nodes = netns.len(),
        "the lab's API server is up"
    );
    loop {
        let (conn, _) = ctl.accept().await?;
        let api = api.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(cmd)) = lines.next_line().await {
                let reply = match cmd.trim() {
                    "sync" => {
                        let api = api.clone();
                        let rv = tokio::task::spawn_blocking(move || api.sync())
                            .await
                            .unwrap_or(0);
                        json!({"resourceVersion": rv})
                    }
                    "disconnect" => {
                        api.disconnect();
                        api.stats()
                    }
                    "expire" => {
                        api.expire();
                        api.stats()
                    }
                    "stats" => api.stats(),
                    other => {
                        json!({"error": format!("unknown command {other:?} (sync, disconnect, expire, stats)")})
                    }
                };
                if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One command to a running lab's API server (see the module comment).
pub fn control(root: &Path, cmd: &str) -> Result<Value> {
    let path = root.join(CONTROL_SOCKET);
    let mut s = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to the lab's API server at {} (is the lab up with STRAKE_LAB_SOURCE=kube?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    let v: Value = serde_json::from_str(&reply)
        .with_context(|| format!("the lab's API server answered {reply:?} to {cmd}"))?;
    if let Some(e) = v.get("error") {
        bail!("the lab's API server: {e}");
    }
    Ok(v)
}

/// The kubeconfig the lab's agents use: the stand-in on their loopback.
pub fn kubeconfig() -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster: {{server: \"http://127.0.0.1:{PORT}\"}}\nusers:\n- name: strake-agent\n  user: {{token: lab}}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: strake-agent}}\ncurrent-context: lab\n"
    )
}
