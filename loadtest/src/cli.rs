//! The command line, parsed into a checked [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dps_types::EnrollmentGroupId;

use crate::{ApiEndpoint, CaSource, Config, Kind, LoadError, Loopback, Mix, Rate};

/// The hard limit's default: the device phase's default bound, or with --duration that long
/// plus this much for the running devices to finish.
const DEFAULT_LIMIT: Duration = Duration::from_secs(120);
const DEFAULT_DRAIN: Duration = Duration::from_secs(60);

/// Drives simulated devices through DPS registration (MQTT, AMQP or the HTTPS device API,
/// symmetric key or X.509) against a dpsd on this machine, then reports throughput and
/// latency.
///
/// Closed loop (default): --concurrency devices at once. Open loop (--rate): devices arrive
/// at a target rate and latency counts from each one's scheduled start. Either ends after
/// --devices or after --duration, and always by --duration-limit.
///
/// Loopback only: any target outside 127.0.0.0/8, ::1 and localhost is refused. The run is
/// bounded by --devices (or --duration) and --duration-limit and stops by itself. Exit status: 0 when every
/// device was assigned (and cleanup worked), 2 when some were not, 1 on a setup error.
///
/// Example, against `dpsd serve --data-dir ./data --mqtt-listen 127.0.0.1:8883`:
/// `dps-loadtest --data-dir ./data --devices 5000 --concurrency 256`, or open loop
/// `dps-loadtest --data-dir ./data --rate 500/s --ramp 10s --duration 60s --concurrency 256`;
/// X.509 devices over AMQP: add `--transport amqp --attestation x509`; a mix:
/// `--mix mqtt-x509:3,amqp-sas:1`.
#[derive(Debug, Parser)]
#[command(name = "dps-loadtest", version)]
pub struct Args {
    /// dpsd's data directory (service-connection-string, id-scope, pki/ca.pem).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The service API (enrollment group setup and cleanup), and the device API of HTTPS
    /// devices.
    #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:8443")]
    pub api: String,
    /// The MQTT device listener.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8883")]
    pub mqtt: String,
    /// The AMQP device listener.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5671")]
    pub amqp: String,
    /// How every device talks to dpsd (see --mix for several).
    #[arg(long, value_name = "PROTOCOL", value_parser = ["mqtt", "amqp", "https"], default_value = "mqtt", conflicts_with = "mix")]
    pub transport: String,
    /// How every device attests: `sas` (a key derived from a symmetric-key group),
    /// `sas-individual` (its own individual enrollment, created in bulk before the run) or
    /// `x509` (a leaf certificate under an X.509 group's CA).
    #[arg(long, value_name = "KIND", value_parser = ["sas", "sas-individual", "x509"], default_value = "sas", conflicts_with = "mix")]
    pub attestation: String,
    /// Device kinds with weights, e.g. `mqtt-x509:3,amqp-sas:1` (kinds: mqtt-sas,
    /// mqtt-sas-individual, mqtt-x509 and the same with amqp and https); device n's kind
    /// follows from n.
    #[arg(long, value_name = "KIND:WEIGHT,...")]
    pub mix: Option<String>,
    /// PEM certificates of the CA that signs the X.509 devices' leaves: the issuer first, the
    /// certificate the group names last (those between are sent by the devices). Without it,
    /// a root CA is made for the run.
    #[arg(long, value_name = "PEM", requires = "x509_ca_key")]
    pub x509_ca_cert: Option<PathBuf>,
    /// The issuer's private key, PEM.
    #[arg(long, value_name = "PEM", requires = "x509_ca_cert")]
    pub x509_ca_key: Option<PathBuf>,
    /// With a CA made for the run: sign leaves with an intermediate under the root, so each
    /// device presents [leaf, intermediate] and the group names the root.
    #[arg(long, conflicts_with = "x509_ca_cert")]
    pub x509_intermediate: bool,
    /// Devices to simulate (with --duration: at most this many).
    #[arg(long, value_name = "N", required_unless_present_any = ["cleanup_only", "duration", "hold"])]
    pub devices: Option<usize>,
    /// Devices at once (closed loop); with --rate, a safety cap on devices in flight.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: devices start at this rate (`200/s`, `600/m`); a device held back by
    /// --concurrency still counts its latency from its scheduled start.
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Grow the rate (open loop) or the concurrency (closed loop) linearly over this.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// End by time: start devices for this long, then let the running ones finish.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// The device phase ends after this whatever else; devices still running count as
    /// unfinished [default: 120s, or --duration plus 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration_limit: Option<Duration>,
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
    /// Print the report as one JSON object on stdout (fields in docs/loadtest.md).
    #[arg(long)]
    pub json: bool,
    /// Also append the report as one row to this CSV file (header first if it is new).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// No progress (bar on a terminal, lines otherwise) on stderr.
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
        config.amqp = Loopback::parse(&self.amqp)?;
        config.mix = match &self.mix {
            Some(mix) => Mix::parse(mix),
            None => {
                Kind::parse(&format!("{}-{}", self.transport, self.attestation)).map(Mix::single)
            }
        }
        .map_err(|e| LoadError::Invalid {
            setting: "--mix",
            why: e.to_string(),
        })?;
        config.x509_ca = match (self.x509_ca_cert, self.x509_ca_key) {
            (Some(cert), Some(key)) => CaSource::Files { cert, key },
            _ => CaSource::Generated {
                intermediate: self.x509_intermediate,
            },
        };
        // By duration without a count: as many as fit (X.509 leaves are minted before the
        // clock, so those need a count). Any valid count when only cleaning up: no device runs.
        config.devices = match (self.devices, self.duration) {
            (Some(n), _) => n,
            (None, Some(_)) if config.mix.uses(crate::Attestation::X509) => {
                return Err(LoadError::Invalid {
                    setting: "--devices",
                    why: "X.509 devices are minted before the run: give a count with --duration"
                        .into(),
                })
            }
            (None, Some(_)) => crate::MAX_DEVICES,
            (None, None) => 1,
        };
        config.concurrency = self.concurrency;
        config.rate = self.rate.as_deref().map(Rate::parse).transpose()?;
        config.ramp = self.ramp;
        config.duration = self.duration;
        config.duration_limit = match (self.duration_limit, self.duration) {
            (Some(limit), _) => limit,
            (None, Some(duration)) => (duration + DEFAULT_DRAIN).min(crate::MAX_DURATION),
            (None, None) => DEFAULT_LIMIT,
        };
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
    fn transport_attestation_and_mix_flags() {
        let config = args(&[]).into_config().unwrap();
        assert_eq!(config.mix.to_string(), "mqtt-sas:1");
        assert_eq!(config.amqp.addr(), "127.0.0.1:5671".parse().unwrap());
        assert_eq!(
            config.x509_ca,
            CaSource::Generated {
                intermediate: false
            }
        );
        assert_eq!(config.groups(), std::slice::from_ref(&config.group));

        let config = args(&[
            "--transport",
            "amqp",
            "--attestation",
            "x509",
            "--x509-intermediate",
        ])
        .into_config()
        .unwrap();
        assert_eq!(config.mix.to_string(), "amqp-x509:1");
        assert_eq!(config.x509_ca, CaSource::Generated { intermediate: true });
        assert_eq!(config.groups()[0].as_str(), "loadtest-group-x509");

        let config = args(&[
            "--mix",
            "mqtt-x509:3,amqp-sas:1",
            "--amqp",
            "localhost:5672",
        ])
        .into_config()
        .unwrap();
        assert_eq!(config.mix.to_string(), "mqtt-x509:3,amqp-sas:1");
        assert_eq!(config.amqp.addr().port(), 5672);
        assert_eq!(config.groups().len(), 2);

        let config = args(&[
            "--attestation",
            "x509",
            "--x509-ca-cert",
            "ca.pem",
            "--x509-ca-key",
            "ca.key",
        ])
        .into_config()
        .unwrap();
        assert_eq!(
            config.x509_ca,
            CaSource::Files {
                cert: "ca.pem".into(),
                key: "ca.key".into()
            }
        );
    }

