//! The SASL step of a connection, without I/O: which mechanisms we offer, and what identity a
//! finished exchange claims. Nothing here decides trust: the claim is attested after the
//! exchange (`dps-attest`), so a refused device gets DPS's answer (our OPEN, then a CLOSE with
//! `amqp:unauthorized-access`) rather than a bare SASL failure, which the Node SDK does not
//! report as an error at all.
//!
//! Mechanisms (`dps-protocol.md` §6): `PLAIN` for symmetric keys (authcid
//! `{idScope}/registrations/{registrationId}`, password the SAS token); `EXTERNAL` and
//! `ANONYMOUS` for X.509 devices, whose identity is the TLS client certificate and whose
//! registration id comes with their first link. A device may also skip SASL entirely (the
//! Node SDK does for X.509): that is the same as `ANONYMOUS`. `TPM` for TPM devices ([`tpm`]:
//! the EK and SRK, the activation blob in segments, the SAS token signed in the TPM).
//!
//! A mechanism is a [`Mechanism`] variant and its state in [`Exchange`]; a step answers
//! [`Step::Challenge`] to ask the device for more, or [`Step::Seal`] to ask the caller for a
//! TPM's activation blob ([`Exchange::sealed`]).

pub mod tpm;

use std::sync::{Arc, Mutex, PoisonError};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use dps_registrar::{Registrar, Transport};
use dps_types::{IdScope, RegistrationId};
use fe2o3_amqp::acceptor::sasl_acceptor::{SaslAcceptor, SaslServerFrame};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};

/// Longest PLAIN initial response we look at. SASL frames before the OPEN are at most 512
/// bytes (AMQP 1.0 §5.3.1, `MIN-MAX-FRAME-SIZE`), so this only documents the bound.
pub const MAX_PLAIN_RESPONSE: usize = 512;

pub use tpm::TpmKeys;

/// The mechanisms we offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// Username and password: `{idScope}/registrations/{registrationId}` and a SAS token.
    Plain,
    /// The TLS client certificate is the identity.
    External,
    /// No SASL identity: the TLS client certificate (if any) is the identity.
    Anonymous,
    /// A TPM: its EK and SRK, the activation blob, a SAS token signed in the TPM ([`tpm`]).
    Tpm,
}

impl Mechanism {
    /// Every mechanism, in the order offered (`TPM` last: only the Azure TPM clients ask for
    /// it, by name).
    pub const ALL: [Mechanism; 4] = [
        Mechanism::Plain,
        Mechanism::External,
        Mechanism::Anonymous,
        Mechanism::Tpm,
    ];

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::External => "EXTERNAL",
            Mechanism::Anonymous => "ANONYMOUS",
            Mechanism::Tpm => "TPM",
        }
    }

    /// The mechanism called `name` (SASL names are case-sensitive, upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Who a device claims to be after SASL. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub enum Claim {
    /// A symmetric-key device: attest the token against the registration id.
    Sas {
        /// The registration id from the username.
        registration_id: RegistrationId,
        /// The password: a SAS token.
        token: String,
    },
    /// An X.509 device (or nobody): attest the TLS client certificate against the
    /// registration id its first link names.
    Certificate,
    /// A TPM device that answered its challenge: attest the token against the challenge's
    /// key (`TpmChallenges::attest`).
    Tpm {
        /// The registration id, EK and SRK the device sent; the SRK seals its hub key.
        keys: TpmKeys,
        /// The SAS token signed in the TPM.
        token: String,
    },
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Sas {
                registration_id, ..
            } => f
                .debug_struct("Sas")
                .field("registration_id", registration_id)
                .field("token", &"<redacted>")
                .finish(),
            Claim::Certificate => f.write_str("Certificate"),
            Claim::Tpm { keys, .. } => f
                .debug_struct("Tpm")
                .field("keys", keys)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// Why an exchange failed (the device gets SASL outcome `auth` and the connection closes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaslFailure {
    /// The device chose a mechanism we do not offer.
    #[error("unsupported SASL mechanism")]
    UnsupportedMechanism,
    /// The PLAIN response is not `authzid \0 authcid \0 password`, or not UTF-8.
    #[error("malformed PLAIN response")]
    MalformedPlain,
    /// The PLAIN username is not `{idScope}/registrations/{registrationId}`.
    #[error("the PLAIN username is not {{idScope}}/registrations/{{registrationId}}")]
    BadUsername,
    /// The PLAIN username names another ID scope.
    #[error("the PLAIN username names another ID scope")]
    WrongIdScope,
    /// A TPM response is not what its step expects (`\0` and its value), or too long.
    #[error("malformed TPM SASL response")]
    MalformedTpm,
    /// The TPM initial response names an invalid registration id.
    #[error("the TPM initial response names an invalid registration id")]
    InvalidRegistrationId,
    /// The TPM challenge was refused (the reason is in the attempt diagnostics).
    #[error("the TPM challenge was refused")]
    TpmRefused,
    /// The activation blob is empty or longer than [`tpm::MAX_BLOB_LEN`].
    #[error("the activation blob is empty or too long")]
    BlobTooLarge,
    /// A frame that does not belong to the exchange's current step.
    #[error("unexpected SASL frame")]
    Unexpected,
}

