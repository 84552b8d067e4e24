//! [`TpmChallenges`]: the TPM challenge and its answer (dps-protocol.md §5.2, §6).
//!
//! A TPM device first registers without credentials, sending its endorsement key (EK) and
//! storage root key (SRK). [`TpmChallenges::challenge`] checks the EK against the device's
//! individual TPM enrollment, seals a fresh HMAC key to the device's TPM (the activation blob)
//! and remembers the key. The device's TPM recovers the key, signs a SAS token with it, and the
//! device registers again; [`TpmChallenges::attest`] verifies that token against the remembered
//! key and yields the [`AttestedDevice`].
//!
//! The table is bounded: a challenge lives [`TpmChallengeLimits::lifetime_secs`], is used once
//! (a verified token removes it), and beyond [`TpmChallengeLimits::max_pending`] the oldest is
//! forgotten, so abandoned registrations cannot grow it. A new challenge for a registration id
//! replaces the pending one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use dps_types::{
    Attestation, AttestationType, EnrollmentLookup, IdScope, IndividualEnrollment, RegistrationId,
    SymmetricKey,
};

use super::activation::seal_key;
use super::public::{decode_base64, TpmKey, TpmKeyRole};
use super::wrap::sha256;
use crate::refusal::{parse_claimed_id, quoted};
use crate::symmetric_key::checked_device_token;
use crate::{AttestedDevice, FailureReason, MatchedEnrollment, Refusal};

/// Length of the HMAC key sealed to a device: one SHA-256 digest.
const CHALLENGE_KEY_LEN: usize = 32;

/// Bounds of the pending challenges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpmChallengeLimits {
    /// Most challenges pending at once; beyond, the oldest is forgotten. Default 65,536: a
    /// pending challenge takes 288 bytes with a 22-character registration id (the `tpm`
    /// bench) and twice each further character, so at most about 32 MiB with 128-character
    /// ids.
    pub max_pending: usize,
    /// Seconds a challenge may be answered after it was issued. Default 300: a real TPM takes
    /// seconds for ActivateCredential and Import, and the device may retry slowly.
    pub lifetime_secs: i64,
}

impl Default for TpmChallengeLimits {
    fn default() -> Self {
        Self {
            max_pending: 65_536,
            lifetime_secs: 300,
        }
    }
}

/// What a TPM device is answered with before it can authenticate: DPS's 401 body
/// `{"message", "authenticationKey", "keyName"}` (or, over AMQP, the SASL challenge).
#[derive(Clone)]
pub struct TpmChallenge {
    authentication_key: String,
}

impl TpmChallenge {
    /// The `keyName` DPS sends; the C client puts it in the token's `skn`.
    pub const KEY_NAME: &'static str = "registration";

    /// The activation blob, base64 (`authenticationKey`).
    pub fn authentication_key(&self) -> &str {
        &self.authentication_key
    }
}

impl std::fmt::Debug for TpmChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmChallenge")
            .field("authentication_key_len", &self.authentication_key.len())
            .finish()
    }
}

/// The pending TPM challenges, by registration id. Shared by every frontend that speaks TPM
/// (`&self` methods; one short lock per call, taken after the RSA work).
pub struct TpmChallenges {
    limits: TpmChallengeLimits,
    pending: Mutex<Pending>,
}

/// One issued, unanswered challenge.
struct Entry {
    /// Its place in [`Pending::order`].
    seq: u64,
    key: SymmetricKey,
    expires_unix: i64,
    /// SHA-256 of the `TPM2B_PUBLIC` of the EK the key was sealed to.
    ek_digest: [u8; 32],
}

#[derive(Default)]
struct Pending {
    /// By lower-cased registration id (ids match in any letter case).
    by_id: HashMap<Box<str>, Entry>,
    /// Issue order (so also expiry order): sequence number to id.
    order: BTreeMap<u64, Box<str>>,
    next_seq: u64,
}

impl Pending {
    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.by_id.remove(id)?;
        self.order.remove(&entry.seq);
        Some(entry)
    }

    /// Adds the challenge of `id`, replacing its pending one; expired and, beyond
    /// `max_pending`, the oldest challenges are forgotten first.
    fn insert(
        &mut self,
        id: Box<str>,
        key: SymmetricKey,
        ek_digest: [u8; 32],
        now_unix: i64,
        limits: &TpmChallengeLimits,
    ) {
        self.remove(&id);
        self.prune(now_unix, limits.max_pending.saturating_sub(1));
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, id.clone());
        let expires_unix = now_unix.saturating_add(limits.lifetime_secs);
        self.by_id.insert(
            id,
            Entry {
                seq,
                key,
                expires_unix,
                ek_digest,
            },
        );
    }

    /// Forgets expired challenges, and the oldest while more than `keep` remain.
    fn prune(&mut self, now_unix: i64, keep: usize) {
        while let Some(entry) = self.order.first_entry() {
            let expired = self
                .by_id
                .get(entry.get())
                .is_none_or(|e| e.expires_unix <= now_unix);
            if !expired && self.by_id.len() <= keep {
                break;
            }
            let id = entry.remove();
            self.by_id.remove(&id);
        }
    }
}

