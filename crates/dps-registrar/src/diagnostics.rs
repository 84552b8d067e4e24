//! Failed registration attempts with their precise reasons — what no device is told (it only
//! sees DPS's generic 401 or a failed status) but an operator needs. Kept in memory, bounded,
//! queryable per registration id and counted per reason.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dps_types::Timestamp;
use serde::Serialize;

/// Attempts kept per registration id (the most recent ones).
const ATTEMPTS_PER_DEVICE: usize = 16;
/// Registration ids tracked at once; beyond this, new ids are counted but not kept, so a flood
/// of made-up ids cannot grow memory without bound (about 16 × 200 B × 100k = 320 MB worst case
/// would be too much, so 20k ids ≈ 64 MB at most).
const MAX_DEVICES: usize = 20_000;

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
}

impl RegistrarReason {
    /// Stable metric label.
    pub fn label(self) -> &'static str {
        match self {
            RegistrarReason::EnrollmentDisabled => "enrollment_disabled",
            RegistrarReason::NoHub => "no_hub",
            RegistrarReason::WebhookFailed => "webhook_failed",
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

/// Bounded per-device history and per-reason counters.
#[derive(Default)]
pub struct Diagnostics {
    attempts: DashMap<Box<str>, VecDeque<FailedAttempt>>,
    counts: DashMap<&'static str, AtomicU64>,
}

impl Diagnostics {
    /// Records a failure for `registration_id` (any spelling; stored lower-case).
    pub fn record(&self, registration_id: &str, attempt: FailedAttempt) {
        self.counts
            .entry(attempt.reason)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        let key = registration_id
            .chars()
            .take(128)
            .collect::<String>()
            .to_ascii_lowercase();
        if let Some(mut list) = self.attempts.get_mut(key.as_str()) {
            if list.len() == ATTEMPTS_PER_DEVICE {
                list.pop_front();
            }
            list.push_back(attempt);
            return;
        }
        if self.attempts.len() < MAX_DEVICES {
            self.attempts.insert(key.into(), VecDeque::from([attempt]));
        }
    }

    /// The recent failed attempts of a registration id, oldest first.
    pub fn attempts(&self, registration_id: &str) -> Vec<FailedAttempt> {
        self.attempts
            .get(registration_id.to_ascii_lowercase().as_str())
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a registration id's attempts (e.g. when its registration record is deleted).
    pub fn forget(&self, registration_id: &str) {
        self.attempts
            .remove(registration_id.to_ascii_lowercase().as_str());
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

    #[test]
    fn keeps_the_most_recent_attempts_per_device_and_counts_all() {
        let d = Diagnostics::default();
        for _ in 0..20 {
            d.record("Dev-1", attempt("sas_expired"));
        }
        d.record("dev-1", attempt("no_enrollment"));
        let list = d.attempts("DEV-1");
        assert_eq!(list.len(), ATTEMPTS_PER_DEVICE);
        assert_eq!(list.last().map(|a| a.reason), Some("no_enrollment"));
        assert_eq!(d.counts(), vec![("no_enrollment", 1), ("sas_expired", 20)]);
    }

    #[test]
    fn device_count_is_bounded() {
        let d = Diagnostics::default();
        for i in 0..MAX_DEVICES + 10 {
            d.record(&format!("d{i}"), attempt("no_enrollment"));
        }
        assert_eq!(d.attempts.len(), MAX_DEVICES);
        assert_eq!(
            d.counts(),
            vec![("no_enrollment", (MAX_DEVICES + 10) as u64)]
        );
    }
}
