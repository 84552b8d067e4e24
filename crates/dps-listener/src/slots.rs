//! Connection slots: who may hold a connection now. One table, behind one short lock, counts
//! the open connections in total and per source address, and the unauthenticated ones per
//! source address; a [`Slot`] is one admitted connection's share and gives it back on drop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::ListenerLimits;

/// Why a connection was closed right after `accept`, before any protocol work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// Every slot of the listener is taken.
    Connections,
    /// The source address holds its share of slots.
    Address,
    /// The source address holds its share of connections that have not authenticated yet.
    Unauthenticated,
}

/// A handle on one listener's counters; clones share them. Every counter is a fixed name (no
/// address), so as metrics their labels stay bounded.
#[derive(Debug, Clone, Default)]
pub struct ListenerCounters {
    pub(crate) inner: Arc<Counters>,
    /// Told the duration of every completed TLS handshake (see `handshake.rs`).
    pub(crate) handshake_timer: Option<Arc<dyn crate::HandshakeTimer>>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    shed_connection_limit: AtomicU64,
    shed_address_limit: AtomicU64,
    shed_unauthenticated_limit: AtomicU64,
    accept_errors: AtomicU64,
    active: AtomicU64,
    pub(crate) handshakes_done: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) handshakes_timed_out: AtomicU64,
}

/// A point-in-time copy of a listener's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// TCP connections given a slot.
    pub accepted: u64,
    /// Connections closed at once because every slot was taken.
    pub shed_connection_limit: u64,
    /// Connections closed at once because their source address held
    /// `max_connections_per_ip` slots.
    pub shed_address_limit: u64,
    /// Connections closed at once because their source address held
    /// `max_unauthenticated_per_ip` connections that had not authenticated yet.
    pub shed_unauthenticated_limit: u64,
    /// `accept` failures of the listener itself (e.g. out of file descriptors).
    pub accept_errors: u64,
    /// Connections holding a slot now.
    pub active: u64,
    /// TLS handshakes completed (reported by the frontend, [`ListenerCounters::handshake`]).
    pub tls_handshakes: u64,
    /// TLS handshakes that failed (bad certificate, protocol error, peer gone).
    pub tls_failures: u64,
    /// TLS handshakes cut by the frontend's handshake timeout.
    pub tls_timeouts: u64,
}

impl ListenerStats {
    /// Connections shed for any reason.
    pub fn shed(&self) -> u64 {
        self.shed_connection_limit + self.shed_address_limit + self.shed_unauthenticated_limit
    }
}

impl ListenerCounters {
    /// Reads every counter (each atomically; the set is not one consistent instant).
    pub fn snapshot(&self) -> ListenerStats {
        let c = &self.inner;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ListenerStats {
            accepted: get(&c.accepted),
            shed_connection_limit: get(&c.shed_connection_limit),
            shed_address_limit: get(&c.shed_address_limit),
            shed_unauthenticated_limit: get(&c.shed_unauthenticated_limit),
            accept_errors: get(&c.accept_errors),
            active: get(&c.active),
            tls_handshakes: get(&c.handshakes_done),
            tls_failures: get(&c.handshakes_failed),
            tls_timeouts: get(&c.handshakes_timed_out),
        }
    }

    pub(crate) fn shed(&self, why: Shed) {
        let c = &self.inner;
        bump(match why {
            Shed::Connections => &c.shed_connection_limit,
            Shed::Address => &c.shed_address_limit,
            Shed::Unauthenticated => &c.shed_unauthenticated_limit,
        });
    }

    pub(crate) fn accept_error(&self) {
        bump(&self.inner.accept_errors);
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The source a per-address limit applies to: an IPv4 address, or an IPv6 /64 (one
/// subscriber's prefix: a peer with IPv6 usually holds a whole /64, so counting single
/// addresses would not limit it at all). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Source(v4),
        }
    }
}

#[derive(Debug, Default)]
struct PerSource {
    open: usize,
    unauthenticated: usize,
}

#[derive(Debug, Default)]
struct Table {
    open: usize,
    /// One entry per source with an open connection: at most `max_connections` entries.
    sources: HashMap<Source, PerSource>,
}

/// The admission table of one listener.
#[derive(Debug)]
pub(crate) struct Slots {
    limits: ListenerLimits,
    counters: ListenerCounters,
    table: Mutex<Table>,
}

impl Slots {
    pub(crate) fn new(limits: ListenerLimits, counters: ListenerCounters) -> Arc<Self> {
        Arc::new(Slots {
            limits,
            counters,
            table: Mutex::new(Table::default()),
        })
    }

    pub(crate) fn counters(&self) -> &ListenerCounters {
        &self.counters
    }

