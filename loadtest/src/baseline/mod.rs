//! Baselines measured in the same run as dpsd: what this machine does with the same number of
//! connections at the same concurrency when the server does only the TLS handshake and one
//! round trip (`tls`: server authentication only, like symmetric-key devices; `mtls`: with a
//! client certificate, like X.509 devices), and what an MQTT broker does with the same MQTT
//! round trips (`mqtt`: Mosquitto started here, or any broker on loopback by URL).
//!
//! The bare TLS server is this tool itself in a child process ([`server`]), so its CPU seconds
//! (from `/proc`) are its own and not the load's. Each run's numbers are set against dpsd's:
//! `rate_ratio` is dpsd's registrations per second over the baseline's connections per
//! second, `cpu_ratio` dpsd's CPU per assigned device over the baseline server's CPU per
//! connection.

mod client;
mod mosquitto;
pub mod pki;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub use client::connector;
pub use mosquitto::MOSQUITTO;
use pki::BaselinePki;

use crate::procfs::{self, Pid};
use crate::report::Percentiles;
use crate::target::Loopback;
use crate::LoadError;

/// Time a baseline server gets to start (child process or broker).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest port line read from the child.
const MAX_PORT_LINE: u64 = 64;

/// One kind of baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineKind {
    /// Bare rustls server, server authentication only.
    Tls,
    /// Bare rustls server requiring a client certificate.
    Mtls,
    /// The MQTT round trips against a broker.
    Mqtt,
}

impl BaselineKind {
    /// `tls`, `mtls` or `mqtt`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "tls" => Ok(Self::Tls),
            "mtls" => Ok(Self::Mtls),
            "mqtt" => Ok(Self::Mqtt),
            other => Err(format!("{other:?}: a baseline is tls, mtls or mqtt")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Mtls => "mtls",
            Self::Mqtt => "mqtt",
        }
    }
}

/// The broker of the `mqtt` baseline.
#[derive(Debug, Clone)]
pub enum MqttBroker {
    /// Start Mosquitto from this binary.
    Mosquitto(PathBuf),
    /// A broker already running on loopback, reached with these PEM files' contents.
    Url {
        /// Its TLS listener.
        addr: Loopback,
        /// The name its certificate holds.
        server_name: String,
        /// CA its certificate chains to.
        ca_pem: String,
        /// Client certificate.
        cert_pem: String,
        /// Client key.
        key_pem: String,
    },
}

/// What the baselines run.
#[derive(Debug, Clone)]
pub struct BaselineSettings {
    /// Which baselines, in order.
    pub kinds: Vec<BaselineKind>,
    /// Connections each (the run's device count).
    pub connections: usize,
    /// At once (the run's concurrency).
    pub concurrency: usize,
    /// Limit of each step.
    pub step_timeout: Duration,
    /// Limit of each baseline's connections (the run's duration limit).
    pub duration_limit: Duration,
    /// This tool's binary, started as the bare TLS server.
    pub exe: PathBuf,
    /// The MQTT baseline's broker.
    pub broker: MqttBroker,
}

/// dpsd's numbers from the same run, to compare with.
#[derive(Debug, Clone, Copy, Default)]
pub struct DpsdFigures {
    /// Registrations per second.
    pub registrations_per_sec: f64,
    /// dpsd's CPU per assigned device, microseconds (when /proc could be read).
    pub cpu_us_per_device: Option<f64>,
}

/// Every baseline of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BaselineReport {
    /// One per baseline asked for.
    pub runs: Vec<BaselineRun>,
}

/// One baseline's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineRun {
    /// Which.
    pub kind: BaselineKind,
    /// The server measured (or why there is none).
    pub server: String,
    /// Set when the baseline could not run; the numbers are then zero.
    pub skipped: Option<String>,
    /// Connections attempted.
    pub connections: usize,
    /// Connections that completed their round trip.
    pub ok: usize,
    /// Failures by step.
    pub failures: BTreeMap<String, u64>,
    /// First start to last end.
    pub wall_secs: f64,
    /// Completed connections per second.
    pub per_sec: f64,
    /// Latency of a whole connection.
    pub latency_ms: Percentiles,
    /// The server's CPU seconds during the run (from /proc).
    pub server_cpu_secs: Option<f64>,
    /// ... per completed connection, microseconds.
    pub server_cpu_us_per_connection: Option<f64>,
    /// dpsd's registrations/s over this baseline's connections/s.
    pub rate_ratio: Option<f64>,
    /// dpsd's CPU per device over this server's CPU per connection.
    pub cpu_ratio: Option<f64>,
}

impl BaselineRun {
    fn skipped(kind: BaselineKind, connections: usize, why: String) -> Self {
        Self {
            kind,
            server: "none".into(),
            skipped: Some(why),
            connections,
            ok: 0,
            failures: BTreeMap::new(),
            wall_secs: 0.0,
            per_sec: 0.0,
            latency_ms: Percentiles::default(),
            server_cpu_secs: None,
            server_cpu_us_per_connection: None,
            rate_ratio: None,
            cpu_ratio: None,
        }
    }

