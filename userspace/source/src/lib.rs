//! The desired state of a strake node: the Kubernetes objects its data plane
//! depends on, and the sources they come from.
//!
//! Every source (a directory of YAML in standalone mode, an API server in a
//! cluster) sends the same thing: batches of object operations (upsert,
//! delete) through a channel, the first of them complete (`synced`). The
//! consumer applies them to its [`ClusterState`], which turns each into a
//! [`Change`] (the object before and after), so that what follows a change
//! costs what the change touches, not what the cluster holds. Consumers stay
//! level-based: a full pass over the state yields the same kernel state.

pub mod dir;
pub mod kube;
mod state;

pub use state::{
    parse_cidr, Change, ClusterState, CustomResource, Kind, KindSet, Object, ObjectKey, ObjectRef,
    Op, ANNOTATION_PREFIX, BGP_ANNOTATION_PREFIX, BGP_API_VERSION, SERVICE_NAME_LABEL,
};

use tokio::sync::mpsc;

/// Operations a source sends together.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub ops: Vec<Op>,
    /// The source's view is complete (every later batch keeps it so).
    pub synced: bool,
    /// Where the source stands in its origin (see `ClusterState::position`).
    pub position: u64,
    /// The input's problems now, when the source knows them all (`None`:
    /// unchanged).
    pub errors: Option<Vec<String>>,
}

pub type BatchSender = mpsc::UnboundedSender<Batch>;
pub type BatchReceiver = mpsc::UnboundedReceiver<Batch>;

pub fn channel() -> (BatchSender, BatchReceiver) {
    mpsc::unbounded_channel()
}

impl ClusterState {
    /// Applies a batch; returns the changes it made (a revision is counted
    /// only for a batch that changed something).
    pub fn apply_batch(&mut self, batch: Batch) -> Vec<Change> {
        let changes: Vec<Change> = batch
            .ops
            .into_iter()
            .filter_map(|op| self.apply(op))
            .collect();
        let synced_now = batch.synced && !self.synced;
        self.synced |= batch.synced;
        self.position = batch.position;
        if let Some(e) = batch.errors {
            self.errors = e;
        }
        if !changes.is_empty() || synced_now {
            self.revision += 1;
        }
        changes
    }
}

/// Folds batches from `rx` into `state` until `pred` holds (tests and
/// tools; the agent has its own loop).
pub async fn follow_until(
    rx: &mut BatchReceiver,
    state: &mut ClusterState,
    pred: impl Fn(&ClusterState) -> bool,
) -> Option<()> {
    loop {
        if state.synced && pred(state) {
            return Some(());
        }
        let b = rx.recv().await?;
        state.apply_batch(b);
        while let Ok(b) = rx.try_recv() {
            state.apply_batch(b);
        }
    }
}
