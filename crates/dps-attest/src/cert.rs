//! Certificate parsing: the PEM, bare base64 or DER a client sends becomes a
//! [`ParsedCertificate`] with the `X509CertificateInfo` DPS shows for it.
//!
//! This is parsing only: nothing here says a certificate is trusted. What it does expose for
//! trust decisions are facts: whether a certificate may sign other certificates
//! ([`ParsedCertificate::check_can_issue`]) and whether one certificate names another as its
//! issuer ([`ParsedCertificate::names_as_issuer`]).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use dps_types::{Timestamp, X509CertificateInfo};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    Oid, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};

use crate::AttestError;

/// Longest certificate text accepted, in bytes. A P-256 device certificate is about 700 bytes
/// of PEM and an RSA-4096 CA with long names and policies about 3 KiB; 16 KiB is far above any
/// real certificate while bounding what a request can make us decode.
pub const MAX_CERTIFICATE_TEXT: usize = 16 * 1024;
/// Longest DER accepted, in bytes: what [`MAX_CERTIFICATE_TEXT`] of base64 decodes to.
pub const MAX_CERTIFICATE_DER: usize = MAX_CERTIFICATE_TEXT / 4 * 3;

const PEM_BEGIN: &str = "-----BEGIN ";
const PEM_DASHES: &str = "-----";
const PEM_END: &str = "-----END CERTIFICATE-----";
/// Longest PEM label quoted back in an error.
const MAX_QUOTED_LABEL: usize = 40;

/// Standard base64 with optional padding; whitespace is removed before decoding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An X.509 certificate that parsed, with the values the service needs from it computed once.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedCertificate {
    der: Vec<u8>,
    info: X509CertificateInfo,
    common_name: Option<String>,
    is_ca: bool,
    client_auth: bool,
    key_cert_sign: bool,
    link: IssuerLink,
}

/// What ties a certificate to the certificate that issued it (RFC 5280 §4.1.2.4, §4.2.1.1,
/// §4.2.1.2): the DER of both names, compared byte for byte as rustls-webpki compares them,
/// and the key identifiers that tell apart two CAs with one name.
#[derive(Clone, PartialEq, Eq)]
struct IssuerLink {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
}

/// Why a certificate may not sign other certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotAnIssuer {
    /// It has no basicConstraints extension saying `CA:TRUE` (RFC 5280 §4.2.1.9).
    NotCa,
    /// Its keyUsage extension does not list `keyCertSign` (RFC 5280 §4.2.1.3), or is
    /// malformed or repeated.
    NoKeyCertSign,
}

impl std::fmt::Display for NotAnIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotAnIssuer::NotCa => "its basicConstraints do not say CA:TRUE",
            NotAnIssuer::NoKeyCertSign => "its keyUsage does not allow keyCertSign",
        })
    }
}

impl ParsedCertificate {
    /// Parses certificate text: one PEM `CERTIFICATE` block (explanatory text around it is
    /// ignored, as RFC 7468 allows; a second block is refused), or bare base64 of the DER
    /// (line breaks allowed), as the portal accepts.
    pub fn parse(text: &str) -> Result<Self, AttestError> {
        Self::parse_der(&der_from_text(text)?)
    }

