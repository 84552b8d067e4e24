//! Attestation: turns the credentials a device or a service client presents into trust
//! decisions.
//!
//! What it does: parses and verifies `SharedAccessSignature` tokens and derives group device
//! keys ([`sas`]); parses X.509 certificates and computes the `X509CertificateInfo` DPS shows
//! ([`cert`]); validates every enrollment before it is stored, its attestation and the hubs
//! and webhook it names against the service's [`EnrollmentRules`], into a [`Prepared`] record
//! ([`enrollment`]); proves a TLS client holds its certificate's key ([`PossessionVerifier`]);
//! and attests devices, by SAS token ([`attest_sas`]), certificate chain ([`attest_x509`]) or
//! TPM challenge ([`TpmChallenges`]: the activation blob sealed to the device's TPM, then the
//! SAS token its TPM signed; [`tpm`]), against the enrollments an
//! [`EnrollmentLookup`](dps_types::EnrollmentLookup) shows, into an [`AttestedDevice`] or a
//! [`Refusal`] with a bounded [`FailureReason`].
//!
//! What it must never do: touch the store or the network, panic on anything a peer sent, or
//! put a key or a signature into an error message or a `Debug` string. Time comes in as an
//! argument (`now_unix`, `now`) so tests and callers control the clock. The one state that
//! outlives a call is [`TpmChallenges`], the bounded table of keys sealed to TPM devices that
//! have not answered yet.
//!
//! Main types: [`AttestedDevice`] and [`Prepared`], the proof types only this crate can build;
//! [`FailureReason`] and [`Refusal`]; [`PossessionVerifier`]; [`SasToken`];
//! [`ParsedCertificate`]; [`TpmChallenges`]; and [`AttestError`], the error enum of credential
//! and enrollment parsing.

pub mod cert;
mod device;
pub mod enrollment;
mod error;
mod refusal;
mod rules;
pub mod sas;
mod symmetric_key;
pub mod tpm;
mod verifier;
mod x509;

#[cfg(test)]
mod fixtures;

pub use cert::{NotAnIssuer, ParsedCertificate};
pub use device::{AttestedDevice, MatchedEnrollment};
pub use enrollment::{prepare_group, prepare_individual};
pub use error::AttestError;
pub use refusal::{FailureReason, Refusal};
pub use rules::{EnrollmentRules, Prepared};
/// The clock type of [`attest_x509`], re-exported so callers need not name rustls.
pub use rustls::pki_types::UnixTime;
pub use sas::{derive_device_key, SasToken};
pub use symmetric_key::attest_sas;
pub use tpm::{TpmChallenge, TpmChallengeLimits, TpmChallenges};
pub use verifier::PossessionVerifier;
pub use x509::{attest_x509, MAX_CHAIN_CERTS};
