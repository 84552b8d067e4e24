//! The report as one CSV row per run, appended to a file so that repeated runs build one
//! table. A new (or empty) file gets the header line first; a file whose first line is not
//! this header (another tool's, or another version's columns) is refused rather than mixed.
//!
//! Every field is a number, a fixed word or a failure label (letters, digits, `-`), so no
//! field needs quoting; failures are `label=count` pairs joined by `;`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use super::{Cleanup, Mode, Percentiles, Report};
use crate::LoadError;

/// The header line (without its newline).
pub const HEADER: &str = "started_at,mode,rate_per_sec,ramp_secs,duration_secs,devices,\
concurrency,started,assigned,failed,unfinished,not_started,timed_out,wall_secs,window_secs,\
registrations_per_sec,max_in_flight,\
flow_p50_ms,flow_p90_ms,flow_p99_ms,flow_p999_ms,flow_max_ms,\
tls_p50_ms,tls_p90_ms,tls_p99_ms,tls_p999_ms,tls_max_ms,\
lag_p50_ms,lag_p90_ms,lag_p99_ms,lag_p999_ms,lag_max_ms,\
polls,throttled,failures,cleanup";

/// Longest first line read to compare with [`HEADER`]: well over its length.
const MAX_HEADER: u64 = 4096;

/// `report` as one row in [`HEADER`]'s order (without its newline).
pub fn row(report: &Report) -> String {
    let optional = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let percentiles =
        |p: &Percentiles| [p.p50, p.p90, p.p99, p.p999, p.max].map(|v| format!("{v:.3}"));
    let failures: Vec<String> = report
        .failures
        .iter()
        .map(|(label, n)| format!("{label}={n}"))
        .collect();
    let mut fields = vec![
        report.started_at.clone(),
        match report.mode {
            Mode::Open => "open".into(),
            Mode::Closed => "closed".into(),
        },
        optional(report.rate_per_sec),
        report.ramp_secs.to_string(),
        optional(report.duration_secs),
        report.devices.to_string(),
        report.concurrency.to_string(),
        report.started.to_string(),
        report.assigned.to_string(),
        report.failed.to_string(),
        report.unfinished.to_string(),
        report.not_started.to_string(),
        report.timed_out.to_string(),
        format!("{:.3}", report.wall_secs),
        format!("{:.3}", report.window_secs),
        format!("{:.1}", report.registrations_per_sec),
        report.max_in_flight.to_string(),
    ];
    fields.extend(percentiles(&report.flow_ms));
    fields.extend(percentiles(&report.tls_ms));
    fields.extend(percentiles(&report.lag_ms));
    fields.extend([
        report.polls.to_string(),
        report.throttled.to_string(),
        failures.join(";"),
        match report.cleanup {
            Cleanup::Kept => "kept".into(),
            Cleanup::Done(_) => "done".into(),
            Cleanup::Failed { .. } => "failed".into(),
        },
    ]);
    fields.join(",")
}

/// Opens `path` for appending (creating it), and checks that it is empty or starts with
/// [`HEADER`]. Call before a run, so a wrong file is refused before any device starts.
pub fn open(path: &Path) -> Result<File, LoadError> {
    let io = |source| LoadError::Csv {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io)?;
    let mut first = String::new();
    BufReader::new((&file).take(MAX_HEADER))
        .read_line(&mut first)
        .map_err(io)?;
    if !first.is_empty() && first.trim_end_matches(['\r', '\n']) != HEADER {
        return Err(LoadError::Invalid {
            setting: "--csv",
            why: format!(
                "{} does not start with this tool's CSV header; give a new file",
                path.display()
            ),
        });
    }
    Ok(file)
}

/// Appends `report` as a row to `path` (after the header if the file is new or empty).
pub fn append(path: &Path, report: &Report) -> Result<(), LoadError> {
    let mut file = open(path)?;
    let empty = file
        .metadata()
        .map_err(|source| LoadError::Csv {
            path: path.to_owned(),
            source,
        })?
        .len()
        == 0;
    let mut text = String::new();
    if empty {
        text.push_str(HEADER);
        text.push('\n');
    }
    text.push_str(&row(report));
    text.push('\n');
    // One write: a row is never split by another run appending to the same file.
    file.write_all(text.as_bytes())
        .map_err(|source| LoadError::Csv {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::device::Failure;
    use crate::report::tests::{config, ok};
    use crate::report::Tally;

    fn report() -> Report {
        let mut tally = Tally::new(Duration::ZERO, false);
        tally.started = 3;
        tally.record(ok(10), Duration::ZERO, Duration::from_secs(1));
        tally.record(
            Err(Failure::Connect),
            Duration::ZERO,
            Duration::from_secs(1),
        );
        tally.record(
            Err(Failure::Status(429)),
            Duration::ZERO,
            Duration::from_secs(1),
        );
        Report::new(&config(), tally, Cleanup::Kept)
    }

    #[test]
    fn a_row_has_one_field_per_column() {
        let row = row(&report());
        let columns: Vec<&str> = HEADER.split(',').collect();
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields.len(), columns.len(), "{row}");
        let field = |name: &str| fields[columns.iter().position(|c| *c == name).unwrap()];
        assert_eq!(field("mode"), "closed");
        assert_eq!(field("rate_per_sec"), "");
        assert_eq!(field("assigned"), "1");
        assert_eq!(field("registrations_per_sec"), "1.0");
        assert_eq!(field("failures"), "connect=1;status-429=1");
        assert_eq!(field("cleanup"), "kept");
        assert!(field("flow_p50_ms").starts_with("10.0"), "{row}");
    }

    #[test]
    fn runs_append_rows_under_one_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.csv");
        append(&path, &report()).unwrap();
        append(&path, &report()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], HEADER);
        assert_eq!(lines[1], lines[2]);

        // Someone else's file is left alone.
        let other = dir.path().join("other.csv");
        std::fs::write(&other, "a,b,c\n1,2,3\n").unwrap();
        let err = append(&other, &report()).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Invalid {
                    setting: "--csv",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "a,b,c\n1,2,3\n");
        // A directory is an I/O error, named.
        let err = append(dir.path(), &report()).unwrap_err();
        assert!(matches!(err, LoadError::Csv { .. }), "{err}");
    }
}
