//! What a run measures besides the devices, and its command-line flags: the server's CPU,
//! memory and descriptors around the device phase (from `/proc`), the tool's own CPU, metrics
//! scraping during the device phase, the baselines after it, and hold mode instead of it.
//! Printed after the devices' [`Report`] (text, or one more JSON line with `--json`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::baseline::{
    self, BaselineKind, BaselineReport, BaselineSettings, DpsdFigures, MqttBroker,
};
use crate::cli::parse_duration;
use crate::hold::HoldConfig;
use crate::procfs::{self, Pid, Sample};
use crate::scrape::{ScrapeReport, ScrapeUrl, Scraper};
use crate::target::Loopback;
use crate::{Config, DevicePhase, LoadError, Report};

/// The flags of this module (flattened into [`crate::cli::Args`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ExtrasArgs {
    /// dpsd's process id, when it cannot be found by its listening port (e.g. another user's
    /// process). Its CPU, RSS and open files are read from /proc around the device phase.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Baselines run after the devices, same count and concurrency: tls (bare rustls server,
    /// server authentication), mtls (client certificates), mqtt (the same MQTT round trips
    /// against Mosquitto, started here, or --baseline-mqtt-url). Comma-separated.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = BaselineKind::parse)]
    pub baseline: Vec<BaselineKind>,
    /// An MQTT broker on loopback for the mqtt baseline instead of starting Mosquitto:
    /// mqtts://HOST:PORT, with --baseline-mqtt-ca, --baseline-mqtt-cert and --baseline-mqtt-key.
    #[arg(long, value_name = "URL", requires_all = ["baseline_mqtt_ca", "baseline_mqtt_cert", "baseline_mqtt_key"])]
    pub baseline_mqtt_url: Option<String>,
    /// CA (PEM) the broker's certificate chains to.
    #[arg(long, value_name = "FILE")]
    pub baseline_mqtt_ca: Option<PathBuf>,
    /// Client certificate (PEM) for the broker.
    #[arg(long, value_name = "FILE")]
    pub baseline_mqtt_cert: Option<PathBuf>,
    /// Client key (PEM) for the broker.
    #[arg(long, value_name = "FILE")]
    pub baseline_mqtt_key: Option<PathBuf>,
    /// Hold mode instead of registrations: N devices connect, attest and stay connected.
    #[arg(long, value_name = "N", conflicts_with_all = ["devices", "baseline", "scrape"])]
    pub hold: Option<usize>,
    /// How long hold mode holds the devices once all are connected.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub hold_for: Duration,
    /// Keep-alive of held devices: a PINGREQ each this often.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub hold_keep_alive: Duration,
    /// Scrape this metrics URL (http:// on loopback) during the device phase.
    #[arg(long, value_name = "URL")]
    pub scrape: Option<String>,
    /// Interval of --scrape.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub scrape_every: Duration,
}

impl ExtrasArgs {
    /// The server process: `--server-pid`, else the owner of the MQTT listener.
    pub fn server(&self, mqtt: Loopback) -> Option<Pid> {
        self.server_pid
            .map(Pid)
            .or_else(|| procfs::listener_pid(mqtt.addr().port()))
    }

    /// Hold mode's settings, when `--hold` was given.
    pub fn hold_config(&self, config: &Config) -> Option<HoldConfig> {
        Some(HoldConfig {
            devices: self.hold?,
            hold_for: self.hold_for,
            keep_alive: self.hold_keep_alive,
            server: self.server(config.mqtt),
        })
    }

    /// The watchers of the device phase.
    pub fn watchers(&self, config: &Config) -> Result<Watchers, LoadError> {
        let scrape = match &self.scrape {
            Some(url) => Some((ScrapeUrl::parse(url)?, self.scrape_every)),
            None => None,
        };
        Ok(Watchers::new(
            self.server(config.mqtt),
            scrape,
            config.step_timeout,
        ))
    }

    /// The baselines' settings (`exe`: this tool's binary); `None` without `--baseline`.
    pub fn baseline_settings(
        &self,
        config: &Config,
        exe: PathBuf,
    ) -> Result<Option<BaselineSettings>, LoadError> {
        if self.baseline.is_empty() {
            return Ok(None);
        }
        let broker = match (
            &self.baseline_mqtt_url,
            &self.baseline_mqtt_ca,
            &self.baseline_mqtt_cert,
            &self.baseline_mqtt_key,
        ) {
            (Some(url), Some(ca), Some(cert), Some(key)) => {
                let authority =
                    url.strip_prefix("mqtts://")
                        .ok_or_else(|| LoadError::BadTarget {
                            target: url.clone(),
                            why: "the broker URL must start with mqtts://",
                        })?;
                let authority = authority.strip_suffix('/').unwrap_or(authority);
                let server_name = match authority.rsplit_once(':') {
                    Some((host, _)) => host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    None => authority.to_owned(),
                };
                MqttBroker::Url {
                    addr: Loopback::parse(authority)?,
                    server_name,
                    ca_pem: read_pem(ca)?,
                    cert_pem: read_pem(cert)?,
                    key_pem: read_pem(key)?,
                }
            }
            _ => MqttBroker::Mosquitto(baseline::MOSQUITTO.into()),
        };
        Ok(Some(BaselineSettings {
            kinds: self.baseline.clone(),
            connections: config.devices,
            concurrency: config.concurrency,
            step_timeout: config.step_timeout,
            duration_limit: config.duration_limit,
            exe,
            broker,
        }))
    }
}