/// What to answer a SASL frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge and wait for the response.
    Challenge(Vec<u8>),
    /// A TPM device sent its keys: seal a challenge to them and pass the activation blob to
    /// [`Exchange::sealed`] (or call [`Exchange::not_sealed`]).
    Seal(TpmKeys),
    /// Outcome `ok`: the exchange claims this identity.
    Done(Claim),
    /// Outcome `auth`.
    Fail(SaslFailure),
}

/// One connection's SASL exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    id_scope: IdScope,
    state: State,
}

/// Where an exchange is.
#[derive(Debug, Clone)]
enum State {
    /// No `sasl-init` yet.
    Start,
    /// A TPM exchange between its steps.
    Tpm(tpm::Tpm),
    /// The outcome was decided (or a step failed): nothing more belongs to it.
    Finished,
}

impl Exchange {
    /// An exchange for a service with ID scope `id_scope`.
    pub fn new(id_scope: IdScope) -> Self {
        Self {
            id_scope,
            state: State::Start,
        }
    }

    /// The device's `sasl-init`.
    pub fn init(&mut self, mechanism: &str, initial_response: Option<&[u8]>) -> Step {
        if !matches!(self.state, State::Start) {
            self.state = State::Finished;
            return Step::Fail(SaslFailure::Unexpected);
        }
        let Some(mechanism) = Mechanism::from_name(mechanism) else {
            return Step::Fail(SaslFailure::UnsupportedMechanism);
        };
        self.state = State::Finished;
        let response = initial_response.unwrap_or_default();
        let result = match mechanism {
            Mechanism::Plain => self.plain(response).map(Step::Done),
            // EXTERNAL's optional authzid and ANONYMOUS's trace string name nobody we trust.
            Mechanism::External | Mechanism::Anonymous => Ok(Step::Done(Claim::Certificate)),
            Mechanism::Tpm => tpm::Tpm::init(&self.id_scope, response).map(|(state, step)| {
                self.state = State::Tpm(state);
                step
            }),
        };
        result.unwrap_or_else(Step::Fail)
    }

    /// The device's `sasl-response` to our last challenge.
    pub fn response(&mut self, response: &[u8]) -> Step {
        self.advance(|tpm| tpm.response(response))
    }

    /// The activation blob asked for by [`Step::Seal`]: the first segment to send.
    pub fn sealed(&mut self, blob: Vec<u8>) -> Step {
        self.advance(|tpm| tpm.sealed(blob))
    }

