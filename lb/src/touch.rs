//! Which Services an object change touches: the Service itself, the
//! Service an EndpointSlice belongs to, and for a Pod the Services whose
//! model read it (backends by targetRef or selector) or whose selector its
//! labels may now match. A change re-models those Services and no other.

use crate::model::ServicePort;
use std::collections::{BTreeMap, BTreeSet};
use strake_source::{Change, ClusterState, Object, ObjectKey, SERVICE_NAME_LABEL};

/// (namespace, label key, label value).
type LabelPair = (String, String, String);

#[derive(Debug, Clone, Default)]
pub struct ServiceDeps {
    /// Pod -> Services whose model read it.
    readers: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Service -> Pods its model read.
    reads: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Services that may take endpoints from Pods, by one pair of their
    /// selector (a pod matching the selector carries that pair).
    selectors: BTreeMap<LabelPair, BTreeSet<ObjectKey>>,
    selector_of: BTreeMap<ObjectKey, LabelPair>,
}

impl ServiceDeps {
    /// Records what a Service's model read, replacing what it read before.
    pub fn record(
        &mut self,
        svc: &ObjectKey,
        state: &ClusterState,
        ports: &[ServicePort],
        endpoints_from_pods: bool,
    ) {
        self.forget(svc);
        let pods: BTreeSet<ObjectKey> = ports
            .iter()
            .flat_map(|p| p.backends.iter().filter_map(|b| b.pod.clone()))
            .collect();
        for p in &pods {
            self.readers
                .entry(p.clone())
                .or_default()
                .insert(svc.clone());
        }
        if !pods.is_empty() {
            self.reads.insert(svc.clone(), pods);
        }
        if !endpoints_from_pods {
            return;
        }
        let first = state
            .services
            .get(svc)
            .and_then(|s| s.spec.as_ref()?.selector.as_ref()?.iter().next());
        if let Some((k, v)) = first {
            let pair = (svc.namespace.clone(), k.clone(), v.clone());
            self.selectors
                .entry(pair.clone())
                .or_default()
                .insert(svc.clone());
            self.selector_of.insert(svc.clone(), pair);
        }
    }

    pub fn forget(&mut self, svc: &ObjectKey) {
        for p in self.reads.remove(svc).into_iter().flatten() {
            if let Some(r) = self.readers.get_mut(&p) {
                r.remove(svc);
                if r.is_empty() {
                    self.readers.remove(&p);
                }
            }
        }
        if let Some(pair) = self.selector_of.remove(svc) {
            if let Some(s) = self.selectors.get_mut(&pair) {
                s.remove(svc);
                if s.is_empty() {
                    self.selectors.remove(&pair);
                }
            }
        }
    }

    /// The Services `change` touches.
    pub fn touched(&self, change: &Change) -> BTreeSet<ObjectKey> {
        let mut out = BTreeSet::new();
        let key = &change.reference.key;
        for o in change.old.iter().chain(change.new.iter()) {
            match o {
                Object::Service(_) => {
                    out.insert(key.clone());
                }
                Object::EndpointSlice(s) => {
                    if let Some(svc) = s
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    {
                        out.insert(ObjectKey::new(key.namespace.clone(), svc.clone()));
                    }
                }
                Object::Pod(p) => {
                    out.extend(self.readers.get(key).into_iter().flatten().cloned());
                    for (k, v) in p.metadata.labels.iter().flatten() {
                        let pair = (key.namespace.clone(), k.clone(), v.clone());
                        out.extend(self.selectors.get(&pair).into_iter().flatten().cloned());
                    }
                }
                _ => {}
            }
        }
        out
    }
}
