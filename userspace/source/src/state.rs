//! The store both sources feed: the Kubernetes objects a node's data plane is
//! computed from, kept up to date object by object, with the indexes the
//! phases look things up by (pods by node, EndpointSlices by Service).
//!
//! Objects are stored trimmed ([`Object::trimmed`]): only the fields some
//! phase reads survive, so a node's memory follows what the data plane
//! needs, not what the API server sends (managed fields, container images,
//! environment, ...). They are shared (`Arc`): a change carries the object
//! before and after without copying either.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// `namespace/name` of a namespaced object (`namespace` empty for
/// cluster-scoped ones).
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

    /// A cluster-scoped object's key.
    pub fn cluster(name: impl Into<String>) -> Self {
        ObjectKey::new("", name)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The kinds the data plane is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    /// `bgp.strake.dev/v1` BGPConfiguration (cluster-scoped).
    BgpConfiguration,
    /// `bgp.strake.dev/v1` BGPPeer (cluster-scoped).
    BgpPeer,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::BgpConfiguration,
        Kind::BgpPeer,
    ];

    /// Kinds of strake's own resources, which a cluster may not have
    /// installed (their CRDs in deploy/strake/crds.yaml).
    pub const CUSTOM: [Kind; 2] = [Kind::BgpConfiguration, Kind::BgpPeer];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::BgpConfiguration => "BGPConfiguration",
            Kind::BgpPeer => "BGPPeer",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Node | Kind::Namespace | Kind::BgpConfiguration | Kind::BgpPeer
        )
    }
}

/// A set of kinds: what a phase reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KindSet(u8);

impl KindSet {
    pub const fn of(kinds: &[Kind]) -> Self {
        let mut bits = 0u8;
        let mut i = 0;
        while i < kinds.len() {
            bits |= 1 << kinds[i] as u8;
            i += 1;
        }
        KindSet(bits)
    }

    pub fn contains(self, k: Kind) -> bool {
        self.0 & (1 << k as u8) != 0
    }
}

/// The API group and version of strake's own resources.
pub const BGP_API_VERSION: &str = "bgp.strake.dev/v1";

/// One of strake's own resources as it came: metadata and `spec`. The
/// phase that reads it checks the spec (strake-bgp), so one bad resource
/// costs only itself, with a message naming its field.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CustomResource {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// One object of a kind the data plane reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Node(Arc<Node>),
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    NetworkPolicy(Arc<NetworkPolicy>),
    BgpConfiguration(Arc<CustomResource>),
    BgpPeer(Arc<CustomResource>),
}

/// An object's identity: its kind and key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub key: ObjectKey,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.key)
    }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::BgpConfiguration(_) => Kind::BgpConfiguration,
            Object::BgpPeer(_) => Kind::BgpPeer,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::BgpConfiguration(o) | Object::BgpPeer(o) => &o.metadata,
        }
    }

    /// Its kind and key; namespaced objects without a namespace are in
    /// `default`, as the API server puts them. `None` without a name.
    pub fn reference(&self) -> Option<ObjectRef> {
        let kind = self.kind();
        let meta = self.meta();
        let name = meta.name.clone().filter(|n| !n.is_empty())?;
        let namespace = if kind.namespaced() {
            meta.namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into())
        } else {
            String::new()
        };
        Some(ObjectRef {
            kind,
            key: ObjectKey::new(namespace, name),
        })
    }

    /// The object with only the fields some phase reads (see the module
    /// comment). Everything that decides routes, Services or policy stays.
    pub fn trimmed(self) -> Object {
        match self {
            Object::Node(o) => Object::Node(Arc::new(trim_node(unwrap(o)))),
            Object::Namespace(o) => {
                let mut n = unwrap(o);
                trim_meta(&mut n.metadata);
                n.spec = None;
                n.status = None;
                Object::Namespace(Arc::new(n))
            }
            Object::Pod(o) => Object::Pod(Arc::new(trim_pod(unwrap(o)))),
            Object::Service(o) => {
                let mut s = unwrap(o);
                trim_meta(&mut s.metadata);
                if let Some(st) = s.status.as_mut() {
                    st.conditions = None;
                }
                Object::Service(Arc::new(s))
            }
            Object::EndpointSlice(o) => {
                let mut e = unwrap(o);
                trim_meta(&mut e.metadata);
                for ep in e.endpoints.iter_mut().flatten() {
                    ep.hints = None;
                    ep.hostname = None;
                    ep.zone = None;
                    ep.deprecated_topology = None;
                    if let Some(r) = ep.target_ref.as_mut() {
                        r.api_version = None;
                        r.field_path = None;
                        r.resource_version = None;
                    }
                }
                Object::EndpointSlice(Arc::new(e))
            }
            Object::NetworkPolicy(o) => {
                let mut p = unwrap(o);
                trim_meta(&mut p.metadata);
                Object::NetworkPolicy(Arc::new(p))
            }
            Object::BgpConfiguration(o) => {
                let mut c = unwrap(o);
                trim_meta(&mut c.metadata);
                Object::BgpConfiguration(Arc::new(c))
            }
            Object::BgpPeer(o) => {
                let mut c = unwrap(o);
                trim_meta(&mut c.metadata);
                Object::BgpPeer(Arc::new(c))
            }
        }
    }
}

