//! Attestation: turns the credentials a device or a service client presents into trust
//! decisions.
//!
//! What it does: parses and verifies `SharedAccessSignature` tokens and derives group device
//! keys ([`sas`]); parses X.509 certificates and computes the `X509CertificateInfo` DPS shows
//! ([`cert`]); validates the attestation of every enrollment before it is stored
//! ([`enrollment`]). Later: the rustls client-certificate verifier, chain verification and the
//! `AttestedDevice` proof type that only this crate can build.
//!
//! What it must never do: touch the store or the network, panic on anything a peer sent, or
//! put a key or a signature into an error message or a `Debug` string. Time comes in as an
//! argument (`now_unix`) so tests and callers control the clock.
//!
//! Main types: [`SasToken`], [`ParsedCertificate`], and [`AttestError`], the one error enum of
//! this crate.

pub mod cert;
pub mod enrollment;
mod error;
pub mod sas;

pub use cert::ParsedCertificate;
pub use enrollment::{prepare_group, prepare_individual};
pub use error::AttestError;
pub use sas::{derive_device_key, SasToken};