    /// Parses one DER certificate; trailing bytes are refused.
    pub fn parse_der(der: &[u8]) -> Result<Self, AttestError> {
        if der.len() > MAX_CERTIFICATE_DER {
            return Err(AttestError::CertificateTooLarge {
                len: der.len(),
                max: MAX_CERTIFICATE_DER,
            });
        }
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| AttestError::DerInvalid(e.into()))?;
        if !rest.is_empty() {
            return Err(AttestError::DerTrailingData { len: rest.len() });
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        // RFC 5280 §4.2.1.12: without the extension any use is allowed; with it, clientAuth
        // must be listed (anyExtendedKeyUsage is not enough, as in rustls-webpki). A malformed
        // or repeated extension allows nothing.
        let client_auth = match cert.extended_key_usage() {
            Ok(None) => true,
            Ok(Some(eku)) => eku.value.client_auth,
            Err(_) => false,
        };
        // RFC 5280 §4.2.1.3: without the extension any use is allowed; a malformed or
        // repeated one allows nothing, as above.
        let key_cert_sign = match cert.key_usage() {
            Ok(None) => true,
            Ok(Some(usage)) => usage.value.key_cert_sign(),
            Err(_) => false,
        };
        let link = IssuerLink {
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            subject_key_id: key_identifier(&cert, &OID_X509_EXT_SUBJECT_KEY_IDENTIFIER),
            authority_key_id: key_identifier(&cert, &OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER),
        };
        Ok(Self {
            info: info(&cert, der),
            common_name,
            is_ca: cert.is_ca(),
            client_auth,
            key_cert_sign,
            link,
            der: der.to_vec(),
        })
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The `X509CertificateInfo` DPS returns for this certificate.
    pub fn info(&self) -> X509CertificateInfo {
        self.info.clone()
    }

    /// The `X509CertificateInfo`, borrowed.
    pub fn info_ref(&self) -> &X509CertificateInfo {
        &self.info
    }

    /// The first subject common name, borrowed.
    pub fn common_name_ref(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// Whether the certificate may authenticate a TLS client: it has no extended key usage
    /// extension, or the extension lists `clientAuth`.
    pub fn allows_client_auth(&self) -> bool {
        self.client_auth
    }

    /// The first subject common name, when it is a string. For a device certificate this is
    /// the registration id the device claims.
    pub fn common_name(&self) -> Option<String> {
        self.common_name.clone()
    }

    /// Whether basicConstraints says `CA:TRUE`.
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// Whether this certificate may sign other certificates: basicConstraints `CA:TRUE` and,
    /// when it has a keyUsage extension, `keyCertSign`. An enrollment group's signing
    /// certificate must pass, or whoever holds a leaf's key could mint device certificates.
    pub fn check_can_issue(&self) -> Result<(), NotAnIssuer> {
        if !self.is_ca {
            Err(NotAnIssuer::NotCa)
        } else if !self.key_cert_sign {
            Err(NotAnIssuer::NoKeyCertSign)
        } else {
            Ok(())
        }
    }

    /// Whether this certificate names `issuer` as the certificate that issued it: this
    /// certificate's issuer name is `issuer`'s subject name (same DER), and, when both carry
    /// one, the authority key identifier is `issuer`'s subject key identifier. This is a
    /// link to follow when building a path, not a signature check.
    pub fn names_as_issuer(&self, issuer: &ParsedCertificate) -> bool {
        let key_ids_agree = match (&self.link.authority_key_id, &issuer.link.subject_key_id) {
            (Some(authority), Some(subject)) => authority == subject,
            _ => true,
        };
        self.link.issuer == issuer.link.subject && key_ids_agree
    }
}

/// The key identifier in the subject or authority key identifier extension `oid`; `None`
/// when the extension is absent, repeated or malformed (the link is then decided by names
/// alone, and the signature check by rustls-webpki decides the rest).
fn key_identifier(cert: &X509Certificate<'_>, oid: &Oid<'_>) -> Option<Vec<u8>> {
    let extension = cert.get_extension_unique(oid).ok()??;
    match extension.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
        ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().map(|id| id.0.to_vec())
        }
        _ => None,
    }
}

impl std::fmt::Debug for ParsedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedCertificate")
            .field("subject", &self.info.subject_name)
            .field("sha256", &self.info.sha256_thumbprint)
            .field("is_ca", &self.is_ca)
            .finish_non_exhaustive()
    }
}

fn info(cert: &X509Certificate<'_>, der: &[u8]) -> X509CertificateInfo {
    let validity = cert.validity();
    X509CertificateInfo {
        subject_name: cert.subject().to_string(),
        sha1_thumbprint: hex::encode_upper(Sha1::digest(der)),
        sha256_thumbprint: hex::encode_upper(Sha256::digest(der)),
        issuer_name: cert.issuer().to_string(),
        not_before_utc: Timestamp::from(validity.not_before.to_datetime()),
        not_after_utc: Timestamp::from(validity.not_after.to_datetime()),
        serial_number: hex::encode_upper(cert.raw_serial()),
        // The encoded field is 0 for v1 .. 2 for v3; DPS shows 1 .. 3. The parser refuses
        // anything else, and a saturating conversion keeps this total anyway.
        version: i32::try_from(cert.version().0)
            .unwrap_or(i32::MAX)
            .saturating_add(1),
    }
}