    /// A slot for a connection from `ip`, or why there is none (counted).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Shed> {
        let source = Source::of(ip);
        let refused = {
            let mut table = self.lock();
            let here = table
                .sources
                .get(&source)
                .map_or((0, 0), |s| (s.open, s.unauthenticated));
            if table.open >= self.limits.max_connections {
                Some(Shed::Connections)
            } else if here.0 >= self.limits.max_connections_per_ip {
                Some(Shed::Address)
            } else if here.1 >= self.limits.max_unauthenticated_per_ip {
                Some(Shed::Unauthenticated)
            } else {
                table.open += 1;
                let entry = table.sources.entry(source).or_default();
                entry.open += 1;
                entry.unauthenticated += 1;
                None
            }
        };
        if let Some(why) = refused {
            self.counters.shed(why);
            return Err(why);
        }
        bump(&self.counters.inner.accepted);
        bump(&self.counters.inner.active);
        Ok(Slot {
            inner: Arc::new(SlotInner {
                slots: Arc::clone(self),
                source,
                authenticated: AtomicBool::new(false),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent whatever panicked while holding it: every update is a
        // few integer steps that cannot panic.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted connection's share of the listener: its slot, and until
/// [`Slot::authenticated`] one of its source's unauthenticated places. Clones share the slot;
/// it is given back when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Slot {
    inner: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    slots: Arc<Slots>,
    source: Source,
    authenticated: AtomicBool,
}

impl Slot {
    /// The protocol says the peer authenticated (MQTT: CONNACK 0 went out; HTTPS: the first
    /// complete request head arrived): the connection no longer counts against its source's
    /// unauthenticated limit. Idempotent.
    pub fn authenticated(&self) {
        if self.inner.authenticated.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut table = self.inner.slots.lock();
        if let Some(entry) = table.sources.get_mut(&self.inner.source) {
            entry.unauthenticated = entry.unauthenticated.saturating_sub(1);
        }
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let authenticated = *self.authenticated.get_mut();
        {
            let mut table = self.slots.lock();
            table.open = table.open.saturating_sub(1);
            if let Some(entry) = table.sources.get_mut(&self.source) {
                entry.open = entry.open.saturating_sub(1);
                if !authenticated {
                    entry.unauthenticated = entry.unauthenticated.saturating_sub(1);
                }
                if entry.open == 0 {
                    table.sources.remove(&self.source);
                }
            }
        }
        self.slots
            .counters
            .inner
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slots(total: usize, per_ip: usize, unauthenticated: usize) -> Arc<Slots> {
        Slots::new(
            ListenerLimits {
                max_connections: total,
                max_connections_per_ip: per_ip,
                max_unauthenticated_per_ip: unauthenticated,
                drain_timeout: Duration::from_secs(1),
            },
            ListenerCounters::default(),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_limit_sheds_with_its_own_count() {
        let slots = slots(4, 2, 1);
        let first = slots.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            slots.admit(ip("10.0.0.1")).unwrap_err(),
            Shed::Unauthenticated
        );
        first.authenticated();
        let second = slots.admit(ip("10.0.0.1")).unwrap();
        second.authenticated();
        assert_eq!(slots.admit(ip("10.0.0.1")).unwrap_err(), Shed::Address);
        let _b = slots.admit(ip("10.0.0.2")).unwrap();
        let _c = slots.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(slots.admit(ip("10.0.0.4")).unwrap_err(), Shed::Connections);
        let stats = slots.counters().snapshot();
        assert_eq!(stats.accepted, 4);
        assert_eq!(stats.active, 4);
        assert_eq!(stats.shed_unauthenticated_limit, 1);
        assert_eq!(stats.shed_address_limit, 1);
        assert_eq!(stats.shed_connection_limit, 1);
        assert_eq!(stats.shed(), 3);
    }

    #[test]
    fn dropping_the_last_clone_gives_everything_back() {
        let slots = slots(1, 1, 1);
        let slot = slots.admit(ip("10.0.0.1")).unwrap();
        let clone = slot.clone();
        drop(slot);
        assert!(slots.admit(ip("10.0.0.2")).is_err());
        drop(clone);
        assert!(slots.lock().sources.is_empty());
        let again = slots.admit(ip("10.0.0.1")).unwrap();
        again.authenticated();
        again.authenticated();
        drop(again);
        let table = slots.lock();
        assert_eq!(table.open, 0);
        assert!(table.sources.is_empty());
        assert_eq!(slots.counters().snapshot().active, 0);
    }

    #[test]
    fn an_ipv6_prefix_is_one_source_and_mapped_ipv4_is_ipv4() {
        let slots = slots(8, 1, 1);
        let _a = slots.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            slots.admit(ip("2001:db8:1:2::ffff")).unwrap_err(),
            Shed::Address
        );
        let _b = slots.admit(ip("2001:db8:1:3::1")).unwrap();
        let _c = slots.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            slots.admit(ip("::ffff:192.0.2.7")).unwrap_err(),
            Shed::Address
        );
    }
}
