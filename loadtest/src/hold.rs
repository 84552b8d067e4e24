//! Hold mode (`--hold N --hold-for 30s`): N devices connect, attest (TLS, then MQTT CONNECT)
//! and stay connected, sending PINGREQ at their keep-alive, then disconnect. It measures what
//! a connected device costs the server: its RSS and open descriptors before, at full hold and
//! after (from `/proc`), and memory per held device = (RSS at hold - RSS before) / connected.
//!
//! How a device attests is a [`Login`]: [`SasLogin`] (a SAS token from the group-derived key,
//! what the devices of a run use today) or any other, e.g. one TLS client certificate per
//! device for X.509, without changing the hold itself.
//!
//! Every held device is a file descriptor here and in dpsd: the tool raises its own
//! `RLIMIT_NOFILE` to the hard limit and refuses a hold that does not fit under it. dpsd
//! must allow the connections too (see docs/performance.md for a 10,000-device hold's
//! settings: `mqtt.max_connections`, `mqtt.max_connections_per_ip`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dps_attest::{derive_device_key, SasToken};
use dps_types::SymmetricKey;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::conn::MqttConn;
use crate::mqtt::{self, Packet};
use crate::procfs::{self, Pid, Sample};
use crate::{device, setup, Config, LoadError};

/// File descriptors the tool keeps for itself besides the held connections (runtime, service
/// API client, /proc reads).
const RESERVED_FDS: u64 = 64;
/// Most devices one hold may connect: ten times the registration runs' concurrency, past the
/// 10,000-device target, within what one loopback address has client ports for (about 28,000).
pub const MAX_HOLD: usize = 20_000;
/// Longest hold: memory is measured in seconds; a soak is another tool's job.
pub const MAX_HOLD_FOR: Duration = Duration::from_secs(3600);
/// The device api-version of the MQTT username.
const API_VERSION: &str = "2021-06-01";
/// The name TLS checks in dpsd's development server certificate.
const SERVER_NAME: &str = "localhost";
/// Lifetime of a held device's SAS token: longer than any hold.
const SAS_LIFETIME_SECS: i64 = 2 * 3600;

/// What a device presents: its TLS client and its CONNECT username and password.
pub struct DeviceLogin {
    /// TLS client (with the device's certificate, for X.509).
    pub tls: TlsConnector,
    /// CONNECT username (`{scope}/registrations/{id}/api-version=...`).
    pub username: String,
    /// CONNECT password (a SAS token; X.509 devices send none, which this codec writes as
    /// an empty one).
    pub password: String,
}

/// How held devices attest.
pub trait Login: Send + Sync {
    /// The login of device `registration_id`.
    fn login(&self, registration_id: &str) -> DeviceLogin;
}

/// Symmetric-key devices of an enrollment group: a SAS token from the derived key.
pub struct SasLogin {
    /// TLS trusting dpsd's CA.
    pub tls: TlsConnector,
    /// The ID scope.
    pub id_scope: String,
    /// The group key the device keys derive from.
    pub group_key: SymmetricKey,
}

impl Login for SasLogin {
    fn login(&self, registration_id: &str) -> DeviceLogin {
        let resource = format!("{}/registrations/{registration_id}", self.id_scope);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let key = derive_device_key(&self.group_key, registration_id);
        DeviceLogin {
            tls: self.tls.clone(),
            username: format!("{resource}/api-version={API_VERSION}"),
            password: SasToken::generate(
                &resource,
                &key,
                Some("registration"),
                now + SAS_LIFETIME_SECS,
            ),
        }
    }
}

/// A hold's settings (the run's [`Config`] gives the targets, `concurrency` as the number of
/// devices connecting at once, the step timeout and the duration limit of the ramp).
#[derive(Debug, Clone, Copy)]
pub struct HoldConfig {
    /// Devices to hold.
    pub devices: usize,
    /// How long to hold them once all are connected.
    pub hold_for: Duration,
    /// Keep-alive announced in CONNECT; a PINGREQ is sent at this interval.
    pub keep_alive: Duration,
    /// The server process to read (none: numbers unavailable).
    pub server: Option<Pid>,
}

