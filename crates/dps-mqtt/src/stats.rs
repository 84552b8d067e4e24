//! Connection and refusal counters: plain atomics, cheap to bump on the hot path, read as a
//! [`MqttStats`] snapshot. Every counter is a fixed name (no device id, no address), so when
//! they become metrics their labels stay bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dps_listener::{ListenerCounters, ListenerStats};

/// A handle on the counters of one MQTT frontend; clones share them.
#[derive(Debug, Clone, Default)]
pub struct MqttCounters {
    inner: Arc<Counters>,
    listener: ListenerCounters,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) tls_failures: AtomicU64,
    pub(crate) tls_timeouts: AtomicU64,
    pub(crate) connect_timeouts: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) bad_connects: AtomicU64,
    pub(crate) not_authorized: AtomicU64,
    pub(crate) malformed_packets: AtomicU64,
    pub(crate) oversized_packets: AtomicU64,
    pub(crate) protocol_violations: AtomicU64,
    pub(crate) device_limit: AtomicU64,
    pub(crate) lifetime_ends: AtomicU64,
    pub(crate) io_errors: AtomicU64,
    pub(crate) registrations_started: AtomicU64,
    pub(crate) registrations_busy: AtomicU64,
    pub(crate) registrations_failed: AtomicU64,
    pub(crate) throttled: AtomicU64,
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttStats {
    /// The listener's: connections admitted, shed before TLS (by reason), `accept` errors,
    /// connections holding a slot now.
    pub listener: ListenerStats,
    /// TLS handshakes that failed.
    pub tls_failures: u64,
    /// TLS handshakes that did not finish in time.
    pub tls_timeouts: u64,
    /// Connections closed for sending no CONNECT in time.
    pub connect_timeouts: u64,
    /// Connections closed for silence beyond 1.5 × keep-alive.
    pub idle_timeouts: u64,
    /// CONNECTs refused before attestation: another protocol level, bad username, client
    /// id ≠ registration id, or another ID scope (CONNACK 1, 2, 4 or 5).
    pub bad_connects: u64,
    /// CONNECTs refused by attestation (CONNACK 5).
    pub not_authorized: u64,
    /// Connections closed for bytes that are not MQTT 3.1.1.
    pub malformed_packets: u64,
    /// Connections closed for a packet over the size limit.
    pub oversized_packets: u64,
    /// Connections closed for breaking MQTT or DPS rules (unknown topic, a packet only a
    /// server sends, QoS 2, data before CONNECT, ...).
    pub protocol_violations: u64,
    /// Authenticated CONNECTs refused because the device already held
    /// `max_connections_per_device` connections (CONNACK 3).
    pub device_limit: u64,
    /// Connections closed at `max_connection_lifetime`.
    pub lifetime_ends: u64,
    /// Connections that ended on a read or write error or timeout.
    pub io_errors: u64,
    /// Registrations handed to the registrar.
    pub registrations_started: u64,
    /// Registrations the registrar refused as busy.
    pub registrations_busy: u64,
    /// Registrations that failed on our side (store error, a panic).
    pub registrations_failed: u64,
    /// `429` answers sent (registrar busy, or a connection over its request or operation
    /// limit).
    pub throttled: u64,
}

impl MqttCounters {
    /// Counters whose listener part is `listener` (e.g. one with a handshake timer).
    pub fn new(listener: ListenerCounters) -> Self {
        Self {
            inner: Arc::default(),
            listener,
        }
    }

    /// Reads every counter (each atomically; the set is not one consistent instant).
    pub fn snapshot(&self) -> MqttStats {
        let c = &self.inner;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MqttStats {
            listener: self.listener.snapshot(),
            tls_failures: get(&c.tls_failures),
            tls_timeouts: get(&c.tls_timeouts),
            connect_timeouts: get(&c.connect_timeouts),
            idle_timeouts: get(&c.idle_timeouts),
            bad_connects: get(&c.bad_connects),
            not_authorized: get(&c.not_authorized),
            malformed_packets: get(&c.malformed_packets),
            oversized_packets: get(&c.oversized_packets),
            protocol_violations: get(&c.protocol_violations),
            device_limit: get(&c.device_limit),
            lifetime_ends: get(&c.lifetime_ends),
            io_errors: get(&c.io_errors),
            registrations_started: get(&c.registrations_started),
            registrations_busy: get(&c.registrations_busy),
            registrations_failed: get(&c.registrations_failed),
            throttled: get(&c.throttled),
        }
    }

    pub(crate) fn get(&self) -> &Counters {
        &self.inner
    }

    pub(crate) fn listener(&self) -> &ListenerCounters {
        &self.listener
    }
}

/// Adds one.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