impl TpmChallenges {
    /// An empty table with these bounds (a `max_pending` of 0 counts as 1).
    pub fn new(limits: TpmChallengeLimits) -> Self {
        Self {
            limits: TpmChallengeLimits {
                max_pending: limits.max_pending.max(1),
                ..limits
            },
            pending: Mutex::default(),
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> TpmChallengeLimits {
        self.limits
    }

    /// How many challenges are pending (expired ones included until the next challenge
    /// prunes them).
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers an unauthenticated TPM registration: the device claims `claimed_registration_id`
    /// and sends `endorsement_key` and `storage_root_key` (base64 `TPM2B_PUBLIC`s, as in the
    /// register body's `tpm` member or the AMQP SASL exchange).
    ///
    /// Refused, without sealing anything: an invalid id ([`FailureReason::RegistrationIdInvalid`]);
    /// a key that does not parse or is not an RSA 2048 storage key
    /// ([`FailureReason::TpmKeyInvalid`]); no individual enrollment with that id
    /// ([`FailureReason::NoEnrollment`]; DPS groups do not support TPM), one of another
    /// attestation type ([`FailureReason::WrongAttestationType`]) or with another EK
    /// ([`FailureReason::TpmEndorsementKeyMismatch`]). A disabled enrollment still gets its
    /// challenge: as for every attestation, the registrar decides what disabled means.
    ///
    /// Cost: two RSA-2048 public-key encryptions and a few hashes (see the `tpm` bench).
    pub fn challenge(
        &self,
        claimed_registration_id: &str,
        endorsement_key: &str,
        storage_root_key: &str,
        lookup: &dyn EnrollmentLookup,
        now_unix: i64,
    ) -> Result<TpmChallenge, Refusal> {
        let registration_id = parse_claimed_id(claimed_registration_id)?;
        let ek = parse_key(TpmKeyRole::Endorsement, endorsement_key)?;
        let srk = parse_key(TpmKeyRole::StorageRoot, storage_root_key)?;
        let (_, enrolled_digest) = tpm_enrollment(&registration_id, lookup)?;
        let ek_digest = sha256(&[ek.tpm2b_public()]);
        if ek_digest != enrolled_digest {
            return Err(ek_mismatch(
                &registration_id,
                "the endorsement key the device sent",
            ));
        }

        let key = SymmetricKey::from_bytes(&rand::random::<[u8; CHALLENGE_KEY_LEN]>())
            .map_err(|e| Refusal::new(FailureReason::TpmKeyInvalid, e.to_string()))?;
        let blob = seal_key(&ek, &srk, &key)
            .map_err(|e| Refusal::new(FailureReason::TpmKeyInvalid, e.to_string()))?;

        let id = registration_id.as_str().to_ascii_lowercase().into();
        self.lock()
            .insert(id, key, ek_digest, now_unix, &self.limits);
        Ok(TpmChallenge {
            authentication_key: STANDARD.encode(blob),
        })
    }

    /// Attests a TPM device by the SAS token of its second registration (`Authorization` over
    /// HTTPS, the last SASL response over AMQP), signed inside its TPM with the key of its
    /// challenge. `endorsement_key` is the EK the request carries, when it carries one.
    ///
    /// Checks, in order: the token as for every device ([`FailureReason::SasMalformed`],
    /// [`FailureReason::RegistrationIdInvalid`], [`FailureReason::SasExpired`],
    /// [`FailureReason::SasWrongResource`]); the individual TPM enrollment as for a challenge,
    /// and that the EK sent, if any, is its EK; a challenge is pending and unexpired at
    /// `now_unix` ([`FailureReason::TpmChallengeUnknown`]) and was sealed to that same EK
    /// ([`FailureReason::TpmEndorsementKeyMismatch`]); the token is signed with its key
    /// ([`FailureReason::TpmSignatureInvalid`]; the challenge stays, so a stranger's token
    /// cannot cancel it). A verified token uses the challenge up: the same token, or any other,
    /// is then refused as [`FailureReason::TpmChallengeUnknown`]. The device gets a fresh
    /// 64-byte [`AttestedDevice::hub_key`] for its IoT hub.
    pub fn attest(
        &self,
        password: &str,
        id_scope: &IdScope,
        claimed_registration_id: &str,
        endorsement_key: Option<&str>,
        lookup: &dyn EnrollmentLookup,
        now_unix: i64,
    ) -> Result<AttestedDevice, Refusal> {
        let (token, registration_id) =
            checked_device_token(password, id_scope, claimed_registration_id, now_unix)?;
        let (enrollment, enrolled_digest) = tpm_enrollment(&registration_id, lookup)?;
        if let Some(text) = endorsement_key {
            // Compared, not parsed: the pending challenge was sealed to a parsed EK, and this
            // one only has to be the enrolled one.
            let ek = decode_base64(TpmKeyRole::Endorsement, text)
                .map_err(|e| Refusal::new(FailureReason::TpmKeyInvalid, e.to_string()))?;
            if sha256(&[&ek]) != enrolled_digest {
                return Err(ek_mismatch(
                    &registration_id,
                    "the endorsement key the device sent",
                ));
            }
        }

        let id = registration_id.as_str().to_ascii_lowercase();
        let mut pending = self.lock();
        let Some(entry) = pending.by_id.get(id.as_str()) else {
            return Err(Refusal::new(
                FailureReason::TpmChallengeUnknown,
                format!(
                    "no challenge is pending for {}: none was issued, it was used already, or \
                     it expired (challenges live {} s)",
                    quoted(registration_id.as_str()),
                    self.limits.lifetime_secs
                ),
            ));
        };
        if entry.expires_unix <= now_unix {
            let expired = entry.expires_unix;
            pending.remove(&id);
            return Err(Refusal::new(
                FailureReason::TpmChallengeUnknown,
                format!(
                    "the challenge for {} expired at {expired} (now {now_unix}; seconds since \
                     the Unix epoch)",
                    quoted(registration_id.as_str())
                ),
            ));
        }
        if entry.ek_digest != enrolled_digest {
            return Err(ek_mismatch(
                &registration_id,
                "the endorsement key the pending challenge was sealed to",
            ));
        }
        if token.verify_signature(&entry.key).is_err() {
            return Err(Refusal::new(
                FailureReason::TpmSignatureInvalid,
                format!(
                    "the token is not signed with the key sealed to the TPM of {}",
                    quoted(registration_id.as_str())
                ),
            ));
        }
        pending.remove(&id);
        drop(pending);
        Ok(AttestedDevice::new(
            registration_id,
            MatchedEnrollment::Individual(enrollment),
            AttestationType::Tpm,
            None,
            None,
        )
        .with_hub_key(SymmetricKey::generate()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The table is consistent after every statement that can panic (none should), so a
        // poisoned lock holds usable data.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for TpmChallenges {
    fn default() -> Self {
        Self::new(TpmChallengeLimits::default())
    }
}

impl std::fmt::Debug for TpmChallenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmChallenges")
            .field("limits", &self.limits)
            .field("pending", &self.len())
            .finish()
    }
}

fn parse_key(role: TpmKeyRole, text: &str) -> Result<TpmKey, Refusal> {
    TpmKey::from_base64(role, text)
        .map_err(|e| Refusal::new(FailureReason::TpmKeyInvalid, e.to_string()))
}

/// The individual TPM enrollment of `id`, and the SHA-256 of its EK's `TPM2B_PUBLIC`.
fn tpm_enrollment(
    id: &RegistrationId,
    lookup: &dyn EnrollmentLookup,
) -> Result<(std::sync::Arc<IndividualEnrollment>, [u8; 32]), Refusal> {
    let Some(enrollment) = lookup.enrollment(id.as_str()) else {
        return Err(Refusal::new(
            FailureReason::NoEnrollment,
            format!(
                "no individual enrollment has registration id {} (TPM devices need one; \
                 enrollment groups do not support TPM)",
                quoted(id.as_str())
            ),
        ));
    };
    let Attestation::Tpm(tpm) = &enrollment.attestation else {
        return Err(Refusal::new(
            FailureReason::WrongAttestationType,
            format!(
                "individual enrollment {} uses {} attestation, but the device uses TPM",
                quoted(enrollment.registration_id.as_str()),
                enrollment.attestation.kind()
            ),
        ));
    };
    let digest = sha256(&[&tpm.endorsement_key.bytes()]);
    Ok((enrollment, digest))
}

fn ek_mismatch(id: &RegistrationId, which: &str) -> Refusal {
    Refusal::new(
        FailureReason::TpmEndorsementKeyMismatch,
        format!(
            "{which} is not the endorsement key of individual enrollment {}",
            quoted(id.as_str())
        ),
    )
}

#[cfg(test)]
mod tests;
