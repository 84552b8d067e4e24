//! Sign-in throttling per source address, so keys cannot be guessed at network speed.
//!
//! Each source keeps a count of its failed sign-ins. Once it reaches the free allowance, the
//! source must wait before its next attempt is even checked, and every further failure doubles
//! the wait up to a ceiling. A successful sign-in forgets the source. The table is bounded:
//! when full, sources whose wait is over and whose last failure is older than the ceiling go
//! first, then the one whose last failure is the oldest.
//!
//! A source is an IPv4 address or an IPv6 /64 (one subscriber's usual allocation, so an
//! attacker cannot rotate through the addresses of their own prefix). Requests without a peer
//! address share one source: throttling then holds for everyone rather than for no one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

/// The bounds of sign-in throttling. `Default` gives the documented values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigninLimits {
    /// Failed sign-ins from one source before it must wait: a few typos and retries by a
    /// person, too few to matter for a 256-bit key. Default 5.
    pub free_failures: u32,
    /// The wait after the last free failure; each further failure doubles it. Default 1 s, so
    /// a person who mistyped is barely slowed down.
    pub first_backoff: Duration,
    /// The longest wait. Default 15 min: past the first dozen failures a source gets about
    /// four tries an hour, while a locked-out operator is never locked out for long.
    pub max_backoff: Duration,
    /// Sources remembered at once. Default 4096: about 64 B each, a quarter of a MiB at
    /// most, and more distinct sources than an operator portal sees failing in 15 minutes.
    pub max_sources: usize,
}

impl Default for SigninLimits {
    fn default() -> Self {
        SigninLimits {
            free_failures: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15 * 60),
            max_sources: 4096,
        }
    }
}

/// Where a sign-in comes from: an IPv4 address, an IPv6 /64, or unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// One IPv4 address (IPv4-mapped IPv6 addresses included).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
    /// No peer address on the request.
    Unknown,
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => Source::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

impl From<Option<IpAddr>> for Source {
    fn from(ip: Option<IpAddr>) -> Source {
        ip.map_or(Source::Unknown, Source::of)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(Source::from(peer))
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// No attempt is checked before this instant.
    blocked_until: Option<Instant>,
}

/// The failed sign-ins per source.
pub(crate) struct SigninThrottle {
    map: Mutex<HashMap<Source, Failures>>,
    limits: SigninLimits,
}

impl SigninThrottle {
    pub(crate) fn new(limits: SigninLimits) -> Self {
        SigninThrottle {
            map: Mutex::new(HashMap::new()),
            limits: SigninLimits {
                max_sources: limits.max_sources.max(1),
                ..limits
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Failures>> {
        // A panic while holding the lock leaves a consistent map (every update is one call).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(wait)` when `source` must wait that long before its next attempt is checked.
    pub(crate) fn check(&self, source: Source, now: Instant) -> Result<(), Duration> {
        match self.lock().get(&source).and_then(|f| f.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records a failed sign-in from `source`.
    pub(crate) fn failed(&self, source: Source, now: Instant) {
        let mut map = self.lock();
        if !map.contains_key(&source) && map.len() >= self.limits.max_sources {
            self.evict(&mut map, now);
        }
        let entry = map.entry(source).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        if let Some(over) = entry.count.checked_sub(self.limits.free_failures) {
            entry.blocked_until = Some(now + self.backoff(over));
        }
    }

    /// Forgets `source` after a successful sign-in.
    pub(crate) fn succeeded(&self, source: Source) {
        self.lock().remove(&source);
    }

    /// The wait after `over` failures beyond the free allowance.
    fn backoff(&self, over: u32) -> Duration {
        let factor = 1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX);
        self.limits
            .first_backoff
            .saturating_mul(factor)
            .min(self.limits.max_backoff)
    }

    fn evict(&self, map: &mut HashMap<Source, Failures>, now: Instant) {
        let forget = self.limits.max_backoff;
        map.retain(|_, f| {
            let waiting = f.blocked_until.is_some_and(|until| until > now);
            waiting || now.duration_since(f.last) < forget
        });
        if map.len() >= self.limits.max_sources {
            // Sources not waiting go first (oldest failure first), then the one whose wait
            // ends soonest.
            let victim = map
                .iter()
                .min_by_key(|(_, f)| match f.blocked_until {
                    Some(until) if until > now => (true, until),
                    _ => (false, f.last),
                })
                .map(|(k, _)| *k);
            if let Some(victim) = victim {
                map.remove(&victim);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn throttle(max_sources: usize) -> SigninThrottle {
        SigninThrottle::new(SigninLimits {
            max_sources,
            ..SigninLimits::default()
        })
    }

    fn v4(last: u8) -> Source {
        Source::from(Some(IpAddr::from([192, 0, 2, last])))
    }

    #[test]
    fn the_wait_starts_after_the_free_failures_and_doubles_up_to_the_ceiling() {
        let t = throttle(16);
        let a = v4(1);
        let t0 = Instant::now();
        for _ in 0..4 {
            t.failed(a, t0);
            assert_eq!(t.check(a, t0), Ok(()), "free failures");
        }
        t.failed(a, t0);
        assert_eq!(t.check(a, t0), Err(SECOND));
        assert_eq!(t.check(a, t0 + SECOND), Ok(()), "the wait is over");
        t.failed(a, t0 + SECOND);
        assert_eq!(t.check(a, t0 + SECOND), Err(2 * SECOND));
        t.failed(a, t0 + SECOND);
        assert_eq!(t.check(a, t0 + SECOND), Err(4 * SECOND));
        for _ in 0..100 {
            t.failed(a, t0);
        }
        assert_eq!(t.check(a, t0), Err(Duration::from_secs(15 * 60)), "ceiling");
        assert_eq!(t.check(v4(2), t0), Ok(()), "other sources unaffected");
        t.succeeded(a);
        assert_eq!(t.check(a, t0), Ok(()), "success forgets");
    }

    #[test]
    fn an_ipv6_prefix_is_one_source_and_mapped_ipv4_is_ipv4() {
        let source = |text: &str| Source::from(Some(text.parse::<IpAddr>().unwrap()));
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(source("::ffff:192.0.2.1"), v4(1));
        assert_ne!(source("192.0.2.1"), Source::from(None));
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_sources_still_waiting() {
        let t = throttle(3);
        let t0 = Instant::now();
        // One blocked source, then a flood of single failures from others.
        for _ in 0..5 {
            t.failed(v4(1), t0);
        }
        for i in 2..100 {
            t.failed(v4(i), t0 + SECOND / 2);
        }
        assert_eq!(t.len(), 3);
        assert!(t.check(v4(1), t0).is_err(), "still waiting");
        // Long after, the stale entries make room without pushing out a waiting source.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..30 {
            t.failed(v4(1), later);
        }
        t.failed(v4(200), later);
        t.failed(v4(201), later);
        assert_eq!(t.len(), 3);
        assert!(t.check(v4(1), later).is_err());
    }
}
