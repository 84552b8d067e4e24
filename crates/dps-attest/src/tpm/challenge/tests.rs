//! The challenge table's decisions and bounds. That the blob really yields the key inside a
//! TPM is `tests/swtpm.rs`'s job; here the key is read back from the table.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use dps_test_util::MemoryLookup;
use dps_types::SymmetricKey;

use super::*;
use crate::fixtures::{disabled_individual, sas_individual, tpm_individual};
use crate::sas::SasToken;
use crate::tpm::public::tests::{SWTPM_EK, SWTPM_SRK};

const NOW: i64 = 1_700_000_000;
const SCOPE: &str = "0ne00000A1B";

fn scope() -> IdScope {
    IdScope::parse(SCOPE).unwrap()
}

fn ek() -> String {
    STANDARD.encode(SWTPM_EK)
}

fn srk() -> String {
    STANDARD.encode(SWTPM_SRK)
}

/// The SRK standing in for another TPM's EK: a valid storage key that is not the enrolled one.
fn other_ek() -> String {
    srk()
}

fn lookup() -> MemoryLookup {
    MemoryLookup::new().with_enrollment(tpm_individual("tpm-device", SWTPM_EK))
}

impl TpmChallenges {
    /// The key pending for `id`, as the device's TPM would recover it.
    fn issued_key(&self, id: &str) -> SymmetricKey {
        self.lock().by_id.get(id).unwrap().key.clone()
    }
}

/// A token as the Node TPM client builds it: `sr` percent-encoded, `skn=registration`.
fn token(id: &str, key: &SymmetricKey, expiry: i64) -> String {
    SasToken::generate(
        &format!("{SCOPE}/registrations/{id}"),
        key,
        Some(TpmChallenge::KEY_NAME),
        expiry,
    )
}

fn refused<T: std::fmt::Debug>(result: Result<T, Refusal>, reason: FailureReason) -> String {
    let refusal = result.expect_err("should have been refused");
    assert_eq!(refusal.reason, reason, "{}", refusal.detail);
    refusal.detail
}

#[test]
fn the_answer_signed_with_the_sealed_key_attests_once() {
    let (table, lookup) = (TpmChallenges::default(), lookup());
    let challenge = table
        .challenge("tpm-device", &ek(), &srk(), &lookup, NOW)
        .unwrap();
    let blob = STANDARD.decode(challenge.authentication_key()).unwrap();
    // 2+52 credential, 2+256 secret, 2+142 duplicate, 2+256 seed, 2+48 public, 2 URI data.
    assert_eq!(blob.len(), 766);
    assert_eq!(table.len(), 1);

    let key = table.issued_key("tpm-device");
    let password = token("tpm-device", &key, NOW + 3600);
    let device = table
        .attest(
            &password,
            &scope(),
            "tpm-device",
            Some(&ek()),
            &lookup,
            NOW + 5,
        )
        .unwrap();
    assert_eq!(device.method(), AttestationType::Tpm);
    assert_eq!(device.registration_id().as_str(), "tpm-device");
    assert!(
        matches!(device.enrollment(), MatchedEnrollment::Individual(e) if e.registration_id.as_str() == "tpm-device")
    );
    assert!(table.is_empty());

    let detail = refused(
        table.attest(
            &password,
            &scope(),
            "tpm-device",
            Some(&ek()),
            &lookup,
            NOW + 6,
        ),
        FailureReason::TpmChallengeUnknown,
    );
    assert!(detail.contains("used already"), "{detail}");
}

#[test]
fn registration_ids_match_in_any_case_and_the_ek_may_be_left_out() {
    let (table, lookup) = (TpmChallenges::default(), lookup());
    table
        .challenge("TPM-Device", &ek(), &srk(), &lookup, NOW)
        .unwrap();
    let key = table.issued_key("tpm-device");
    let device = table
        .attest(
            &token("tpm-device", &key, NOW + 60),
            &scope(),
            "tpm-device",
            None,
            &lookup,
            NOW,
        )
        .unwrap();
    assert_eq!(device.registration_id().as_str(), "tpm-device");
}

