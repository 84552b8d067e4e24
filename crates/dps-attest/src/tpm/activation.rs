//! The activation blob DPS answers a TPM device with (`authenticationKey`, dps-protocol.md
//! §5.2 item 3), in the layout the Azure TPM clients unmarshal (C `hsm_client_tpm.c`
//! `insert_key_in_tpm`, Node `tpm.ts` `_activateIdentityKey`):
//!
//! ```text
//! TPM2B_ID_OBJECT        credentialBlob   MakeCredential(EK, credential = inner wrap key, SRK Name)
//! TPM2B_ENCRYPTED_SECRET encryptedSecret  RSA-OAEP(EK, seed, "IDENTITY\0")
//! TPM2B_PRIVATE          idKeyDupBlob     the identity key, duplicated to the SRK
//! TPM2B_ENCRYPTED_SECRET encWrapKey       RSA-OAEP(SRK, seed, "DUPLICATE\0")
//! TPM2B_PUBLIC           idKeyPublic      a keyed-hash (HMAC-SHA256) key
//! UINT16 + bytes         encUriData       empty
//! ```
//!
//! The device runs `TPM2_ActivateCredential(SRK, EK)` to get the inner wrap key, then
//! `TPM2_Import(SRK, innerWrapKey, idKeyPublic, idKeyDupBlob, encWrapKey, AES-128-CFB)` and
//! loads the identity key, with which its TPM signs SAS tokens. Only a TPM holding both the
//! EK's and the SRK's private parts gets that far.

use dps_types::SymmetricKey;

use super::marshal::Writer;
use super::public::{TpmKey, ALG_SHA256, NAME_LEN};
use super::wrap::{aes128_cfb, outer_wrap, sha256, AES_KEY_LEN, DIGEST_LEN};
use crate::AttestError;

/// `TPM_ALG_KEYEDHASH`.
const ALG_KEYEDHASH: u16 = 0x0008;
/// `TPM_ALG_HMAC`.
const ALG_HMAC: u16 = 0x0005;
/// The identity key's attributes: `userWithAuth` (the clients sign with an empty password
/// session), `noDA`, `sign`. `fixedTPM` and `fixedParent` are clear, as Import requires.
const ID_KEY_ATTRIBUTES: u32 = (1 << 6) | (1 << 10) | (1 << 18);
/// The OAEP labels of the two seeds, with the terminating zero the TPM includes.
const IDENTITY_LABEL: &[u8] = b"IDENTITY\0";
const DUPLICATE_LABEL: &[u8] = b"DUPLICATE\0";

/// Builds the activation blob that makes `key` an HMAC-SHA256 key inside the TPM that holds
/// `ek` and `srk` (and nowhere else). Every seed and the inner wrap key are fresh randomness.
///
/// `key` must be at most 64 bytes (a [`SymmetricKey`] is), the HMAC-SHA256 block size a TPM
/// accepts for a keyed-hash signing key.
pub fn seal_key(ek: &TpmKey, srk: &TpmKey, key: &SymmetricKey) -> Result<Vec<u8>, AttestError> {
    let inner_wrap_key: [u8; AES_KEY_LEN] = rand::random();

    // MakeCredential: the credential is the inner wrap key, bound to the SRK's Name.
    let credential_seed: [u8; DIGEST_LEN] = rand::random();
    let encrypted_secret = ek.encrypt_seed(&credential_seed, IDENTITY_LABEL)?;
    let mut credential = Writer::default();
    credential.sized(&inner_wrap_key)?;
    let id_object = outer_wrap(&credential_seed, srk.name(), credential.into_bytes())?;

    // The identity key: its public and sensitive areas, and its Name.
    let obfuscation: [u8; DIGEST_LEN] = rand::random();
    let public = keyed_hash_public(&sha256(&[&obfuscation, key.bytes()]))?;
    let mut name = [0u8; NAME_LEN];
    let (alg, digest) = name.split_at_mut(2);
    alg.copy_from_slice(&ALG_SHA256.to_be_bytes());
    digest.copy_from_slice(&sha256(&[&public]));
    let mut sensitive = Writer::default();
    sensitive
        .u16(ALG_KEYEDHASH)
        .sized(&[])? // authValue: none
        .sized(&obfuscation)? // seedValue
        .sized(key.bytes())?; // sensitive: the HMAC key
    let mut tpm2b_sensitive = Writer::default();
    tpm2b_sensitive.sized(&sensitive.into_bytes())?;
    let tpm2b_sensitive = tpm2b_sensitive.into_bytes();

    // Duplication, inner wrapper: integrity = H(TPM2B_SENSITIVE || Name), then the integrity
    // and the sensitive area encrypted with the inner wrap key.
    let mut inner = Writer::default();
    inner
        .sized(&sha256(&[&tpm2b_sensitive, &name]))?
        .bytes(&tpm2b_sensitive);
    let mut inner = inner.into_bytes();
    aes128_cfb(&inner_wrap_key, &mut inner)?;
    // Outer wrapper, to the SRK.
    let duplication_seed: [u8; DIGEST_LEN] = rand::random();
    let enc_wrap_key = srk.encrypt_seed(&duplication_seed, DUPLICATE_LABEL)?;
    let duplicate = outer_wrap(&duplication_seed, &name, inner)?;

    let mut blob = Writer::default();
    blob.sized(&id_object)?
        .sized(&encrypted_secret)?
        .sized(&duplicate)?
        .sized(&enc_wrap_key)?
        .sized(&public)?
        .sized(&[])?; // encUriData
    Ok(blob.into_bytes())
}

