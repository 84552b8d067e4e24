//! Parsing the keys of a real software TPM (swtpm 0.7, tpm2-tools 5.4; `tests/data/`): the EK
//! from `tpm2_createek -G rsa` and the SRK from `tpm2_createprimary` with the Azure clients'
//! SRK template, whose Names must be the ones `tpm2_readpublic -n` printed for them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::*;

/// `tpm2_createek -G rsa -u ek.pub`.
pub(crate) const SWTPM_EK: &[u8] = include_bytes!("../../../tests/data/swtpm-ek.pub");
/// `tpm2_readpublic -c 0x81010001 -n ek.name`.
const SWTPM_EK_NAME: &str = "000b9bfd7cfa5b1e57e97325abafbdf23c7780ede1d489a1139cb0f59797c2cdae08";
/// `base64.b32encode(hashlib.sha256(ek).digest()).decode().lower().rstrip("=")`.
pub(crate) const SWTPM_EK_REGISTRATION_ID: &str =
    "3tpcgufkqomccnqtyssdglgqizjxvmeawfkvdpzwddtletkuv6zq";

/// `tpm2_createprimary -C o -g sha256 -G rsa2048:null:aes128cfb -a
/// 'restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda'`, then
/// `tpm2_readpublic -o srk.pub`.
pub(crate) const SWTPM_SRK: &[u8] = include_bytes!("../../../tests/data/swtpm-srk.pub");
/// `tpm2_readpublic -n srk.name`.
const SWTPM_SRK_NAME: &str = "000b2ac67a6a3fdf89a434f9a12785d0515a27c1eb603d2d7315c0c3f437a430792d";

pub(crate) fn swtpm_ek() -> TpmKey {
    TpmKey::parse(TpmKeyRole::Endorsement, SWTPM_EK).unwrap()
}

pub(crate) fn swtpm_srk() -> TpmKey {
    TpmKey::parse(TpmKeyRole::StorageRoot, SWTPM_SRK).unwrap()
}

/// `SWTPM_SRK` with its `TPMT_PUBLIC` changed by `edit` and the size field kept right.
fn edited_srk(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut public = SWTPM_SRK[2..].to_vec();
    edit(&mut public);
    let mut out = u16::try_from(public.len()).unwrap().to_be_bytes().to_vec();
    out.extend(public);
    out
}

fn refused(bytes: &[u8]) -> String {
    TpmKey::parse(TpmKeyRole::StorageRoot, bytes)
        .unwrap_err()
        .to_string()
}

#[test]
fn names_match_what_the_tpm_computes() {
    assert_eq!(hex::encode(swtpm_ek().name()), SWTPM_EK_NAME);
    assert_eq!(hex::encode(swtpm_srk().name()), SWTPM_SRK_NAME);
    assert_eq!(swtpm_srk().tpm2b_public(), SWTPM_SRK);
    assert_eq!(swtpm_ek().role(), TpmKeyRole::Endorsement);
}

#[test]
fn base64_form_parses_and_is_bounded() {
    let text = STANDARD.encode(SWTPM_EK);
    let key = TpmKey::from_base64(TpmKeyRole::Endorsement, &text).unwrap();
    assert_eq!(hex::encode(key.name()), SWTPM_EK_NAME);
    let err = TpmKey::from_base64(TpmKeyRole::Endorsement, "not base64!")
        .unwrap_err()
        .to_string();
    assert_eq!(err, "the TPM endorsement key is not valid base64");
    let huge = "A".repeat(10_000);
    let err = TpmKey::from_base64(TpmKeyRole::Endorsement, &huge)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 1368 are accepted"), "{err}");
}

#[test]
fn framing_errors_are_refused() {
    assert!(refused(&[]).contains("truncated"));
    assert!(refused(&SWTPM_SRK[..100]).contains("truncated"));
    let mut trailing = SWTPM_SRK.to_vec();
    trailing.push(0);
    assert!(refused(&trailing).contains("1 bytes after its structure"));
    assert!(refused(&vec![0; MAX_TPM_PUBLIC_LEN + 1]).contains("at most 1024"));
    // A size field that claims less than what follows.
    let short = edited_srk(|p| p.truncate(p.len() - 1));
    assert!(refused(&short).contains("truncated"), "{}", refused(&short));
}

#[test]
fn other_key_kinds_are_refused_with_what_they_are() {
    // Byte offsets in TPMT_PUBLIC: type 0, nameAlg 2, attributes 4, authPolicy size 8 (empty
    // for the SRK), symmetric 10/12/14, scheme 16, keyBits 18, exponent 20, modulus 24.
    let ecc = edited_srk(|p| p[1] = 0x23);
    assert!(refused(&ecc).contains("not an RSA key (type 0x0023)"));
    let sha1 = edited_srk(|p| p[3] = 0x04);
    assert!(refused(&sha1).contains("only SHA-256"));
    let signing = edited_srk(|p| p[5] = 0x04); // sign instead of restricted|decrypt
    assert!(refused(&signing).contains("not a restricted decryption key"));
    let aes256 = edited_srk(|p| p[12..14].copy_from_slice(&256u16.to_be_bytes()));
    assert!(refused(&aes256).contains("AES-128 in CFB mode"));
    let scheme = edited_srk(|p| p[17] = 0x17); // OAEP
    assert!(refused(&scheme).contains("has an RSA scheme (0x0017)"));
    let rsa3072 = edited_srk(|p| p[18..20].copy_from_slice(&3072u16.to_be_bytes()));
    assert!(refused(&rsa3072).contains("has 3072 bits"));
    let small_modulus = edited_srk(|p| p[26] = 0x01);
    assert!(refused(&small_modulus).contains("not 2048 bits long"));
}

proptest::proptest! {
    /// Whatever a device sends, parsing returns; a key with any one byte changed parses or is
    /// refused, never panics.
    #[test]
    fn parsing_never_panics(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1100),
        at in 0usize..SWTPM_SRK.len(),
        value in proptest::num::u8::ANY,
    ) {
        let _ = TpmKey::parse(TpmKeyRole::Endorsement, &bytes);
        let mut mutated = SWTPM_SRK.to_vec();
        mutated[at] = value;
        if let Ok(key) = TpmKey::parse(TpmKeyRole::StorageRoot, &mutated) {
            proptest::prop_assert_eq!(key.tpm2b_public(), &mutated[..]);
        }
    }
}
