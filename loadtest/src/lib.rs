//! `dps-loadtest`: drives many simulated devices through the DPS registration flow, over MQTT
//! or AMQP 1.0, with symmetric keys or X.509 certificates, against a running `dpsd`, and
//! reports throughput and latency.
//!
//! What it does: reads the credentials `dpsd` wrote to its data directory; before the clock
//! starts, mints one leaf certificate per X.509 device ([`x509`]) and creates an enrollment
//! group per attestation in use (a symmetric-key group with a key it chose, an X.509 group on
//! its CA), and individual enrollments in bulk for the devices that have one; runs `devices` devices, at most
//! `concurrency` at once, each of the kind the [`Mix`] gives its index (TCP, TLS, the
//! transport's open, register, poll until `assigned`, close: [`device`]); then deletes the
//! groups and their registration records unless told to keep them.
//!
//! How devices start ([`Schedule`], driven by `driver`): **closed loop**, `concurrency` at
//! once, or **open loop**, a target arrival [`Rate`] with `concurrency` as a safety cap; either
//! with a linear ramp, ending after `devices` or after a `duration`. In the open loop a
//! device's latency counts from its *scheduled* start, so a slow server cannot hide its queue
//! (no coordinated omission), and the report says how far behind schedule the tool fell.
//! Latencies go into HDR histograms (p50 to p99.9 and max); the [`Report`] prints as text,
//! JSON, or a CSV row ([`report::csv`]).
//!
//! Its bounds: it only ever connects to loopback addresses ([`Loopback`], [`ApiEndpoint`] are
//! checked when built and are the only way to name a target; proxies and redirects are off);
//! the device count, the concurrency, the rate, every step (one timeout each) and the whole
//! run ([`Config::duration_limit`]) are bounded, and it stops by itself. A device's failure is
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
pub mod mix;
pub mod mqtt;
pub mod procfs;
pub mod report;
pub mod schedule;
pub mod scrape;
pub mod setup;
pub mod target;
pub mod x509;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dps_types::{EnrollmentGroupId, SymmetricKey};

pub use driver::Progress;
pub use mix::{Attestation, Kind, Mix, Transport};
pub use report::{Cleanup, Report};
pub use schedule::{Rate, Schedule};
pub use setup::CleanupSummary;
pub use target::{ApiEndpoint, Loopback};
pub use x509::CaSource;

/// Most devices one run may simulate (also the count of a run ended by `--duration` alone):
/// device ids stay within 6 digits, and a run this size already takes minutes against one
/// dpsd. Latencies go into fixed-size histograms, so memory does not grow with the count.
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
    /// The CSV file could not be read or appended to.
    #[error("{path}: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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
    /// A certificate or key for the X.509 devices could not be made.
    #[error("minting X.509 certificates: {0}")]
    Mint(String),
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
    /// The AMQP device listener.
    pub amqp: Loopback,
    /// Which kind (transport and attestation) each device is.
    pub mix: Mix,
    /// The CA that signs the X.509 devices' leaves.
    pub x509_ca: CaSource,
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
    /// The symmetric-key enrollment group; the X.509 group is `{group}-x509`; devices (and
    /// individual enrollments) are `{group}-{n:06}`.
    pub group: EnrollmentGroupId,
    /// Keep the group and the registration records afterwards.
    pub keep: bool,
    /// How often the progress callback is called.
    pub progress_every: Duration,

    // How devices are started and when the run ends (see `schedule`).
    /// Open loop at this arrival rate (`devices` then bounds the count, `concurrency` is a
    /// safety cap); `None`: closed loop, `concurrency` devices at once.
    pub rate: Option<Rate>,
    /// The rate (open loop) or the concurrency (closed loop) grows linearly over this; zero
    /// for no ramp. Shorter than the run.
    pub ramp: Duration,
    /// End by time: devices start until this much has passed (at most `devices` of them),
    /// then those running finish (within `duration_limit`). `None`: end by count.
    pub duration: Option<Duration>,
}

/// Longest group id: device ids append `-` and up to 7 digits, within DPS's 128.
const MAX_GROUP_LEN: usize = 120;
/// Longest X.509 registration id: the leaf's CN, at most 64 characters.
const MAX_X509_ID_LEN: usize = 64;
/// dpsd's default AMQPS port.
const DEFAULT_AMQP: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 5671);