#[test]
fn a_disabled_enrollment_is_attested_and_the_registrar_decides() {
    let table = TpmChallenges::default();
    let lookup = MemoryLookup::new()
        .with_enrollment(disabled_individual(tpm_individual("tpm-device", SWTPM_EK)));
    table
        .challenge("tpm-device", &ek(), &srk(), &lookup, NOW)
        .unwrap();
    let key = table.issued_key("tpm-device");
    let device = table
        .attest(
            &token("tpm-device", &key, NOW + 60),
            &scope(),
            "tpm-device",
            None,
            &lookup,
            NOW,
        )
        .unwrap();
    assert!(!device.enrollment().is_enabled());
}

#[test]
fn challenges_are_refused_before_anything_is_sealed() {
    let (table, lookup) = (TpmChallenges::default(), lookup());
    let detail = refused(
        table.challenge("tpm-device", &other_ek(), &srk(), &lookup, NOW),
        FailureReason::TpmEndorsementKeyMismatch,
    );
    assert_eq!(
        detail,
        "the endorsement key the device sent is not the endorsement key of individual \
         enrollment 'tpm-device'"
    );
    refused(
        table.challenge("unknown", &ek(), &srk(), &lookup, NOW),
        FailureReason::NoEnrollment,
    );
    refused(
        table.challenge("bad id/", &ek(), &srk(), &lookup, NOW),
        FailureReason::RegistrationIdInvalid,
    );
    let detail = refused(
        table.challenge("tpm-device", "AAAA", &srk(), &lookup, NOW),
        FailureReason::TpmKeyInvalid,
    );
    assert!(detail.starts_with("the TPM endorsement key"), "{detail}");
    let detail = refused(
        table.challenge("tpm-device", &ek(), "%%%", &lookup, NOW),
        FailureReason::TpmKeyInvalid,
    );
    assert_eq!(detail, "the TPM storage root key is not valid base64");
    let sas = MemoryLookup::new().with_enrollment(sas_individual(
        "tpm-device",
        &SymmetricKey::generate(),
        &SymmetricKey::generate(),
    ));
    let detail = refused(
        table.challenge("tpm-device", &ek(), &srk(), &sas, NOW),
        FailureReason::WrongAttestationType,
    );
    assert!(detail.contains("uses symmetricKey attestation"), "{detail}");
    assert!(table.is_empty());
}

#[test]
fn a_token_signed_with_another_key_is_refused_and_the_challenge_stays() {
    let (table, lookup) = (TpmChallenges::default(), lookup());
    table
        .challenge("tpm-device", &ek(), &srk(), &lookup, NOW)
        .unwrap();
    let forged = token("tpm-device", &SymmetricKey::generate(), NOW + 60);
    refused(
        table.attest(&forged, &scope(), "tpm-device", None, &lookup, NOW),
        FailureReason::TpmSignatureInvalid,
    );
    let key = table.issued_key("tpm-device");
    table
        .attest(
            &token("tpm-device", &key, NOW + 60),
            &scope(),
            "tpm-device",
            None,
            &lookup,
            NOW,
        )
        .unwrap();
}

#[test]
fn answers_are_checked_like_every_device_token() {
    let (table, lookup) = (TpmChallenges::default(), lookup());
    table
        .challenge("tpm-device", &ek(), &srk(), &lookup, NOW)
        .unwrap();
    let key = table.issued_key("tpm-device");
    refused(
        table.attest("Bearer x", &scope(), "tpm-device", None, &lookup, NOW),
        FailureReason::SasMalformed,
    );
    refused(
        table.attest(
            &token("tpm-device", &key, NOW - 3600),
            &scope(),
            "tpm-device",
            None,
            &lookup,
            NOW,
        ),
        FailureReason::SasExpired,
    );
    refused(
        table.attest(
            &token("other", &key, NOW + 60),
            &scope(),
            "tpm-device",
            None,
            &lookup,
            NOW,
        ),
        FailureReason::SasWrongResource,
    );
    let good = token("tpm-device", &key, NOW + 60);
    refused(
        table.attest(
            &good,
            &scope(),
            "tpm-device",
            Some(&other_ek()),
            &lookup,
            NOW,
        ),
        FailureReason::TpmEndorsementKeyMismatch,
    );
    refused(
        table.attest(&good, &scope(), "tpm-device", Some("%%%"), &lookup, NOW),
        FailureReason::TpmKeyInvalid,
    );
    // None of these used the challenge up.
    table
        .attest(&good, &scope(), "tpm-device", Some(&ek()), &lookup, NOW)
        .unwrap();
}

