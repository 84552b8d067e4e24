//! [`TpmKey`]: a device's endorsement key (EK) or storage root key (SRK), parsed from the
//! `TPM2B_PUBLIC` the device sends, and what the activation blob needs from it: its TPM Name
//! and RSA-OAEP encryption of a seed.

use aws_lc_rs::rsa::{
    OaepPublicEncryptingKey, PublicEncryptingKey, PublicKeyComponents, OAEP_SHA256_MGF1SHA256,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::marshal::Reader;
use crate::AttestError;

/// `TPM_ALG_RSA`.
pub(crate) const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_SHA256`.
pub(crate) const ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_AES`.
const ALG_AES: u16 = 0x0006;
/// `TPM_ALG_CFB`.
const ALG_CFB: u16 = 0x0043;
/// `TPM_ALG_NULL`.
const ALG_NULL: u16 = 0x0010;

/// `TPMA_OBJECT.restricted`.
const ATTR_RESTRICTED: u32 = 1 << 16;
/// `TPMA_OBJECT.decrypt`.
const ATTR_DECRYPT: u32 = 1 << 17;
/// `TPMA_OBJECT.sign`.
const ATTR_SIGN: u32 = 1 << 18;

/// The one key size accepted: RSA 2048, what the Azure TPM clients' EK and SRK templates and
/// the TCG's default EK template create.
const RSA_BITS: u16 = 2048;
const MODULUS_LEN: usize = RSA_BITS as usize / 8;
/// The RSA exponent a `TPMS_RSA_PARMS.exponent` of 0 stands for.
const DEFAULT_EXPONENT: u32 = 65_537;
/// The symmetric key size of the key's protections (AES-128 CFB).
const SYMMETRIC_BITS: u16 = 128;
/// Longest `TPM2B_PUBLIC` parsed. An RSA 2048 storage key with a SHA-512 policy is under 400
/// bytes.
pub const MAX_TPM_PUBLIC_LEN: usize = 1024;
/// Length of a SHA-256 TPM Name: the algorithm id, then the digest.
pub(crate) const NAME_LEN: usize = 2 + 32;

/// Which of the device's keys a [`TpmKey`] is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TpmKeyRole {
    /// The endorsement key (`tpm.endorsementKey`): MakeCredential encrypts to it.
    Endorsement,
    /// The storage root key (`tpm.storageRootKey`): the identity key is imported under it.
    StorageRoot,
}

impl TpmKeyRole {
    fn noun(self) -> &'static str {
        match self {
            TpmKeyRole::Endorsement => "endorsement key",
            TpmKeyRole::StorageRoot => "storage root key",
        }
    }
}

/// An RSA 2048 restricted decryption key of a TPM (an EK or an SRK) whose name algorithm is
/// SHA-256 and whose symmetric protection is AES-128 CFB: the keys the Azure TPM clients create
/// and send. Anything else is refused when parsed, so building an activation blob for it
/// cannot fail halfway.
#[derive(Clone)]
pub struct TpmKey {
    role: TpmKeyRole,
    /// The `TPM2B_PUBLIC` as sent.
    tpm2b: Vec<u8>,
    /// `nameAlg || SHA-256(TPMT_PUBLIC)`.
    name: [u8; NAME_LEN],
    encrypting: PublicEncryptingKey,
}