fn unwrap<T: Clone>(a: Arc<T>) -> T {
    Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone())
}

/// Annotations the data plane reads: strake's own.
pub const ANNOTATION_PREFIX: &str = "lb.strake.dev/";
/// Node annotations BGP reads (the node's AS).
pub const BGP_ANNOTATION_PREFIX: &str = "bgp.strake.dev/";

fn trim_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    m.creation_timestamp = None;
    m.self_link = None;
    m.generation = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(ANNOTATION_PREFIX) || k.starts_with(BGP_ANNOTATION_PREFIX));
    }
    if m.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        m.annotations = None;
    }
}

fn trim_node(mut n: Node) -> Node {
    // Labels stay: BGP peers pick nodes by them.
    trim_meta(&mut n.metadata);
    if let Some(s) = n.spec.as_mut() {
        *s = k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: s.pod_cidr.take(),
            pod_cidrs: s.pod_cidrs.take(),
            ..Default::default()
        };
    }
    if let Some(st) = n.status.as_mut() {
        *st = k8s_openapi::api::core::v1::NodeStatus {
            addresses: st.addresses.take(),
            ..Default::default()
        };
    }
    n
}

fn trim_pod(mut p: Pod) -> Pod {
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodStatus};
    trim_meta(&mut p.metadata);
    if let Some(s) = p.spec.as_mut() {
        let containers = std::mem::take(&mut s.containers)
            .into_iter()
            .filter_map(|c| {
                let ports: Vec<ContainerPort> = c
                    .ports
                    .into_iter()
                    .flatten()
                    .map(|cp| ContainerPort {
                        container_port: cp.container_port,
                        name: cp.name,
                        protocol: cp.protocol,
                        ..Default::default()
                    })
                    .collect();
                // Only ports matter (named ports); a container without any
                // is of no interest beyond existing.
                (!ports.is_empty()).then(|| Container {
                    name: c.name,
                    ports: Some(ports),
                    ..Default::default()
                })
            })
            .collect();
        *s = PodSpec {
            containers,
            node_name: s.node_name.take(),
            host_network: s.host_network.take(),
            ..Default::default()
        };
    }
    if let Some(st) = p.status.as_mut() {
        let ready = st
            .conditions
            .take()
            .into_iter()
            .flatten()
            .filter(|c| c.type_ == "Ready")
            .map(|mut c| {
                c.last_probe_time = None;
                c.last_transition_time = None;
                c.message = None;
                c.reason = None;
                c
            })
            .collect::<Vec<_>>();
        *st = PodStatus {
            phase: st.phase.take(),
            pod_ip: st.pod_ip.take(),
            pod_ips: st.pod_ips.take(),
            conditions: (!ready.is_empty()).then_some(ready),
            ..Default::default()
        };
    }
    p
}