    /// The challenge asked for by [`Step::Seal`] was refused: the exchange fails.
    pub fn not_sealed(&mut self) -> Step {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Tpm(tpm::Tpm::Sealing { .. }) => Step::Fail(SaslFailure::TpmRefused),
            _ => Step::Fail(SaslFailure::Unexpected),
        }
    }

    /// Runs one TPM step; out of a TPM exchange nothing is expected.
    fn advance(&mut self, step: impl FnOnce(tpm::Tpm) -> (Option<tpm::Tpm>, Step)) -> Step {
        let State::Tpm(state) = std::mem::replace(&mut self.state, State::Finished) else {
            return Step::Fail(SaslFailure::Unexpected);
        };
        let (next, answer) = step(state);
        if let Some(next) = next {
            self.state = State::Tpm(next);
        }
        answer
    }

    fn plain(&self, response: &[u8]) -> Result<Claim, SaslFailure> {
        if response.len() > MAX_PLAIN_RESPONSE {
            return Err(SaslFailure::MalformedPlain);
        }
        let mut parts = response.split(|b| *b == 0);
        let (Some(_authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslFailure::MalformedPlain);
        };
        let authcid = std::str::from_utf8(authcid).map_err(|_| SaslFailure::MalformedPlain)?;
        let token = std::str::from_utf8(password).map_err(|_| SaslFailure::MalformedPlain)?;
        let (scope, registration_id) =
            crate::address::parse_device_path(authcid).ok_or(SaslFailure::BadUsername)?;
        if !scope.eq_ignore_ascii_case(self.id_scope.as_str()) {
            return Err(SaslFailure::WrongIdScope);
        }
        Ok(Claim::Sas {
            registration_id,
            token: token.to_owned(),
        })
    }
}

/// The [`Exchange`] as fe2o3's `SaslAcceptor`, which seals TPM challenges with the
/// registrar's table. fe2o3 clones the acceptor for each connection and keeps the clone, so
/// the result is left in a slot shared with the driver.
#[derive(Clone)]
pub(crate) struct SaslServer {
    exchange: Exchange,
    registrar: Registrar,
    result: Arc<Mutex<Option<Result<Claim, SaslFailure>>>>,
}

impl SaslServer {
    pub(crate) fn new(registrar: Registrar) -> Self {
        Self {
            exchange: Exchange::new(registrar.id_scope().clone()),
            registrar,
            result: Arc::default(),
        }
    }

    /// The exchange's result once it finished (`None` while it runs or if it never started).
    pub(crate) fn result(&self) -> Option<Result<Claim, SaslFailure>> {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The TPM challenge of `keys` from the registrar's table, or its refusal recorded.
    fn seal(&mut self, keys: &TpmKeys) -> Step {
        let challenge = self.registrar.tpm_challenges().challenge(
            keys.registration_id.as_str(),
            &STANDARD.encode(&keys.endorsement_key),
            &STANDARD.encode(&keys.storage_root_key),
            self.registrar.lookup(),
            crate::connection::unix_now(),
        );
        match challenge {
            Ok(challenge) => match STANDARD.decode(challenge.authentication_key()) {
                Ok(blob) => self.exchange.sealed(blob),
                Err(_) => {
                    tracing::error!("bug: a TPM challenge that is not base64");
                    self.exchange.not_sealed()
                }
            },
            Err(refusal) => {
                tracing::debug!(
                    reason = refusal.reason.label(),
                    "AMQP TPM challenge refused"
                );
                self.registrar.record_refusal(
                    keys.registration_id.as_str(),
                    Transport::Amqp,
                    &refusal,
                );
                self.exchange.not_sealed()
            }
        }
    }

    fn answer(&mut self, step: Step) -> SaslServerFrame {
        let step = match step {
            Step::Seal(keys) => self.seal(&keys),
            step => step,
        };
        let (code, result) = match step {
            Step::Challenge(challenge) => {
                return SaslServerFrame::Challenge(fe2o3_amqp::types::sasl::SaslChallenge {
                    challenge: challenge.into(),
                })
            }
            Step::Done(claim) => (SaslCode::Ok, Ok(claim)),
            Step::Fail(failure) => (SaslCode::Auth, Err(failure)),
            Step::Seal(_) => {
                tracing::error!("bug: a TPM blob asked for twice in one step");
                (SaslCode::Sys, Err(SaslFailure::Unexpected))
            }
        };
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }
}

impl SaslAcceptor for SaslServer {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(
            Mechanism::ALL
                .iter()
                .map(|m| Symbol::from(m.name()))
                .collect::<Vec<_>>(),
        )
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let step = self.exchange.init(
            init.mechanism.as_str(),
            init.initial_response.as_ref().map(|r| r.as_slice()),
        );
        self.answer(step)
    }

