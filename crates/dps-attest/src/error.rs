//! The crate's one error enum.
//!
//! Every variant names the part of the credential that is wrong, because the frontends send
//! the message back (a 401 for a token, a 400 for an enrollment). No variant carries a key, a
//! signature or certificate bytes, so neither `Display` nor `Debug` can leak one.

use x509_parser::error::X509Error;

/// Why a credential or an enrollment's attestation was refused.
///
/// `Sas*` variants: a `SharedAccessSignature` is malformed, wrong or expired (the peer is at
/// fault; answer 401). `Tpm*` variants: a TPM key the device sent that cannot be used, or an
/// activation blob that could not be built. `Certificate*`, `Pem*` and `Der*` variants:
/// certificate text that does not parse. The rest: an enrollment whose attestation or settings (hubs, custom allocation)
/// cannot be stored (answer 400).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The token is longer than [`crate::sas::MAX_TOKEN_LEN`].
    #[error("the SharedAccessSignature is {len} bytes long; at most {max} are accepted")]
    SasTooLong {
        /// Length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token does not start with `SharedAccessSignature ` (case-sensitive, one space).
    #[error("the token does not start with 'SharedAccessSignature '")]
    SasMissingPrefix,
    /// A `&`-separated field has no `=`.
    #[error("field {position} of the SharedAccessSignature has no '='")]
    SasMalformedField {
        /// 1-based position of the field.
        position: usize,
    },
    /// A field other than `sr`, `sig`, `se` and `skn`.
    #[error(
        "the SharedAccessSignature has an unknown field '{name}'; expected sr, sig, se and skn"
    )]
    SasUnknownField {
        /// The field name (truncated).
        name: String,
    },
    /// A field appears twice.
    #[error("the SharedAccessSignature has more than one '{field}' field")]
    SasDuplicateField {
        /// `sr`, `sig`, `se` or `skn`.
        field: &'static str,
    },
    /// A required field is absent or empty.
    #[error("the SharedAccessSignature has no '{field}' value")]
    SasMissingField {
        /// `sr`, `sig` or `se`.
        field: &'static str,
    },
    /// `sr` or `skn` is not valid percent-encoded UTF-8.
    #[error("the SharedAccessSignature '{field}' {why}")]
    SasMalformedValue {
        /// `sr` or `skn`.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// `se` is not a decimal number of seconds since the Unix epoch.
    #[error(
        "the SharedAccessSignature expiry 'se={value}' is not a whole number of seconds since the Unix epoch"
    )]
    SasMalformedExpiry {
        /// The value as sent (truncated; an expiry is not secret).
        value: String,
    },
    /// `sig` does not decode to an HMAC-SHA256 value.
    #[error("the SharedAccessSignature signature 'sig' {why}")]
    SasMalformedSignature {
        /// What is wrong (never the signature itself).
        why: &'static str,
    },
    /// The signature was not made with any of the candidate keys.
    #[error("the SharedAccessSignature signature does not match")]
    SasSignatureMismatch,
    /// `se` is in the past, beyond the tolerated clock skew.
    #[error(
        "the SharedAccessSignature expired at {expiry} (now {now}; seconds since the Unix epoch)"
    )]
    SasExpired {
        /// The token's `se`.
        expiry: i64,
        /// The verifier's clock.
        now: i64,
    },

    /// A TPM endorsement or storage root key (`TPM2B_PUBLIC`) does not parse or is not the
    /// one kind supported: an RSA 2048 restricted decryption key with SHA-256 names and
    /// AES-128-CFB protection.
    #[error("the TPM {key} {why}")]
    TpmKeyInvalid {
        /// `endorsement key` or `storage root key`.
        key: &'static str,
        /// What is wrong (never key bytes).
        why: String,
    },
    /// A TPM structure being built would not fit its 16-bit size field.
    #[error("a TPM structure of {len} bytes does not fit its 16-bit size field")]
    TpmStructureTooLarge {
        /// Its length.
        len: usize,
    },
    /// A cryptographic primitive failed while building the activation blob.
    #[error("{0}")]
    TpmCrypto(&'static str),

    /// Certificate text or DER over [`crate::cert::MAX_CERTIFICATE_TEXT`] or
    /// [`crate::cert::MAX_CERTIFICATE_DER`].
    #[error("the certificate is {len} bytes long; at most {max} are accepted")]
    CertificateTooLarge {
        /// Length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text is neither a PEM block nor base64.
    #[error("the certificate is not PEM, base64 or DER")]
    CertificateNotRecognized,
    /// The PEM block has another label (for example `PRIVATE KEY`).
    #[error("the PEM block is not a CERTIFICATE but '{label}'")]
    PemNotCertificate {
        /// The label (truncated).
        label: String,
    },
    /// The PEM framing is broken, or there is more than one block.
    #[error("the PEM certificate {why}")]
    PemMalformed {
        /// What is wrong.
        why: &'static str,
    },
    /// A TLS client presented more certificates than [`crate::MAX_CHAIN_CERTS`].
    #[error("the client presented {len} certificates; at most {max} are accepted")]
    ChainTooLong {
        /// Certificates presented, leaf included.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a DER X.509 certificate.
    #[error("DER does not parse as an X.509 certificate: {0}")]
    DerInvalid(#[source] X509Error),
    /// Bytes follow the certificate's DER.
    #[error("DER does not parse as an X.509 certificate: {len} bytes follow the certificate")]
    DerTrailingData {
        /// How many.
        len: usize,
    },

    /// The attestation type is one this service does not accept for this kind of record.
    #[error("{0}")]
    UnsupportedAttestation(&'static str),
    /// A member the attestation needs is absent or empty.
    #[error("{member} is required")]
    MissingMember {
        /// JSON path of the member, e.g. `attestation.x509.clientCertificates.primary.certificate`.
        member: &'static str,
    },
    /// The attestation has members that do not belong on this kind of record.
    #[error("{0}")]
    InvalidAttestation(&'static str),
    /// A certificate of the enrollment does not parse.
    #[error("{member}: {source}")]
    InvalidCertificate {
        /// JSON path of the certificate.
        member: &'static str,
        /// Why it does not parse.
        #[source]
        source: Box<AttestError>,
    },
    /// An enrollment group's signing certificate parses but may not sign certificates, so it
    /// cannot be the CA of the group's devices.
    #[error(
        "{member} cannot be an enrollment group's signing certificate: {why}; enroll the CA \
         certificate that issues the devices' certificates"
    )]
    SigningCertificateNotCa {
        /// JSON path of the certificate.
        member: &'static str,
        /// What it lacks.
        why: crate::NotAnIssuer,
    },
    /// `iotHubs` or `iotHubHostName` names a hub this service is not linked to.
    #[error("{member} names '{hub}', which is not a linked IoT hub of this service")]
    UnlinkedHub {
        /// `iotHubs` or `iotHubHostName`.
        member: &'static str,
        /// The hub as named (a validated host name, bounded by its grammar).
        hub: String,
    },
    /// `allocationPolicy` is `custom` but there is no webhook to ask.
    #[error(
        "allocationPolicy custom needs a customAllocationDefinition (webhookUrl and apiVersion)"
    )]
    CustomWithoutDefinition,
    /// `customAllocationDefinition.webhookUrl` is not a URL the webhook policy allows.
    #[error("customAllocationDefinition.webhookUrl: {0}")]
    WebhookUrlRefused(#[source] dps_types::TypeError),
}