    /// Whether every connection completed.
    pub fn all_ok(&self) -> bool {
        self.skipped.is_none() && self.ok == self.connections
    }
}

/// Runs every baseline of `settings`, one after the other. A baseline that cannot run is
/// reported as skipped with the reason; it never fails the others.
pub async fn run(settings: &BaselineSettings, dpsd: &DpsdFigures) -> BaselineReport {
    let mut report = BaselineReport::default();
    let pki = match BaselinePki::mint() {
        Ok(pki) => pki,
        Err(e) => {
            for kind in &settings.kinds {
                report.runs.push(BaselineRun::skipped(
                    *kind,
                    settings.connections,
                    e.to_string(),
                ));
            }
            return report;
        }
    };
    for kind in &settings.kinds {
        let run = match kind {
            BaselineKind::Tls | BaselineKind::Mtls => tls_baseline(settings, *kind, &pki).await,
            BaselineKind::Mqtt => mqtt_baseline(settings, &pki).await,
        };
        let run = run
            .unwrap_or_else(|e| BaselineRun::skipped(*kind, settings.connections, e.to_string()));
        report.runs.push(compare(run, dpsd));
    }
    report
}

fn compare(mut run: BaselineRun, dpsd: &DpsdFigures) -> BaselineRun {
    if run.per_sec > 0.0 && dpsd.registrations_per_sec > 0.0 {
        run.rate_ratio = Some(dpsd.registrations_per_sec / run.per_sec);
    }
    if let (Some(ours), Some(theirs)) = (dpsd.cpu_us_per_device, run.server_cpu_us_per_connection) {
        if theirs > 0.0 {
            run.cpu_ratio = Some(ours / theirs);
        }
    }
    run
}

/// The bare rustls server in a child process, killed when dropped (and it exits by itself
/// when our end of its stdin closes).
struct ChildServer {
    child: Child,
    port: u16,
}

