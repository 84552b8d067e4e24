//! The command line, parsed into a checked [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dps_types::EnrollmentGroupId;

use crate::{ApiEndpoint, Config, LoadError, Loopback};

/// Drives simulated symmetric-key devices through DPS registration over MQTT against a dpsd
/// on this machine, then reports throughput and latency.
///
/// Loopback only: any target outside 127.0.0.0/8, ::1 and localhost is refused. The run is
/// bounded by --devices and --duration-limit and stops by itself. Exit status: 0 when every
/// device was assigned (and cleanup worked), 2 when some were not, 1 on a setup error.
///
/// Example, against `dpsd serve --data-dir ./data --mqtt-listen 127.0.0.1:8883`:
/// `dps-loadtest --data-dir ./data --devices 5000 --concurrency 256`
#[derive(Debug, Parser)]
#[command(name = "dps-loadtest", version)]
pub struct Args {
    /// dpsd's data directory (service-connection-string, id-scope, pki/ca.pem).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The service API (enrollment group setup and cleanup).
    #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:8443")]
    pub api: String,
    /// The MQTT device listener.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8883")]
    pub mqtt: String,
    /// Devices to simulate.
    #[arg(long, value_name = "N", required_unless_present_any = ["cleanup_only", "hold"])]
    pub devices: Option<usize>,
    /// Devices at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub concurrency: usize,
    /// The device phase ends after this; devices still running count as unfinished.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub duration_limit: Duration,
    /// Limit for each step of a device (TCP, TLS, CONNACK, SUBACK, each answer).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub step_timeout: Duration,
    /// Wait before each poll, capped by the server's retry-after. Real SDKs wait the whole
    /// retry-after (1 s from dpsd, at least 2 s in Python); a short delay measures the
    /// service rather than the clients' patience.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub poll_delay: Duration,
    /// Register and poll requests one device may send before it gives up.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub max_requests: u32,
    /// Enrollment group the devices belong to (created, then deleted unless --keep).
    #[arg(long, value_name = "ID", default_value = "loadtest-group")]
    pub group: String,
    /// Keep the group and the registration records afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Print the report as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Only delete the group's registration records and the group (after a --keep run).
    #[arg(long)]
    pub cleanup_only: bool,
    /// Server statistics, baselines, hold mode, scraping.
    #[command(flatten)]
    pub extras: crate::extras::ExtrasArgs,
}

impl Args {
    /// The checked configuration (targets must be loopback, every bound holds).
    pub fn into_config(self) -> Result<Config, LoadError> {
        let api = ApiEndpoint::parse(&self.api)?;
        let mqtt = Loopback::parse(&self.mqtt)?;
        let mut config = Config::new(self.data_dir, api, mqtt);
        // Any valid count when only cleaning up: no device runs.
        config.devices = self.devices.unwrap_or(1);
        config.concurrency = self.concurrency;
        config.duration_limit = self.duration_limit;
        config.step_timeout = self.step_timeout;
        config.poll_delay = self.poll_delay;
        config.max_requests = self.max_requests;
        config.group = EnrollmentGroupId::parse(&self.group).map_err(|e| LoadError::Invalid {
            setting: "--group",
            why: e.to_string(),
        })?;
        config.keep = self.keep;
        config.validate()?;
        Ok(config)
    }
}

/// `250ms`, `10s`, `2m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let secs = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(format!("{text:?}: the unit must be ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["dps-loadtest", "--data-dir", "d", "--devices", "10"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "1.5s", "-1s", "10 s", "3d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_make_a_valid_config() {
        let config = args(&[]).into_config().unwrap();
        assert_eq!(config.mqtt.addr(), "127.0.0.1:8883".parse().unwrap());
        assert_eq!(config.api.base(), "https://127.0.0.1:8443");
        assert_eq!(config.duration_limit, Duration::from_secs(120));
        assert_eq!(config.poll_delay, Duration::from_millis(100));
        assert_eq!(config.registration_id(7), "loadtest-group-000007");
        assert!(Args::try_parse_from(["dps-loadtest", "--data-dir", "d"]).is_err());
        let only = Args::try_parse_from(["dps-loadtest", "--data-dir", "d", "--cleanup-only"]);
        assert!(only.unwrap().into_config().is_ok());
    }

    #[test]
    fn a_non_loopback_target_is_refused() {
        for extra in [
            &["--mqtt", "10.0.0.1:8883"][..],
            &["--mqtt", "iot.example.com:8883"],
            &["--api", "https://192.168.1.2:8443"],
            &["--api", "https://dps.example.com"],
        ] {
            let err = args(extra).into_config().unwrap_err();
            assert!(
                matches!(err, LoadError::NotLoopback { .. }),
                "{extra:?}: {err}"
            );
        }
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        for extra in [
            &["--concurrency", "0"][..],
            &["--duration-limit", "2h"],
            &["--max-requests", "100"],
            &["--group", "bad group"],
        ] {
            let err = args(extra).into_config().unwrap_err();
            assert!(matches!(err, LoadError::Invalid { .. }), "{extra:?}: {err}");
        }
    }
}