/// What a hold measured.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    /// Devices asked for.
    pub devices: usize,
    /// Devices that got CONNACK 0.
    pub connected: usize,
    /// Devices that did not, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Connections lost during the hold.
    pub dropped: usize,
    /// First connect to last CONNACK.
    pub ramp_secs: f64,
    /// Time all connected devices were held.
    pub held_secs: f64,
    /// PINGREQs answered.
    pub pings: u64,
    /// The server process read.
    pub server: Option<Pid>,
    /// Server before any device connected.
    pub before: Option<Sample>,
    /// At full hold (at the end of the hold, every device still connected).
    pub at_hold: Option<Sample>,
    /// After every device disconnected.
    pub after: Option<Sample>,
    /// (RSS at hold - RSS before) / connected.
    pub rss_per_device_bytes: Option<f64>,
    /// Why server numbers are missing, if they are.
    pub unavailable: Option<String>,
}

impl HoldReport {
    /// Whether every device connected and stayed.
    pub fn all_held(&self) -> bool {
        self.connected == self.devices && self.dropped == 0
    }
}

impl std::fmt::Display for HoldReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "hold        {}/{} connected in {:.2}s, held {:.1}s, {} pings answered, {} dropped",
            self.connected, self.devices, self.ramp_secs, self.held_secs, self.pings, self.dropped
        )?;
        if !self.failures.is_empty() {
            let kinds: Vec<String> = self
                .failures
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(f, "failures    {}", kinds.join(", "))?;
        }
        let show =
            |s: &Option<Sample>| s.map_or_else(|| "unavailable".to_owned(), |s| s.to_string());
        writeln!(
            f,
            "server      pid {}: before {}; at hold {}; after {}",
            self.server.map_or("unknown".into(), |p| p.to_string()),
            show(&self.before),
            show(&self.at_hold),
            show(&self.after)
        )?;
        match (self.rss_per_device_bytes, &self.unavailable) {
            (Some(bytes), _) => {
                writeln!(f, "memory      {:.1} KiB per held device", bytes / 1024.0)
            }
            (None, Some(why)) => writeln!(f, "memory      per device unavailable: {why}"),
            (None, None) => writeln!(f, "memory      per device unavailable"),
        }
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit; the soft limit now in force
/// (`None`: unlimited).
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// Creates the group, holds `hold.devices` devices with SAS logins, cleans up.
pub async fn run(config: &Config, hold: &HoldConfig) -> Result<HoldReport, LoadError> {
    config.validate()?;
    check(hold)?;
    let credentials = setup::Credentials::load(&config.data_dir)?;
    let service = setup::ServiceClient::new(&credentials, &config.api, config.step_timeout)?;
    let group_key = SymmetricKey::generate();
    service.put_group(&config.group, &group_key).await?;
    let login = SasLogin {
        tls: device::TlsClients::new(&credentials.ca_pem)?.server_auth(),
        id_scope: credentials.id_scope.clone(),
        group_key,
    };
    let report = hold_with(config, hold, Arc::new(login)).await;
    // Nothing registered, but a device may have; the group goes either way.
    setup::cleanup(&service, std::slice::from_ref(&config.group), None).await?;
    Ok(report)
}

/// The settings' bounds, and the descriptors the hold needs against this process's limit.
pub fn check(hold: &HoldConfig) -> Result<(), LoadError> {
    let invalid = |setting, why: String| Err(LoadError::Invalid { setting, why });
    if !(1..=MAX_HOLD).contains(&hold.devices) {
        return invalid("--hold", format!("must be 1 to {MAX_HOLD}"));
    }
    if hold.hold_for > MAX_HOLD_FOR {
        return invalid("--hold-for", "must be at most 1h".into());
    }
    if hold.keep_alive < Duration::from_secs(1)
        || hold.keep_alive > Duration::from_secs(u64::from(u16::MAX))
    {
        return invalid("keep-alive", "must be 1s to 65535s".into());
    }
    match raise_open_file_limit() {
        Some(limit) => fits(hold.devices, limit),
        None => Ok(()),
    }
}

