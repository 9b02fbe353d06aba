//! One summary line per family, in the form `.ci/run` prints:
//! `partition: family=<name> runs=N faults=F accepted=A delivered=A lost=0 duplicates=0 max_drain_ms=D`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use edge_relay::demo::audit::Audit;

/// Totals of one family over all its runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FamilySummary {
    /// Family name, `[a-z0-9-]+` (file name of its summary).
    pub family: String,
    /// Runs (seeds, cycles or scenarios) completed.
    pub runs: u64,
    /// Faults injected over all runs.
    pub faults: u64,
    /// Events producers were told "accepted".
    pub accepted: u64,
    /// Accepted events found in the upstream's store.
    pub delivered: u64,
    /// Accepted events missing upstream (never a reported gap).
    pub lost: u64,
    /// Events stored upstream more than once.
    pub duplicates: u64,
    /// Accepted events `overflow = "drop_oldest"` dropped and the upstream holds as reported
    /// gaps (not lost); printed as a trailing `dropped_in_gaps=` only when non-zero.
    pub dropped_in_gaps: u64,
    /// Longest drain after the last fault healed, in milliseconds (simulated or wall time, as
    /// the family states).
    pub max_drain_ms: u64,
}

impl FamilySummary {
    /// An empty summary for `family`.
    pub fn new(family: &str) -> Self {
        Self {
            family: family.to_owned(),
            ..Self::default()
        }
    }

    /// Adds one run: its audit, the faults it injected and its drain time.
    pub fn add_run(&mut self, audit: &Audit, faults: u64, drain: Duration) {
        self.runs += 1;
        self.faults += faults;
        self.accepted += audit.produced as u64;
        self.delivered += audit.delivered as u64;
        self.lost += audit.lost as u64;
        self.duplicates += audit.duplicates as u64;
        self.max_drain_ms = self.max_drain_ms.max(drain.as_millis() as u64);
    }

    /// Prints the line to stderr and writes it to `target/tmp/partition/<family>.summary`,
    /// which `.ci/run` prints after the test run.
    ///
    /// # Panics
    /// The summary file cannot be written (a test harness failure, not a relay one).
    pub fn publish(&self) {
        eprintln!("{self}");
        let dir = summary_dir();
        std::fs::create_dir_all(&dir).expect("creating the partition summary dir");
        std::fs::write(
            dir.join(format!("{}.summary", self.family)),
            format!("{self}\n"),
        )
        .expect("writing the partition summary");
    }
}

/// Where family summaries go: `target/tmp/partition/` (cargo's `CARGO_TARGET_TMPDIR`).
pub fn summary_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("partition")
}

impl fmt::Display for FamilySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition: family={} runs={} faults={} accepted={} delivered={} lost={} duplicates={} max_drain_ms={}",
            self.family,
            self.runs,
            self.faults,
            self.accepted,
            self.delivered,
            self.lost,
            self.duplicates,
            self.max_drain_ms
        )?;
        if self.dropped_in_gaps > 0 {
            write!(f, " dropped_in_gaps={}", self.dropped_in_gaps)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_the_ci_form() {
        let mut s = FamilySummary::new("demo");
        let audit = Audit {
            produced: 10,
            delivered: 10,
            lost: 0,
            duplicates: 0,
            order_ok: true,
        };
        s.add_run(&audit, 3, Duration::from_millis(250));
        s.add_run(&audit, 2, Duration::from_millis(40));
        assert_eq!(
            s.to_string(),
            "partition: family=demo runs=2 faults=5 accepted=20 delivered=20 lost=0 duplicates=0 max_drain_ms=250"
        );
        s.dropped_in_gaps = 7;
        assert!(
            s.to_string()
                .ends_with("max_drain_ms=250 dropped_in_gaps=7")
        );
    }
}
