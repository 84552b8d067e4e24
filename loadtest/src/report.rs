//! What a run measured: counts by outcome and failure kind, throughput, and latency
//! percentiles from every device's samples (a sorted `Vec`: at most one sample per device,
//! bounded by `--devices`). Printed as text, or as one JSON line for scripts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::device::{Failure, Timings};
use crate::setup::CleanupSummary;
use crate::Config;

/// Outcomes collected during the device phase.
#[derive(Debug, Default)]
pub struct Tally {
    /// Devices started.
    pub started: usize,
    /// Devices assigned.
    pub assigned: usize,
    /// Devices failed.
    pub failed: usize,
    /// Devices stopped by the duration limit.
    pub unfinished: usize,
    /// Failures by [`Failure::label`].
    pub failures: BTreeMap<String, u64>,
    /// Whether the duration limit ended the phase.
    pub timed_out: bool,
    /// Length of the device phase.
    pub wall: Duration,
    /// Polls sent by assigned devices.
    pub polls: u64,
    /// `429` answers seen by assigned devices.
    pub throttled: u64,
    flow_us: Vec<u64>,
    tls_us: Vec<u64>,
}

impl Tally {
    /// Room for `devices` samples.
    pub fn with_capacity(devices: usize) -> Self {
        Self {
            flow_us: Vec::with_capacity(devices),
            tls_us: Vec::with_capacity(devices),
            ..Self::default()
        }
    }

    /// Counts one device's outcome.
    pub fn record(&mut self, outcome: Result<Timings, Failure>) {
        match outcome {
            Ok(t) => {
                self.assigned += 1;
                self.polls += u64::from(t.polls);
                self.throttled += u64::from(t.throttled);
                self.flow_us.push(micros(t.flow));
                self.tls_us.push(micros(t.tls));
            }
            Err(failure) => {
                self.failed += 1;
                *self.failures.entry(failure.label()).or_default() += 1;
            }
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Latency percentiles in milliseconds (nearest rank); all zero without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub samples: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From samples in microseconds (sorted here).
    pub fn of(mut samples_us: Vec<u64>) -> Self {
        samples_us.sort_unstable();
        let n = samples_us.len();
        if n == 0 {
            return Self::default();
        }
        let at = |p: f64| {
            let rank = ((p / 100.0) * n as f64).ceil() as usize;
            samples_us[rank.clamp(1, n) - 1] as f64 / 1000.0
        };
        Self {
            samples: n,
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: samples_us[n - 1] as f64 / 1000.0,
        }
    }
}

/// What happened to the group and records after the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Cleanup {
    /// `--keep`: left in place.
    Kept,
    /// Deleted.
    Done(CleanupSummary),
    /// Cleanup failed (the run's numbers still stand).
    Failed {
        /// Why.
        error: String,
    },
}

/// A run's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Devices asked for.
    pub devices: usize,
    /// Concurrency asked for.
    pub concurrency: usize,
    /// Devices started.
    pub started: usize,
    /// Devices assigned.
    pub assigned: usize,
    /// Devices failed.
    pub failed: usize,
    /// Devices still running at the duration limit.
    pub unfinished: usize,
    /// Devices never started (duration limit).
    pub not_started: usize,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// Whether the duration limit ended the run.
    pub timed_out: bool,
    /// Length of the device phase, in seconds.
    pub wall_secs: f64,
    /// Assigned devices per second of the device phase.
    pub registrations_per_sec: f64,
    /// TCP connect to `assigned`, per assigned device.
    pub flow_ms: Percentiles,
    /// TLS handshake, per assigned device.
    pub tls_ms: Percentiles,
    /// Polls sent by assigned devices.
    pub polls: u64,
    /// `429` answers seen by assigned devices.
    pub throttled: u64,
    /// The group and records afterwards.
    pub cleanup: Cleanup,
}

impl Report {
    /// Summarizes `tally`.
    pub fn new(config: &Config, tally: Tally, cleanup: Cleanup) -> Self {
        let wall_secs = tally.wall.as_secs_f64();
        Self {
            devices: config.devices,
            concurrency: config.concurrency,
            started: tally.started,
            assigned: tally.assigned,
            failed: tally.failed,
            unfinished: tally.unfinished,
            not_started: config.devices.saturating_sub(tally.started),
            failures: tally.failures,
            timed_out: tally.timed_out,
            wall_secs,
            registrations_per_sec: if wall_secs > 0.0 {
                tally.assigned as f64 / wall_secs
            } else {
                0.0
            },
            flow_ms: Percentiles::of(tally.flow_us),
            tls_ms: Percentiles::of(tally.tls_us),
            polls: tally.polls,
            throttled: tally.throttled,
            cleanup,
        }
    }