impl TpmKey {
    /// Parses a marshalled `TPM2B_PUBLIC` (at most [`MAX_TPM_PUBLIC_LEN`] bytes, nothing after
    /// it).
    pub fn parse(role: TpmKeyRole, tpm2b_public: &[u8]) -> Result<Self, AttestError> {
        let what = role.noun();
        if tpm2b_public.len() > MAX_TPM_PUBLIC_LEN {
            return Err(AttestError::TpmKeyInvalid {
                key: what,
                why: format!(
                    "is {} bytes long; at most {MAX_TPM_PUBLIC_LEN} are accepted",
                    tpm2b_public.len()
                ),
            });
        }
        let mut outer = Reader::new(tpm2b_public, what);
        let public = outer.sized()?;
        outer.finish()?;

        let mut r = Reader::new(public, what);
        let kind = r.u16()?;
        if kind != ALG_RSA {
            return Err(r.invalid(format!(
                "is not an RSA key (type 0x{kind:04x}); only RSA 2048 is supported"
            )));
        }
        let name_alg = r.u16()?;
        if name_alg != ALG_SHA256 {
            return Err(r.invalid(format!(
                "has name algorithm 0x{name_alg:04x}; only SHA-256 (0x000b) is supported"
            )));
        }
        let attributes = r.u32()?;
        if attributes & (ATTR_RESTRICTED | ATTR_DECRYPT | ATTR_SIGN)
            != ATTR_RESTRICTED | ATTR_DECRYPT
        {
            return Err(r.invalid(format!(
                "is not a restricted decryption key (attributes 0x{attributes:08x})"
            )));
        }
        let _auth_policy = r.sized()?;
        let (sym, sym_bits, sym_mode) = (r.u16()?, r.u16()?, r.u16()?);
        if (sym, sym_bits, sym_mode) != (ALG_AES, SYMMETRIC_BITS, ALG_CFB) {
            return Err(r.invalid(
                "does not protect with AES-128 in CFB mode, the only symmetric scheme supported",
            ));
        }
        let scheme = r.u16()?;
        if scheme != ALG_NULL {
            return Err(r.invalid(format!(
                "has an RSA scheme (0x{scheme:04x}); a storage key has none"
            )));
        }
        let bits = r.u16()?;
        if bits != RSA_BITS {
            return Err(r.invalid(format!("has {bits} bits; only RSA 2048 is supported")));
        }
        let exponent = match r.u32()? {
            0 => DEFAULT_EXPONENT,
            e => e,
        };
        let modulus = r.sized()?;
        r.finish()?;
        if modulus.len() != MODULUS_LEN || modulus.first().is_none_or(|&b| b < 0x80) {
            return Err(AttestError::TpmKeyInvalid {
                key: what,
                why: "has a modulus that is not 2048 bits long".into(),
            });
        }
        let exponent = exponent.to_be_bytes();
        let first = exponent.iter().position(|&b| b != 0).unwrap_or(3);
        let components = PublicKeyComponents {
            n: modulus,
            e: exponent.get(first..).unwrap_or(&[]),
        };
        let encrypting: PublicEncryptingKey =
            components
                .try_into()
                .map_err(|_| AttestError::TpmKeyInvalid {
                    key: what,
                    why: "is not a usable RSA public key".into(),
                })?;

        let mut name = [0u8; NAME_LEN];
        let (alg, digest) = name.split_at_mut(2);
        alg.copy_from_slice(&ALG_SHA256.to_be_bytes());
        digest.copy_from_slice(&Sha256::digest(public));
        Ok(Self {
            role,
            tpm2b: tpm2b_public.to_vec(),
            name,
            encrypting,
        })
    }

    /// Decodes base64 (as `tpm.endorsementKey` and `tpm.storageRootKey` carry it) and parses.
    pub fn from_base64(role: TpmKeyRole, text: &str) -> Result<Self, AttestError> {
        Self::parse(role, &decode_base64(role, text)?)
    }

    /// Which key this is.
    pub fn role(&self) -> TpmKeyRole {
        self.role
    }

    /// The `TPM2B_PUBLIC` as the device sent it.
    pub fn tpm2b_public(&self) -> &[u8] {
        &self.tpm2b
    }

    /// The TPM Name: `TPM_ALG_SHA256 || SHA-256(TPMT_PUBLIC)`, what `tpm2_readpublic -n`
    /// prints and what a credential is bound to.
    pub fn name(&self) -> &[u8; NAME_LEN] {
        &self.name
    }

    /// `seed` encrypted to this key with RSA-OAEP (SHA-256, the key's name algorithm) and
    /// `label` (which must include its terminating zero byte, as the TPM's labels do): the
    /// `TPM2B_ENCRYPTED_SECRET` contents the TPM decrypts in ActivateCredential ("IDENTITY")
    /// or Import ("DUPLICATE").
    pub(crate) fn encrypt_seed(
        &self,
        seed: &[u8],
        label: &[u8],
    ) -> Result<[u8; MODULUS_LEN], AttestError> {
        let failed = || AttestError::TpmKeyInvalid {
            key: self.role.noun(),
            why: "refused RSA-OAEP encryption".into(),
        };
        let oaep = OaepPublicEncryptingKey::new(self.encrypting.clone()).map_err(|_| failed())?;
        let mut out = [0u8; MODULUS_LEN];
        let written = oaep
            .encrypt(&OAEP_SHA256_MGF1SHA256, seed, &mut out, Some(label))
            .map_err(|_| failed())?
            .len();
        if written != MODULUS_LEN {
            return Err(failed());
        }
        Ok(out)
    }
}

/// The bytes of a base64 key, refused unread beyond the base64 length of
/// [`MAX_TPM_PUBLIC_LEN`] bytes.
pub(crate) fn decode_base64(role: TpmKeyRole, text: &str) -> Result<Vec<u8>, AttestError> {
    let max_text = MAX_TPM_PUBLIC_LEN.div_ceil(3) * 4;
    let invalid = |why: String| AttestError::TpmKeyInvalid {
        key: role.noun(),
        why,
    };
    let text = text.trim();
    if text.len() > max_text {
        return Err(invalid(format!(
            "is {} characters of base64; at most {max_text} are accepted",
            text.len()
        )));
    }
    STANDARD
        .decode(text)
        .map_err(|_| invalid("is not valid base64".into()))
}

impl std::fmt::Debug for TpmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmKey")
            .field("role", &self.role)
            .field("name", &hex::encode(self.name))
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests;
