//! TPM attestation against a real software TPM (`swtpm` + `tpm2-tools`): the activation blob
//! `TpmChallenges` builds is activated, imported and loaded inside the TPM exactly as the
//! Azure TPM clients do it, the TPM signs the SAS token, and the challenge table verifies it.
//! Each refusal names its precise reason.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use dps_attest::{
    prepare_individual, EnrollmentRules, FailureReason, TpmChallengeLimits, TpmChallenges,
};
use dps_test_util::swtpm::{self, split, SoftwareTpm};
use dps_test_util::MemoryLookup;
use dps_types::{AttestationType, IdScope, IndividualEnrollment, Timestamp};
use serde_json::json;

const SCOPE: &str = "0ne00000A1B";
const DEVICE: &str = "swtpm-device";

/// An individual TPM enrollment of `DEVICE` with this EK, as the service API stores it.
fn enrollment(endorsement_key: &[u8]) -> MemoryLookup {
    let enrollment: IndividualEnrollment = serde_json::from_value(json!({
        "registrationId": DEVICE,
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": STANDARD.encode(endorsement_key)}},
    }))
    .unwrap();
    let mut enrollment = prepare_individual(enrollment, &EnrollmentRules::default())
        .unwrap()
        .into_inner();
    enrollment.stamp(None, Timestamp::now());
    MemoryLookup::new().with_enrollment(enrollment)
}

/// The token the Node TPM client builds, signed in `tpm` with the loaded key `key`.
fn tpm_token(tpm: &SoftwareTpm, key: &std::path::Path, expiry: i64) -> String {
    tpm.sas_token(key, SCOPE, DEVICE, expiry)
}

fn challenge_blob(
    table: &TpmChallenges,
    tpm: &SoftwareTpm,
    lookup: &MemoryLookup,
    now: i64,
) -> Vec<u8> {
    let challenge = table
        .challenge(
            DEVICE,
            &STANDARD.encode(tpm.endorsement_key()),
            &STANDARD.encode(tpm.storage_root_key()),
            lookup,
            now,
        )
        .unwrap();
    STANDARD.decode(challenge.authentication_key()).unwrap()
}

#[test]
fn a_software_tpm_answers_its_challenge_and_registers_once() {
    let tpm = SoftwareTpm::start();
    let lookup = enrollment(&tpm.endorsement_key());
    let table = TpmChallenges::default();
    let scope = IdScope::parse(SCOPE).unwrap();
    let now = Timestamp::now().unix();
    let ek = STANDARD.encode(tpm.endorsement_key());

    let blob = challenge_blob(&table, &tpm, &lookup, now);
    let parts = split(&blob);
    let inner_wrap_key = tpm.activate_credential(&parts).unwrap();
    assert_eq!(inner_wrap_key.len(), 16, "an AES-128 inner wrap key");
    let id_key = tpm.import_and_load(&parts, &inner_wrap_key).unwrap();
    let password = tpm_token(&tpm, &id_key, now + 3600);

    let device = table
        .attest(&password, &scope, DEVICE, Some(&ek), &lookup, now + 1)
        .unwrap();
    assert_eq!(device.method(), AttestationType::Tpm);
    assert_eq!(device.registration_id().as_str(), DEVICE);

    // The same answer again: the challenge was used up.
    let refusal = table
        .attest(&password, &scope, DEVICE, Some(&ek), &lookup, now + 2)
        .unwrap_err();
    assert_eq!(
        refusal.reason,
        FailureReason::TpmChallengeUnknown,
        "{refusal}"
    );
}

#[test]
fn a_software_tpm_is_refused_with_the_precise_reason() {
    let tpm = SoftwareTpm::start();
    let lookup = enrollment(&tpm.endorsement_key());
    let limits = TpmChallengeLimits::default();
    let table = TpmChallenges::new(limits);
    let scope = IdScope::parse(SCOPE).unwrap();
    let now = Timestamp::now().unix();

    // Enrolled with another TPM's endorsement key: no challenge is sealed at all.
    let other = SoftwareTpm::start();
    let refusal = table
        .challenge(
            DEVICE,
            &STANDARD.encode(tpm.endorsement_key()),
            &STANDARD.encode(tpm.storage_root_key()),
            &enrollment(&other.endorsement_key()),
            now,
        )
        .unwrap_err();
    assert_eq!(
        refusal.reason,
        FailureReason::TpmEndorsementKeyMismatch,
        "{refusal}"
    );
    assert!(table.is_empty());

    // A token signed inside the TPM, but with a key DPS did not seal.
    let blob = challenge_blob(&table, &tpm, &lookup, now);
    let own_key = tpm.own_hmac_key();
    let refusal = table
        .attest(
            &tpm_token(&tpm, &own_key, now + 3600),
            &scope,
            DEVICE,
            None,
            &lookup,
            now,
        )
        .unwrap_err();
    assert_eq!(
        refusal.reason,
        FailureReason::TpmSignatureInvalid,
        "{refusal}"
    );

    // The right key, but the answer comes after the challenge's lifetime.
    let parts = split(&blob);
    let inner_wrap_key = tpm.activate_credential(&parts).unwrap();
    let id_key = tpm.import_and_load(&parts, &inner_wrap_key).unwrap();
    let late = now + limits.lifetime_secs;
    let password = tpm_token(&tpm, &id_key, late + 3600);
    let refusal = table
        .attest(&password, &scope, DEVICE, None, &lookup, late)
        .unwrap_err();
    assert_eq!(
        refusal.reason,
        FailureReason::TpmChallengeUnknown,
        "{refusal}"
    );
    assert!(refusal.detail.contains("expired"), "{refusal}");

    // A tampered blob fails inside the TPM: a flipped bit of the credential's ciphertext
    // breaks its integrity HMAC, one of the duplicate breaks the import.
    let blob = challenge_blob(&table, &tpm, &lookup, now);
    let mut tampered = blob.clone();
    let last_of_credential = split(&blob).credential_blob.len() - 1;
    tampered[last_of_credential] ^= 0x01;
    let failure = tpm.activate_credential(&split(&tampered)).unwrap_err();
    assert!(failure.contains("integrity"), "{failure}");
    let parts = split(&blob);
    let inner_wrap_key = tpm.activate_credential(&parts).unwrap();
    let mut duplicate = parts.duplicate.to_vec();
    *duplicate.last_mut().unwrap() ^= 0x01;
    let tampered = swtpm::BlobParts {
        duplicate: &duplicate,
        ..parts
    };
    let failure = tpm.import_and_load(&tampered, &inner_wrap_key).unwrap_err();
    assert!(failure.contains("tpm2_import failed"), "{failure}");
    assert!(failure.contains("integrity"), "{failure}");
    // Untampered, the same blob still works, once.
    let id_key = tpm.import_and_load(&parts, &inner_wrap_key).unwrap();
    let password = tpm_token(&tpm, &id_key, now + 3600);
    table
        .attest(&password, &scope, DEVICE, None, &lookup, now)
        .unwrap();
}