/// The identity key's `TPMT_PUBLIC`: keyed hash, SHA-256 names, HMAC-SHA256 scheme, no
/// policy; `unique` is `H(seedValue || key)`, which the TPM checks on import.
fn keyed_hash_public(unique: &[u8; DIGEST_LEN]) -> Result<Vec<u8>, AttestError> {
    let mut public = Writer::default();
    public
        .u16(ALG_KEYEDHASH)
        .u16(ALG_SHA256)
        .u32(ID_KEY_ATTRIBUTES)
        .sized(&[])? // authPolicy
        .u16(ALG_HMAC)
        .u16(ALG_SHA256)
        .sized(unique)?;
    Ok(public.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm::marshal::Reader;
    use crate::tpm::public::tests::{swtpm_ek, swtpm_srk};

    /// Splits a blob as the C client's `insert_key_in_tpm` does: five `TPM2B`s and a sized
    /// `encUriData`, nothing after.
    fn split(blob: &[u8]) -> [&[u8]; 6] {
        let mut r = Reader::new(blob, "blob");
        let parts = std::array::from_fn(|_| r.sized().unwrap());
        r.finish().unwrap();
        parts
    }

    #[test]
    fn blob_has_the_layout_the_clients_unmarshal() {
        let (ek, srk) = (swtpm_ek(), swtpm_srk());
        let key = SymmetricKey::from_bytes(&[9; 32]).unwrap();
        let blob = seal_key(&ek, &srk, &key).unwrap();
        let [id_object, secret, duplicate, wrap_key, public, uri_data] = split(&blob);
        // TPMS_ID_OBJECT: a 32-byte HMAC, then the encrypted TPM2B_DIGEST of 16 bytes (what
        // tpm2_makecredential produces for a 16-byte secret).
        assert_eq!(id_object.len(), 2 + 32 + 2 + 16);
        assert_eq!(secret.len(), 256);
        assert_eq!(wrap_key.len(), 256);
        // HMAC, then inner integrity and TPM2B_SENSITIVE(type, auth, seed, key).
        assert_eq!(duplicate.len(), (2 + 32) + (2 + 32) + 2 + (2 + 2 + 34 + 34));
        assert!(uri_data.is_empty());
        // The public area: keyed hash, SHA-256, sign|noDA|userWithAuth, HMAC-SHA256.
        assert_eq!(public[..12], [0, 8, 0, 0x0b, 0, 4, 4, 0x40, 0, 0, 0, 5][..]);
        assert_eq!(public[12..14], [0, 0x0b]);
        assert_eq!(public[14..16], [0, 32]);
    }

    #[test]
    fn every_blob_is_fresh() {
        let (ek, srk) = (swtpm_ek(), swtpm_srk());
        let key = SymmetricKey::from_bytes(&[9; 32]).unwrap();
        let a = seal_key(&ek, &srk, &key).unwrap();
        let b = seal_key(&ek, &srk, &key).unwrap();
        let (a, b) = (split(&a), split(&b));
        for (x, y) in a.iter().zip(b.iter()).take(5) {
            assert_ne!(x, y, "seeds and the obfuscation value are random");
        }
    }
}
