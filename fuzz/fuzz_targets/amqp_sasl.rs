//! The SASL step of the AMQP frontend (`dps_amqp::sasl::Exchange`): a `sasl-init`'s mechanism
//! and initial response, then a `sasl-response`.
//!
//! Input: one control byte, then the initial response. Control bits 0..=1: the mechanism
//! (`PLAIN`, `EXTERNAL`, `ANONYMOUS`, or a name taken from the input up to its first NUL);
//! bit 2: the init has no initial response. Control bit 3: a `TPM` exchange instead, whose
//! script is the rest of the input: a byte that sizes the activation blob, then messages
//! (each a 2-byte big-endian length and its bytes): the initial response and the responses.
//!
//! Checked: no panic; a PLAIN claim is the username's registration id (as the address parser
//! reads it) and the password, verbatim; a well-formed PLAIN response with our ID scope is
//! never refused; `EXTERNAL` and `ANONYMOUS` defer to the certificate; a name we do not offer
//! fails; a second init after a known mechanism and any response fail as unexpected; a
//! claim's `Debug` does not depend on its token. TPM: the blob is asked for once, after the
//! one-byte challenge was answered; every challenge fits a pre-OPEN SASL frame; the segments
//! are `0x80`-prefixed but the last, `0xC0`-prefixed, and put together are the blob; a claim
//! comes only after the last segment, with the init's registration id and EK and the final
//! response's token; the step count is bounded; after an outcome every step fails.

#![no_main]

use dps_amqp::address::parse_device_path;
use dps_amqp::sasl::tpm::{LAST, MAX_BLOB_LEN, MORE, SEGMENT_LEN};
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
    if control & 0b1000 != 0 {
        return check_tpm(Exchange::new(id_scope), rest);
    }
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
        // Only the one-byte challenge that asks for the SRK, or a failure (`check_tpm` runs
        // the rest of the exchange).
        Some(Mechanism::Tpm) => assert!(
            matches!(&step, Step::Fail(_)) || step == Step::Challenge(vec![0]),
            "{step:?}"
        ),
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

/// Splits `data` into 2-byte-length-prefixed messages (a short tail is the last message).
fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        let (message, tail) = rest.split_at(len);
        out.push(message);
        data = tail;
    }
    out
}

/// `\0 scope \0 id \0 EK` split as the mechanism reads it, if `init` is that.
fn tpm_init_parts(init: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (0, rest) = init.split_first()? else {
        return None;
    };
    let mut parts = rest.splitn(3, |b| *b == 0);
    Some((parts.next()?, parts.next()?, parts.next()?))
}

fn check_tpm(mut exchange: Exchange, data: &[u8]) {
    let Some((&size, script)) = data.split_first() else {
        return;
    };
    // Sizes around the bounds: empty, one segment, several, the most, one too many.
    let blob_len = match size % 5 {
        0 => 0,
        1 => usize::from(size),
        2 => SEGMENT_LEN + usize::from(size),
        3 => MAX_BLOB_LEN,
        _ => MAX_BLOB_LEN + 1,
    };
    let blob: Vec<u8> = (0..blob_len).map(|i| (i % 251) as u8).collect();
    let messages = messages(script);
    let Some((init, responses)) = messages.split_first() else {
        return;
    };
    let mut step = exchange.init("TPM", Some(init));
    let mut sent = Vec::new();
    let mut sealed = false;
    let mut last_sent = false;
    let mut steps = 1;
    let mut responses = responses.iter();
    loop {
        match &step {
            Step::Challenge(challenge) => {
                assert!(challenge.len() <= 1 + SEGMENT_LEN, "{}", challenge.len());
                if !sealed {
                    assert_eq!(challenge, &[0], "the SRK is asked for with one NUL");
                } else {
                    let (&control, segment) = challenge.split_first().expect("a control byte");
                    assert!(!last_sent, "a segment after the last");
                    assert!(control == MORE || control == LAST, "{control:#x}");
                    last_sent = control == LAST;
                    sent.extend_from_slice(segment);
                    if last_sent {
                        assert_eq!(sent, blob, "the segments are the blob");
                    }
                }
            }
            Step::Seal(keys) => {
                assert!(!sealed, "the blob asked for twice");
                let (_, id, ek) = tpm_init_parts(init).expect("a well-formed init");
                assert_eq!(keys.registration_id.as_str().as_bytes(), id);
                assert_eq!(keys.endorsement_key, ek);
                sealed = true;
                step = exchange.sealed(blob.clone());
                if blob.is_empty() || blob.len() > MAX_BLOB_LEN {
                    assert_eq!(step, Step::Fail(SaslFailure::BlobTooLarge));
                }
                continue;
            }
            Step::Done(claim) => {
                assert!(last_sent, "a claim before the whole blob went out");
                let Claim::Tpm { keys, token } = &claim else {
                    panic!("a TPM exchange claimed {claim:?}");
                };
                let (_, id, ek) = tpm_init_parts(init).expect("a well-formed init");
                assert_eq!(keys.registration_id.as_str().as_bytes(), id);
                assert_eq!(keys.endorsement_key, ek);
                assert!(!keys.storage_root_key.is_empty());
                assert!(!token.is_empty());
                let other = Claim::Tpm {
                    keys: keys.clone(),
                    token: format!("{token}-other"),
                };
                assert_eq!(
                    format!("{claim:?}"),
                    format!("{other:?}"),
                    "Debug shows the token"
                );
                break;
            }
            Step::Fail(_) => break,
        }
        let Some(response) = responses.next() else {
            return;
        };
        steps += 1;
        assert!(
            steps <= 3 + MAX_BLOB_LEN.div_ceil(SEGMENT_LEN),
            "{steps} steps"
        );
        step = exchange.response(response);
    }
    for response in responses {
        assert_eq!(
            exchange.response(response),
            Step::Fail(SaslFailure::Unexpected)
        );
    }
    assert_eq!(exchange.sealed(blob), Step::Fail(SaslFailure::Unexpected));
}
