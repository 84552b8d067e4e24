//! TPM devices over HTTPS (dps-protocol.md §5.2): the `tpm` member of their register body,
//! and [`TpmSessions`], which lets a TPM device poll with the token it registered with.
//!
//! A TPM device's SAS token is signed with the key of its challenge, which the registrar's
//! `TpmChallenges` forgets once the token is verified (single use). The SDKs send that same
//! token with every poll of the operation, so the register remembers, per registration id, a
//! digest of the verified token, its expiry, the attested device and the activation blob of
//! the device's hub key. A poll or status lookup that presents that token for that device is
//! the device's; a register never consults the sessions, so a replayed token cannot start a
//! registration. Bounded: one session per device (a newer register replaces it), at most
//! `max` in all (the oldest forgotten), each until its token expires.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use dps_attest::tpm::{seal_key, TpmKey, TpmKeyRole};
use dps_attest::{AttestedDevice, SasToken};
use dps_types::{SymmetricKey, TpmRegistrationResult};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::DeviceError;

/// The register body's `tpm` member: the TPM's two public keys, base64 `TPM2B_PUBLIC`s. Both
/// are required: the EK to check against the enrollment, the SRK to seal keys to.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TpmBody {
    pub(crate) endorsement_key: String,
    pub(crate) storage_root_key: String,
}

impl TpmBody {
    /// The `tpm` member of a register body.
    pub(crate) fn parse(value: &serde_json::Value) -> Result<Self, DeviceError> {
        TpmBody::deserialize(value).map_err(|_| DeviceError::TpmBodyInvalid)
    }

    /// The device's hub key (`AttestedDevice::hub_key`, which the assignment feed tells the
    /// hub) sealed to its TPM: the registration result's `tpm.authenticationKey`, which the
    /// device imports as it imported its challenge.
    pub(crate) fn seal_hub_key(
        &self,
        hub_key: &SymmetricKey,
    ) -> Result<TpmRegistrationResult, DeviceError> {
        let key = |role, text| TpmKey::from_base64(role, text);
        let sealed = key(TpmKeyRole::Endorsement, &self.endorsement_key)
            .and_then(|ek| {
                let srk = key(TpmKeyRole::StorageRoot, &self.storage_root_key)?;
                seal_key(&ek, &srk, hub_key)
            })
            .map_err(|e| {
                // The challenge parsed both keys already; only a device that sends other
                // keys with its answer gets here.
                tracing::debug!(error = %e, "TPM keys of an attested device do not seal");
                DeviceError::TpmBodyInvalid
            })?;
        Ok(TpmRegistrationResult {
            authentication_key: STANDARD.encode(sealed),
        })
    }
}

/// The TPM devices whose token was verified, by lower-cased registration id.
pub(crate) struct TpmSessions {
    max: usize,
    inner: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    by_id: HashMap<Box<str>, Session>,
    /// Insertion order: sequence number to id.
    order: BTreeMap<u64, Box<str>>,
    next_seq: u64,
}

struct Session {
    seq: u64,
    token_digest: [u8; 32],
    expires_unix: i64,
    device: Arc<AttestedDevice>,
    result: TpmRegistrationResult,
}

