//! What a device request proves its identity with ([`Proof`]), taken from the request, and
//! its attestation into the registrar's [`AttestedDevice`].
//!
//! The order is DPS's: an `Authorization` header is a SAS token (a symmetric-key device, or a
//! TPM device after its challenge); without one, a register body with `tpm` starts TPM
//! attestation; otherwise the TLS client certificate chain is the credential (X.509), and no
//! chain is refused as `no_client_certificate`.
//!
//! A register always attests afresh. A poll on the connection that registered an X.509
//! device, for that device, reuses that attestation ([`Proof::attest_poll`]): the chain of a
//! TLS connection cannot change, a poll only reads the operation's result, and verifying the
//! chain again would double the CPU an X.509 device costs over HTTPS.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use dps_api::{ApiError, PeerCertificates};
use dps_attest::AttestedDevice;
use dps_registrar::{Registrar, Transport};
use dps_types::{DeviceRegistration, Timestamp};

use crate::DeviceError;

/// A device request's credential.
#[derive(Debug)]
pub(crate) enum Proof<'a> {
    /// `Authorization: SharedAccessSignature ...`.
    Sas(&'a str),
    /// The TLS client certificate chain, if the device presented one.
    X509(Option<&'a PeerCertificates>),
    /// No `Authorization` and a register body with `tpm` (endorsement and storage root keys):
    /// the first request of TPM attestation, which DPS answers `401` with the challenge
    /// (`{"message","authenticationKey","keyName":"registration"}`, `dps-protocol.md` §5.2).
    /// TODO: answer the challenge once `dps-attest` builds the TPM activation blob; until
    /// then [`DeviceError::TpmUnsupported`].
    Tpm,
}

impl<'a> Proof<'a> {
    /// The credential of a request with `headers`, the connection's `certificates` and, for
    /// the operations that carry one, the `DeviceRegistration` body.
    pub(crate) fn of(
        headers: &'a HeaderMap,
        certificates: Option<&'a PeerCertificates>,
        body: Option<&DeviceRegistration>,
    ) -> Result<Self, DeviceError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value.to_str().map_err(|_| ApiError::InvalidHeader {
                name: "Authorization",
                why: "is not visible ASCII",
            })?;
            return Ok(Proof::Sas(token));
        }
        if body.is_some_and(|b| b.tpm.is_some()) {
            return Ok(Proof::Tpm);
        }
        Ok(Proof::X509(certificates))
    }

    /// Attests the device that claims `registration_id` (as the path spells it). A refusal
    /// is recorded with its precise reason (transport `https`) and answered `401`. An X.509
    /// device's attestation is kept for its connection's polls.
    pub(crate) fn attest(
        &self,
        registrar: &Registrar,
        registration_id: &str,
    ) -> Result<Arc<AttestedDevice>, DeviceError> {
        let device = self.attest_now(registrar, registration_id)?;
        if let Proof::X509(Some(certificates)) = self {
            certificates.remember(Arc::clone(&device));
        }
        Ok(device)
    }

    /// [`Proof::attest`] for a poll: the X.509 device this connection attested, if the poll
    /// is for it, else attests now.
    pub(crate) fn attest_poll(
        &self,
        registrar: &Registrar,
        registration_id: &str,
    ) -> Result<Arc<AttestedDevice>, DeviceError> {
        if let Proof::X509(Some(certificates)) = self {
            let attested = certificates.recall::<AttestedDevice>().filter(|d| {
                d.registration_id()
                    .as_str()
                    .eq_ignore_ascii_case(registration_id)
            });
            if let Some(device) = attested {
                return Ok(device);
            }
        }
        self.attest_now(registrar, registration_id)
    }

    fn attest_now(
        &self,
        registrar: &Registrar,
        registration_id: &str,
    ) -> Result<Arc<AttestedDevice>, DeviceError> {
        let lookup = registrar.lookup();
        let attested = match self {
            Proof::Sas(token) => dps_attest::attest_sas(
                token,
                registrar.id_scope(),
                registration_id,
                lookup,
                Timestamp::now().unix(),
            ),
            Proof::X509(certificates) => dps_attest::attest_x509(
                &certificates
                    .map(PeerCertificates::chain)
                    .unwrap_or_default(),
                registration_id,
                lookup,
                dps_attest::UnixTime::now(),
            ),
            Proof::Tpm => return Err(DeviceError::TpmUnsupported),
        };
        attested.map(Arc::new).map_err(|refusal| {
            tracing::debug!(reason = refusal.reason.label(), "HTTPS device refused");
            registrar.record_refusal(registration_id, Transport::Https, &refusal);
            DeviceError::Unauthorized
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn authorization_wins_then_tpm_then_the_certificate() {
        let mut headers = HeaderMap::new();
        let tpm = DeviceRegistration {
            tpm: Some(serde_json::json!({"endorsementKey": "AToAAQ"})),
            ..Default::default()
        };
        assert!(matches!(
            Proof::of(&headers, None, Some(&tpm)),
            Ok(Proof::Tpm)
        ));
        assert!(matches!(
            Proof::of(&headers, None, Some(&DeviceRegistration::default())),
            Ok(Proof::X509(None))
        ));
        assert!(matches!(
            Proof::of(&headers, None, None),
            Ok(Proof::X509(None))
        ));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("SharedAccessSignature sr=a&sig=b&se=1"),
        );
        assert!(matches!(
            Proof::of(&headers, None, Some(&tpm)),
            Ok(Proof::Sas("SharedAccessSignature sr=a&sig=b&se=1"))
        ));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"SharedAccessSignature \xff").unwrap(),
        );
        assert!(matches!(
            Proof::of(&headers, None, None),
            Err(DeviceError::Request(ApiError::InvalidHeader { .. }))
        ));
    }
}
