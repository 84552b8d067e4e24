//! The observers handed to the libraries: every prometheus handle is resolved here, once, so
//! reporting a registration or a flush is a few atomic additions and no label lookup.

use std::time::Duration;

use dps_listener::HandshakeTimer;
use dps_registrar::{Outcome, RegistrarObserver, RegistrationReport, Transport, WebhookError};
use dps_store::StoreObserver;
use dps_types::{AttestationType, HubName};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::{add, MetricsError};

/// Registration latency buckets, seconds: a registration is a cache lookup, an allocation and
/// one group-committed fsync (milliseconds), or up to the webhook timeout (10 s by default)
/// with a custom allocation; devices give up after 30 s.
const REGISTRATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Store latency buckets, seconds: a flush on an SSD takes 0.1 to a few ms, a slow disk tens.
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Writers per flush: one when idle, up to the registrations in flight (4096 by default).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// Webhook latency buckets, seconds, up to the largest webhook timeout worth having.
const WEBHOOK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const TRANSPORTS: [Transport; 3] = [Transport::Mqtt, Transport::Amqp, Transport::Https];
const ATTESTATIONS: [AttestationType; 3] = [
    AttestationType::X509,
    AttestationType::SymmetricKey,
    AttestationType::Tpm,
];

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Mqtt => 0,
        Transport::Amqp => 1,
        Transport::Https => 2,
    }
}

fn transport_label(t: Transport) -> &'static str {
    match t {
        Transport::Mqtt => "mqtt",
        Transport::Amqp => "amqp",
        Transport::Https => "https",
    }
}

fn attestation_index(a: AttestationType) -> Option<usize> {
    ATTESTATIONS.iter().position(|known| *known == a)
}

fn outcome_index(o: Outcome) -> usize {
    Outcome::ALL
        .iter()
        .position(|known| *known == o)
        .unwrap_or(0)
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Result<Histogram, MetricsError> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .map_err(MetricsError::Register)
}

/// One listener's handshake duration series.
#[derive(Debug)]
pub(crate) struct HandshakeHistogram(pub(crate) Histogram);

impl HandshakeTimer for HandshakeHistogram {
    fn handshake_done(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }
}

/// The store's timings.
#[derive(Debug)]
pub(crate) struct StoreMetrics {
    write: Histogram,
    flush: Histogram,
    batch: Histogram,
}

impl StoreMetrics {
    pub(crate) fn new() -> Result<Self, MetricsError> {
        Ok(Self {
            write: histogram(
                "dps_store_write_duration_seconds",
                "Durable store writes, from the backend write to the end of the flush that covers it.",
                STORE_BUCKETS,
            )?,
            flush: histogram(
                "dps_store_flush_duration_seconds",
                "Group-commit flushes (fsync) of the store.",
                STORE_BUCKETS,
            )?,
            batch: histogram(
                "dps_store_flush_batch_size",
                "Writers whose writes one group-commit flush made durable.",
                BATCH_BUCKETS,
            )?,
        })
    }

    pub(crate) fn register(&self, registry: &Registry) -> Result<(), MetricsError> {
        add(registry, self.write.clone())?;
        add(registry, self.flush.clone())?;
        add(registry, self.batch.clone())
    }
}

impl StoreObserver for StoreMetrics {
    fn write_done(&self, elapsed: Duration) {
        self.write.observe(elapsed.as_secs_f64());
    }

    #[allow(clippy::cast_precision_loss)] // a batch is far below 2^53 writers
    fn flush_done(&self, elapsed: Duration, batch: usize) {
        self.flush.observe(elapsed.as_secs_f64());
        self.batch.observe(batch as f64);
    }
}

