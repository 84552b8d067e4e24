//! `dps-loadtest`: drives many simulated symmetric-key devices through the DPS MQTT
//! registration flow against a running `dpsd`, and reports throughput and latency.
//!
//! What it does: reads the credentials `dpsd` wrote to its data directory, creates one
//! symmetric-key enrollment group with a key it chose (so no per-device enrollment is needed),
//! runs `devices` devices, at most `concurrency` at once (TCP, TLS, CONNECT with a SAS token
//! from the derived device key, SUBSCRIBE, register, poll until `assigned`, DISCONNECT), then
//! deletes the group and its registration records unless told to keep them.
//!
//! Its bounds: it only ever connects to loopback addresses ([`Loopback`], [`ApiEndpoint`] are
//! checked when built and are the only way to name a target; proxies and redirects are off);
//! the device count, the concurrency, every step (one timeout each) and the whole run
//! ([`Config::duration_limit`]) are bounded, and it stops by itself. A device's failure is
//! counted by kind and never stops the run.
//!
//! Beside the devices ([`extras`]): the server's CPU, memory and descriptors from `/proc`
//! ([`procfs`]), baselines in the same run ([`baseline`]), hold mode ([`hold`]) and metrics
//! scraping ([`scrape`]); [`run_observed`] lets them watch the device phase alone.
//!
//! Main types: [`Config`], [`run`] and [`cleanup`], the [`Report`], the [`LoadError`].

pub mod baseline;
pub mod cli;
mod conn;
pub mod device;
mod driver;
pub mod extras;
pub mod hold;
pub mod mqtt;
pub mod procfs;
pub mod report;
pub mod scrape;
pub mod setup;
pub mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dps_types::{EnrollmentGroupId, SymmetricKey};

pub use driver::Progress;
pub use report::{Cleanup, Report};
pub use setup::CleanupSummary;
pub use target::{ApiEndpoint, Loopback};

/// Most devices one run may simulate: each keeps two latency samples (16 bytes) until the
/// report, and a run this size already takes minutes against one dpsd.
pub const MAX_DEVICES: usize = 1_000_000;
/// Most devices at once: each holds a socket (a file descriptor here and in dpsd, whose MQTT
/// listener takes 4096 by default: raise `mqtt.max_connections` for more) and a TLS session.
pub const MAX_CONCURRENCY: usize = 10_000;
/// Longest run: a load test is a bounded experiment, not a soak.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most register/poll requests one device sends (dpsd answers 429 after 64 per connection).
pub const MAX_REQUESTS: u32 = 60;

