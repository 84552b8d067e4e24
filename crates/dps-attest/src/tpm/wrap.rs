//! The TPM's protections, as TPM 2.0 Part 1 defines them for credentials (§24, MakeCredential)
//! and duplication (§23.3): KDFa, the symmetric wrapper (AES-128 CFB with a zero IV) and the
//! outer wrapper (a seed-derived "STORAGE" key encrypts, a seed-derived "INTEGRITY" HMAC binds
//! the ciphertext to an object's Name). Only SHA-256 and AES-128 are needed: [`TpmKey`] refuses
//! keys that name or protect with anything else.
//!
//! [`TpmKey`]: super::TpmKey

use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128};
use aws_lc_rs::hmac;
use sha2::{Digest, Sha256};

use super::marshal::Writer;
use crate::AttestError;

/// SHA-256 digest length: seeds, HMAC keys and integrity values.
pub(crate) const DIGEST_LEN: usize = 32;
/// AES-128 key length.
pub(crate) const AES_KEY_LEN: usize = 16;

/// KDFa (Part 1 §11.4.10.2) with HMAC-SHA256: fills `out` with
/// `HMAC(key, [i]32 || label || 0x00 || context_u || context_v || [bits]32)` for
/// `i = 1, 2, ...`, `bits` being `out`'s length in bits. `label` is given without its
/// terminating zero, which is added here.
pub(crate) fn kdfa(key: &[u8], label: &[u8], context_u: &[u8], context_v: &[u8], out: &mut [u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    // `out` is at most a few digests long, far below 2^32 bits.
    let bits = u32::try_from(out.len() * 8)
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    for (counter, chunk) in (1u32..).zip(out.chunks_mut(DIGEST_LEN)) {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits);
        let block = ctx.sign();
        // The last chunk may be shorter than a block: its leading bytes are used.
        for (byte, value) in chunk.iter_mut().zip(block.as_ref()) {
            *byte = *value;
        }
    }
}

/// Encrypts `data` in place with AES-128 in CFB mode and a zero IV, as the TPM's wrappers do
/// (every key is used once, so the IV carries nothing).
pub(crate) fn aes128_cfb(key: &[u8; AES_KEY_LEN], data: &mut [u8]) -> Result<(), AttestError> {
    let failed = |_| AttestError::TpmCrypto("AES-128-CFB encryption failed");
    let key = UnboundCipherKey::new(&AES_128, key).map_err(failed)?;
    let key = EncryptingKey::cfb128(key).map_err(failed)?;
    key.less_safe_encrypt(data, EncryptionContext::Iv128([0u8; 16].into()))
        .map_err(failed)?;
    Ok(())
}

/// SHA-256 over the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
    }
    hash.finalize().into()
}

/// The outer wrapper of `plaintext` for the object named `name`, under a protector that
/// decrypts `seed`: `TPM2B_DIGEST(HMAC(KDFa(seed, "INTEGRITY"), enc || name)) || enc` where
/// `enc = AES-128-CFB(KDFa(seed, "STORAGE", name), plaintext)`. For MakeCredential it is the
/// `TPMS_ID_OBJECT` (the protector is the EK, `name` the SRK's); for duplication the
/// `TPM2B_PRIVATE` contents (the protector is the new parent, `name` the duplicated key's).
pub(crate) fn outer_wrap(
    seed: &[u8; DIGEST_LEN],
    name: &[u8],
    mut plaintext: Vec<u8>,
) -> Result<Vec<u8>, AttestError> {
    let mut storage_key = [0u8; AES_KEY_LEN];
    kdfa(seed, b"STORAGE", name, &[], &mut storage_key);
    aes128_cfb(&storage_key, &mut plaintext)?;
    let mut integrity_key = [0u8; DIGEST_LEN];
    kdfa(seed, b"INTEGRITY", &[], &[], &mut integrity_key);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &integrity_key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&plaintext);
    ctx.update(name);
    let integrity = ctx.sign();
    let mut out = Writer::default();
    out.sized(integrity.as_ref())?.bytes(&plaintext);
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext};

    use super::*;

    #[test]
    fn kdfa_counts_blocks_and_binds_every_input() {
        let mut one = [0u8; 16];
        kdfa(b"seed", b"STORAGE", b"name", &[], &mut one);
        // The first block, cut to 128 bits: HMAC over [1] "STORAGE\0" "name" [128].
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"seed");
        let expected = hmac::sign(&key, b"\0\0\0\x01STORAGE\0name\0\0\0\x80");
        assert_eq!(one, expected.as_ref()[..16]);

        let mut two = [0u8; 48];
        kdfa(b"seed", b"STORAGE", b"name", &[], &mut two);
        let first = hmac::sign(&key, b"\0\0\0\x01STORAGE\0name\0\0\x01\x80");
        let second = hmac::sign(&key, b"\0\0\0\x02STORAGE\0name\0\0\x01\x80");
        assert_eq!(two[..32], first.as_ref()[..]);
        assert_eq!(two[32..], second.as_ref()[..16]);

        let mut other = [0u8; 16];
        kdfa(b"seed", b"INTEGRITY", b"name", &[], &mut other);
        assert_ne!(one, other);
    }

    #[test]
    fn aes_cfb_round_trips_with_a_zero_iv_and_keeps_the_length() {
        let key = [7u8; AES_KEY_LEN];
        let plaintext = b"an odd-length plaintext".to_vec();
        let mut data = plaintext.clone();
        aes128_cfb(&key, &mut data).unwrap();
        assert_eq!(data.len(), plaintext.len());
        assert_ne!(data, plaintext);
        let decrypting =
            DecryptingKey::cfb128(UnboundCipherKey::new(&AES_128, &key).unwrap()).unwrap();
        let out = decrypting
            .decrypt(&mut data, DecryptionContext::Iv128([0u8; 16].into()))
            .unwrap();
        assert_eq!(out, plaintext);
    }

    #[test]
    fn outer_wrap_starts_with_the_integrity_digest() {
        let seed = [1u8; DIGEST_LEN];
        let wrapped = outer_wrap(&seed, b"name", vec![0; 18]).unwrap();
        assert_eq!(wrapped.len(), 2 + DIGEST_LEN + 18);
        assert_eq!(wrapped[..2], [0, 32]);
        let other_name = outer_wrap(&seed, b"other", vec![0; 18]).unwrap();
        assert_ne!(wrapped[2..34], other_name[2..34], "the HMAC binds the name");
        assert_ne!(wrapped[34..], other_name[34..], "the key binds the name");
    }
}
