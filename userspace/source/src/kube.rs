//! Desired state from a Kubernetes API server: one kube-rs watcher per kind
//! (list, then watch; relist when the watch expires or breaks, with
//! backoff), folded into one [`ClusterState`] and published once every kind
//! has listed, then on every change (changes arriving together are
//! published together).
//!
//! A relist replaces everything of its kind, so objects deleted while the
//! watch was down disappear too. Until every kind has listed once, nothing
//! is published: consumers never act on a partial view.

use crate::dir::{apply_object, Object};
use crate::{ClusterState, ObjectKey, StateSender};
use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The kinds the data plane is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Node,
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

const KINDS: [Kind; 6] = [
    Kind::Node,
    Kind::Namespace,
    Kind::Pod,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::NetworkPolicy,
];

/// One watcher event, any kind.
enum Change {
    Apply(Object),
    Delete(Kind, ObjectKey),
    Init(Kind),
    InitApply(Object),
    InitDone(Kind),
    Error(Kind, String),
}

pub struct KubeSource {
    client: Client,
    /// How long to wait for more changes before publishing.
    pub settle: Duration,
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
            settle: Duration::from_millis(50),
        }
    }

    /// Watches until the receivers are gone.
    pub async fn run(self, tx: StateSender) -> Result<()> {
        let c = &self.client;
        let mut changes = futures::stream::select_all([
            watch::<Node>(Api::all(c.clone()), Kind::Node, |o| {
                Object::Node(Box::new(o))
            }),
            watch::<Namespace>(Api::all(c.clone()), Kind::Namespace, |o| {
                Object::Namespace(Box::new(o))
            }),
            watch::<Pod>(Api::all(c.clone()), Kind::Pod, |o| Object::Pod(Box::new(o))),
            watch::<Service>(Api::all(c.clone()), Kind::Service, |o| {
                Object::Service(Box::new(o))
            }),
            watch::<EndpointSlice>(Api::all(c.clone()), Kind::EndpointSlice, |o| {
                Object::EndpointSlice(Box::new(o))
            }),
            watch::<NetworkPolicy>(Api::all(c.clone()), Kind::NetworkPolicy, |o| {
                Object::NetworkPolicy(Box::new(o))
            }),
        ]);
        let mut state = ClusterState::default();
        let mut listing: BTreeMap<Kind, ClusterState> = BTreeMap::new();
        let mut listed: BTreeMap<Kind, bool> = KINDS.iter().map(|k| (*k, false)).collect();
        let mut revision = 0u64;
        loop {
            let Some(first) = changes.next().await else {
                return Ok(());
            };
            let mut changed = fold(first, &mut state, &mut listing, &mut listed);
            // Take whatever else arrives while the burst settles.
            let deadline = tokio::time::sleep(self.settle);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    c = changes.next() => match c {
                        Some(c) => changed |= fold(c, &mut state, &mut listing, &mut listed),
                        None => return Ok(()),
                    },
                }
            }
            if !changed || !listed.values().all(|l| *l) {
                continue;
            }
            revision += 1;
            let mut snapshot = state.clone();
            snapshot.synced = true;
            snapshot.revision = revision;
            if tx.send(Arc::new(snapshot)).is_err() {
                return Ok(()); // nobody listens any more
            }
        }
    }
}

type ChangeStream = Pin<Box<dyn Stream<Item = Change> + Send>>;

fn watch<K>(api: Api<K>, kind: Kind, wrap: fn(K) -> Object) -> ChangeStream
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |ev| match ev {
            Ok(Event::Apply(o)) => Change::Apply(wrap(o)),
            Ok(Event::Delete(o)) => Change::Delete(
                kind,
                ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any()),
            ),
            Ok(Event::Init) => Change::Init(kind),
            Ok(Event::InitApply(o)) => Change::InitApply(wrap(o)),
            Ok(Event::InitDone) => Change::InitDone(kind),
            Err(e) => Change::Error(kind, e.to_string()),
        })
        .boxed()
}

/// Applies one change; returns whether the published state changed.
fn fold(
    c: Change,
    state: &mut ClusterState,
    listing: &mut BTreeMap<Kind, ClusterState>,
    listed: &mut BTreeMap<Kind, bool>,
) -> bool {
    match c {
        Change::Apply(o) => apply(state, o),
        Change::Delete(kind, key) => {
            remove(state, kind, &key);
            true
        }
        Change::Init(kind) => {
            listing.insert(kind, ClusterState::default());
            false
        }
        Change::InitApply(o) => {
            if let Some(kind) = kind_of(&o) {
                apply(listing.entry(kind).or_default(), o);
            }
            false
        }
        Change::InitDone(kind) => {
            let fresh = listing.remove(&kind).unwrap_or_default();
            replace_kind(state, kind, fresh);
            listed.insert(kind, true);
            true
        }
        Change::Error(kind, e) => {
            tracing::warn!(kind = ?kind, error = %e, "watching the Kubernetes API failed; retrying with backoff");
            false
        }
    }
}

fn kind_of(o: &Object) -> Option<Kind> {
    Some(match o {
        Object::Node(_) => Kind::Node,
        Object::Namespace(_) => Kind::Namespace,
        Object::Pod(_) => Kind::Pod,
        Object::Service(_) => Kind::Service,
        Object::EndpointSlice(_) => Kind::EndpointSlice,
        Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        Object::Other { .. } => return None,
    })
}

fn apply(state: &mut ClusterState, o: Object) -> bool {
    if let Err(e) = apply_object(state, o) {
        tracing::warn!(error = %e, "ignoring an object from the API server");
        return false;
    }
    true
}

fn remove(state: &mut ClusterState, kind: Kind, key: &ObjectKey) {
    match kind {
        Kind::Node => {
            state.nodes.remove(&key.name);
        }
        Kind::Namespace => {
            state.namespaces.remove(&key.name);
        }
        Kind::Pod => {
            state.pods.remove(key);
        }
        Kind::Service => {
            state.services.remove(key);
        }
        Kind::EndpointSlice => {
            state.endpoint_slices.remove(key);
        }
        Kind::NetworkPolicy => {
            state.network_policies.remove(key);
        }
    }
}

fn replace_kind(state: &mut ClusterState, kind: Kind, fresh: ClusterState) {
    match kind {
        Kind::Node => state.nodes = fresh.nodes,
        Kind::Namespace => state.namespaces = fresh.namespaces,
        Kind::Pod => state.pods = fresh.pods,
        Kind::Service => state.services = fresh.services,
        Kind::EndpointSlice => state.endpoint_slices = fresh.endpoint_slices,
        Kind::NetworkPolicy => state.network_policies = fresh.network_policies,
    }
}
