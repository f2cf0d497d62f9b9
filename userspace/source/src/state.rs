use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// `namespace/name` of a namespaced object.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The Kubernetes objects a node's data plane is computed from.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// True once the source has delivered a complete view (a directory read
    /// through, or every watch listed). Consumers must not delete kernel state
    /// on the strength of an unsynced, possibly partial view.
    pub synced: bool,
    /// Bumped by the source on every change.
    pub revision: u64,
    /// `dir::content_stamp` of the directories, taken before they were read:
    /// a snapshot whose stamp equals the directories' current one reflects
    /// their current content (`strake wait`).
    pub content_stamp: u64,
    pub nodes: BTreeMap<String, Node>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
    /// Problems with the input (a document that does not parse, say), for
    /// logs and metrics; the rest of the state is still good.
    pub errors: Vec<String>,
}

impl ClusterState {
    /// A node's pod CIDR (`spec.podCIDR`), if it has a valid IPv4 one.
    pub fn node_pod_cidr(&self, node: &str) -> Option<(Ipv4Addr, u8)> {
        let cidr = self.nodes.get(node)?.spec.as_ref()?.pod_cidr.as_ref()?;
        parse_cidr(cidr)
    }

    /// A node's `InternalIP` from `status.addresses`.
    pub fn node_internal_ip(&self, node: &str) -> Option<Ipv4Addr> {
        self.nodes
            .get(node)?
            .status
            .as_ref()?
            .addresses
            .as_ref()?
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .and_then(|a| a.address.parse().ok())
    }

    /// Names of all nodes.
    pub fn node_names(&self) -> BTreeSet<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Labels of a namespace (with `kubernetes.io/metadata.name`, which the
    /// API server always sets).
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(ns)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), ns.to_string());
        labels
    }
}

/// Parses `a.b.c.d/len` into a network address and prefix length.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some((ip, len))
}
