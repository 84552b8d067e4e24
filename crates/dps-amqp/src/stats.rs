//! Connection and refusal counters: plain atomics, cheap to bump on the hot path, read as an
//! [`AmqpStats`] snapshot. Every counter is a fixed name (no device id, no address), so when
//! they become metrics their labels stay bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dps_listener::{ListenerCounters, ListenerStats};

/// A handle on the counters of one AMQP frontend; clones share them.
#[derive(Debug, Clone, Default)]
pub struct AmqpCounters {
    inner: Arc<Counters>,
    listener: ListenerCounters,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) tls_failures: AtomicU64,
    pub(crate) tls_timeouts: AtomicU64,
    pub(crate) open_timeouts: AtomicU64,
    pub(crate) bad_headers: AtomicU64,
    pub(crate) sasl_failures: AtomicU64,
    pub(crate) not_authorized: AtomicU64,
    pub(crate) device_limit: AtomicU64,
    pub(crate) refused_links: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
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
pub struct AmqpStats {
    /// The listener's: connections admitted, shed before TLS (by reason), `accept` errors,
    /// connections holding a slot now.
    pub listener: ListenerStats,
    /// TLS handshakes that failed.
    pub tls_failures: u64,
    /// TLS handshakes that did not finish in time.
    pub tls_timeouts: u64,
    /// Connections that did not get from TLS to two attached links in time.
    pub open_timeouts: u64,
    /// Connections whose first bytes were not an AMQP protocol header.
    pub bad_headers: u64,
    /// SASL exchanges that failed (unknown mechanism, malformed PLAIN, bad username).
    pub sasl_failures: u64,
    /// Devices refused by attestation (closed with `amqp:unauthorized-access`).
    pub not_authorized: u64,
    /// Attested devices refused because they already held `max_connections_per_device`
    /// connections (`amqp:resource-limit-exceeded`).
    pub device_limit: u64,
    /// Links refused: a wrong address, another device's, or one link too many.
    pub refused_links: u64,
    /// Requests rejected as malformed (no correlation id, unknown operation, bad body).
    pub bad_requests: u64,
    /// Connections that ended on an AMQP error: malformed or oversized frames or messages,
    /// transfers beyond credit, a session or link the peer broke.
    pub protocol_errors: u64,
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
    /// Requests rejected with `429` (registrar busy, or a connection over its request or
    /// operation limit).
    pub throttled: u64,
}

impl AmqpCounters {
    /// Counters whose listener part is `listener` (e.g. one with a handshake timer).
    pub fn new(listener: ListenerCounters) -> Self {
        Self {
            inner: Arc::default(),
            listener,
        }
    }

    /// Reads every counter (each atomically; the set is not one consistent instant).
    pub fn snapshot(&self) -> AmqpStats {
        let c = &self.inner;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AmqpStats {
            listener: self.listener.snapshot(),
            tls_failures: get(&c.tls_failures),
            tls_timeouts: get(&c.tls_timeouts),
            open_timeouts: get(&c.open_timeouts),
            bad_headers: get(&c.bad_headers),
            sasl_failures: get(&c.sasl_failures),
            not_authorized: get(&c.not_authorized),
            device_limit: get(&c.device_limit),
            refused_links: get(&c.refused_links),
            bad_requests: get(&c.bad_requests),
            protocol_errors: get(&c.protocol_errors),
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