/// One object's change: before and after (`None`: absent). Never both
/// `None`, and never equal.
#[derive(Debug, Clone)]
pub struct Change {
    pub reference: ObjectRef,
    pub old: Option<Object>,
    pub new: Option<Object>,
}

impl Change {
    pub fn kind(&self) -> Kind {
        self.reference.kind
    }
}

/// What a source asks of the store.
#[derive(Debug, Clone)]
pub enum Op {
    /// Add or replace an object.
    Upsert(Object),
    /// Remove an object (absent is fine).
    Delete(ObjectRef),
}

/// The Kubernetes objects a node's data plane is computed from.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// True once the source has delivered a complete view (a directory read
    /// through, or every watch listed). Consumers must not delete kernel state
    /// on the strength of an unsynced, possibly partial view.
    pub synced: bool,
    /// Bumped on every batch of changes applied.
    pub revision: u64,
    /// Where the source stood in its origin when it sent the last batch
    /// (a directory's content stamp, the highest resourceVersion seen): what
    /// `strake wait` compares with the origin now.
    pub position: u64,
    pub nodes: BTreeMap<String, Arc<Node>>,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    pub pods: BTreeMap<ObjectKey, Arc<Pod>>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub network_policies: BTreeMap<ObjectKey, Arc<NetworkPolicy>>,
    pub bgp_configurations: BTreeMap<String, Arc<CustomResource>>,
    pub bgp_peers: BTreeMap<String, Arc<CustomResource>>,
    /// EndpointSlices by the Service they belong to
    /// (`kubernetes.io/service-name`).
    pub slices_by_service: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Pods by `spec.nodeName`.
    pub pods_by_node: BTreeMap<String, BTreeSet<ObjectKey>>,
    /// Problems with the input (a document that does not parse, say), for
    /// logs and metrics; the rest of the state is still good.
    pub errors: Vec<String>,
}

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn slice_service(s: &EndpointSlice, key: &ObjectKey) -> Option<ObjectKey> {
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(key.namespace.clone(), svc.clone()))
}

