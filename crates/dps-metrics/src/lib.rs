//! Prometheus metrics, health and readiness for the provisioning service.
//!
//! What it does: [`Metrics`] owns the one `prometheus` [`Registry`]. At scrape time its
//! collectors read the counters the libraries keep anyway (each listener's
//! `ListenerCounters`, the MQTT and AMQP frontends' `MqttCounters` and `AmqpCounters`, the registrar's `Diagnostics`
//! counts, the store's sizes and health); for what must be measured as it happens it hands
//! the libraries observers whose prometheus handles were resolved once, at start
//! (registrations by transport, attestation type and outcome with their latency, assignments
//! per linked hub, webhook calls, TLS handshake durations, store write and flush latency and
//! group-commit batch sizes): no label lookup on the hot path. Build info and, on Linux,
//! process metrics (CPU, memory, file descriptors) are registered too, and more collectors
//! can be added with [`Metrics::register`]. [`serve`] answers `/metrics` (text format),
//! `/healthz` (the process is up) and `/readyz` (every [`Health`] check passes) over plain
//! HTTP on the project's accept loop (`dps-listener`), bounded like every listener.
//!
//! What it must never do: put an id, an address, a path or a message in a label (every label
//! value comes from a bounded enum or from the linked hubs the operator configured), take a
//! lock or allocate per registration, or sit behind the service API's authentication (it is
//! a separate listener, loopback by default).
//!
//! Main types: [`Metrics`], [`Health`], [`MetricsLimits`] and [`serve`], [`MetricsError`].

mod collectors;
mod family;
mod feed;
mod health;
mod observers;
mod server;

use std::sync::Arc;

use dps_amqp::AmqpCounters;
use dps_listener::ListenerCounters;
use dps_mqtt::MqttCounters;
use dps_registrar::{Registrar, RegistrarObserver};
use dps_store::StoreObserver;
use dps_types::HubName;
use prometheus::core::Collector;
use prometheus::{Encoder, GaugeVec, HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry};

pub use health::Health;
/// The prometheus crate, for collectors added with [`Metrics::register`].
pub use prometheus;
pub use server::{serve, MetricsLimits};

use collectors::{AmqpCollector, ListenerCollector, MqttCollector, RegistrarCollector};
use observers::{HandshakeHistogram, RegistrationMetrics, StoreMetrics};

/// Why a metric could not be registered or the registry not encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The registry refused a collector (a name registered twice, or with other labels).
    #[error("cannot register metrics")]
    Register(#[source] prometheus::Error),
    /// The text encoder failed.
    #[error("cannot encode metrics")]
    Encode(#[source] prometheus::Error),
}

/// TLS handshake duration buckets, seconds: a loopback handshake takes about a millisecond,
/// one over a cellular link a few hundred; the handshake timeout is 10 s.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The registry and the handles resolved at start. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    handshake_seconds: HistogramVec,
    certificate_not_after: GaugeVec,
    store: Arc<StoreMetrics>,
}

