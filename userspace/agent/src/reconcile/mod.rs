//! The one shape every agent phase has (docs/reconcile.md): desired state
//! computed from the cluster state (pure), what the kernel holds observed,
//! the difference applied, and an [`Outcome`] that tells the [`Runner`] what
//! to do next. A failed pass is retried with exponential backoff, as a full
//! pass; `applied_revision` advances only once every phase has applied a
//! revision.
//!
//! Kernel writes go through a narrow trait per phase (`RouteTable`,
//! `LbKernel`, `PolicyKernel`, `EndpointKernel`, `NodeKernel`), so every
//! diff and apply is tested without root against in-memory kernels.

pub mod bgp;
pub mod conntrack;
pub mod driver;
pub mod endpoints;
pub mod lb;
pub mod node;
pub mod policy;
pub mod routes;
pub mod socket_lb;

use std::time::{Duration, Instant};
use strake_source::{Change, ClusterState, Kind, KindSet};

/// What a pass achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel holds what this revision asks of the phase.
    Applied {
        /// Kernel writes made (0: nothing differed).
        changes: usize,
        /// Run again after this long even if nothing changes (periodic work).
        requeue_after: Option<Duration>,
    },
    /// Not done, and not an error: the phase waits for something outside the
    /// agent (an interface to appear, say). The revision is not applied; the
    /// phase runs again after `after`, without backoff.
    Waiting { after: Duration, reason: String },
}

impl Outcome {
    pub fn applied(changes: usize) -> Self {
        Outcome::Applied {
            changes,
            requeue_after: None,
        }
    }
}

/// One pass's inputs.
pub struct Pass<'a> {
    pub state: &'a ClusterState,
    /// Recompute everything and observe the kernel (first pass, resync, and
    /// every retry after a failure), rather than only what changes touched.
    pub full: bool,
    pub revision: u64,
}

/// Something that happened on the node rather than in the cluster state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalEvent {
    /// Backends whose health flipped.
    Health(Vec<strake_lb::model::BackendAddr>),
    /// A local endpoint was added or removed by CNI (its pod, if known).
    Endpoint(Option<strake_source::ObjectKey>),
}

/// A phase of the agent: one concern of the node's kernel state.
pub trait Phase: Send {
    fn name(&self) -> &'static str;

    /// The kinds of object whose changes this phase reads; the runner shows
    /// it no others.
    fn kinds(&self) -> KindSet;

    /// One object changed (`Change` carries it before and after). Record
    /// what it touches; cheap, no I/O. Returns whether the phase has work.
    fn note(&mut self, change: &Change, state: &ClusterState) -> bool {
        let _ = (change, state);
        true
    }

    /// Something happened on the node. Returns whether the phase has work.
    fn note_local(&mut self, event: &LocalEvent) -> bool {
        let _ = event;
        false
    }

    /// One pass: desired state for what was touched (everything when
    /// `pass.full`), diffed against what the kernel holds, applied.
    fn reconcile(&mut self, pass: &Pass<'_>) -> anyhow::Result<Outcome>;
}

/// How long a phase waits before its `n`-th retry in a row: `base`
/// doubling, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << shift).min(self.max)
    }
}

/// A phase's standing, as `strake status` shows it.
#[derive(Debug, Clone, Default)]
pub struct PhaseState {
    pub name: &'static str,
    /// The last revision this phase fully applied.
    pub applied_revision: u64,
    /// Failed passes in a row (0 once a pass succeeds).
    pub failures: u32,
    pub last_error: Option<String>,
    /// Why the phase is waiting, when it is (`Outcome::Waiting`).
    pub waiting: Option<String>,
    /// When it runs next without a new change (retry, requeue or wait).
    pub next_run: Option<Instant>,
    pub last_duration: Duration,
    pub last_changes: usize,
    pub passes: u64,
}

struct Slot {
    phase: Box<dyn Phase>,
    state: PhaseState,
    /// Touched by a change or event since its last applied pass: the
    /// current revision is not applied yet.
    dirty: bool,
    /// Touched since its last pass (applied or not).
    fresh: bool,
    /// The next pass must be full.
    full: bool,
}

/// Runs phases in order, each when it has work and is not backing off.
pub struct Runner {
    slots: Vec<Slot>,
    backoff: Backoff,
}

/// What one round of passes produced.
#[derive(Debug, Clone)]
pub struct Round {
    /// Every phase has applied this revision.
    pub applied_revision: u64,
    /// When the runner must be woken without a new change.
    pub next_wake: Option<Instant>,
}

