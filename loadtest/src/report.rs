//! What a run measured: counts by outcome and failure kind, throughput over the measured
//! window, and latency percentiles from HDR histograms (fixed size whatever the device count,
//! three significant digits). Printed as text, as one JSON object, or as a CSV row appended to
//! a table of runs ([`csv`]).

pub mod csv;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::device::{Failure, Timings};
use crate::setup::CleanupSummary;
use crate::Config;

/// Largest latency a histogram tells apart, in microseconds: the longest run
/// ([`crate::MAX_DURATION`]); longer values count as this.
const MAX_MICROS: u64 = 3_600_000_000;
/// Significant digits kept: 0.1% resolution, about 200 KiB per histogram.
const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram, in microseconds.
pub(crate) fn histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 <= 2 * 1 <= MAX_MICROS, digits in 0..=5): this cannot fail.
    Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Outcomes collected during the device phase.
#[derive(Debug)]
pub struct Tally {
    /// When the device phase began.
    pub started_at: SystemTime,
    /// Devices started.
    pub started: usize,
    /// Devices assigned.
    pub assigned: usize,
    /// Devices failed.
    pub failed: usize,
    /// Devices stopped by the duration limit.
    pub unfinished: usize,
    /// Devices the plan meant to start that the duration limit kept from starting.
    pub not_started: usize,
    /// Failures by [`Failure::label`].
    pub failures: BTreeMap<String, u64>,
    /// Whether the duration limit ended the phase.
    pub timed_out: bool,
    /// Length of the device phase.
    pub wall: Duration,
    /// Most devices running at once.
    pub max_in_flight: usize,
    /// Polls sent by assigned devices.
    pub polls: u64,
    /// `429` answers seen by assigned devices.
    pub throttled: u64,
    /// The ramp: the measured window starts after it.
    ramp: Duration,
    /// Assigned devices that finished after the ramp, and when the last one finished.
    assigned_after_ramp: usize,
    last_assigned: Duration,
    /// Open loop: schedule lag is measured.
    open: bool,
    flow_us: Histogram<u64>,
    tls_us: Histogram<u64>,
    lag_us: Histogram<u64>,
}

impl Tally {
    /// An empty tally for a run with this ramp, open loop or not.
    pub fn new(ramp: Duration, open: bool) -> Self {
        Self {
            started_at: SystemTime::UNIX_EPOCH,
            started: 0,
            assigned: 0,
            failed: 0,
            unfinished: 0,
            not_started: 0,
            failures: BTreeMap::new(),
            timed_out: false,
            wall: Duration::ZERO,
            max_in_flight: 0,
            polls: 0,
            throttled: 0,
            ramp,
            assigned_after_ramp: 0,
            last_assigned: Duration::ZERO,
            open,
            flow_us: histogram(),
            tls_us: histogram(),
            lag_us: histogram(),
        }
    }

    /// Counts one device's outcome: it started `lag` after it was due and ended `at` after
    /// the start. Its registration latency is counted from when it was due.
    pub fn record(&mut self, outcome: Result<Timings, Failure>, lag: Duration, at: Duration) {
        if self.open {
            self.lag_us.saturating_record(micros(lag));
        }
        match outcome {
            Ok(t) => {
                self.assigned += 1;
                self.polls += u64::from(t.polls);
                self.throttled += u64::from(t.throttled);
                self.flow_us.saturating_record(micros(lag + t.flow));
                self.tls_us.saturating_record(micros(t.tls));
                if at >= self.ramp {
                    self.assigned_after_ramp += 1;
                }
                self.last_assigned = self.last_assigned.max(at);
            }
            Err(failure) => {
                self.failed += 1;
                *self.failures.entry(failure.label()).or_default() += 1;
            }
        }
    }

    /// The furthest behind schedule a finished device started (open loop).
    pub fn max_lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.max())
    }

    /// The measured window and the assignments in it: from the end of the ramp to the last
    /// assignment; the whole run to the last assignment if none came after the ramp.
    fn window(&self) -> (Duration, usize) {
        if self.assigned_after_ramp > 0 && self.last_assigned > self.ramp {
            (self.last_assigned - self.ramp, self.assigned_after_ramp)
        } else {
            (self.last_assigned, self.assigned)
        }
    }
}

/// Latency percentiles in milliseconds; all zero without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            samples: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
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

/// The schedule of a run, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A fixed number of devices at once.
    Closed,
    /// A target arrival rate.
    Open,
}