/// Whether `devices` held connections fit under an open-file limit of `limit`.
pub fn fits(devices: usize, limit: u64) -> Result<(), LoadError> {
    let needed = devices as u64 + RESERVED_FDS;
    if needed > limit {
        return Err(LoadError::Invalid {
            setting: "--hold",
            why: format!(
                "{devices} devices need {needed} open files here but the limit (RLIMIT_NOFILE, raised to its hard limit) is {limit}; raise the hard limit (ulimit -Hn, LimitNOFILE) or hold fewer"
            ),
        });
    }
    Ok(())
}

/// Holds the devices of `config` with `login`: connect `config.concurrency` at a time, wait
/// until all have connected or failed (at most `config.duration_limit`), hold, release.
pub async fn hold_with(config: &Config, hold: &HoldConfig, login: Arc<dyn Login>) -> HoldReport {
    let sample = |pid: Option<Pid>| pid.and_then(|p| procfs::sample(p).ok());
    let before = sample(hold.server);
    let (release, released) = watch::channel(false);
    let (events, mut outcomes) = mpsc::channel::<Event>(1024);
    let gate = Arc::new(Semaphore::new(config.concurrency));
    let keep_alive_secs = u16::try_from(hold.keep_alive.as_secs()).unwrap_or(u16::MAX);
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for n in 0..hold.devices {
        let device = HeldDevice {
            id: config.registration_id(n),
            addr: config.mqtt.addr(),
            login: login.clone(),
            step_timeout: config.step_timeout,
            keep_alive: hold.keep_alive,
            keep_alive_secs,
        };
        let (gate, events, released) = (gate.clone(), events.clone(), released.clone());
        tasks.spawn(async move { device.run(gate, events, released).await });
    }
    drop(events);

    let mut report = HoldReport {
        devices: hold.devices,
        connected: 0,
        failures: BTreeMap::new(),
        dropped: 0,
        ramp_secs: 0.0,
        held_secs: 0.0,
        pings: 0,
        server: hold.server,
        before,
        at_hold: None,
        after: None,
        rss_per_device_bytes: None,
        unavailable: None,
    };
    let ramp = async {
        let mut settled = 0;
        while settled < hold.devices {
            match outcomes.recv().await {
                Some(Event::Connected) => report.connected += 1,
                Some(Event::Failed(why)) => {
                    *report.failures.entry(why.to_owned()).or_default() += 1
                }
                Some(Event::Dropped) => report.dropped += 1,
                None => break,
            }
            settled = report.connected + report.failures.values().sum::<u64>() as usize;
        }
    };
    if tokio::time::timeout(config.duration_limit, ramp)
        .await
        .is_err()
    {
        *report
            .failures
            .entry("timeout-ramp".to_owned())
            .or_default() += (hold.devices
            - report.connected
            - report.failures.values().sum::<u64>() as usize) as u64;
    }
    report.ramp_secs = start.elapsed().as_secs_f64();

    // The hold itself: its length is the experiment (drops are counted as they come).
    let held = Instant::now();
    let hold_end = tokio::time::sleep(hold.hold_for);
    tokio::pin!(hold_end);
    loop {
        tokio::select! {
            () = &mut hold_end => break,
            event = outcomes.recv() => match event {
                Some(Event::Dropped) => report.dropped += 1,
                Some(_) => {}
                None => break,
            },
        }
    }
    report.at_hold = sample(hold.server);
    report.held_secs = held.elapsed().as_secs_f64();
    let _ = release.send(true);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(pings) => report.pings += pings,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    report.after = settled(hold.server, report.before).await;
    match (report.before, report.at_hold) {
        (Some(b), Some(h)) if report.connected > 0 => {
            report.rss_per_device_bytes =
                Some((h.rss_bytes as f64 - b.rss_bytes as f64) / report.connected as f64);
        }
        _ if hold.server.is_none() => {
            report.unavailable = Some("the server process was not found (give --server-pid)".into())
        }
        _ if report.connected == 0 => report.unavailable = Some("no device connected".into()),
        _ => report.unavailable = Some("/proc could not be read for the server process".into()),
    }
    report
}