    fn on_response(&mut self, response: SaslResponse) -> SaslServerFrame {
        let step = self.exchange.response(response.response.as_slice());
        self.answer(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange {
        Exchange::new(IdScope::parse("0ne00000001").unwrap())
    }

    #[test]
    fn plain_claims_the_username_s_registration_id_with_the_token() {
        let step = exchange().init(
            "PLAIN",
            Some(b"\x000ne00000001/registrations/Dev-1\0SharedAccessSignature sr=x"),
        );
        let Step::Done(Claim::Sas {
            registration_id,
            token,
        }) = step
        else {
            panic!("{step:?}");
        };
        assert_eq!(registration_id.as_str(), "Dev-1");
        assert_eq!(token, "SharedAccessSignature sr=x");
    }

    #[test]
    fn plain_accepts_the_scope_in_any_case_and_an_authzid() {
        let step = exchange().init("PLAIN", Some(b"who\x000NE00000001/registrations/d\0t"));
        assert!(matches!(step, Step::Done(Claim::Sas { .. })), "{step:?}");
    }

    #[test]
    fn plain_refuses_malformed_responses_and_other_scopes() {
        let cases: [(&[u8], SaslFailure); 6] = [
            (b"", SaslFailure::MalformedPlain),
            (b"\0user", SaslFailure::MalformedPlain),
            (b"\0a\0b\0c", SaslFailure::MalformedPlain),
            (b"\0\xff\xfe\0pw", SaslFailure::MalformedPlain),
            (b"\0device-1\0pw", SaslFailure::BadUsername),
            (
                b"\x000ne00000002/registrations/d\0pw",
                SaslFailure::WrongIdScope,
            ),
        ];
        for (response, failure) in cases {
            assert_eq!(
                exchange().init("PLAIN", Some(response)),
                Step::Fail(failure.clone()),
                "{response:?}"
            );
        }
        let long = vec![b'a'; MAX_PLAIN_RESPONSE + 1];
        assert_eq!(
            exchange().init("PLAIN", Some(&long)),
            Step::Fail(SaslFailure::MalformedPlain)
        );
    }

    #[test]
    fn external_and_anonymous_defer_to_the_certificate() {
        for name in ["EXTERNAL", "ANONYMOUS"] {
            assert_eq!(
                exchange().init(name, Some(b"anything")),
                Step::Done(Claim::Certificate)
            );
        }
    }

    #[test]
    fn unknown_mechanisms_a_second_init_and_stray_responses_fail() {
        assert_eq!(
            exchange().init("plain", None),
            Step::Fail(SaslFailure::UnsupportedMechanism)
        );
        assert_eq!(
            exchange().init("SCRAM-SHA-256", None),
            Step::Fail(SaslFailure::UnsupportedMechanism)
        );
        let mut twice = exchange();
        twice.init("ANONYMOUS", None);
        assert_eq!(
            twice.init("ANONYMOUS", None),
            Step::Fail(SaslFailure::Unexpected)
        );
        assert_eq!(
            exchange().response(b"x"),
            Step::Fail(SaslFailure::Unexpected)
        );
    }

    #[test]
    fn the_acceptor_offers_every_mechanism_and_leaves_the_result_for_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let store = dps_store::Store::open(dir.path()).unwrap();
        let config =
            dps_registrar::RegistrarConfig::new(IdScope::parse("0ne00000001").unwrap(), Vec::new());
        let mut server = SaslServer::new(Registrar::new(store, config).unwrap());
        let offered: Vec<String> = server
            .mechanisms()
            .0
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(offered, ["PLAIN", "EXTERNAL", "ANONYMOUS", "TPM"]);
        let driver_view = server.clone();
        assert_eq!(driver_view.result(), None);
        let frame = server.on_init(SaslInit {
            mechanism: Symbol::from("EXTERNAL"),
            initial_response: None,
            hostname: None,
        });
        assert!(matches!(
            frame,
            SaslServerFrame::Outcome(SaslOutcome {
                code: SaslCode::Ok,
                ..
            })
        ));
        assert_eq!(driver_view.result(), Some(Ok(Claim::Certificate)));
        assert!(!format!(
            "{:?}",
            Claim::Sas {
                registration_id: RegistrationId::parse("d").unwrap(),
                token: "secret-token".into()
            }
        )
        .contains("secret"));
    }
}