/// The DER of certificate text: one PEM `CERTIFICATE` block, or bare base64 of the DER.
/// Nothing is parsed beyond the framing.
pub(crate) fn der_from_text(text: &str) -> Result<Vec<u8>, AttestError> {
    if text.len() > MAX_CERTIFICATE_TEXT {
        return Err(AttestError::CertificateTooLarge {
            len: text.len(),
            max: MAX_CERTIFICATE_TEXT,
        });
    }
    if text.contains(PEM_BEGIN) {
        pem_to_der(text)
    } else {
        decode_base64(text).ok_or(AttestError::CertificateNotRecognized)
    }
}

/// The DER inside the one `CERTIFICATE` block of `text`.
fn pem_to_der(text: &str) -> Result<Vec<u8>, AttestError> {
    let malformed = |why| AttestError::PemMalformed { why };
    let (_, after_begin) = text
        .split_once(PEM_BEGIN)
        .ok_or(malformed("has no -----BEGIN line"))?;
    let (label, rest) = after_begin.split_once(PEM_DASHES).ok_or(malformed(
        "has a -----BEGIN line that does not end with -----",
    ))?;
    if label != "CERTIFICATE" {
        return Err(AttestError::PemNotCertificate {
            label: label.chars().take(MAX_QUOTED_LABEL).collect(),
        });
    }
    let (body, tail) = rest
        .split_once(PEM_END)
        .ok_or(malformed("has no -----END CERTIFICATE----- line"))?;
    if tail.contains(PEM_BEGIN) {
        return Err(malformed(
            "text holds more than one PEM block; send only the one certificate",
        ));
    }
    decode_base64(body).ok_or(malformed("body is not base64"))
}