impl ChildServer {
    async fn start(
        exe: &PathBuf,
        kind: BaselineKind,
        material: &server::Material,
    ) -> Result<Self, LoadError> {
        let failed = |what| {
            move |e: std::io::Error| LoadError::Setup {
                what,
                source: Box::new(e),
            }
        };
        let mut child = Command::new(exe)
            .args([server::SUBCOMMAND, "--mode", kind.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(failed("starting the baseline TLS server"))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(LoadError::Setup {
                what: "baseline TLS server",
                source: "no stdin or stdout pipe".into(),
            });
        };
        let line = serde_json::to_string(material).map_err(|e| LoadError::Setup {
            what: "baseline TLS server",
            source: Box::new(e),
        })?;
        let mut port = String::new();
        let started = async {
            stdin.write_all(format!("{line}\n").as_bytes()).await?;
            stdin.flush().await?;
            BufReader::new(stdout.take(MAX_PORT_LINE))
                .read_line(&mut port)
                .await
        };
        tokio::time::timeout(START_TIMEOUT, started)
            .await
            .map_err(|e| LoadError::Setup {
                what: "baseline TLS server start",
                source: Box::new(e),
            })?
            .map_err(failed("baseline TLS server start"))?;
        // Kept open: the child exits when it closes.
        child.stdin = Some(stdin);
        let port = port.trim().parse().map_err(|e| LoadError::Setup {
            what: "baseline TLS server did not print its port",
            source: Box::new(e),
        })?;
        Ok(Self { child, port })
    }
}

async fn tls_baseline(
    settings: &BaselineSettings,
    kind: BaselineKind,
    pki: &BaselinePki,
) -> Result<BaselineRun, LoadError> {
    let mutual = kind == BaselineKind::Mtls;
    let material = server::Material {
        cert_pem: pki.server_cert_pem.clone(),
        key_pem: pki.server_key_pem.clone(),
        client_ca_pem: mutual.then(|| pki.ca_pem.clone()),
    };
    let child = ChildServer::start(&settings.exe, kind, &material).await?;
    let client = mutual.then_some((pki.client_cert_pem.as_str(), pki.client_key_pem.as_str()));
    let target = Arc::new(client::Target {
        addr: ([127, 0, 0, 1], child.port).into(),
        server_name: server_name(pki::SERVER_NAME)?,
        tls: connector(&pki.ca_pem, client)?,
        step_timeout: settings.step_timeout,
    });
    let pid = child.child.id().map(Pid);
    let server = format!(
        "bare rustls server (aws-lc-rs, {}), pid {}",
        if mutual {
            "client certificate required"
        } else {
            "server authentication"
        },
        pid.map_or("?".into(), |p| p.to_string())
    );
    let run = measure(settings, kind, server, pid, |_| {
        client::tls_round_trip(target.clone())
    })
    .await;
    drop(child);
    Ok(run)
}

async fn mqtt_baseline(
    settings: &BaselineSettings,
    pki: &BaselinePki,
) -> Result<BaselineRun, LoadError> {
    let kind = BaselineKind::Mqtt;
    match &settings.broker {
        MqttBroker::Mosquitto(binary) => {
            if !binary.exists() {
                return Ok(BaselineRun::skipped(
                    kind,
                    settings.connections,
                    format!(
                        "{} is not installed (Debian package `mosquitto`)",
                        binary.display()
                    ),
                ));
            }
            let broker = mosquitto::Mosquitto::start(binary, pki, START_TIMEOUT).await?;
            let target = Arc::new(client::Target {
                addr: broker.addr,
                server_name: server_name(pki::SERVER_NAME)?,
                tls: connector(
                    &pki.ca_pem,
                    Some((&pki.client_cert_pem, &pki.client_key_pem)),
                )?,
                step_timeout: settings.step_timeout,
            });
            let pid = broker.pid();
            let server = format!(
                "mosquitto ({}) on {}, pid {}",
                binary.display(),
                broker.addr,
                pid.map_or("?".into(), |p| p.to_string())
            );
            Ok(measure(settings, kind, server, pid, |n| {
                client::mqtt_round_trip(target.clone(), format!("baseline-{n:06}"))
            })
            .await)
        }
        MqttBroker::Url {
            addr,
            server_name: name,
            ca_pem,
            cert_pem,
            key_pem,
        } => {
            let target = Arc::new(client::Target {
                addr: addr.addr(),
                server_name: server_name(name)?,
                tls: connector(ca_pem, Some((cert_pem, key_pem)))?,
                step_timeout: settings.step_timeout,
            });
            let pid = procfs::listener_pid(addr.addr().port());
            let server = format!(
                "MQTT broker at mqtts://{addr}, pid {}",
                pid.map_or("not visible".into(), |p| p.to_string())
            );
            Ok(measure(settings, kind, server, pid, |n| {
                client::mqtt_round_trip(target.clone(), format!("baseline-{n:06}"))
            })
            .await)
        }
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, LoadError> {
    ServerName::try_from(name.to_owned()).map_err(|e| LoadError::Setup {
        what: "baseline server name",
        source: Box::new(e),
    })
}

/// The closed loop against one server, with the server's CPU time around it.
async fn measure<F, Fut>(
    settings: &BaselineSettings,
    kind: BaselineKind,
    server: String,
    pid: Option<Pid>,
    one: F,
) -> BaselineRun
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), &'static str>> + Send + 'static,
{
    let cpu = || pid.and_then(|pid| procfs::cpu_time(pid).ok());
    let before = cpu();
    let tally = client::closed_loop(
        settings.connections,
        settings.concurrency,
        settings.duration_limit,
        one,
    )
    .await;
    let after = cpu();
    let server_cpu_secs = before
        .zip(after)
        .map(|(b, a)| a.saturating_sub(b).as_secs_f64());
    let wall_secs = tally.wall.as_secs_f64();
    BaselineRun {
        kind,
        server,
        skipped: None,
        connections: settings.connections,
        ok: tally.ok,
        failures: tally.failures,
        wall_secs,
        per_sec: if wall_secs > 0.0 {
            tally.ok as f64 / wall_secs
        } else {
            0.0
        },
        latency_ms: Percentiles::of(&tally.latencies_us),
        server_cpu_secs,
        server_cpu_us_per_connection: server_cpu_secs
            .filter(|_| tally.ok > 0)
            .map(|s| s * 1e6 / tally.ok as f64),
        rate_ratio: None,
        cpu_ratio: None,
    }
}

impl std::fmt::Display for BaselineRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.kind.name();
        if let Some(why) = &self.skipped {
            return writeln!(f, "baseline {name:<5} skipped: {why}");
        }
        writeln!(f, "baseline {name:<5} {}", self.server)?;
        writeln!(
            f,
            "  {}/{} connections in {:.2}s: {:.0}/s; latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}",
            self.ok, self.connections, self.wall_secs, self.per_sec, self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99, self.latency_ms.max
        )?;
        if !self.failures.is_empty() {
            let kinds: Vec<String> = self
                .failures
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(f, "  failures {}", kinds.join(", "))?;
        }
        let opt = |v: Option<f64>, unit: &str| {
            v.map_or_else(|| "unavailable".to_owned(), |v| format!("{v:.2}{unit}"))
        };
        writeln!(
            f,
            "  server CPU {} ({} per connection); dpsd/baseline: rate {}, CPU per device {}",
            opt(self.server_cpu_secs, " s"),
            opt(self.server_cpu_us_per_connection, " us"),
            opt(self.rate_ratio, "x"),
            opt(self.cpu_ratio, "x"),
        )
    }
}

impl std::fmt::Display for BaselineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.runs.iter().try_for_each(|run| run.fmt(f))
    }
}