impl Metrics {
    /// A registry with build info (`dps_build_info{version}`), the process metrics on Linux,
    /// and the store's timings.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                "dps_build_info",
                "Always 1; the label says which version of dpsd runs.",
            ),
            &["version"],
        )
        .map_err(MetricsError::Register)?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        add(&registry, build.clone())?;
        #[cfg(target_os = "linux")]
        add(
            &registry,
            prometheus::process_collector::ProcessCollector::for_self(),
        )?;
        let handshake_seconds = HistogramVec::new(
            HistogramOpts::new(
                "dps_tls_handshake_duration_seconds",
                "Duration of completed TLS handshakes, from accept to the handshake's end.",
            )
            .buckets(HANDSHAKE_BUCKETS.to_vec()),
            &["listener"],
        )
        .map_err(MetricsError::Register)?;
        add(&registry, handshake_seconds.clone())?;
        let certificate_not_after = GaugeVec::new(
            Opts::new(
                "dps_tls_certificate_not_after_seconds",
                "Expiry (notAfter, Unix time) of the server certificate a listener presents.",
            ),
            &["listener"],
        )
        .map_err(MetricsError::Register)?;
        add(&registry, certificate_not_after.clone())?;
        let store = Arc::new(StoreMetrics::new()?);
        store.register(&registry)?;
        Ok(Self {
            registry,
            handshake_seconds,
            certificate_not_after,
            store,
        })
    }

    /// The assignment feed's link and per-hub event counts, read at every scrape, and the
    /// latency of its publisher confirms (`dps_feed_confirm_duration_seconds`, observed by
    /// the feed). Call once per feed.
    pub fn watch_feed(&self, feed: &dps_feed::Feed) -> Result<(), MetricsError> {
        self.register(Box::new(feed::FeedCollector::new(feed.clone())?))?;
        let confirms = feed::ConfirmMetrics::new()?;
        add(&self.registry, confirms.histogram())?;
        feed.observe(Arc::new(confirms));
        Ok(())
    }

    /// Adds a collector, scraped with the rest.
    pub fn register(&self, collector: Box<dyn Collector>) -> Result<(), MetricsError> {
        self.registry
            .register(collector)
            .map_err(MetricsError::Register)
    }

    /// Counters for the listener `name` (`api`, `mqtt`, `metrics`, ...): the handle to give
    /// its `serve`. Their connections, sheds, accept errors and handshake outcomes are
    /// scraped with the label `listener="name"`, and completed handshakes are timed.
    pub fn listener(&self, name: &'static str) -> Result<ListenerCounters, MetricsError> {
        let timer = HandshakeHistogram(self.handshake_seconds.with_label_values(&[name]));
        let counters = ListenerCounters::default().with_handshake_timer(Arc::new(timer));
        self.register(Box::new(ListenerCollector::new(name, counters.clone())?))?;
        Ok(counters)
    }

    /// Counters for the MQTT frontend (listener `mqtt`): as [`Metrics::listener`], plus why
    /// connections were closed and the `429`s sent.
    pub fn mqtt(&self) -> Result<MqttCounters, MetricsError> {
        let counters = MqttCounters::new(self.listener("mqtt")?);
        self.register(Box::new(MqttCollector::new(counters.clone())?))?;
        Ok(counters)
    }

    /// Counters for the AMQP frontend (listener `amqp`): as [`Metrics::listener`], plus why
    /// connections were closed or devices refused, and the `429`s sent.
    pub fn amqp(&self) -> Result<AmqpCounters, MetricsError> {
        let counters = AmqpCounters::new(self.listener("amqp")?);
        self.register(Box::new(AmqpCollector::new(counters.clone())?))?;
        Ok(counters)
    }

    /// The registrar's observer (`RegistrarConfig::observer`): registrations by transport,
    /// attestation type and outcome, their latency, assignments per hub in `linked_hubs`, and
    /// webhook calls. Call once.
    pub fn registrar_observer(
        &self,
        linked_hubs: &[HubName],
    ) -> Result<Arc<dyn RegistrarObserver>, MetricsError> {
        let observer = RegistrationMetrics::new(linked_hubs)?;
        observer.register(&self.registry)?;
        Ok(Arc::new(observer))
    }

    /// The store's observer (`Store::observe`): write and flush latency, batch sizes.
    pub fn store_observer(&self) -> Arc<dyn StoreObserver> {
        self.store.clone()
    }

    /// Scrapes `registrar`: failures by reason, enrollment and record counts (the cache's
    /// size), and whether the store accepts writes.
    pub fn watch_registrar(&self, registrar: &Registrar) -> Result<(), MetricsError> {
        self.register(Box::new(RegistrarCollector::new(registrar.clone())?))
    }

    /// Records when the certificate the listener `name` presents expires.
    pub fn certificate_not_after(&self, listener: &str, not_after_unix: i64) {
        // A Unix time in seconds is exact in an f64 for the next 285 million years.
        #[allow(clippy::cast_precision_loss)]
        self.certificate_not_after
            .with_label_values(&[listener])
            .set(not_after_unix as f64);
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> Result<Vec<u8>, MetricsError> {
        let mut out = Vec::with_capacity(16 * 1024);
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(MetricsError::Encode)?;
        Ok(out)
    }

    /// The registry (to gather in tests or register more).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

fn add(registry: &Registry, c: impl Collector + 'static) -> Result<(), MetricsError> {
    registry
        .register(Box::new(c))
        .map_err(MetricsError::Register)
}