    #[test]
    fn bad_mixes_and_flag_combinations_are_refused_clearly() {
        let err = args(&["--mix", "mqtt-x509:3,http-sas:1"])
            .into_config()
            .unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Invalid {
                    setting: "--mix",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("unknown device kind \"http-sas\""),
            "{err}"
        );
        let err = args(&["--mix", "mqtt-x509:0"]).into_config().unwrap_err();
        assert!(err.to_string().contains("from 1 to 1000"), "{err}");
        for argv in [
            &["--mix", "amqp-sas", "--transport", "amqp"][..],
            &["--transport", "http"],
            &["--attestation", "tpm"],
            &["--x509-ca-cert", "ca.pem"],
            &["--x509-ca-key", "ca.key"],
            &[
                "--x509-ca-cert",
                "c",
                "--x509-ca-key",
                "k",
                "--x509-intermediate",
            ],
        ] {
            let mut full = vec!["dps-loadtest", "--data-dir", "d", "--devices", "10"];
            full.extend_from_slice(argv);
            assert!(Args::try_parse_from(full).is_err(), "{argv:?}");
        }
        // X.509 registration ids are certificate CNs: at most 64 characters.
        let long = "g".repeat(60);
        let err = args(&["--attestation", "x509", "--group", &long])
            .into_config()
            .unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Invalid {
                    setting: "--group",
                    ..
                }
            ),
            "{err}"
        );
        assert!(args(&["--group", &long]).into_config().is_ok());
        let err = Args::try_parse_from([
            "dps-loadtest",
            "--data-dir",
            "d",
            "--attestation",
            "x509",
            "--devices",
            "300000",
        ])
        .unwrap()
        .into_config()
        .unwrap_err();
        assert!(err.to_string().contains("X.509 devices is over"), "{err}");
    }

    #[test]
    fn scheduling_flags_make_an_open_loop_run() {
        let config = args(&["--rate", "200/s", "--ramp", "10s", "--duration", "60s"])
            .into_config()
            .unwrap();
        assert_eq!(config.rate.map(Rate::get), Some(200.0));
        assert_eq!(config.ramp, Duration::from_secs(10));
        assert_eq!(config.duration, Some(Duration::from_secs(60)));
        // Room for the running devices to finish after the last start.
        assert_eq!(config.duration_limit, Duration::from_secs(120));
        // By duration alone: no count needed, the count bound holds.
        let by_time = ["dps-loadtest", "--data-dir", "d", "--duration", "30s"];
        let config = Args::try_parse_from(by_time)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.devices, crate::MAX_DEVICES);
        assert_eq!(config.rate, None);
        assert_eq!(config.duration_limit, Duration::from_secs(90));
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        for extra in [
            &["--concurrency", "0"][..],
            &["--rate", "0"],
            &["--rate=-10/s"],
            &["--rate", "fast"],
            &["--rate", "10/h"],
            &["--rate", "1000000/s"],
            &["--duration", "0s"],
            &["--duration", "60s", "--duration-limit", "60s"],
            &["--ramp", "2m"],
            &["--ramp", "30s", "--duration", "30s"],
            &["--duration-limit", "2h"],
            &["--max-requests", "100"],
            &["--group", "bad group"],
        ] {
            let err = args(extra).into_config().unwrap_err();
            assert!(matches!(err, LoadError::Invalid { .. }), "{extra:?}: {err}");
        }
    }

    #[test]
    fn malformed_scheduling_flags_are_refused_by_the_parser() {
        for extra in [
            &["--ramp", "ten"][..],
            &["--ramp", "1.5s"],
            &["--duration", "60"],
            &["--duration-limit", "-1s"],
        ] {
            let mut argv = vec!["dps-loadtest", "--data-dir", "d", "--devices", "10"];
            argv.extend_from_slice(extra);
            assert!(Args::try_parse_from(argv).is_err(), "{extra:?}");
        }
    }
}
