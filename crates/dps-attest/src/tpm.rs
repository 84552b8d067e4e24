//! TPM attestation (dps-protocol.md §5.2, §6, §9.4).
//!
//! A TPM device proves it holds the TPM whose endorsement key (EK) is enrolled by recovering a
//! key only that TPM can recover, and signing a SAS token with it inside the TPM:
//!
//! 1. [`TpmChallenges::challenge`]: the device's unauthenticated registration carries its EK
//!    and storage root key (SRK); once the EK matches its individual enrollment, a fresh
//!    HMAC-SHA256 key is sealed to the TPM ([`seal_key`]: TPM2 MakeCredential against the EK,
//!    bound to the SRK's Name, and a duplication of the key to the SRK) and remembered. DPS
//!    answers 401 with that activation blob.
//! 2. The device's TPM runs ActivateCredential and Import, loads the key and signs
//!    `{url-encoded sr}\n{expiry}` with it; the device registers again with that token.
//! 3. [`TpmChallenges::attest`] verifies the token against the remembered key, once.
//!
//! [`TpmKey`] parses the `TPM2B_PUBLIC`s (RSA 2048 storage keys only, as the Azure clients and
//! the TCG's default EK template make them); [`default_registration_id`] is the id a TPM
//! device uses when none is configured. Only KDFa and the TPM marshalling are written here;
//! RSA-OAEP, AES, HMAC and SHA-256 come from aws-lc-rs and RustCrypto.

mod activation;
mod challenge;
mod marshal;
mod public;
mod wrap;

use data_encoding::BASE32_NOPAD;
use dps_types::{EndorsementKey, RegistrationId, TypeError};

pub use activation::seal_key;
pub use challenge::{TpmChallenge, TpmChallengeLimits, TpmChallenges};
pub use public::{TpmKey, TpmKeyRole, MAX_TPM_PUBLIC_LEN};

/// The registration id a TPM device registers with when it is given none (Node
/// `TpmSecurityClient.getRegistrationId`, dps-protocol.md §5.2 item 1): the SHA-256 of the
/// EK's `TPM2B_PUBLIC` (as the device sends it), base32 (RFC 4648) without padding, lower
/// case. Its 52 characters of `a-z2-7` always fit the registration-id grammar, so the error is
/// only there because the id is built through [`RegistrationId::parse`].
pub fn default_registration_id(
    endorsement_key: &EndorsementKey,
) -> Result<RegistrationId, TypeError> {
    let digest = wrap::sha256(&[&endorsement_key.bytes()]);
    RegistrationId::parse(&BASE32_NOPAD.encode(&digest).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    use super::*;

    #[test]
    fn default_registration_id_is_lower_case_unpadded_base32_of_the_ek_hash() {
        // The EK of a swtpm, as tpm2_createek writes it; the expected id computed with
        // Python's base64.b32encode(hashlib.sha256(ek).digest()).
        let ek = EndorsementKey::parse(&STANDARD.encode(public::tests::SWTPM_EK)).unwrap();
        let id = default_registration_id(&ek).unwrap();
        assert_eq!(id.as_str().len(), 52);
        assert_eq!(id.as_str(), public::tests::SWTPM_EK_REGISTRATION_ID);
    }
}