#[test]
fn an_expired_challenge_is_refused_and_forgotten() {
    let (table, lookup) = (TpmChallenges::default(), lookup());
    table
        .challenge("tpm-device", &ek(), &srk(), &lookup, NOW)
        .unwrap();
    let key = table.issued_key("tpm-device");
    let expires = NOW + table.limits().lifetime_secs;
    let password = token("tpm-device", &key, expires + 3600);
    let detail = refused(
        table.attest(&password, &scope(), "tpm-device", None, &lookup, expires),
        FailureReason::TpmChallengeUnknown,
    );
    assert_eq!(
        detail,
        format!(
            "the challenge for 'tpm-device' expired at {expires} (now {expires}; seconds since \
             the Unix epoch)"
        )
    );
    assert!(table.is_empty());
}

#[test]
fn a_new_challenge_replaces_the_pending_one() {
    let (table, lookup) = (TpmChallenges::default(), lookup());
    table
        .challenge("tpm-device", &ek(), &srk(), &lookup, NOW)
        .unwrap();
    let first = table.issued_key("tpm-device");
    table
        .challenge("tpm-device", &ek(), &srk(), &lookup, NOW + 1)
        .unwrap();
    assert_eq!(table.len(), 1);
    refused(
        table.attest(
            &token("tpm-device", &first, NOW + 60),
            &scope(),
            "tpm-device",
            None,
            &lookup,
            NOW + 2,
        ),
        FailureReason::TpmSignatureInvalid,
    );
    let second = table.issued_key("tpm-device");
    table
        .attest(
            &token("tpm-device", &second, NOW + 60),
            &scope(),
            "tpm-device",
            None,
            &lookup,
            NOW + 2,
        )
        .unwrap();
}

#[test]
fn a_challenge_sealed_to_an_ek_that_is_no_longer_enrolled_is_refused() {
    let table = TpmChallenges::default();
    table
        .challenge("tpm-device", &ek(), &srk(), &lookup(), NOW)
        .unwrap();
    let key = table.issued_key("tpm-device");
    // The operator re-enrolled the id with another TPM meanwhile.
    let reenrolled = MemoryLookup::new().with_enrollment(tpm_individual("tpm-device", SWTPM_SRK));
    let detail = refused(
        table.attest(
            &token("tpm-device", &key, NOW + 60),
            &scope(),
            "tpm-device",
            None,
            &reenrolled,
            NOW,
        ),
        FailureReason::TpmEndorsementKeyMismatch,
    );
    assert!(
        detail.starts_with("the endorsement key the pending challenge"),
        "{detail}"
    );
}

/// 100,000 registrations that never answer their challenge: the table holds at most
/// `max_pending`, forgetting the oldest, and a late answer to a forgotten one is refused.
#[test]
fn abandoned_challenges_stay_bounded() {
    let limits = TpmChallengeLimits {
        max_pending: 1_000,
        lifetime_secs: 300,
    };
    let table = TpmChallenges::new(limits);
    let key = SymmetricKey::generate();
    for n in 0..100_000i64 {
        // What `challenge` does once the blob is built (the RSA work is not what is bounded),
        // the clock advancing a second every 100 registrations.
        let id = format!("abandoned-{n}").into();
        let mut pending = table.lock();
        pending.insert(id, key.clone(), [0; 32], NOW + n / 100, &limits);
        assert!(pending.by_id.len() <= limits.max_pending);
        assert_eq!(pending.by_id.len(), pending.order.len());
    }
    assert_eq!(table.len(), 1_000);
    // A real challenge still gets in, and the oldest abandoned one made room.
    let lookup = lookup();
    table
        .challenge("tpm-device", &ek(), &srk(), &lookup, NOW + 1_000)
        .unwrap();
    assert_eq!(table.len(), 1_000);
    assert!(table.lock().by_id.contains_key("abandoned-99999"));
    assert!(!table.lock().by_id.contains_key("abandoned-99000"));
    // Once they have all expired, the next challenge forgets them all.
    let later = NOW + 100_000;
    table
        .challenge("tpm-device", &ek(), &srk(), &lookup, later)
        .unwrap();
    assert_eq!(table.len(), 1);
}
