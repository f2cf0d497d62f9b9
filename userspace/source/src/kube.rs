//! Desired state from a Kubernetes API server: one kube-rs watcher per kind
//! (list, then watch; relist when the watch expires or breaks, with
//! backoff), turned into batches of operations: nothing until every kind
//! has listed (one complete batch), then the events as they come (events
//! arriving together are sent together).
//!
//! A relist is diffed against what was sent before: objects deleted while
//! the watch was down are deleted, unchanged ones cost the consumer one
//! comparison, and nothing is published from a partial list.

use crate::state::{CustomResource, Kind, Object, ObjectKey, ObjectRef, Op};
use crate::{Batch, BatchSender};
use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What the source asks of the API server, per resource: exactly what the
/// agent's ClusterRole (deploy/strake/rbac.yaml) must grant.
pub const ACCESS: [(&str, &str, &[&str]); 8] = [
    ("", "nodes", &["list", "watch"]),
    ("", "namespaces", &["list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("", "services", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("networking.k8s.io", "networkpolicies", &["list", "watch"]),
    ("bgp.strake.dev", "bgpconfigurations", &["list", "watch"]),
    ("bgp.strake.dev", "bgppeers", &["list", "watch"]),
];

/// strake's own resources: (kind, the API's kind, plural).
const CUSTOM: [(Kind, &str, &str); 2] = [
    (
        Kind::BgpConfiguration,
        "BGPConfiguration",
        "bgpconfigurations",
    ),
    (Kind::BgpPeer, "BGPPeer", "bgppeers"),
];

fn custom_api(client: &Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "bgp.strake.dev".into(),
        version: "v1".into(),
        api_version: crate::state::BGP_API_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::all_with(client.clone(), &ar)
}

fn custom_object(kind: Kind, o: DynamicObject) -> Object {
    let c = Arc::new(CustomResource {
        metadata: o.metadata,
        spec: o.data.get("spec").cloned().unwrap_or_default(),
    });
    match kind {
        Kind::BgpConfiguration => Object::BgpConfiguration(c),
        _ => Object::BgpPeer(c),
    }
}

/// Whether the API server serves this resource (its CRD is installed).
async fn served(api: &Api<DynamicObject>) -> Result<bool> {
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => {
            Err(anyhow::Error::new(e).context("asking the API server for strake's BGP resources"))
        }
    }
}

fn watch_custom(api: Api<DynamicObject>, kind: Kind) -> EventStream {
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |ev| match ev {
            Ok(Event::Apply(o)) => Event2::Apply(custom_object(kind, o).trimmed()),
            Ok(Event::Delete(o)) => Event2::Delete(custom_object(kind, o)),
            Ok(Event::Init) => Event2::Init(kind),
            Ok(Event::InitApply(o)) => Event2::InitApply(custom_object(kind, o).trimmed()),
            Ok(Event::InitDone) => Event2::InitDone(kind),
            Err(e) => Event2::Error(kind, e.to_string()),
        })
        .boxed()
}

/// One watcher event, any kind.
enum Event2 {
    Apply(Object),
    Delete(Object),
    Init(Kind),
    InitApply(Object),
    InitDone(Kind),
    Error(Kind, String),
}

pub struct KubeSource {
    client: Client,
    /// How long to wait for more events before sending.
    pub settle: Duration,
}

/// What the source remembers: the keys it sent per kind (to turn a relist
/// into deletes), a relist in progress, which kinds listed once.
#[derive(Default)]
struct Fold {
    sent: BTreeMap<Kind, BTreeSet<ObjectKey>>,
    listing: BTreeMap<Kind, Vec<Object>>,
    listed: BTreeSet<Kind>,
    ops: Vec<Op>,
    /// Highest resourceVersion seen (etcd revisions are numbers).
    position: u64,
}

impl KubeSource {
    /// Connects as the cluster says: in a pod, its service account; else the
    /// kubeconfig (`KUBECONFIG`, `~/.kube/config`).
    pub async fn infer() -> Result<Self> {
        let client = Client::try_default().await.context(
            "connecting to the Kubernetes API (in-cluster service account, or KUBECONFIG)",
        )?;
        Ok(Self::new(client))
    }

    pub fn new(client: Client) -> Self {
        KubeSource {
            client,
            settle: Duration::from_millis(20),
        }
    }