impl Config {
    /// The defaults of the command line for this data directory and targets.
    pub fn new(data_dir: PathBuf, api: ApiEndpoint, mqtt: Loopback) -> Self {
        Self {
            data_dir,
            api,
            mqtt,
            amqp: Loopback::new(DEFAULT_AMQP).expect("127.0.0.1 is loopback"),
            mix: Mix::default(),
            x509_ca: CaSource::Generated {
                intermediate: false,
            },
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
            rate: None,
            ramp: Duration::ZERO,
            duration: None,
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
        if self.mix.uses(Attestation::X509) {
            let x509 = (0..self.devices)
                .filter(|n| self.mix.kind(*n).attestation == Attestation::X509)
                .count();
            if x509 > x509::MAX_X509_DEVICES {
                return invalid(
                    "--devices",
                    format!(
                        "{x509} X.509 devices is over the {} limit (each leaf is minted and kept before the run)",
                        x509::MAX_X509_DEVICES
                    ),
                );
            }
            if self.registration_id(self.devices - 1).len() > MAX_X509_ID_LEN {
                return invalid(
                    "--group",
                    format!(
                        "too long for X.509 devices: their registration id {{group}}-{{n:06}} is a certificate CN of at most {MAX_X509_ID_LEN} characters"
                    ),
                );
            }
        }
        if let Some(duration) = self.duration {
            if duration.is_zero() || duration >= self.duration_limit {
                return invalid(
                    "--duration",
                    "must be over 0 and below --duration-limit (running devices finish in between)"
                        .into(),
                );
            }
        }
        let run = self.duration.unwrap_or(self.duration_limit);
        if self.ramp >= run {
            return invalid(
                "--ramp",
                "must be shorter than --duration (or --duration-limit)".into(),
            );
        }
        if self.progress_every.is_zero() {
            return invalid("progress interval", "must be over 0".into());
        }
        Ok(())
    }

    /// The registration id of device `n` (0-based).
    pub fn registration_id(&self, n: usize) -> String {
        format!("{}-{n:06}", self.id_prefix())
    }

    fn id_prefix(&self) -> String {
        self.group.as_str().to_ascii_lowercase()
    }

    /// The X.509 enrollment group: `{group}-x509`.
    pub fn x509_group(&self) -> EnrollmentGroupId {
        // `group` is valid and at most MAX_GROUP_LEN long, so the suffixed id is too.
        EnrollmentGroupId::parse(&format!("{}-x509", self.group.as_str()))
            .expect("a valid group id with -x509 appended is valid")
    }

    /// The registration ids of the devices with individual enrollments.
    pub fn individual_ids(&self) -> Vec<String> {
        self.ids_of(Attestation::SasIndividual)
    }

    /// The prefix of the individual enrollments' ids, when the mix has any.
    pub fn individual_prefix(&self) -> Option<String> {
        self.mix
            .uses(Attestation::SasIndividual)
            .then(|| self.id_prefix())
    }

    /// The registration ids of the devices that attest with `attestation`, in device order.
    fn ids_of(&self, attestation: Attestation) -> Vec<String> {
        if !self.mix.uses(attestation) {
            return Vec::new();
        }
        (0..self.devices)
            .filter(|n| self.mix.kind(*n).attestation == attestation)
            .map(|n| self.registration_id(n))
            .collect()
    }

    /// The groups the mix uses: the symmetric-key group, then the X.509 group.
    pub fn groups(&self) -> Vec<EnrollmentGroupId> {
        let mut groups = Vec::with_capacity(2);
        if self.mix.uses(Attestation::Sas) {
            groups.push(self.group.clone());
        }
        if self.mix.uses(Attestation::X509) {
            groups.push(self.x509_group());
        }
        groups
    }

    /// How devices start: open loop with a rate, closed loop without.
    pub fn schedule(&self) -> Schedule {
        match self.rate {
            Some(rate) => Schedule::Open {
                rate,
                ramp: self.ramp,
            },
            None => Schedule::Closed {
                concurrency: self.concurrency,
                ramp: self.ramp,
            },
        }
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
    let tls = device::TlsClients::new(&credentials.ca_pem)?;

    // The X.509 fleet first: minting is the slow part of the setup and needs no service.
    let mut leaves = Vec::new();
    let mut chain_tail = Vec::new();
    if config.mix.uses(Attestation::X509) {
        let ca = Arc::new(x509::Ca::load(&config.x509_ca)?);
        let minted = x509::mint_all(ca.clone(), config.ids_of(Attestation::X509)).await?;
        let mut minted = minted.into_iter();
        leaves = (0..config.devices)
            .map(|n| match config.mix.kind(n).attestation {
                Attestation::X509 => minted.next(),
                _ => None,
            })
            .collect();
        chain_tail = ca.chain_tail().to_vec();
        service
            .put_x509_group(&config.x509_group(), ca.group_pem())
            .await?;
    }
    let group_key = SymmetricKey::generate();
    if config.mix.uses(Attestation::Sas) {
        service.put_group(&config.group, &group_key).await?;
    }
    let individual_key = SymmetricKey::generate();
    setup::put_individuals(&service, &config.individual_ids(), &individual_key).await?;

    let context = Arc::new(device::DeviceContext {
        mqtt: config.mqtt,
        amqp: config.amqp,
        https: config.api.addr(),
        tls,
        id_scope: credentials.id_scope.clone(),
        id_prefix: config.id_prefix(),
        mix: config.mix.clone(),
        group_key,
        individual_key,
        leaves,
        chain_tail,
        step_timeout: config.step_timeout,
        poll_delay: config.poll_delay,
        max_requests: config.max_requests,
    });
    let device = move |n| {
        let context = context.clone();
        async move { device::run(&context, n).await.1 }
    };
    phase.starting();
    let tally = driver::drive(config, device, on_progress).await;
    phase.ended();

    let cleanup = if config.keep {
        Cleanup::Kept
    } else {
        match setup::cleanup(
            &service,
            &config.groups(),
            config.individual_prefix().as_deref(),
        )
        .await
        {
            Ok(summary) => Cleanup::Done(summary),
            Err(e) => Cleanup::Failed {
                error: e.to_string(),
            },
        }
    };
    Ok(Report::new(config, tally, cleanup))
}

/// Deletes the groups' registration records and the groups of the mix (what [`run`] does at
/// the end unless [`Config::keep`]), e.g. after a run with `--keep`.
pub async fn cleanup(config: &Config) -> Result<CleanupSummary, LoadError> {
    let credentials = setup::Credentials::load(&config.data_dir)?;
    let service = setup::ServiceClient::new(&credentials, &config.api, config.step_timeout)?;
    setup::cleanup(
        &service,
        &config.groups(),
        config.individual_prefix().as_deref(),
    )
    .await
}
