//! Collectors that read, at scrape time, the counters the libraries keep on their hot paths
//! (plain atomics): nothing is added to a connection or a registration for them.

use dps_amqp::AmqpCounters;
use dps_attest::FailureReason;
use dps_listener::{Handshake, ListenerCounters};
use dps_mqtt::MqttCounters;
use dps_registrar::{Registrar, RegistrarReason};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use crate::family::{desc, Family};
use crate::MetricsError;

const OPEN: (&str, &str) = (
    "dps_connections_open",
    "Connections holding a slot of the listener now.",
);
const ACCEPTED: (&str, &str) = (
    "dps_connections_accepted_total",
    "TCP connections the listener gave a slot.",
);
const SHED: (&str, &str) = (
    "dps_connections_shed_total",
    "Connections closed right after accept, before TLS, because a limit was reached.",
);
const ACCEPT_ERRORS: (&str, &str) = (
    "dps_accept_errors_total",
    "Failed accepts of the listener itself (e.g. out of file descriptors).",
);
const HANDSHAKES: (&str, &str) = (
    "dps_tls_handshakes_total",
    "TLS handshakes by how they ended (ok, failed, timeout).",
);

/// One listener's connection counters, labelled `listener`.
pub(crate) struct ListenerCollector {
    name: &'static str,
    counters: ListenerCounters,
    descs: Vec<Desc>,
}

impl ListenerCollector {
    pub(crate) fn new(
        name: &'static str,
        counters: ListenerCounters,
    ) -> Result<Self, MetricsError> {
        let constant = Some(("listener", name));
        let descs = vec![
            desc(OPEN.0, OPEN.1, &[], constant)?,
            desc(ACCEPTED.0, ACCEPTED.1, &[], constant)?,
            desc(SHED.0, SHED.1, &["reason"], constant)?,
            desc(ACCEPT_ERRORS.0, ACCEPT_ERRORS.1, &[], constant)?,
            desc(HANDSHAKES.0, HANDSHAKES.1, &["result"], constant)?,
        ];
        Ok(Self {
            name,
            counters,
            descs,
        })
    }
}

impl Collector for ListenerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.counters.snapshot();
        let l = ("listener", self.name);
        let shed = |reason| [l, ("reason", reason)];
        let result = |h: Handshake| [l, ("result", h.label())];
        vec![
            Family::gauge(OPEN.0, OPEN.1).sample(&[l], s.active).done(),
            Family::counter(ACCEPTED.0, ACCEPTED.1)
                .sample(&[l], s.accepted)
                .done(),
            Family::counter(SHED.0, SHED.1)
                .sample(&shed("connection_limit"), s.shed_connection_limit)
                .sample(&shed("address_limit"), s.shed_address_limit)
                .sample(&shed("unauthenticated_limit"), s.shed_unauthenticated_limit)
                .done(),
            Family::counter(ACCEPT_ERRORS.0, ACCEPT_ERRORS.1)
                .sample(&[l], s.accept_errors)
                .done(),
            Family::counter(HANDSHAKES.0, HANDSHAKES.1)
                .sample(&result(Handshake::Done), s.tls_handshakes)
                .sample(&result(Handshake::Failed), s.tls_failures)
                .sample(&result(Handshake::TimedOut), s.tls_timeouts)
                .done(),
        ]
    }
}

const CLOSED: (&str, &str) = (
    "dps_mqtt_connections_closed_total",
    "MQTT connections the server closed after the handshake, by reason (clean disconnects and shutdown are not counted).",
);
const THROTTLED: (&str, &str) = (
    "dps_throttled_responses_total",
    "429 answers sent to devices (the registrar was busy, or a connection exceeded its request or operation limit).",
);

/// The MQTT frontend's own counters.
pub(crate) struct MqttCollector {
    counters: MqttCounters,
    descs: Vec<Desc>,
}

impl MqttCollector {
    pub(crate) fn new(counters: MqttCounters) -> Result<Self, MetricsError> {
        let constant = Some(("transport", "mqtt"));
        let descs = vec![
            desc(CLOSED.0, CLOSED.1, &["reason"], constant)?,
            desc(THROTTLED.0, THROTTLED.1, &[], constant)?,
        ];
        Ok(Self { counters, descs })
    }
}

impl Collector for MqttCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.counters.snapshot();
        let closed = [
            ("connect_timeout", s.connect_timeouts),
            ("idle_timeout", s.idle_timeouts),
            ("bad_connect", s.bad_connects),
            ("not_authorized", s.not_authorized),
            ("malformed_packet", s.malformed_packets),
            ("oversized_packet", s.oversized_packets),
            ("protocol_violation", s.protocol_violations),
            ("device_limit", s.device_limit),
            ("lifetime_exceeded", s.lifetime_ends),
            ("io_error", s.io_errors),
        ]
        .into_iter()
        .fold(Family::counter(CLOSED.0, CLOSED.1), |f, (reason, n)| {
            f.sample(&[("transport", "mqtt"), ("reason", reason)], n)
        });
        vec![
            closed.done(),
            Family::counter(THROTTLED.0, THROTTLED.1)
                .sample(&[("transport", "mqtt")], s.throttled)
                .done(),
        ]
    }
}