/// Largest PEM file read for the broker baseline.
const MAX_PEM: u64 = 64 * 1024;

fn read_pem(path: &PathBuf) -> Result<String, LoadError> {
    let read = |source| LoadError::Read {
        path: path.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_PEM {
        return Err(LoadError::DataFile {
            path: path.clone(),
            why: format!("over {MAX_PEM} bytes"),
        });
    }
    std::fs::read_to_string(path).map_err(read)
}

/// The server and the tool read from /proc around the device phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerStats {
    /// The server process (none found: the numbers are unavailable).
    pub pid: Option<Pid>,
    /// Before the first device.
    pub before: Option<Sample>,
    /// After the last.
    pub after: Option<Sample>,
    /// The server's CPU seconds during the device phase.
    pub cpu_secs: Option<f64>,
    /// ... per assigned device, microseconds.
    pub cpu_us_per_device: Option<f64>,
    /// The tool's own CPU seconds during the device phase.
    pub tool_cpu_secs: Option<f64>,
    /// Length of the device phase.
    pub phase_secs: f64,
    /// Why some numbers are missing or mean less than they say.
    pub note: Option<String>,
}

impl std::fmt::Display for ServerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>, unit: &str| {
            v.map_or_else(|| "unavailable".to_owned(), |v| format!("{v:.2}{unit}"))
        };
        let mem =
            |s: &Option<Sample>| s.map_or_else(|| "unavailable".to_owned(), |s| s.to_string());
        writeln!(
            f,
            "server      pid {}: CPU {} ({} per assigned device); before {}, after {}",
            self.pid.map_or("unknown".into(), |p| p.to_string()),
            opt(self.cpu_secs, " s"),
            opt(self.cpu_us_per_device, " us"),
            mem(&self.before),
            mem(&self.after),
        )?;
        writeln!(
            f,
            "tool        CPU {} over {:.2}s",
            opt(self.tool_cpu_secs, " s"),
            self.phase_secs
        )?;
        if let Some(note) = &self.note {
            writeln!(f, "note        {note}")?;
        }
        Ok(())
    }
}

/// Watches the device phase ([`DevicePhase`]): /proc readings and the scraper.
pub struct Watchers {
    server: Option<Pid>,
    scrape: Option<(ScrapeUrl, Duration)>,
    scrape_timeout: Duration,
    scraper: Option<Scraper>,
    scrape_error: Option<String>,
    started: Option<Instant>,
    stats: ServerStats,
    tool_before: Option<Duration>,
}

impl Watchers {
    /// Reads `server` (if known) and scrapes `scrape` (URL, interval) with `scrape_timeout`.
    pub fn new(
        server: Option<Pid>,
        scrape: Option<(ScrapeUrl, Duration)>,
        scrape_timeout: Duration,
    ) -> Self {
        Self {
            server,
            scrape,
            scrape_timeout,
            scraper: None,
            scrape_error: None,
            started: None,
            stats: ServerStats {
                pid: server,
                ..ServerStats::default()
            },
            tool_before: None,
        }
    }

    /// The readings, given the devices' report (for the per-device figures); stops the
    /// scraper if the phase did not end.
    pub async fn finish(mut self, report: &Report) -> PhaseReport {
        let mut stats = std::mem::take(&mut self.stats);
        if let (Some(b), Some(a)) = (stats.before, stats.after) {
            let cpu = (a.cpu_secs - b.cpu_secs).max(0.0);
            stats.cpu_secs = Some(cpu);
            if report.assigned > 0 {
                stats.cpu_us_per_device = Some(cpu * 1e6 / report.assigned as f64);
            }
        }
        stats.note = match self.server {
            None => {
                Some("dpsd's process was not found by its MQTT port (give --server-pid)".into())
            }
            Some(pid) if pid == Pid::own() => {
                Some("dpsd runs inside this process: its CPU includes the load's".into())
            }
            Some(_) if stats.before.is_none() || stats.after.is_none() => {
                Some("/proc could not be read for the server process".into())
            }
            Some(_) => None,
        };
        let scrape = match self.scraper.take() {
            Some(scraper) => Some(scraper.finish().await),
            None => self.scrape_error.take().map(|e| ScrapeReport {
                errors: [(e, 1)].into_iter().collect(),
                ..ScrapeReport::default()
            }),
        };
        PhaseReport {
            server: stats,
            scrape,
        }
    }
}