/// A run's result. Its field names are the JSON output's (documented in `docs/loadtest.md`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the device phase began (RFC 3339, UTC).
    pub started_at: String,
    /// Closed or open loop.
    pub mode: Mode,
    /// Open loop: the target rate, devices per second.
    pub rate_per_sec: Option<f64>,
    /// Ramp of the rate or the concurrency, in seconds.
    pub ramp_secs: f64,
    /// End by time: devices started for this long, in seconds.
    pub duration_secs: Option<f64>,
    /// Devices asked for (with `duration_secs`, at most this many).
    pub devices: usize,
    /// Concurrency (open loop: the cap).
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
    /// The measured window: after the ramp, to the last assignment, in seconds.
    pub window_secs: f64,
    /// Assigned devices per second of the measured window.
    pub registrations_per_sec: f64,
    /// Most devices running at once.
    pub max_in_flight: usize,
    /// Per assigned device, from when it was due (open loop) or started (closed) to
    /// `assigned`.
    pub flow_ms: Percentiles,
    /// TLS handshake, per assigned device.
    pub tls_ms: Percentiles,
    /// Open loop: how late each device started after it was due (`max` is how far behind
    /// schedule the tool fell).
    pub lag_ms: Percentiles,
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
        let (window, in_window) = tally.window();
        let window_secs = window.as_secs_f64();
        let started_at = time::OffsetDateTime::from(tally.started_at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            started_at,
            mode: if config.rate.is_some() {
                Mode::Open
            } else {
                Mode::Closed
            },
            rate_per_sec: config.rate.map(|r| r.get()),
            ramp_secs: config.ramp.as_secs_f64(),
            duration_secs: config.duration.map(|d| d.as_secs_f64()),
            devices: config.devices,
            concurrency: config.concurrency,
            started: tally.started,
            assigned: tally.assigned,
            failed: tally.failed,
            unfinished: tally.unfinished,
            not_started: tally.not_started,
            timed_out: tally.timed_out,
            wall_secs: tally.wall.as_secs_f64(),
            window_secs,
            registrations_per_sec: if window_secs > 0.0 {
                in_window as f64 / window_secs
            } else {
                0.0
            },
            max_in_flight: tally.max_in_flight,
            flow_ms: Percentiles::of(&tally.flow_us),
            tls_ms: Percentiles::of(&tally.tls_us),
            lag_ms: Percentiles::of(&tally.lag_us),
            polls: tally.polls,
            throttled: tally.throttled,
            failures: tally.failures,
            cleanup,
        }
    }

    /// Every device the run started was assigned, none was left out or unfinished, and
    /// cleanup (if any) worked.
    pub fn all_assigned(&self) -> bool {
        self.assigned == self.started
            && self.started > 0
            && self.not_started == 0
            && !matches!(self.cleanup, Cleanup::Failed { .. })
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        // Only numbers, strings and maps with string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ramp = if self.ramp_secs > 0.0 {
            format!(", {} s ramp", self.ramp_secs)
        } else {
            String::new()
        };
        let end = match self.duration_secs {
            Some(secs) if self.devices == crate::MAX_DEVICES => format!("for {secs} s"),
            Some(secs) => format!("for {secs} s (at most {} devices)", self.devices),
            None => format!("{} devices", self.devices),
        };
        match self.rate_per_sec {
            Some(rate) => writeln!(
                f,
                "schedule    open loop at {rate}/s{ramp}, {end}, at most {} at once",
                self.concurrency
            )?,
            None => writeln!(
                f,
                "schedule    closed loop, {} at once{ramp}, {end}",
                self.concurrency
            )?,
        }
        writeln!(
            f,
            "devices     {} started, {} assigned, {} failed, {} unfinished, {} not started{}",
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
            "throughput  {:.1} registrations/s over {:.2} s (wall time {:.2} s, {} at most in flight)",
            self.registrations_per_sec, self.window_secs, self.wall_secs, self.max_in_flight
        )?;
        writeln!(
            f,
            "latency ms  {:>9} {:>9} {:>9} {:>9} {:>9}",
            "p50", "p90", "p99", "p99.9", "max"
        )?;
        let mut rows = vec![("flow", &self.flow_ms), ("tls", &self.tls_ms)];
        if self.rate_per_sec.is_some() {
            rows.push(("lag", &self.lag_ms));
        }
        for (name, p) in rows {
            writeln!(
                f,
                "  {name:<9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                p.p50, p.p90, p.p99, p.p999, p.max
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
pub(crate) mod tests {
    use super::*;
    use crate::device::Step;

    pub(crate) fn ok(flow_ms: u64) -> Result<Timings, Failure> {
        Ok(Timings {
            flow: Duration::from_millis(flow_ms),
            tls: Duration::from_millis(3),
            polls: 1,
            throttled: 0,
        })
    }

    pub(crate) fn config() -> Config {
        let api = crate::ApiEndpoint::parse("https://127.0.0.1:8443").unwrap();
        let mqtt = crate::Loopback::parse("127.0.0.1:8883").unwrap();
        Config::new("data".into(), api, mqtt)
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    /// Within the histograms' resolution (0.1%).
    fn near(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.001 + 0.001
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut tally = Tally::new(Duration::ZERO, false);
        for ms in (1..=1000).rev() {
            tally.record(ok(ms), Duration::ZERO, Duration::from_secs(1));
        }
        let p = Percentiles::of(&tally.flow_us);
        assert_eq!(p.samples, 1000);
        for (actual, expected) in [
            (p.p50, 500.0),
            (p.p90, 900.0),
            (p.p99, 990.0),
            (p.p999, 999.0),
            (p.max, 1000.0),
        ] {
            assert!(near(actual, expected), "{actual} vs {expected}");
        }
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
        // The closed loop measures no lag.
        assert!(tally.lag_us.is_empty());
    }

    #[test]
    fn tally_counts_failures_by_kind() {
        let mut tally = Tally::new(Duration::ZERO, true);
        let at = Duration::from_secs(1);
        tally.record(ok(20), Duration::from_millis(5), at);
        tally.record(Err(Failure::ConnAck(5)), Duration::ZERO, at);
        tally.record(Err(Failure::ConnAck(5)), Duration::ZERO, at);
        tally.record(Err(Failure::Timeout(Step::Tls)), Duration::ZERO, at);
        assert_eq!((tally.assigned, tally.failed, tally.polls), (1, 3, 1));
        assert_eq!(tally.failures["connack-5"], 2);
        assert_eq!(tally.failures["timeout-tls"], 1);
        // Every device's lag counts; the latency includes it.
        assert_eq!(tally.lag_us.len(), 4);
        assert!(near(ms(tally.max_lag()), 5.0));
        assert!(near(Percentiles::of(&tally.flow_us).max, 25.0));
    }

    #[test]
    fn the_window_starts_after_the_ramp() {
        let mut tally = Tally::new(Duration::from_secs(2), true);
        let secs = Duration::from_secs;
        tally.record(ok(10), Duration::ZERO, secs(1));
        for at in [3, 4, 5, 6] {
            tally.record(ok(10), Duration::ZERO, secs(at));
        }
        assert_eq!(tally.window(), (secs(4), 4));
        // Nothing after the ramp: the whole run.
        let mut early = Tally::new(secs(10), true);
        early.record(ok(10), Duration::ZERO, secs(2));
        assert_eq!(early.window(), (secs(2), 1));
    }

    #[test]
    fn the_json_object_has_stable_fields() {
        let mut config = config();
        config.devices = 2;
        config.rate = Some(crate::Rate::per_sec(50.0).unwrap());
        let mut tally = Tally::new(Duration::ZERO, true);
        tally.started = 2;
        tally.wall = Duration::from_secs(3);
        tally.max_in_flight = 2;
        tally.record(ok(10), Duration::from_millis(1), Duration::from_secs(2));
        tally.record(
            Err(Failure::Status(429)),
            Duration::ZERO,
            Duration::from_secs(2),
        );
        let report = Report::new(&config, tally, Cleanup::Kept);
        assert!(!report.all_assigned());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        let mut expected = vec![
            "started_at",
            "mode",
            "rate_per_sec",
            "ramp_secs",
            "duration_secs",
            "devices",
            "concurrency",
            "started",
            "assigned",
            "failed",
            "unfinished",
            "not_started",
            "failures",
            "timed_out",
            "wall_secs",
            "window_secs",
            "registrations_per_sec",
            "max_in_flight",
            "flow_ms",
            "tls_ms",
            "lag_ms",
            "polls",
            "throttled",
            "cleanup",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["mode"], "open");
        assert_eq!(json["rate_per_sec"], 50.0);
        assert_eq!(json["duration_secs"], serde_json::Value::Null);
        assert_eq!(json["assigned"], 1);
        assert_eq!(json["registrations_per_sec"], 0.5);
        assert!(near(json["flow_ms"]["p50"].as_f64().unwrap(), 11.0));
        let lag = json["lag_ms"].as_object().unwrap();
        let mut fields: Vec<&str> = lag.keys().map(|k| k.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["max", "p50", "p90", "p99", "p999", "samples"]);
        assert_eq!(json["failures"]["status-429"], 1);
        assert_eq!(json["cleanup"]["state"], "kept");
        assert!(json["started_at"]
            .as_str()
            .unwrap()
            .starts_with("1970-01-01T"));
        let text = report.to_string();
        assert!(text.contains("open loop at 50/s"), "{text}");
        assert!(text.contains("0.5 registrations/s over 2.00 s"), "{text}");
        assert!(text.contains("status-429: 1"), "{text}");
        assert!(text.contains("\n  lag "), "{text}");
    }
}
