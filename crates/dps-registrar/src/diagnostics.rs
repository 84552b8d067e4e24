//! Failed registration attempts with their precise reasons — what no device is told (it only
//! sees DPS's generic 401 or a failed status) but an operator needs. Kept in memory, bounded,
//! queryable per registration id and counted per reason.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use dashmap::DashMap;
use dps_types::Timestamp;
use serde::Serialize;

// Memory bound: an attempt is about 64 B plus its detail (at most MAX_DETAIL_BYTES), so at
// most about 320 B. Authenticated tier: 20,000 ids x 16 attempts x 320 B = 100 MiB worst case
// (about 30 MiB with typical 60-byte details), and only ids of real devices get there.
// Unauthenticated tier: 10,000 ids x 4 attempts x 320 B = 12.5 MiB worst case, whatever a
// flood of made-up ids sends.

/// Attempts kept per registration id that has authenticated (the most recent ones): enough
/// to see a device's retries across a few back-off rounds.
const ATTEMPTS_PER_AUTHENTICATED_ID: usize = 16;
/// Registration ids that authenticated at least once kept at once (least recently failed
/// ones are evicted): a fleet's worth of devices failing at the same time.
const MAX_AUTHENTICATED_IDS: usize = 20_000;
/// Attempts kept per id that only unauthenticated claimants used: the latest few show what a
/// claimant tried; more would let a flood cost 4x the memory for no insight.
const ATTEMPTS_PER_UNAUTHENTICATED_ID: usize = 4;
/// Ids only claimed without authenticating kept at once (least recently seen evicted): the
/// newest of a flood stay visible, its volume is in the per-reason counts.
const MAX_UNAUTHENTICATED_IDS: usize = 10_000;
/// Longest detail kept, in bytes: the registrar's and attestation's details are one sentence.
const MAX_DETAIL_BYTES: usize = 256;
/// Longest key kept: registration ids are at most 128 characters.
const MAX_ID_CHARS: usize = 128;

/// The transport an attempt came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TLS.
    Mqtt,
    /// AMQP.
    Amqp,
    /// HTTPS device API.
    Https,
}

/// Reasons the registrar itself refuses or fails a registration (attestation reasons come
/// from `dps_attest::FailureReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrarReason {
    /// The matched enrollment or group is disabled.
    EnrollmentDisabled,
    /// No hub could be chosen.
    NoHub,
    /// The custom allocation webhook failed.
    WebhookFailed,
    /// The assignment feed's broker did not confirm the assignment's event (link down,
    /// refused or too slow): the device is asked to retry.
    BrokerUnavailable,
}

impl RegistrarReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [RegistrarReason; 3] = [
        RegistrarReason::EnrollmentDisabled,
        RegistrarReason::NoHub,
        RegistrarReason::WebhookFailed,
    ];

    /// Stable metric label.
    pub fn label(self) -> &'static str {
        match self {
            RegistrarReason::EnrollmentDisabled => "enrollment_disabled",
            RegistrarReason::NoHub => "no_hub",
            RegistrarReason::WebhookFailed => "webhook_failed",
            RegistrarReason::BrokerUnavailable => "broker_unavailable",
        }
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedAttempt {
    /// When.
    pub time_utc: Timestamp,
    /// Over which transport.
    pub transport: Transport,
    /// Stable reason label, e.g. `sas_signature_mismatch`.
    pub reason: &'static str,
    /// Precise explanation for the operator (never a key or signature).
    pub detail: String,
}

/// Bounded per-device history and per-reason counters. Ids live in two least-recently-used
/// tiers: ids that authenticated at least once, and ids only claimed by attempts that did not
/// authenticate, so a flood of made-up ids only evicts its own kind.
pub struct Diagnostics {
    tiers: Mutex<Tiers>,
    counts: DashMap<&'static str, AtomicU64>,
}

struct Tiers {
    authenticated: Tier,
    unauthenticated: Tier,
}

impl Default for Diagnostics {
    fn default() -> Self {
        Self {
            tiers: Mutex::new(Tiers {
                authenticated: Tier::new(MAX_AUTHENTICATED_IDS, ATTEMPTS_PER_AUTHENTICATED_ID),
                unauthenticated: Tier::new(
                    MAX_UNAUTHENTICATED_IDS,
                    ATTEMPTS_PER_UNAUTHENTICATED_ID,
                ),
            }),
            counts: DashMap::new(),
        }
    }
}

