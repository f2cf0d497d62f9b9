//! The connection-table sweep as a phase: periodic work (`requeue_after`),
//! no cluster objects read. Each pass removes the flows idle past their
//! timeout (strake-datapath's `Conntrack::sweep`: batch reads and deletes,
//! every entry read again before it goes) and picks the next interval from
//! what it found: as Cilium's GC, often while the table is busy, rarely
//! while it is quiet.

use super::{Outcome, Pass, Phase};
use anyhow::Result;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strake_datapath::conntrack::{SweepReport, Timeouts};
use strake_source::KindSet;

/// What the sweep needs from the kernel.
pub trait CtKernel: Send {
    fn sweep(&mut self, timeouts: &Timeouts) -> Result<SweepReport>;
    fn capacity(&self) -> u64;
    /// New flows dropped for want of a SNAT port, since the start.
    fn snat_failures(&self) -> u64;
}

/// Totals for metrics, kept across sweeps.
#[derive(Debug, Clone, Default)]
pub struct CtGcStats {
    pub last: SweepReport,
    pub sweeps: u64,
    pub expired_total: u64,
    pub interval: Duration,
}

pub struct CtGcPhase<K> {
    pub kernel: K,
    pub timeouts: Timeouts,
    pub min: Duration,
    pub max: Duration,
    interval: Duration,
    snat_failures: u64,
    pub stats: Arc<Mutex<CtGcStats>>,
}

impl<K: CtKernel> CtGcPhase<K> {
    pub fn new(
        kernel: K,
        timeouts: Timeouts,
        min: Duration,
        max: Duration,
        stats: Arc<Mutex<CtGcStats>>,
    ) -> Self {
        CtGcPhase {
            kernel,
            timeouts,
            min,
            max,
            interval: min,
            snat_failures: 0,
            stats,
        }
    }

    /// The next interval after a sweep that found `r`.
    fn next_interval(&self, r: &SweepReport, snat_failed: bool) -> Duration {
        let cap = self.kernel.capacity().max(1) as f64;
        let fill = r.entries as f64 / cap;
        let removed = r.expired as f64 / (r.entries + r.expired).max(1) as f64;
        let d = if snat_failed {
            self.min
        } else if fill > 0.9 || removed > 0.25 {
            self.interval / 2
        } else if removed < 0.05 && fill < 0.5 {
            self.interval * 3 / 2
        } else {
            self.interval
        };
        d.clamp(self.min, self.max)
    }
}

impl<K: CtKernel> Phase for CtGcPhase<K> {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn kinds(&self) -> KindSet {
        KindSet::of(&[])
    }

    fn reconcile(&mut self, _pass: &Pass<'_>) -> Result<Outcome> {
        let r = self.kernel.sweep(&self.timeouts)?;
        let failures = self.kernel.snat_failures();
        let snat_failed = failures > self.snat_failures;
        self.snat_failures = failures;
        self.interval = self.next_interval(&r, snat_failed);
        tracing::debug!(
            expired = r.expired,
            revived = r.revived,
            entries = r.entries,
            duration_ms = r.duration.as_secs_f64() * 1000.0,
            next_s = self.interval.as_secs_f64(),
            "connection table swept"
        );
        let changes = r.expired as usize;
        let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        st.sweeps += 1;
        st.expired_total += r.expired;
        st.interval = self.interval;
        st.last = r;
        Ok(Outcome::Applied {
            changes,
            requeue_after: Some(self.interval),
        })
    }
}

/// The real kernel: the data plane's st_ct.
pub struct DatapathCt(pub Arc<Mutex<strake_datapath::Datapath>>);

impl CtKernel for DatapathCt {
    fn sweep(&mut self, timeouts: &Timeouts) -> Result<SweepReport> {
        let mut dp = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = strake_datapath::conntrack::monotonic_secs();
        dp.ct.sweep(now, timeouts)
    }

    fn capacity(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).ct.capacity as u64
    }

    fn snat_failures(&self) -> u64 {
        let dp = self.0.lock().unwrap_or_else(|e| e.into_inner());
        dp.counters()
            .map(|cs| {
                cs.into_iter()
                    .find(|c| c.name == "lb_snat_full")
                    .map_or(0, |c| c.packets)
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        reports: Vec<SweepReport>,
        failures: u64,
    }

    impl CtKernel for Fake {
        fn sweep(&mut self, _: &Timeouts) -> Result<SweepReport> {
            Ok(self.reports.remove(0))
        }
        fn capacity(&self) -> u64 {
            1000
        }
        fn snat_failures(&self) -> u64 {
            self.failures
        }
    }

    fn report(entries: u64, expired: u64) -> SweepReport {
        SweepReport {
            entries,
            expired,
            ..Default::default()
        }
    }

    #[test]
    fn the_interval_follows_what_sweeps_find() {
        let state = strake_source::ClusterState::default();
        let pass = Pass {
            state: &state,
            full: false,
            revision: 1,
        };
        let fake = Fake {
            reports: vec![
                report(10, 0),
                report(10, 0),
                report(10, 0),
                report(950, 0),
                report(100, 100),
                report(10, 0),
            ],
            failures: 0,
        };
        let (min, max) = (Duration::from_secs(10), Duration::from_secs(30));
        let mut p = CtGcPhase::new(fake, Timeouts::default(), min, max, Default::default());
        let next = |p: &mut CtGcPhase<Fake>| match p.reconcile(&pass).unwrap() {
            Outcome::Applied { requeue_after, .. } => requeue_after.unwrap().as_secs(),
            o => panic!("{o:?}"),
        };
        assert_eq!(next(&mut p), 15, "a quiet table: less often");
        assert_eq!(next(&mut p), 22);
        assert_eq!(next(&mut p), 30, "up to the maximum");
        assert_eq!(next(&mut p), 15, "over 90 % full: twice as often");
        assert_eq!(next(&mut p), 10, "half of it expired: down to the minimum");
        p.kernel.failures = 1;
        p.interval = max;
        assert_eq!(next(&mut p), 10, "a SNAT failure: the minimum at once");
        assert_eq!(p.stats.lock().unwrap().expired_total, 100);
    }
}
