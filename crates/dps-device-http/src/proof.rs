//! What a device request proves its identity with ([`Proof`]), taken from the request, and
//! its attestation into the registrar's [`AttestedDevice`].
//!
//! The order is DPS's: an `Authorization` header is a SAS token (a symmetric-key device, or,
//! with a `tpm` register body, a TPM device answering its challenge); without one, a register
//! body with `tpm` starts TPM attestation (answered with the challenge); otherwise the TLS
//! client certificate chain is the credential (X.509), and no chain is refused as
//! `no_client_certificate`.
//!
//! A register always attests afresh. A poll (or status lookup) reuses an earlier attestation
//! where attesting again is impossible or wasteful ([`Proof::attest_poll`]): the token a TPM
//! device registered with (its challenge is used up; `tpm.rs`), and, on the connection that
//! registered an X.509 device, that device's attestation (the chain of a TLS connection cannot
//! change, a poll only reads the operation's result, and verifying the chain again would
//! double the CPU an X.509 device costs over HTTPS).

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use dps_api::{ApiError, PeerCertificates};
use dps_attest::{AttestedDevice, Refusal};
use dps_registrar::{Registrar, Transport};
use dps_types::{DeviceRegistration, Timestamp, TpmRegistrationResult};

use crate::tpm::TpmBody;
use crate::{DeviceApi, DeviceError};