impl TpmSessions {
    /// At most `max` sessions (at least one).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            inner: Mutex::default(),
        }
    }

    /// Remembers that `token` (verified) proves `device`, whose hub key is sealed in `result`.
    pub(crate) fn insert(
        &self,
        token: &str,
        device: Arc<AttestedDevice>,
        result: TpmRegistrationResult,
    ) {
        // A verified token parses; an expiry of 0 only means the session is never used.
        let expires_unix = SasToken::parse(token).map_or(0, |t| t.expiry());
        let id: Box<str> = device
            .registration_id()
            .as_str()
            .to_ascii_lowercase()
            .into();
        let mut sessions = self.lock();
        sessions.remove(&id);
        while sessions.by_id.len() >= self.max {
            let Some((_, oldest)) = sessions.order.pop_first() else {
                break;
            };
            sessions.by_id.remove(&oldest);
        }
        let seq = sessions.next_seq;
        sessions.next_seq += 1;
        sessions.order.insert(seq, id.clone());
        sessions.by_id.insert(
            id,
            Session {
                seq,
                token_digest: digest(token),
                expires_unix,
                device,
                result,
            },
        );
    }

    /// The device `token` proves, if it is the unexpired token a TPM device claiming
    /// `registration_id` registered with, and its sealed hub key.
    pub(crate) fn recall(
        &self,
        token: &str,
        registration_id: &str,
        now_unix: i64,
    ) -> Option<(Arc<AttestedDevice>, TpmRegistrationResult)> {
        let id = registration_id.to_ascii_lowercase();
        let mut sessions = self.lock();
        let session = sessions.by_id.get(id.as_str())?;
        if session.expires_unix <= now_unix {
            sessions.remove(&id);
            return None;
        }
        bool::from(session.token_digest.ct_eq(&digest(token)))
            .then(|| (Arc::clone(&session.device), session.result.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // Consistent after every statement (none panics), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_id.len()
    }
}

impl Sessions {
    fn remove(&mut self, id: &str) {
        if let Some(session) = self.by_id.remove(id) {
            self.order.remove(&session.seq);
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use dps_attest::{prepare_individual, EnrollmentRules};
    use dps_test_util::MemoryLookup;
    use dps_types::{IdScope, IndividualEnrollment, Timestamp};
    use serde_json::json;

    use super::*;

    const SCOPE: &str = "0ne00000A1B";

    /// A device attested with a symmetric key (the sessions do not look at how).
    fn device(id: &str) -> Arc<AttestedDevice> {
        let key = SymmetricKey::generate();
        let enrollment: IndividualEnrollment = serde_json::from_value(json!({
            "registrationId": id,
            "attestation": {"type": "symmetricKey",
                "symmetricKey": {"primaryKey": key.expose_base64()}},
        }))
        .unwrap();
        let mut enrollment = prepare_individual(enrollment, &EnrollmentRules::default())
            .unwrap()
            .into_inner();
        enrollment.stamp(None, Timestamp::now());
        let lookup = MemoryLookup::new().with_enrollment(enrollment);
        let now = Timestamp::now().unix();
        let token =
            SasToken::generate(&format!("{SCOPE}/registrations/{id}"), &key, None, now + 60);
        let scope = IdScope::parse(SCOPE).unwrap();
        Arc::new(dps_attest::attest_sas(&token, &scope, id, &lookup, now).unwrap())
    }

    fn token(id: &str, expiry: i64) -> String {
        SasToken::generate(
            &format!("{SCOPE}/registrations/{id}"),
            &SymmetricKey::generate(),
            Some("registration"),
            expiry,
        )
    }

    fn result(tag: &str) -> TpmRegistrationResult {
        TpmRegistrationResult {
            authentication_key: tag.into(),
        }
    }

    #[test]
    fn only_the_registered_token_of_that_device_before_its_expiry_is_recalled() {
        let sessions = TpmSessions::new(8);
        let good = token("dev", 1_000);
        sessions.insert(&good, device("dev"), result("blob"));
        let (recalled, sealed) = sessions.recall(&good, "DEV", 999).unwrap();
        assert_eq!(recalled.registration_id().as_str(), "dev");
        assert_eq!(sealed.authentication_key, "blob");
        assert!(sessions.recall(&token("dev", 1_000), "dev", 999).is_none());
        assert!(sessions.recall(&good, "other", 999).is_none());
        assert!(sessions.recall(&good, "dev", 1_000).is_none());
        assert_eq!(sessions.len(), 0, "an expired session is forgotten");
    }

    #[test]
    fn a_new_register_replaces_the_session_and_the_oldest_is_pushed_out() {
        let sessions = TpmSessions::new(2);
        let first = token("a", 1_000);
        sessions.insert(&first, device("a"), result("1"));
        let second = token("a", 1_000);
        sessions.insert(&second, device("a"), result("2"));
        assert!(sessions.recall(&first, "a", 0).is_none());
        assert_eq!(
            sessions
                .recall(&second, "a", 0)
                .unwrap()
                .1
                .authentication_key,
            "2"
        );
        sessions.insert(&token("b", 1_000), device("b"), result("b"));
        sessions.insert(&token("c", 1_000), device("c"), result("c"));
        assert_eq!(sessions.len(), 2);
        assert!(
            sessions.recall(&second, "a", 0).is_none(),
            "oldest forgotten"
        );
    }
}