impl Diagnostics {
    /// Records a failure of a claimant that has not authenticated, for `registration_id` (any
    /// spelling; stored lower-case). It joins the id's history when the id has authenticated
    /// before, else the unauthenticated tier.
    pub fn record(&self, registration_id: &str, attempt: FailedAttempt) {
        let attempt = self.count(attempt);
        let key = key(registration_id);
        let mut tiers = self.tiers();
        if tiers.authenticated.contains(&key) {
            tiers.authenticated.push(key, attempt);
        } else {
            tiers.unauthenticated.push(key, attempt);
        }
    }

    /// Records a failure of a device that authenticated as `registration_id`: the id moves to
    /// (or stays in) the authenticated tier, with the history it had.
    pub fn record_authenticated(&self, registration_id: &str, attempt: FailedAttempt) {
        let attempt = self.count(attempt);
        let key = key(registration_id);
        let mut tiers = self.tiers();
        if let Some(before) = tiers.unauthenticated.remove(&key) {
            tiers.authenticated.insert(key.clone(), before);
        }
        tiers.authenticated.push(key, attempt);
    }

    /// The recent failed attempts of a registration id, oldest first.
    pub fn attempts(&self, registration_id: &str) -> Vec<FailedAttempt> {
        let key = key(registration_id);
        let tiers = self.tiers();
        tiers
            .authenticated
            .get(&key)
            .or_else(|| tiers.unauthenticated.get(&key))
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a registration id's attempts (e.g. when its registration record is deleted).
    pub fn forget(&self, registration_id: &str) {
        let key = key(registration_id);
        let mut tiers = self.tiers();
        tiers.authenticated.remove(&key);
        tiers.unauthenticated.remove(&key);
    }

    /// Failures counted per reason label since start, sorted by label.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .counts
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Counts the attempt's reason and bounds its detail.
    fn count(&self, mut attempt: FailedAttempt) -> FailedAttempt {
        self.counts
            .entry(attempt.reason)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        if attempt.detail.len() > MAX_DETAIL_BYTES {
            let mut end = MAX_DETAIL_BYTES;
            while !attempt.detail.is_char_boundary(end) {
                end -= 1;
            }
            attempt.detail.truncate(end);
        }
        attempt
    }

    /// The tiers; a panic elsewhere while holding the lock leaves them consistent (every
    /// update is complete before it returns), so a poisoned lock is used as is.
    fn tiers(&self) -> std::sync::MutexGuard<'_, Tiers> {
        self.tiers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stored form of a registration id: bounded and lower-case.
fn key(registration_id: &str) -> Box<str> {
    registration_id
        .chars()
        .take(MAX_ID_CHARS)
        .collect::<String>()
        .to_ascii_lowercase()
        .into_boxed_str()
}

/// A bounded map from ids to their recent attempts that evicts the least recently recorded
/// id when full.
struct Tier {
    max_ids: usize,
    per_id: usize,
    /// Increases with every recording; an entry's stamp orders it in `order`.
    clock: u64,
    ids: HashMap<Box<str>, Entry>,
    /// Stamp to id, oldest first.
    order: BTreeMap<u64, Box<str>>,
}

struct Entry {
    stamp: u64,
    attempts: VecDeque<FailedAttempt>,
}

impl Tier {
    fn new(max_ids: usize, per_id: usize) -> Self {
        Self {
            max_ids,
            per_id,
            clock: 0,
            ids: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.ids.contains_key(key)
    }

    fn get(&self, key: &str) -> Option<&VecDeque<FailedAttempt>> {
        self.ids.get(key).map(|e| &e.attempts)
    }

    /// Appends an attempt to the id's history (dropping its oldest beyond the bound) and makes
    /// it the most recently used id.
    fn push(&mut self, key: Box<str>, attempt: FailedAttempt) {
        let mut attempts = self.remove(&key).unwrap_or_default();
        attempts.push_back(attempt);
        self.insert(key, attempts);
    }

    fn remove(&mut self, key: &str) -> Option<VecDeque<FailedAttempt>> {
        let entry = self.ids.remove(key)?;
        self.order.remove(&entry.stamp);
        Some(entry.attempts)
    }

    /// Inserts an id that is not present as the most recently used, evicting the least
    /// recently used ones beyond the bound.
    fn insert(&mut self, key: Box<str>, mut attempts: VecDeque<FailedAttempt>) {
        while attempts.len() > self.per_id {
            attempts.pop_front();
        }
        while self.ids.len() >= self.max_ids {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.ids.remove(&oldest);
        }
        self.clock += 1;
        self.order.insert(self.clock, key.clone());
        self.ids.insert(
            key,
            Entry {
                stamp: self.clock,
                attempts,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(reason: &'static str) -> FailedAttempt {
        FailedAttempt {
            time_utc: Timestamp::now(),
            transport: Transport::Mqtt,
            reason,
            detail: String::new(),
        }
    }

    fn entries(d: &Diagnostics) -> (usize, usize) {
        let t = d.tiers();
        (t.authenticated.ids.len(), t.unauthenticated.ids.len())
    }

    #[test]
    fn keeps_the_most_recent_attempts_per_device_and_counts_all() {
        let d = Diagnostics::default();
        for _ in 0..20 {
            d.record_authenticated("Dev-1", attempt("sas_expired"));
        }
        d.record("dev-1", attempt("no_enrollment"));
        let list = d.attempts("DEV-1");
        assert_eq!(list.len(), ATTEMPTS_PER_AUTHENTICATED_ID);
        assert_eq!(list.last().map(|a| a.reason), Some("no_enrollment"));
        assert_eq!(d.counts(), vec![("no_enrollment", 1), ("sas_expired", 20)]);
        for _ in 0..20 {
            d.record("stranger", attempt("no_enrollment"));
        }
        assert_eq!(
            d.attempts("stranger").len(),
            ATTEMPTS_PER_UNAUTHENTICATED_ID
        );
    }

    #[test]
    fn a_flood_of_unauthenticated_ids_keeps_the_newest_and_spares_authenticated_history() {
        let d = Diagnostics::default();
        d.record("dev-ok", attempt("sas_signature_mismatch"));
        d.record_authenticated("dev-ok", attempt("no_hub"));
        let flood = 3 * MAX_UNAUTHENTICATED_IDS;
        for i in 0..flood {
            d.record(&format!("made-up-{i:x}"), attempt("no_enrollment"));
        }
        let history: Vec<_> = d.attempts("dev-ok").iter().map(|a| a.reason).collect();
        assert_eq!(history, ["sas_signature_mismatch", "no_hub"]);
        assert_eq!(entries(&d), (1, MAX_UNAUTHENTICATED_IDS));
        for newest in flood - MAX_UNAUTHENTICATED_IDS..flood {
            assert_eq!(d.attempts(&format!("made-up-{newest:x}")).len(), 1);
        }
        assert!(d.attempts("made-up-0").is_empty());
        assert!(d
            .attempts(&format!(
                "made-up-{:x}",
                flood - MAX_UNAUTHENTICATED_IDS - 1
            ))
            .is_empty());
        assert_eq!(
            d.counts(),
            vec![
                ("no_enrollment", flood as u64),
                ("no_hub", 1),
                ("sas_signature_mismatch", 1)
            ]
        );
        // A refusal of an id that authenticated before joins its history.
        d.record("DEV-OK", attempt("sas_expired"));
        assert_eq!(d.attempts("dev-ok").len(), 3);
    }

    #[test]
    fn authenticated_ids_are_evicted_least_recently_used_first() {
        let d = Diagnostics::default();
        for i in 0..MAX_AUTHENTICATED_IDS {
            d.record_authenticated(&format!("d{i}"), attempt("no_hub"));
        }
        d.record_authenticated("d0", attempt("webhook_failed"));
        d.record_authenticated("newcomer", attempt("no_hub"));
        assert_eq!(entries(&d), (MAX_AUTHENTICATED_IDS, 0));
        assert_eq!(d.attempts("d0").len(), 2, "recently used, kept");
        assert!(d.attempts("d1").is_empty(), "least recently used, evicted");
        assert_eq!(d.attempts("newcomer").len(), 1);
        d.forget("newcomer");
        assert!(d.attempts("newcomer").is_empty());
    }

    #[test]
    fn long_details_are_cut_at_a_character_boundary() {
        let d = Diagnostics::default();
        let mut long = attempt("no_hub");
        long.detail = "é".repeat(MAX_DETAIL_BYTES);
        d.record("x", long);
        let kept = &d.attempts("x")[0].detail;
        assert!(kept.len() <= MAX_DETAIL_BYTES && kept.len() > MAX_DETAIL_BYTES - 2);
    }
}
