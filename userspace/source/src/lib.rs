//! The desired state of a strake node: the Kubernetes objects its data plane
//! depends on, and the sources they come from.
//!
//! Every source (a directory of YAML in standalone mode, an API server in a
//! cluster) publishes the same thing, a [`ClusterState`] snapshot, through a
//! `tokio::sync::watch` channel. Consumers are level-based: they look at the
//! latest snapshot, compute what the kernel should hold, and apply the
//! difference. A missed or coalesced update therefore costs nothing: the next
//! snapshot carries everything.

pub mod dir;
pub mod kube;
mod state;

pub use state::{parse_cidr, ClusterState, ObjectKey};

use std::sync::Arc;
use tokio::sync::watch;

/// The receiving end every consumer of desired state holds.
pub type StateReceiver = watch::Receiver<Arc<ClusterState>>;
pub type StateSender = watch::Sender<Arc<ClusterState>>;

/// A new channel holding an empty, not-yet-synced state.
pub fn channel() -> (StateSender, StateReceiver) {
    watch::channel(Arc::new(ClusterState::default()))
}