/// A device request's credential.
#[derive(Debug)]
pub(crate) enum Proof<'a> {
    /// `Authorization: SharedAccessSignature ...`.
    Sas(&'a str),
    /// The TLS client certificate chain, if the device presented one.
    X509(Option<&'a PeerCertificates>),
    /// No `Authorization` and a register body with `tpm` (endorsement and storage root keys):
    /// the first request of TPM attestation, which DPS answers `401` with the challenge
    /// (`dps-protocol.md` §5.2).
    TpmChallenge(TpmBody),
    /// `Authorization` and a body with `tpm`: a TPM device's answer to its challenge, the token
    /// signed in its TPM with the challenge's key.
    TpmAnswer { token: &'a str, tpm: TpmBody },
}

/// A device attested, and for a TPM device its hub key sealed to its TPM.
pub(crate) struct Attested {
    pub(crate) device: Arc<AttestedDevice>,
    pub(crate) tpm: Option<TpmRegistrationResult>,
}

impl<'a> Proof<'a> {
    /// The credential of a request with `headers`, the connection's `certificates` and, for
    /// the operations that carry one, the `DeviceRegistration` body.
    pub(crate) fn of(
        headers: &'a HeaderMap,
        certificates: Option<&'a PeerCertificates>,
        body: Option<&DeviceRegistration>,
    ) -> Result<Self, DeviceError> {
        let tpm = body
            .and_then(|b| b.tpm.as_ref())
            .map(TpmBody::parse)
            .transpose()?;
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value.to_str().map_err(|_| ApiError::InvalidHeader {
                name: "Authorization",
                why: "is not visible ASCII",
            })?;
            return Ok(match tpm {
                Some(tpm) => Proof::TpmAnswer { token, tpm },
                None => Proof::Sas(token),
            });
        }
        Ok(match tpm {
            Some(tpm) => Proof::TpmChallenge(tpm),
            None => Proof::X509(certificates),
        })
    }

    /// Attests the device that claims `registration_id` (as the path spells it) for a
    /// register. A refusal is recorded with its precise reason (transport `https`) and
    /// answered `401`; a TPM device's first register is answered with its challenge
    /// ([`DeviceError::TpmChallenge`]). An X.509 device's attestation is kept for its
    /// connection's polls, a TPM device's token for its polls.
    pub(crate) fn attest(
        &self,
        api: &DeviceApi,
        registration_id: &str,
    ) -> Result<Attested, DeviceError> {
        let registrar = &api.registrar;
        let now = Timestamp::now().unix();
        match self {
            Proof::TpmChallenge(tpm) => {
                let challenge = registrar
                    .tpm_challenges()
                    .challenge(
                        registration_id,
                        &tpm.endorsement_key,
                        &tpm.storage_root_key,
                        registrar.lookup(),
                        now,
                    )
                    .map_err(|r| refused(registrar, registration_id, &r))?;
                Err(DeviceError::TpmChallenge(challenge))
            }
            Proof::TpmAnswer { token, tpm } => {
                let device = registrar
                    .tpm_challenges()
                    .attest(
                        token,
                        registrar.id_scope(),
                        registration_id,
                        Some(&tpm.endorsement_key),
                        registrar.lookup(),
                        now,
                    )
                    .map(Arc::new)
                    .map_err(|r| refused(registrar, registration_id, &r))?;
                let Some(hub_key) = device.hub_key() else {
                    tracing::error!("a TPM device was attested without a hub key");
                    return Err(DeviceError::RegistrationFailed);
                };
                let sealed = tpm.seal_hub_key(hub_key)?;
                api.tpm.insert(token, Arc::clone(&device), sealed.clone());
                Ok(Attested {
                    device,
                    tpm: Some(sealed),
                })
            }
            Proof::Sas(token) => Ok(Attested {
                device: attest_token(registrar, token, registration_id)?,
                tpm: None,
            }),
            Proof::X509(certificates) => {
                let device = attest_chain(registrar, *certificates, registration_id)?;
                if let Some(certificates) = certificates {
                    certificates.remember(Arc::clone(&device));
                }
                Ok(Attested { device, tpm: None })
            }
        }
    }

    /// [`Proof::attest`] for a poll or status lookup: the TPM device that registered with
    /// this token, or the X.509 device this connection attested, if the request is for it;
    /// else attests now (a TPM device's token no longer matching is refused as symmetric-key
    /// attestation refuses it).
    pub(crate) fn attest_poll(
        &self,
        api: &DeviceApi,
        registration_id: &str,
    ) -> Result<Attested, DeviceError> {
        match self {
            Proof::Sas(token) | Proof::TpmAnswer { token, .. } => {
                let now = Timestamp::now().unix();
                if let Some((device, sealed)) = api.tpm.recall(token, registration_id, now) {
                    return Ok(Attested {
                        device,
                        tpm: Some(sealed),
                    });
                }
                Ok(Attested {
                    device: attest_token(&api.registrar, token, registration_id)?,
                    tpm: None,
                })
            }
            Proof::X509(Some(certificates)) => {
                let attested = certificates.recall::<AttestedDevice>().filter(|d| {
                    d.registration_id()
                        .as_str()
                        .eq_ignore_ascii_case(registration_id)
                });
                let device = match attested {
                    Some(device) => device,
                    None => attest_chain(&api.registrar, Some(certificates), registration_id)?,
                };
                Ok(Attested { device, tpm: None })
            }
            Proof::X509(None) | Proof::TpmChallenge(_) => self.attest(api, registration_id),
        }
    }
}

/// Symmetric-key attestation of `token` now.
fn attest_token(
    registrar: &Registrar,
    token: &str,
    registration_id: &str,
) -> Result<Arc<AttestedDevice>, DeviceError> {
    dps_attest::attest_sas(
        token,
        registrar.id_scope(),
        registration_id,
        registrar.lookup(),
        Timestamp::now().unix(),
    )
    .map(Arc::new)
    .map_err(|r| refused(registrar, registration_id, &r))
}

/// X.509 attestation of the connection's chain now (no chain: refused).
fn attest_chain(
    registrar: &Registrar,
    certificates: Option<&PeerCertificates>,
    registration_id: &str,
) -> Result<Arc<AttestedDevice>, DeviceError> {
    dps_attest::attest_x509(
        &certificates
            .map(PeerCertificates::chain)
            .unwrap_or_default(),
        registration_id,
        registrar.lookup(),
        dps_attest::UnixTime::now(),
    )
    .map(Arc::new)
    .map_err(|r| refused(registrar, registration_id, &r))
}

/// Records `refusal` for `registration_id` (transport `https`); the device learns `401`.
fn refused(registrar: &Registrar, registration_id: &str, refusal: &Refusal) -> DeviceError {
    tracing::debug!(reason = refusal.reason.label(), "HTTPS device refused");
    registrar.record_refusal(registration_id, Transport::Https, refusal);
    DeviceError::Unauthorized
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn authorization_and_tpm_body_decide_the_proof() {
        let mut headers = HeaderMap::new();
        let tpm = DeviceRegistration {
            tpm: Some(serde_json::json!({"endorsementKey": "AToAAQ", "storageRootKey": "ARYA"})),
            ..Default::default()
        };
        assert!(matches!(
            Proof::of(&headers, None, Some(&tpm)),
            Ok(Proof::TpmChallenge(_))
        ));
        let half = DeviceRegistration {
            tpm: Some(serde_json::json!({"endorsementKey": "AToAAQ"})),
            ..Default::default()
        };
        assert!(matches!(
            Proof::of(&headers, None, Some(&half)),
            Err(DeviceError::TpmBodyInvalid)
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
            Ok(Proof::TpmAnswer {
                token: "SharedAccessSignature sr=a&sig=b&se=1",
                ..
            })
        ));
        assert!(matches!(
            Proof::of(&headers, None, None),
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