impl Runner {
    pub fn new(phases: Vec<Box<dyn Phase>>, backoff: Backoff) -> Self {
        Runner {
            slots: phases
                .into_iter()
                .map(|phase| Slot {
                    state: PhaseState {
                        name: phase.name(),
                        ..Default::default()
                    },
                    phase,
                    dirty: true,
                    fresh: true,
                    full: true,
                })
                .collect(),
            backoff,
        }
    }

    /// Shows one object change to every phase that reads its kind.
    pub fn note(&mut self, change: &Change, state: &ClusterState) {
        let kind: Kind = change.kind();
        for s in &mut self.slots {
            if s.phase.kinds().contains(kind) && s.phase.note(change, state) {
                s.dirty = true;
                s.fresh = true;
            }
        }
    }

    pub fn note_local(&mut self, event: &LocalEvent) {
        for s in &mut self.slots {
            if s.phase.note_local(event) {
                s.dirty = true;
                s.fresh = true;
            }
        }
    }

    /// Every phase's next pass is full (resync).
    pub fn resync(&mut self) {
        for s in &mut self.slots {
            s.dirty = true;
            s.fresh = true;
            s.full = true;
        }
    }

    /// Runs every phase that is due, in order. A phase with nothing to do
    /// and no failure behind it has applied `revision` as it is.
    pub fn run(&mut self, state: &ClusterState, revision: u64, now: Instant) -> Round {
        for s in &mut self.slots {
            let due = s.state.next_run.is_some_and(|t| t <= now);
            let run = if s.state.failures > 0 {
                // Backing off: a change does not cut the wait short.
                due
            } else if s.state.waiting.is_some() {
                // A change may be what the phase waits for.
                due || s.fresh
            } else {
                s.dirty || due
            };
            if !run {
                if !s.dirty {
                    s.state.applied_revision = revision;
                }
                continue;
            }
            s.fresh = false;
            let full = s.full;
            let t0 = Instant::now();
            let result = s.phase.reconcile(&Pass {
                state,
                full,
                revision,
            });
            s.state.last_duration = t0.elapsed();
            s.state.passes += 1;
            let name = s.state.name;
            match result {
                Ok(Outcome::Applied {
                    changes,
                    requeue_after,
                }) => {
                    if s.state.failures > 0 {
                        tracing::info!(
                            phase = name,
                            revision,
                            after_failures = s.state.failures,
                            "phase recovered"
                        );
                    }
                    if changes > 0 || full {
                        tracing::info!(
                            phase = name,
                            changes,
                            revision,
                            full,
                            elapsed_ms = s.state.last_duration.as_secs_f64() * 1000.0,
                            "phase applied"
                        );
                    }
                    s.state.applied_revision = revision;
                    s.state.failures = 0;
                    s.state.last_error = None;
                    s.state.waiting = None;
                    s.state.last_changes = changes;
                    s.state.next_run = requeue_after.map(|d| now + d);
                    s.dirty = false;
                    s.full = false;
                }
                Ok(Outcome::Waiting { after, reason }) => {
                    if s.state.waiting.as_deref() != Some(reason.as_str()) {
                        tracing::warn!(phase = name, revision, reason = %reason, "phase waiting");
                    }
                    s.state.waiting = Some(reason);
                    s.state.failures = 0;
                    s.state.last_error = None;
                    s.state.next_run = Some(now + after);
                    // Still dirty: the revision is not applied.
                }
                Err(e) => {
                    s.state.failures += 1;
                    let delay = self.backoff.delay(s.state.failures);
                    let msg = format!("{e:#}");
                    tracing::error!(
                        phase = name,
                        revision,
                        failures = s.state.failures,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %msg,
                        "phase failed; will retry"
                    );
                    s.state.last_error = Some(msg);
                    s.state.waiting = None;
                    s.state.next_run = Some(now + delay);
                    // What the phase recorded of the kernel may be off now:
                    // the retry observes it again.
                    s.full = true;
                }
            }
        }
        Round {
            applied_revision: self
                .slots
                .iter()
                .map(|s| s.state.applied_revision)
                .min()
                .unwrap_or(revision),
            next_wake: self.slots.iter().filter_map(|s| s.state.next_run).min(),
        }
    }

    pub fn states(&self) -> Vec<PhaseState> {
        self.slots.iter().map(|s| s.state.clone()).collect()
    }
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
