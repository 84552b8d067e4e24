//! The SASL step of the AMQP frontend (`dps_amqp::sasl::Exchange`): a `sasl-init`'s mechanism
//! and initial response, then a `sasl-response`.
//!
//! Input: one control byte, then the initial response. Control bits 0..=1: the mechanism
//! (`PLAIN`, `EXTERNAL`, `ANONYMOUS`, or a name taken from the input up to its first NUL);
//! bit 2: the init has no initial response.
//!
//! Checked: no panic; a PLAIN claim is the username's registration id (as the address parser
//! reads it) and the password, verbatim; a well-formed PLAIN response with our ID scope is
//! never refused; `EXTERNAL` and `ANONYMOUS` defer to the certificate; a name we do not offer
//! fails; a second init after a known mechanism and any response fail as unexpected; a
//! claim's `Debug` does not depend on its token.

#![no_main]

use dps_amqp::address::parse_device_path;
use dps_amqp::sasl::{Claim, Exchange, Mechanism, SaslFailure, Step, MAX_PLAIN_RESPONSE};
use dps_types::IdScope;
use libfuzzer_sys::fuzz_target;

const SCOPE: &str = "0ne00000001";

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let Ok(id_scope) = IdScope::parse(SCOPE) else {
        return;
    };
    let (name, response) = match control & 0b11 {
        0 => ("PLAIN".to_owned(), rest),
        1 => ("EXTERNAL".to_owned(), rest),
        2 => ("ANONYMOUS".to_owned(), rest),
        _ => {
            let at = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            let name = String::from_utf8_lossy(&rest[..at]).into_owned();
            (name, rest.get(at + 1..).unwrap_or_default())
        }
    };
    let initial = (control & 0b100 == 0).then_some(response);
    let mut exchange = Exchange::new(id_scope);
    let step = exchange.init(&name, initial);
    match Mechanism::from_name(&name) {
        None => assert_eq!(
            step,
            Step::Fail(SaslFailure::UnsupportedMechanism),
            "{name:?}"
        ),
        Some(Mechanism::External | Mechanism::Anonymous) => {
            assert_eq!(step, Step::Done(Claim::Certificate))
        }
        Some(Mechanism::Plain) => check_plain(&step, initial.unwrap_or_default()),
    }
    // After a mechanism was chosen (even if its response was refused), another init is out of
    // turn; an unknown name chose nothing and fails as unknown again.
    let again = match Mechanism::from_name(&name) {
        Some(_) => SaslFailure::Unexpected,
        None => SaslFailure::UnsupportedMechanism,
    };
    assert_eq!(exchange.init(&name, initial), Step::Fail(again));
    assert_eq!(exchange.response(rest), Step::Fail(SaslFailure::Unexpected));
});

/// `authzid \0 authcid \0 password` with a UTF-8 authcid and password, if `response` is that.
fn plain_parts(response: &[u8]) -> Option<(&str, &str)> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(_), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((
        std::str::from_utf8(authcid).ok()?,
        std::str::from_utf8(password).ok()?,
    ))
}

fn check_plain(step: &Step, response: &[u8]) {
    let parts = plain_parts(response).filter(|_| response.len() <= MAX_PLAIN_RESPONSE);
    let ours = parts.and_then(|(authcid, password)| {
        let (scope, id) = parse_device_path(authcid)?;
        scope.eq_ignore_ascii_case(SCOPE).then_some((id, password))
    });
    match (step, ours) {
        (
            Step::Done(Claim::Sas {
                registration_id,
                token,
            }),
            Some((id, password)),
        ) => {
            assert_eq!(registration_id.as_str(), id.as_str());
            assert_eq!(token, password);
            let other = Claim::Sas {
                registration_id: registration_id.clone(),
                token: format!("{token}-other"),
            };
            let claim = Claim::Sas {
                registration_id: registration_id.clone(),
                token: token.clone(),
            };
            assert_eq!(
                format!("{claim:?}"),
                format!("{other:?}"),
                "Debug shows the token"
            );
        }
        (Step::Fail(_), None) => {}
        (step, ours) => panic!(
            "{response:?}: {step:?}, expected a claim: {}",
            ours.is_some()
        ),
    }
}