    /// Watches until the receiver is gone.
    pub async fn run(self, tx: BatchSender) -> Result<()> {
        let c = &self.client;
        let mut streams = vec![
            watch::<Node>(Api::all(c.clone()), Kind::Node, |o| {
                Object::Node(Arc::new(o))
            }),
            watch::<Namespace>(Api::all(c.clone()), Kind::Namespace, |o| {
                Object::Namespace(Arc::new(o))
            }),
            watch::<Pod>(Api::all(c.clone()), Kind::Pod, |o| Object::Pod(Arc::new(o))),
            watch::<Service>(Api::all(c.clone()), Kind::Service, |o| {
                Object::Service(Arc::new(o))
            }),
            watch::<EndpointSlice>(Api::all(c.clone()), Kind::EndpointSlice, |o| {
                Object::EndpointSlice(Arc::new(o))
            }),
            watch::<NetworkPolicy>(Api::all(c.clone()), Kind::NetworkPolicy, |o| {
                Object::NetworkPolicy(Arc::new(o))
            }),
        ];
        let mut fold = Fold::default();
        // A cluster without strake's CRDs has no BGP resources: those kinds
        // count as listed, and empty (BGP off), rather than holding back
        // everything else. Installing them later takes an agent restart.
        for (kind, api_kind, plural) in CUSTOM {
            let api = custom_api(c, api_kind, plural);
            if served(&api).await? {
                streams.push(watch_custom(api, kind));
            } else {
                tracing::info!(
                    kind = api_kind,
                    "the API server does not serve {plural}.bgp.strake.dev (CRD not installed): no BGP resources"
                );
                fold.listed.insert(kind);
                fold.sent.insert(kind, BTreeSet::new());
            }
        }
        let mut events = futures::stream::select_all(streams);
        let mut synced = false;
        loop {
            let Some(first) = events.next().await else {
                return Ok(());
            };
            fold.event(first);
            // Take whatever else arrives while the burst settles.
            let deadline = tokio::time::sleep(self.settle);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    e = events.next() => match e {
                        Some(e) => fold.event(e),
                        None => return Ok(()),
                    },
                }
            }
            if fold.listed.len() < Kind::ALL.len() {
                continue; // nothing until every kind has listed once
            }
            if fold.ops.is_empty() && synced {
                continue;
            }
            synced = true;
            let batch = Batch {
                ops: std::mem::take(&mut fold.ops),
                synced: true,
                position: fold.position,
                errors: None,
            };
            if tx.send(batch).is_err() {
                return Ok(()); // nobody listens any more
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Event2> + Send>>;

fn watch<K>(api: Api<K>, kind: Kind, wrap: fn(K) -> Object) -> EventStream
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |ev| match ev {
            Ok(Event::Apply(o)) => Event2::Apply(wrap(o).trimmed()),
            Ok(Event::Delete(o)) => Event2::Delete(wrap(o)),
            Ok(Event::Init) => Event2::Init(kind),
            Ok(Event::InitApply(o)) => Event2::InitApply(wrap(o).trimmed()),
            Ok(Event::InitDone) => Event2::InitDone(kind),
            Err(e) => Event2::Error(kind, e.to_string()),
        })
        .boxed()
}

impl Fold {
    fn seen(&mut self, o: &Object) {
        if let Some(rv) = o
            .meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.position = self.position.max(rv);
        }
    }

    fn event(&mut self, e: Event2) {
        match e {
            Event2::Apply(o) => {
                self.seen(&o);
                if let Some(r) = o.reference() {
                    self.sent.entry(r.kind).or_default().insert(r.key);
                    self.ops.push(Op::Upsert(o));
                }
            }
            Event2::Delete(o) => {
                self.seen(&o);
                if let Some(r) = o.reference() {
                    if let Some(s) = self.sent.get_mut(&r.kind) {
                        s.remove(&r.key);
                    }
                    self.ops.push(Op::Delete(r));
                }
            }
            Event2::Init(kind) => {
                self.listing.insert(kind, Vec::new());
            }
            Event2::InitApply(o) => {
                self.seen(&o);
                self.listing.entry(o.kind()).or_default().push(o);
            }
            Event2::InitDone(kind) => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                let keys: BTreeSet<ObjectKey> = listed
                    .iter()
                    .filter_map(|o| o.reference())
                    .map(|r| r.key)
                    .collect();
                let before = self.sent.insert(kind, keys.clone()).unwrap_or_default();
                for key in before.difference(&keys) {
                    self.ops.push(Op::Delete(ObjectRef {
                        kind,
                        key: key.clone(),
                    }));
                }
                self.ops.extend(listed.into_iter().map(Op::Upsert));
                self.listed.insert(kind);
            }
            Event2::Error(kind, e) => {
                tracing::warn!(kind = kind.name(), error = %e, "watching the Kubernetes API failed; retrying with backoff");
            }
        }
    }
}