const AMQP_CLOSED: (&str, &str) = (
    "dps_amqp_connections_closed_total",
    "AMQP connections the server closed or refused after the handshake, by reason (clean closes and shutdown are not counted).",
);

/// The AMQP frontend's own counters.
pub(crate) struct AmqpCollector {
    counters: AmqpCounters,
    descs: Vec<Desc>,
}

impl AmqpCollector {
    pub(crate) fn new(counters: AmqpCounters) -> Result<Self, MetricsError> {
        let constant = Some(("transport", "amqp"));
        let descs = vec![
            desc(AMQP_CLOSED.0, AMQP_CLOSED.1, &["reason"], constant)?,
            desc(THROTTLED.0, THROTTLED.1, &[], constant)?,
        ];
        Ok(Self { counters, descs })
    }
}

impl Collector for AmqpCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.counters.snapshot();
        let closed = [
            ("open_timeout", s.open_timeouts),
            ("bad_header", s.bad_headers),
            ("sasl_failure", s.sasl_failures),
            ("not_authorized", s.not_authorized),
            ("device_limit", s.device_limit),
            ("protocol_error", s.protocol_errors),
            ("lifetime_exceeded", s.lifetime_ends),
            ("io_error", s.io_errors),
        ]
        .into_iter()
        .fold(
            Family::counter(AMQP_CLOSED.0, AMQP_CLOSED.1),
            |f, (reason, n)| f.sample(&[("transport", "amqp"), ("reason", reason)], n),
        );
        vec![
            closed.done(),
            Family::counter(THROTTLED.0, THROTTLED.1)
                .sample(&[("transport", "amqp")], s.throttled)
                .done(),
        ]
    }
}

const ATTESTATION_FAILURES: (&str, &str) = (
    "dps_attestation_failures_total",
    "Device attestations refused, by reason (the device itself only learns 'unauthorized').",
);
const REGISTRATION_FAILURES: (&str, &str) = (
    "dps_registration_failures_total",
    "Registrations of attested devices refused or failed by the registrar, by reason.",
);
const ENROLLMENTS: (&str, &str) = (
    "dps_enrollments",
    "Enrollments in the store (and its cache), by kind (individual, group).",
);
const RECORDS: (&str, &str) = (
    "dps_registration_records",
    "Registration records in the store (and its cache).",
);
const HEALTHY: (&str, &str) = (
    "dps_store_healthy",
    "1 while the store accepts writes, 0 after a failed flush until a flush works again.",
);

/// The registrar's failure counts and the store's sizes and health.
pub(crate) struct RegistrarCollector {
    registrar: Registrar,
    descs: Vec<Desc>,
}

impl RegistrarCollector {
    pub(crate) fn new(registrar: Registrar) -> Result<Self, MetricsError> {
        let descs = vec![
            desc(
                ATTESTATION_FAILURES.0,
                ATTESTATION_FAILURES.1,
                &["reason"],
                None,
            )?,
            desc(
                REGISTRATION_FAILURES.0,
                REGISTRATION_FAILURES.1,
                &["reason"],
                None,
            )?,
            desc(ENROLLMENTS.0, ENROLLMENTS.1, &["kind"], None)?,
            desc(RECORDS.0, RECORDS.1, &[], None)?,
            desc(HEALTHY.0, HEALTHY.1, &[], None)?,
        ];
        Ok(Self { registrar, descs })
    }
}

impl Collector for RegistrarCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let counts = self.registrar.diagnostics().counts();
        let count = |label: &str| {
            counts
                .iter()
                .find(|(l, _)| *l == label)
                .map_or(0, |(_, n)| *n)
        };
        // Every known reason, zero or not, so rates and alerts see a series from the start.
        let attestation = FailureReason::ALL.map(FailureReason::label);
        let registrar = RegistrarReason::ALL.map(RegistrarReason::label);
        let mut attestation_family =
            Family::counter(ATTESTATION_FAILURES.0, ATTESTATION_FAILURES.1);
        for reason in attestation {
            attestation_family = attestation_family.sample(&[("reason", reason)], count(reason));
        }
        let mut registrar_family =
            Family::counter(REGISTRATION_FAILURES.0, REGISTRATION_FAILURES.1);
        for reason in registrar {
            registrar_family = registrar_family.sample(&[("reason", reason)], count(reason));
        }
        // A reason added to the libraries later is still counted (its label is static).
        for (reason, n) in &counts {
            if !attestation.contains(reason) && !registrar.contains(reason) {
                registrar_family = registrar_family.sample(&[("reason", reason)], *n);
            }
        }
        let store = self.registrar.store();
        let cache = store.cache();
        vec![
            attestation_family.done(),
            registrar_family.done(),
            Family::gauge(ENROLLMENTS.0, ENROLLMENTS.1)
                .sample(&[("kind", "individual")], as_u64(cache.enrollment_count()))
                .sample(&[("kind", "group")], as_u64(cache.group_count()))
                .done(),
            Family::gauge(RECORDS.0, RECORDS.1)
                .sample(&[], as_u64(cache.registration_count()))
                .done(),
            Family::gauge(HEALTHY.0, HEALTHY.1)
                .sample(&[], u64::from(store.is_healthy()))
                .done(),
        ]
    }
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