/// How long the server gets to close the released connections before the "after" reading.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// How often its descriptors are counted meanwhile.
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// Descriptors above the "before" reading that still count as settled (log files, a pending
/// accept, the metrics listener's own connections).
const SETTLE_SLACK: u64 = 16;

/// The server's reading once its descriptors are back near `before` (it closes released
/// connections as it reads their DISCONNECT), or at [`SETTLE_LIMIT`].
async fn settled(server: Option<Pid>, before: Option<Sample>) -> Option<Sample> {
    let pid = server?;
    let began = Instant::now();
    loop {
        let now = procfs::sample(pid).ok();
        let back = matches!((now.and_then(|n| n.open_fds), before.and_then(|b| b.open_fds)), (Some(n), Some(b)) if n <= b + SETTLE_SLACK);
        let countable = now.is_some_and(|n| n.open_fds.is_some())
            && before.is_some_and(|b| b.open_fds.is_some());
        if back || !countable || began.elapsed() > SETTLE_LIMIT {
            return now;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

enum Event {
    Connected,
    Failed(&'static str),
    Dropped,
}

struct HeldDevice {
    id: String,
    addr: std::net::SocketAddr,
    login: Arc<dyn Login>,
    step_timeout: Duration,
    keep_alive: Duration,
    keep_alive_secs: u16,
}

impl HeldDevice {
    /// Connects (one of `gate`'s permits held until CONNACK), holds until `released`, pings
    /// at the keep-alive; the number of answered pings.
    async fn run(
        self,
        gate: Arc<Semaphore>,
        events: mpsc::Sender<Event>,
        mut released: watch::Receiver<bool>,
    ) -> u64 {
        let connected = {
            let Ok(_permit) = gate.acquire().await else {
                return 0;
            };
            self.connect().await
        };
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(why) => {
                let _ = events.send(Event::Failed(why)).await;
                return 0;
            }
        };
        let _ = events.send(Event::Connected).await;
        let mut pings = 0;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.keep_alive,
            self.keep_alive,
        );
        loop {
            tokio::select! {
                _ = released.changed() => break,
                _ = ticker.tick() => {
                    mqtt::pingreq(&mut conn.out);
                    match tokio::time::timeout(self.step_timeout, conn.exchange()).await {
                        Ok(Ok(Packet::Other(13))) => pings += 1,
                        _ => {
                            let _ = events.send(Event::Dropped).await;
                            return pings;
                        }
                    }
                }
            }
        }
        let _ = tokio::time::timeout(self.step_timeout, conn.close()).await;
        pings
    }

    async fn connect(&self) -> Result<MqttConn, &'static str> {
        let limit = self.step_timeout;
        let login = self.login.login(&self.id);
        let tcp = tokio::time::timeout(limit, TcpStream::connect(self.addr))
            .await
            .map_err(|_| "timeout-connect")?
            .map_err(|_| "connect")?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(SERVER_NAME).map_err(|_| "tls")?;
        let tls = tokio::time::timeout(limit, login.tls.connect(name, tcp))
            .await
            .map_err(|_| "timeout-tls")?
            .map_err(|_| "tls")?;
        let mut conn = MqttConn::new(tls);
        mqtt::connect(
            &self.id,
            &login.username,
            Some(&login.password),
            self.keep_alive_secs,
            &mut conn.out,
        );
        match tokio::time::timeout(limit, conn.exchange())
            .await
            .map_err(|_| "timeout-connack")??
        {
            Packet::ConnAck { code: 0, .. } => Ok(conn),
            Packet::ConnAck { .. } => Err("connack-refused"),
            _ => Err("protocol"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_over_the_open_file_limit_is_refused_with_the_numbers() {
        assert!(fits(1000, 1024).is_err());
        let err = fits(10_000, 4096).unwrap_err().to_string();
        assert!(
            err.contains("RLIMIT_NOFILE") && err.contains("4096") && err.contains("10064"),
            "{err}"
        );
        assert!(fits(10_000, 20_000).is_ok());
        // This process can raise its soft limit to the hard one.
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        assert_eq!(raise_open_file_limit(), hard);
    }
}