    /// Every device asked for was assigned and cleanup (if any) worked.
    pub fn all_assigned(&self) -> bool {
        self.assigned == self.devices && !matches!(self.cleanup, Cleanup::Failed { .. })
    }

    /// One JSON line.
    pub fn to_json(&self) -> String {
        // Only numbers, strings and maps with string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "devices     {} asked, {} started, {} assigned, {} failed, {} unfinished, {} not started{}",
            self.devices,
            self.started,
            self.assigned,
            self.failed,
            self.unfinished,
            self.not_started,
            if self.timed_out {
                " (duration limit reached)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "wall time   {:.2} s, {:.1} registrations/s at concurrency {}",
            self.wall_secs, self.registrations_per_sec, self.concurrency
        )?;
        writeln!(
            f,
            "latency ms  {:>9} {:>9} {:>9} {:>9}",
            "p50", "p90", "p99", "max"
        )?;
        for (name, p) in [("flow", &self.flow_ms), ("tls", &self.tls_ms)] {
            writeln!(
                f,
                "  {name:<9} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                p.p50, p.p90, p.p99, p.max
            )?;
        }
        writeln!(
            f,
            "polls       {} ({} answered 429)",
            self.polls, self.throttled
        )?;
        if !self.failures.is_empty() {
            let kinds: Vec<String> = self
                .failures
                .iter()
                .map(|(kind, n)| format!("{kind}: {n}"))
                .collect();
            writeln!(f, "failures    {}", kinds.join(", "))?;
        }
        match &self.cleanup {
            Cleanup::Kept => writeln!(f, "cleanup     kept (--keep)"),
            Cleanup::Done(s) => writeln!(
                f,
                "cleanup     {} registration records deleted, group {}",
                s.registrations_deleted,
                if s.group_deleted {
                    "deleted"
                } else {
                    "already gone"
                }
            ),
            Cleanup::Failed { error } => writeln!(f, "cleanup     FAILED: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Step;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).rev().map(|ms| ms * 1000).collect());
        assert_eq!(p.samples, 100);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let one = Percentiles::of(vec![1500]);
        assert_eq!((one.p50, one.p99, one.max), (1.5, 1.5, 1.5));
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }

    #[test]
    fn tally_counts_failures_by_kind() {
        let mut tally = Tally::with_capacity(4);
        let ok = Timings {
            flow: Duration::from_millis(20),
            tls: Duration::from_millis(5),
            polls: 1,
            throttled: 0,
        };
        tally.record(Ok(ok));
        tally.record(Err(Failure::ConnAck(5)));
        tally.record(Err(Failure::ConnAck(5)));
        tally.record(Err(Failure::Timeout(Step::Tls)));
        assert_eq!((tally.assigned, tally.failed, tally.polls), (1, 3, 1));
        assert_eq!(tally.failures["connack-5"], 2);
        assert_eq!(tally.failures["timeout-tls"], 1);
    }

    #[test]
    fn the_json_line_has_the_numbers() {
        let api = crate::ApiEndpoint::parse("https://127.0.0.1:8443").unwrap();
        let mqtt = crate::Loopback::parse("127.0.0.1:8883").unwrap();
        let mut config = Config::new("data".into(), api, mqtt);
        config.devices = 2;
        let mut tally = Tally::with_capacity(2);
        tally.started = 2;
        tally.wall = Duration::from_secs(2);
        tally.record(Ok(Timings {
            flow: Duration::from_millis(10),
            tls: Duration::from_millis(3),
            polls: 1,
            throttled: 0,
        }));
        tally.record(Err(Failure::Status(429)));
        let report = Report::new(&config, tally, Cleanup::Kept);
        assert!(!report.all_assigned());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["assigned"], 1);
        assert_eq!(json["registrations_per_sec"], 0.5);
        assert_eq!(json["flow_ms"]["p50"], 10.0);
        assert_eq!(json["failures"]["status-429"], 1);
        assert_eq!(json["cleanup"]["state"], "kept");
        let text = report.to_string();
        assert!(text.contains("0.5 registrations/s"), "{text}");
        assert!(text.contains("status-429: 1"), "{text}");
    }
}