fn pod_node(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

fn index_remove<K: Ord, V: Ord>(ix: &mut BTreeMap<K, BTreeSet<V>>, k: K, v: &V) {
    if let Some(set) = ix.get_mut(&k) {
        set.remove(v);
        if set.is_empty() {
            ix.remove(&k);
        }
    }
}

impl ClusterState {
    /// A state holding `objects` (later ones replace earlier ones).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut st = ClusterState::default();
        for o in objects {
            st.apply(Op::Upsert(o));
        }
        st
    }

    /// Applies one operation. Returns the change, or `None` if the state
    /// already held exactly that (or an object without a name came).
    pub fn apply(&mut self, op: Op) -> Option<Change> {
        let (reference, new) = match op {
            Op::Upsert(o) => (o.reference()?, Some(o)),
            Op::Delete(r) => (r, None),
        };
        let old = self.get(&reference);
        if old == new {
            return None;
        }
        self.unindex(&reference, old.as_ref());
        let key = reference.key.clone();
        match &new {
            None => match reference.kind {
                Kind::Node => drop(self.nodes.remove(&key.name)),
                Kind::Namespace => drop(self.namespaces.remove(&key.name)),
                Kind::Pod => drop(self.pods.remove(&key)),
                Kind::Service => drop(self.services.remove(&key)),
                Kind::EndpointSlice => drop(self.endpoint_slices.remove(&key)),
                Kind::NetworkPolicy => drop(self.network_policies.remove(&key)),
                Kind::BgpConfiguration => drop(self.bgp_configurations.remove(&key.name)),
                Kind::BgpPeer => drop(self.bgp_peers.remove(&key.name)),
            },
            Some(o) => match o.clone() {
                Object::Node(n) => drop(self.nodes.insert(key.name, n)),
                Object::Namespace(n) => drop(self.namespaces.insert(key.name, n)),
                Object::Pod(p) => drop(self.pods.insert(key, p)),
                Object::Service(s) => drop(self.services.insert(key, s)),
                Object::EndpointSlice(e) => drop(self.endpoint_slices.insert(key, e)),
                Object::NetworkPolicy(p) => drop(self.network_policies.insert(key, p)),
                Object::BgpConfiguration(c) => drop(self.bgp_configurations.insert(key.name, c)),
                Object::BgpPeer(c) => drop(self.bgp_peers.insert(key.name, c)),
            },
        }
        self.index(&reference, new.as_ref());
        Some(Change {
            reference,
            old,
            new,
        })
    }

    /// The object with this identity, if held.
    pub fn get(&self, r: &ObjectRef) -> Option<Object> {
        let k = &r.key;
        Some(match r.kind {
            Kind::Node => Object::Node(self.nodes.get(&k.name)?.clone()),
            Kind::Namespace => Object::Namespace(self.namespaces.get(&k.name)?.clone()),
            Kind::Pod => Object::Pod(self.pods.get(k)?.clone()),
            Kind::Service => Object::Service(self.services.get(k)?.clone()),
            Kind::EndpointSlice => Object::EndpointSlice(self.endpoint_slices.get(k)?.clone()),
            Kind::NetworkPolicy => Object::NetworkPolicy(self.network_policies.get(k)?.clone()),
            Kind::BgpConfiguration => {
                Object::BgpConfiguration(self.bgp_configurations.get(&k.name)?.clone())
            }
            Kind::BgpPeer => Object::BgpPeer(self.bgp_peers.get(&k.name)?.clone()),
        })
    }

    /// Every object held, in kind then key order.
    pub fn objects(&self) -> Vec<Object> {
        let mut out: Vec<Object> = Vec::new();
        out.extend(self.nodes.values().cloned().map(Object::Node));
        out.extend(self.namespaces.values().cloned().map(Object::Namespace));
        out.extend(self.pods.values().cloned().map(Object::Pod));
        out.extend(self.services.values().cloned().map(Object::Service));
        out.extend(
            self.endpoint_slices
                .values()
                .cloned()
                .map(Object::EndpointSlice),
        );
        out.extend(
            self.network_policies
                .values()
                .cloned()
                .map(Object::NetworkPolicy),
        );
        out.extend(
            self.bgp_configurations
                .values()
                .cloned()
                .map(Object::BgpConfiguration),
        );
        out.extend(self.bgp_peers.values().cloned().map(Object::BgpPeer));
        out
    }

    /// Every object's identity, in kind then key order.
    pub fn references(&self) -> Vec<ObjectRef> {
        self.objects()
            .iter()
            .filter_map(|o| o.reference())
            .collect()
    }

    fn unindex(&mut self, r: &ObjectRef, old: Option<&Object>) {
        match old {
            Some(Object::EndpointSlice(s)) => {
                if let Some(svc) = slice_service(s, &r.key) {
                    index_remove(&mut self.slices_by_service, svc, &r.key);
                }
            }
            Some(Object::Pod(p)) => {
                if let Some(n) = pod_node(p) {
                    index_remove(&mut self.pods_by_node, n.to_string(), &r.key);
                }
            }
            _ => {}
        }
    }

    fn index(&mut self, r: &ObjectRef, new: Option<&Object>) {
        match new {
            Some(Object::EndpointSlice(s)) => {
                if let Some(svc) = slice_service(s, &r.key) {
                    self.slices_by_service
                        .entry(svc)
                        .or_default()
                        .insert(r.key.clone());
                }
            }
            Some(Object::Pod(p)) => {
                if let Some(n) = pod_node(p) {
                    self.pods_by_node
                        .entry(n.to_string())
                        .or_default()
                        .insert(r.key.clone());
                }
            }
            _ => {}
        }
    }

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

    /// The pods of a namespace, in name order.
    pub fn pods_in<'a>(
        &'a self,
        namespace: &str,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Arc<Pod>)> + 'a {
        let ns = namespace.to_string();
        self.pods
            .range(ObjectKey::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == ns)
    }

    /// The EndpointSlices of a Service.
    pub fn slices_of<'a>(
        &'a self,
        service: &ObjectKey,
    ) -> impl Iterator<Item = &'a Arc<EndpointSlice>> + 'a {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.endpoint_slices.get(k))
    }
}