/// Why a run could not be set up or cleaned up. Devices' failures are not errors: they are
/// counted in the [`Report`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A target address is not on the loopback interface.
    #[error("refusing {target}: dps-loadtest only sends traffic to loopback addresses (127.0.0.0/8, ::1, localhost)")]
    NotLoopback {
        /// The target as given.
        target: String,
    },
    /// A target address could not be parsed.
    #[error("bad target {target}: {why}")]
    BadTarget {
        /// The target as given.
        target: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A setting is out of range.
    #[error("{setting}: {why}")]
    Invalid {
        /// The setting's name (as the command-line flag).
        setting: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A file dpsd writes could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file dpsd writes does not hold what it should.
    #[error("{path}: {why}")]
    DataFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The TLS client configuration could not be built from the CA file.
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    /// A baseline (the bare TLS server, the MQTT broker) or a measurement beside the devices
    /// could not be set up.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A service API request failed before an answer came.
    #[error("service API, {operation}: {source}")]
    Http {
        /// What the request was for.
        operation: &'static str,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The service API answered with an unexpected status.
    #[error("service API, {operation}: HTTP {status}: {body}")]
    Api {
        /// What the request was for.
        operation: &'static str,
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
}

/// One run's settings. Build with [`Config::new`], adjust the public fields, and [`run`]
/// checks them with [`Config::validate`].
#[derive(Debug, Clone)]
pub struct Config {
    /// dpsd's data directory (`service-connection-string`, `id-scope`, `pki/ca.pem`).
    pub data_dir: PathBuf,
    /// The service API.
    pub api: ApiEndpoint,
    /// The MQTT device listener.
    pub mqtt: Loopback,
    /// Devices to simulate (1 to [`MAX_DEVICES`]).
    pub devices: usize,
    /// Devices at once (1 to [`MAX_CONCURRENCY`]).
    pub concurrency: usize,
    /// The whole device phase ends after this; devices still running count as unfinished.
    pub duration_limit: Duration,
    /// Limit for each step of a device (TCP connect, TLS, CONNACK, SUBACK, each answer).
    pub step_timeout: Duration,
    /// Wait before each poll: the server's `retry-after` caps it (real SDKs wait the full
    /// `retry-after`, 1 s from dpsd; a load tool polls sooner to measure the service).
    pub poll_delay: Duration,
    /// Register and poll requests one device may send (1 to [`MAX_REQUESTS`]).
    pub max_requests: u32,
    /// The enrollment group the devices belong to; devices are `{group}-{n}`.
    pub group: EnrollmentGroupId,
    /// Keep the group and the registration records afterwards.
    pub keep: bool,
    /// How often the progress callback is called.
    pub progress_every: Duration,
}

/// Longest group id: device ids append `-` and up to 7 digits, within DPS's 128.
const MAX_GROUP_LEN: usize = 120;

impl Config {
    /// The defaults of the command line for this data directory and targets.
    pub fn new(data_dir: PathBuf, api: ApiEndpoint, mqtt: Loopback) -> Self {
        Self {
            data_dir,
            api,
            mqtt,
            devices: 1000,
            concurrency: 64,
            duration_limit: Duration::from_secs(120),
            step_timeout: Duration::from_secs(10),
            poll_delay: Duration::from_millis(100),
            max_requests: 30,
            // A valid literal id.
            group: EnrollmentGroupId::parse("loadtest-group").expect("valid group id"),
            keep: false,
            progress_every: Duration::from_secs(2),
        }
    }

    /// Checks every bound; the first violation is the error.
    pub fn validate(&self) -> Result<(), LoadError> {
        let invalid = |setting, why: String| Err(LoadError::Invalid { setting, why });
        if !(1..=MAX_DEVICES).contains(&self.devices) {
            return invalid("--devices", format!("must be 1 to {MAX_DEVICES}"));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return invalid("--concurrency", format!("must be 1 to {MAX_CONCURRENCY}"));
        }
        if self.duration_limit.is_zero() || self.duration_limit > MAX_DURATION {
            return invalid("--duration-limit", "must be over 0 and at most 1h".into());
        }
        if self.step_timeout.is_zero() || self.step_timeout > Duration::from_secs(300) {
            return invalid("--step-timeout", "must be over 0 and at most 5m".into());
        }
        if self.poll_delay > Duration::from_secs(10) {
            return invalid("--poll-delay", "must be at most 10s".into());
        }
        if !(1..=MAX_REQUESTS).contains(&self.max_requests) {
            return invalid("--max-requests", format!("must be 1 to {MAX_REQUESTS}"));
        }
        if self.group.as_str().len() > MAX_GROUP_LEN {
            return invalid(
                "--group",
                format!("must be at most {MAX_GROUP_LEN} characters"),
            );
        }
        if self.progress_every.is_zero() {
            return invalid("progress interval", "must be over 0".into());
        }
        Ok(())
    }

    /// The registration id of device `n` (0-based).
    pub fn registration_id(&self, n: usize) -> String {
        format!("{}-{n:06}", self.group.as_str().to_ascii_lowercase())
    }
}

/// Sets up, runs every device and cleans up (unless [`Config::keep`]). `on_progress` is called
/// every [`Config::progress_every`] during the device phase.
///
/// Errors are for what stops the run before devices start (bad settings, unreadable data
/// directory, group creation refused); a failed cleanup is reported in [`Report::cleanup`].
pub async fn run(config: &Config, on_progress: impl FnMut(&Progress)) -> Result<Report, LoadError> {
    run_observed(config, on_progress, &mut ()).await
}

/// What watches the device phase alone (after setup, before cleanup): server CPU and memory,
/// metrics scraping ([`extras::Watchers`]).
pub trait DevicePhase {
    /// Just before the first device starts.
    fn starting(&mut self);
    /// Just after the last device ended (or the duration limit stopped them).
    fn ended(&mut self);
}

impl DevicePhase for () {
    fn starting(&mut self) {}
    fn ended(&mut self) {}
}

/// [`run`], with `phase` told when the device phase starts and ends.
pub async fn run_observed(
    config: &Config,
    on_progress: impl FnMut(&Progress),
    phase: &mut dyn DevicePhase,
) -> Result<Report, LoadError> {
    config.validate()?;
    let credentials = setup::Credentials::load(&config.data_dir)?;
    let service = setup::ServiceClient::new(&credentials, &config.api, config.step_timeout)?;
    let group_key = SymmetricKey::generate();
    service.put_group(&config.group, &group_key).await?;

    let context = Arc::new(device::DeviceContext {
        mqtt: config.mqtt,
        tls: device::tls_connector(&credentials.ca_pem)?,
        id_scope: credentials.id_scope.clone(),
        group_key,
        step_timeout: config.step_timeout,
        poll_delay: config.poll_delay,
        max_requests: config.max_requests,
    });
    phase.starting();
    let tally = driver::drive(context, config, on_progress).await;
    phase.ended();

    let cleanup = if config.keep {
        Cleanup::Kept
    } else {
        match setup::cleanup(&service, &config.group).await {
            Ok(summary) => Cleanup::Done(summary),
            Err(e) => Cleanup::Failed {
                error: e.to_string(),
            },
        }
    };
    Ok(Report::new(config, tally, cleanup))
}

/// Deletes the group's registration records and the group (what [`run`] does at the end
/// unless [`Config::keep`]), e.g. after a run with `--keep`.
pub async fn cleanup(config: &Config) -> Result<CleanupSummary, LoadError> {
    let credentials = setup::Credentials::load(&config.data_dir)?;
    let service = setup::ServiceClient::new(&credentials, &config.api, config.step_timeout)?;
    setup::cleanup(&service, &config.group).await
}