/// Base64 with all ASCII whitespace removed; `None` when it does not decode or is empty.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT_BASE64
        .decode(compact)
        .ok()
        .filter(|der| !der.is_empty())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use dps_test_util::{DeviceOptions, Eku, IssuerFlaw, Signer, TestCa, TestPki, Validity};

    use super::*;

    #[test]
    fn device_certificate_info() {
        let pki = TestPki::new();
        let device = pki.device("my-device");
        let parsed = ParsedCertificate::parse(&device.cert_pem).unwrap();
        let info = parsed.info();
        assert_eq!(info.subject_name, "CN=my-device");
        assert_eq!(info.issuer_name, "CN=DPS Test Intermediate CA, O=DPS Test");
        assert_eq!(info.version, 3);
        assert_eq!(
            info.sha256_thumbprint,
            hex::encode_upper(Sha256::digest(&device.der))
        );
        assert_eq!(info.sha1_thumbprint.len(), 40);
        assert_eq!(info.sha1_thumbprint, info.sha1_thumbprint.to_uppercase());
        assert!(!info.serial_number.is_empty());
        assert_eq!(info.serial_number, info.serial_number.to_uppercase());
        assert!(info.not_before_utc < Timestamp::now() && Timestamp::now() < info.not_after_utc);
        assert_eq!(parsed.common_name().as_deref(), Some("my-device"));
        assert!(!parsed.is_ca());
        assert!(parsed.allows_client_auth());
        assert_eq!(parsed.der(), device.der.as_slice());
    }

    #[test]
    fn extended_key_usage_decides_client_auth() {
        let pki = TestPki::new();
        let with = |eku| {
            let options = DeviceOptions {
                eku,
                ..Default::default()
            };
            ParsedCertificate::parse_der(&pki.device_with("d", options).der)
                .unwrap()
                .allows_client_auth()
        };
        assert!(with(Eku::ClientAuth));
        assert!(with(Eku::Absent));
        assert!(!with(Eku::ServerAuthOnly));
    }

    #[test]
    fn ca_certificates_are_recognised() {
        let pki = TestPki::new();
        let root = ParsedCertificate::parse(&pki.root_pem()).unwrap();
        assert!(root.is_ca());
        assert_eq!(root.info().subject_name, root.info().issuer_name);
        assert!(ParsedCertificate::parse(&pki.intermediate_pem())
            .unwrap()
            .is_ca());
    }

    #[test]
    fn who_may_issue_and_who_issued_whom() {
        let pki = TestPki::new();
        let parse = |der: &[u8]| ParsedCertificate::parse_der(der).unwrap();
        let (root, intermediate) = (parse(&pki.root().der()), parse(&pki.intermediate().der()));
        let leaf = parse(&pki.device("d").der);
        assert_eq!(root.check_can_issue(), Ok(()));
        assert_eq!(intermediate.check_can_issue(), Ok(()));
        assert_eq!(leaf.check_can_issue(), Err(NotAnIssuer::NotCa));
        let no_cert_sign =
            TestCa::flawed_intermediate("Flawed", pki.root(), IssuerFlaw::NoKeyCertSign);
        assert_eq!(
            parse(&no_cert_sign.der()).check_can_issue(),
            Err(NotAnIssuer::NoKeyCertSign)
        );
        assert!(leaf.names_as_issuer(&intermediate));
        assert!(intermediate.names_as_issuer(&root));
        assert!(root.names_as_issuer(&root), "self-issued");
        assert!(!leaf.names_as_issuer(&root));
        // Same name, another key: the key identifiers tell them apart.
        let twin = parse(&TestPki::new().intermediate().der());
        assert_eq!(twin.info().subject_name, intermediate.info().subject_name);
        assert!(!leaf.names_as_issuer(&twin));
    }

    #[test]
    fn pem_base64_and_der_give_the_same_result() {
        let device = TestPki::new().device_with(
            "d",
            DeviceOptions {
                signer: Signer::SelfSigned,
                validity: Validity::Expired,
                ..Default::default()
            },
        );
        let from_pem = ParsedCertificate::parse(&device.cert_pem).unwrap();
        let padded = format!("\n  {}\r\n", device.cert_pem);
        let with_text = format!("subject=CN = d\n{}", device.cert_pem);
        let b64 = STANDARD.encode(&device.der);
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        for text in [padded, with_text, b64.clone(), wrapped.join("\n")] {
            assert_eq!(ParsedCertificate::parse(&text).unwrap(), from_pem, "{text}");
        }
        assert_eq!(ParsedCertificate::parse_der(&device.der).unwrap(), from_pem);
        assert!(from_pem.info().not_after_utc < Timestamp::now());
    }

    fn parse_err(text: &str) -> String {
        ParsedCertificate::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_problem() {
        let device = TestPki::new().device("d");
        assert!(parse_err("hello, world").contains("not PEM, base64 or DER"));
        assert!(parse_err("").contains("not PEM, base64 or DER"));
        assert!(parse_err(&device.key_pem).contains("is not a CERTIFICATE but 'PRIVATE KEY'"));
        assert!(parse_err(&device.chain_pem).contains("more than one PEM block"));
        let truncated = device.cert_pem.replace("-----END CERTIFICATE-----", "");
        assert!(parse_err(&truncated).contains("no -----END"));
        let mangled = device.cert_pem.replacen("MII", "M*I", 1);
        assert!(parse_err(&mangled).contains("not base64"));
        assert!(parse_err(&STANDARD.encode(b"not a certificate"))
            .starts_with("DER does not parse as an X.509 certificate: "));
        let mut long = device.der.clone();
        long.push(0);
        let err = ParsedCertificate::parse_der(&long).unwrap_err().to_string();
        assert!(err.contains("1 bytes follow"), "{err}");
        let err = ParsedCertificate::parse_der(&device.der[..device.der.len() - 1]).unwrap_err();
        assert!(matches!(err, AttestError::DerInvalid(_)), "{err}");
        assert!(parse_err(&"A".repeat(MAX_CERTIFICATE_TEXT + 1)).contains("at most 16384"));
    }
}