/// Registrations, assignments and webhook calls.
#[derive(Debug)]
pub(crate) struct RegistrationMetrics {
    /// `[transport][attestation][outcome]`.
    registrations: IntCounterVec,
    counts: Vec<Vec<Vec<IntCounter>>>,
    latency_vec: HistogramVec,
    /// By transport, for assigned registrations.
    latency: Vec<Histogram>,
    assignments_vec: IntCounterVec,
    /// One per linked hub (few: an operator links a handful of hubs).
    assignments: Vec<(HubName, IntCounter)>,
    webhook_calls_vec: IntCounterVec,
    webhook_calls: Vec<(&'static str, IntCounter)>,
    webhook_latency: Histogram,
}

impl RegistrationMetrics {
    pub(crate) fn new(linked_hubs: &[HubName]) -> Result<Self, MetricsError> {
        let registrations = IntCounterVec::new(
            Opts::new(
                "dps_registrations_total",
                "Registrations of attested devices by transport, attestation type and outcome.",
            ),
            &["transport", "attestation", "outcome"],
        )
        .map_err(MetricsError::Register)?;
        let counts = TRANSPORTS
            .iter()
            .map(|t| {
                ATTESTATIONS
                    .iter()
                    .map(|a| {
                        Outcome::ALL
                            .iter()
                            .map(|o| {
                                registrations.with_label_values(&[
                                    transport_label(*t),
                                    a.as_str(),
                                    o.label(),
                                ])
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let latency_vec = HistogramVec::new(
            HistogramOpts::new(
                "dps_registration_duration_seconds",
                "Registrations that ended assigned, from the accepted register request (answered 202) to 'assigned' with the record durable.",
            )
            .buckets(REGISTRATION_BUCKETS.to_vec()),
            &["transport"],
        )
        .map_err(MetricsError::Register)?;
        let latency = TRANSPORTS
            .iter()
            .map(|t| latency_vec.with_label_values(&[transport_label(*t)]))
            .collect();
        let assignments_vec = IntCounterVec::new(
            Opts::new(
                "dps_assignments_total",
                "Devices assigned to each linked IoT hub.",
            ),
            &["hub"],
        )
        .map_err(MetricsError::Register)?;
        let assignments = linked_hubs
            .iter()
            .map(|h| (h.clone(), assignments_vec.with_label_values(&[h.as_str()])))
            .collect();
        let webhook_calls_vec = IntCounterVec::new(
            Opts::new(
                "dps_webhook_calls_total",
                "Custom allocation webhook calls by result (ok, or the kind of failure).",
            ),
            &["result"],
        )
        .map_err(MetricsError::Register)?;
        let webhook_calls = std::iter::once("ok")
            .chain(WebhookError::LABELS)
            .map(|r| (r, webhook_calls_vec.with_label_values(&[r])))
            .collect();
        let webhook_latency = histogram(
            "dps_webhook_duration_seconds",
            "Custom allocation webhook calls, whatever their result.",
            WEBHOOK_BUCKETS,
        )?;
        Ok(Self {
            registrations,
            counts,
            latency_vec,
            latency,
            assignments_vec,
            assignments,
            webhook_calls_vec,
            webhook_calls,
            webhook_latency,
        })
    }

    pub(crate) fn register(&self, registry: &Registry) -> Result<(), MetricsError> {
        add(registry, self.registrations.clone())?;
        add(registry, self.latency_vec.clone())?;
        add(registry, self.assignments_vec.clone())?;
        add(registry, self.webhook_calls_vec.clone())?;
        add(registry, self.webhook_latency.clone())
    }
}

impl RegistrarObserver for RegistrationMetrics {
    fn registration(&self, r: &RegistrationReport<'_>) {
        let t = transport_index(r.transport);
        if let Some(a) = attestation_index(r.attestation) {
            if let Some(c) = self
                .counts
                .get(t)
                .and_then(|by_a| by_a.get(a))
                .and_then(|by_o| by_o.get(outcome_index(r.outcome)))
            {
                c.inc();
            }
        }
        if r.outcome == Outcome::Assigned {
            if let Some(h) = self.latency.get(t) {
                h.observe(r.elapsed.as_secs_f64());
            }
            if let Some(hub) = r.hub {
                if let Some((_, c)) = self.assignments.iter().find(|(h, _)| h == hub) {
                    c.inc();
                }
            }
        }
    }

    fn webhook(&self, result: &'static str, elapsed: Duration) {
        self.webhook_latency.observe(elapsed.as_secs_f64());
        if let Some((_, c)) = self.webhook_calls.iter().find(|(r, _)| *r == result) {
            c.inc();
        }
    }
}