impl DevicePhase for Watchers {
    fn starting(&mut self) {
        self.stats.before = self.server.and_then(|p| procfs::sample(p).ok());
        self.tool_before = procfs::cpu_time(Pid::own()).ok();
        if let Some((url, every)) = &self.scrape {
            match Scraper::start(url, *every, self.scrape_timeout) {
                Ok(scraper) => self.scraper = Some(scraper),
                Err(e) => self.scrape_error = Some(e.to_string()),
            }
        }
        self.started = Some(Instant::now());
    }

    fn ended(&mut self) {
        if let Some(scraper) = &self.scraper {
            scraper.stop();
        }
        self.stats.phase_secs = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        self.stats.after = self.server.and_then(|p| procfs::sample(p).ok());
        let tool_after = procfs::cpu_time(Pid::own()).ok();
        self.stats.tool_cpu_secs = self
            .tool_before
            .zip(tool_after)
            .map(|(b, a)| a.saturating_sub(b).as_secs_f64());
    }
}

/// What the watchers saw.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    /// Server and tool CPU, memory, descriptors.
    pub server: ServerStats,
    /// The scrapes, with `--scrape`.
    pub scrape: Option<ScrapeReport>,
}

/// Everything printed after the devices' report.
#[derive(Debug, Clone, Serialize)]
pub struct Extras {
    /// The device phase's watchers.
    pub phase: PhaseReport,
    /// The baselines, with `--baseline`.
    pub baseline: Option<BaselineReport>,
}

impl Extras {
    /// Finishes the watchers and runs the baselines (if any), comparing them with `report`.
    pub async fn collect(
        watchers: Watchers,
        report: &Report,
        baselines: Option<&BaselineSettings>,
    ) -> Self {
        let phase = watchers.finish(report).await;
        let baseline = match baselines {
            Some(settings) => {
                let dpsd = DpsdFigures {
                    registrations_per_sec: report.registrations_per_sec,
                    cpu_us_per_device: phase.server.cpu_us_per_device,
                };
                Some(baseline::run(settings, &dpsd).await)
            }
            None => None,
        };
        Self { phase, baseline }
    }

    /// One JSON object (`{"phase":..., "baseline":...}`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

impl std::fmt::Display for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.phase.server.fmt(f)?;
        if let Some(scrape) = &self.phase.scrape {
            scrape.fmt(f)?;
        }
        if let Some(baseline) = &self.baseline {
            baseline.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Args;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["dps-loadtest", "--data-dir", "d"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn baselines_are_a_comma_separated_list_of_known_kinds() {
        let args = parse(&["--devices", "10", "--baseline", "tls,mtls,mqtt"]).unwrap();
        let kinds = [BaselineKind::Tls, BaselineKind::Mtls, BaselineKind::Mqtt];
        assert_eq!(args.extras.baseline, kinds);
        assert!(parse(&["--devices", "10", "--baseline", "tls,quic"]).is_err());
        // A broker URL needs its CA, certificate and key.
        assert!(parse(&[
            "--devices",
            "1",
            "--baseline-mqtt-url",
            "mqtts://127.0.0.1:1"
        ])
        .is_err());
        let extras = parse(&["--devices", "3", "--baseline", "mqtt"])
            .unwrap()
            .extras;
        let config = parse(&["--devices", "3"]).unwrap().into_config().unwrap();
        let settings = extras
            .baseline_settings(&config, "x".into())
            .unwrap()
            .unwrap();
        assert_eq!((settings.connections, settings.concurrency), (3, 64));
        assert!(matches!(settings.broker, MqttBroker::Mosquitto(_)));
    }

    #[test]
    fn hold_mode_replaces_the_device_count_and_takes_no_baseline() {
        let args = parse(&["--hold", "200", "--hold-for", "5s"]).unwrap();
        let extras = args.extras.clone();
        let config = args.into_config().unwrap();
        let hold = extras.hold_config(&config).unwrap();
        assert_eq!((hold.devices, hold.hold_for), (200, Duration::from_secs(5)));
        assert_eq!(hold.keep_alive, Duration::from_secs(30));
        assert!(parse(&["--hold", "10", "--devices", "10"]).is_err());
        assert!(parse(&["--hold", "10", "--baseline", "tls"]).is_err());
        assert!(parse(&["--devices", "10"])
            .unwrap()
            .extras
            .hold_config(&config)
            .is_none());
    }

    #[test]
    fn a_bad_scrape_url_is_refused_before_the_run() {
        let args = parse(&[
            "--devices",
            "1",
            "--scrape",
            "http://192.0.2.1:9464/metrics",
        ])
        .unwrap();
        let extras = args.extras.clone();
        let config = args.into_config().unwrap();
        assert!(matches!(
            extras.watchers(&config),
            Err(LoadError::NotLoopback { .. })
        ));
    }
}