/// Parses `a.b.c.d/len` into a network address and prefix length.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, node: &str) -> Object {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": name},
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "lb.strake.dev/weight": "3"}},
            "spec": {"nodeName": node, "containers": [
                {"name": "c", "image": "nginx", "env": [{"name": "A", "value": "b"}],
                 "ports": [{"name": "http", "containerPort": 80, "hostPort": 8080}]},
                {"name": "sidecar", "image": "envoy"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "startTime": "2024-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"},
                               {"type": "PodScheduled", "status": "True"}]}
        }))
        .unwrap();
        Object::Pod(Arc::new(p))
    }

    #[test]
    fn trimming_keeps_what_phases_read_and_drops_the_rest() {
        let Object::Pod(p) = pod("x", "a", "n1").trimmed() else {
            unreachable!()
        };
        let m = &p.metadata;
        assert!(m.managed_fields.is_none());
        let ann = m.annotations.as_ref().unwrap();
        assert_eq!(ann.len(), 1, "only strake's annotations: {ann:?}");
        assert_eq!(m.labels.as_ref().unwrap()["app"], "a");
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.containers.len(), 1, "containers without ports go");
        let c = &spec.containers[0];
        assert!(c.image.is_none() && c.env.is_none());
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 80)
        );
        assert!(port.host_port.is_none());
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.pod_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(st.conditions.as_ref().unwrap().len(), 1, "Ready only");
        assert!(st.start_time.is_none());
    }

    #[test]
    fn changes_carry_before_and_after_and_keep_the_indexes() {
        let mut st = ClusterState::default();
        let c = st.apply(Op::Upsert(pod("x", "a", "n1"))).unwrap();
        assert!(c.old.is_none() && c.new.is_some());
        assert!(
            st.apply(Op::Upsert(pod("x", "a", "n1"))).is_none(),
            "no change"
        );
        assert_eq!(st.pods_by_node["n1"].len(), 1);
        let c = st.apply(Op::Upsert(pod("x", "a", "n2"))).unwrap();
        assert!(c.old.is_some() && c.new.is_some());
        assert!(!st.pods_by_node.contains_key("n1"), "moved off n1");
        assert_eq!(st.pods_by_node["n2"].len(), 1);
        let r = ObjectRef {
            kind: Kind::Pod,
            key: ObjectKey::new("x", "a"),
        };
        let c = st.apply(Op::Delete(r.clone())).unwrap();
        assert!(c.new.is_none());
        assert!(st.pods_by_node.is_empty() && st.pods.is_empty());
        assert!(st.apply(Op::Delete(r)).is_none(), "already gone");
    }

    #[test]
    fn slices_are_indexed_by_their_service() {
        let slice = |name: &str, svc: &str| {
            Object::EndpointSlice(Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"namespace": "x", "name": name, "labels": {SERVICE_NAME_LABEL: svc}},
                    "addressType": "IPv4", "endpoints": []
                }))
                .unwrap(),
            ))
        };
        let mut st = ClusterState::from_objects([slice("w-1", "web"), slice("w-2", "web")]);
        assert_eq!(st.slices_of(&ObjectKey::new("x", "web")).count(), 2);
        st.apply(Op::Upsert(slice("w-2", "db")));
        assert_eq!(st.slices_of(&ObjectKey::new("x", "web")).count(), 1);
        assert_eq!(st.slices_of(&ObjectKey::new("x", "db")).count(), 1);
    }
}
