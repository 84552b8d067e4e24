//! The SASL `TPM` mechanism's steps, as the Node SDK's `sasl_tpm.ts` speaks them
//! (`dps-protocol.md` §6). Every value is raw bytes: the EK and SRK are `TPM2B_PUBLIC`s, the
//! activation blob goes out decoded (the HTTPS API's `authenticationKey` is its base64).
//!
//! 1. `sasl-init` `TPM`, initial response `\0 idScope \0 registrationId \0 EK` → a one-byte
//!    challenge `\0`;
//! 2. response `\0 SRK` → [`Step::Seal`]: the caller asks `dps-attest` for the activation blob
//!    and hands it to [`super::Exchange::sealed`];
//! 3. the blob in challenges of at most [`SEGMENT_LEN`] bytes after a control byte ([`MORE`],
//!    [`LAST`] on the final one); the device answers `\0` to each but the last;
//! 4. response `\0 SAS token` → [`Step::Done`] with [`Claim::Tpm`], attested after SASL like a
//!    PLAIN claim.
//!
//! The steps are a fixed sequence, so their count is bounded by the blob's size
//! ([`MAX_BLOB_LEN`]); every response is at most [`MAX_RESPONSE_LEN`] bytes.

use dps_types::{IdScope, RegistrationId};

use super::{Claim, SaslFailure, Step};

/// Control byte of a blob segment that more segments follow.
pub const MORE: u8 = 0x80;
/// Control byte of the blob's last segment.
pub const LAST: u8 = 0xC0;
/// Blob bytes per challenge. A SASL frame before the OPEN is at most 512 bytes; the frame
/// header, the challenge performative and the binary's constructor take 25 of them, the
/// control byte one, so 470 leaves room to spare (the C SDK's segment length).
pub const SEGMENT_LEN: usize = 470;
/// Longest activation blob we send (an RSA 2048 one is about 750 bytes): at most 9 segments.
pub const MAX_BLOB_LEN: usize = 4096;
/// Longest response we look at, the 512-byte pre-OPEN frame limit (the frame guard closes
/// the connection on a larger frame before this is reached).
pub const MAX_RESPONSE_LEN: usize = 512;

/// The keys of a TPM device that asks for its challenge. `Debug` shows sizes only.
#[derive(Clone, PartialEq, Eq)]
pub struct TpmKeys {
    /// The registration id of the initial response.
    pub registration_id: RegistrationId,
    /// The EK's `TPM2B_PUBLIC`.
    pub endorsement_key: Vec<u8>,
    /// The SRK's `TPM2B_PUBLIC`.
    pub storage_root_key: Vec<u8>,
}

impl std::fmt::Debug for TpmKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmKeys")
            .field("registration_id", &self.registration_id)
            .field("endorsement_key_len", &self.endorsement_key.len())
            .field("storage_root_key_len", &self.storage_root_key.len())
            .finish()
    }
}

/// Where a TPM exchange is.
#[derive(Debug, Clone)]
pub(super) enum Tpm {
    /// The init was read and our one-byte challenge sent: the SRK comes next.
    AwaitSrk {
        registration_id: RegistrationId,
        endorsement_key: Vec<u8>,
    },
    /// [`Step::Seal`] was answered: the blob comes from the caller.
    Sealing { keys: TpmKeys },
    /// Segments of `blob` from `sent` on are still to go.
    Sending {
        keys: TpmKeys,
        blob: Vec<u8>,
        sent: usize,
    },
}

impl Tpm {
    /// Reads the initial response; answers the one-byte challenge that asks for the SRK.
    pub(super) fn init(id_scope: &IdScope, response: &[u8]) -> Result<(Tpm, Step), SaslFailure> {
        if response.len() > MAX_RESPONSE_LEN {
            return Err(SaslFailure::MalformedTpm);
        }
        let Some((0, rest)) = response.split_first() else {
            return Err(SaslFailure::MalformedTpm);
        };
        // The EK is binary and may hold NULs: split off the two text fields only.
        let mut parts = rest.splitn(3, |b| *b == 0);
        let (Some(scope), Some(id), Some(endorsement_key)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslFailure::MalformedTpm);
        };
        if endorsement_key.is_empty() {
            return Err(SaslFailure::MalformedTpm);
        }
        let scope = std::str::from_utf8(scope).map_err(|_| SaslFailure::MalformedTpm)?;
        if !scope.eq_ignore_ascii_case(id_scope.as_str()) {
            return Err(SaslFailure::WrongIdScope);
        }
        let registration_id = std::str::from_utf8(id)
            .ok()
            .and_then(|id| RegistrationId::parse(id).ok())
            .ok_or(SaslFailure::InvalidRegistrationId)?;
        let state = Tpm::AwaitSrk {
            registration_id,
            endorsement_key: endorsement_key.to_vec(),
        };
        Ok((state, Step::Challenge(vec![0])))
    }

    /// The device's response in this state: the next state, if the exchange goes on, and the
    /// answer.
    pub(super) fn response(self, response: &[u8]) -> (Option<Tpm>, Step) {
        if response.len() > MAX_RESPONSE_LEN {
            return (None, Step::Fail(SaslFailure::MalformedTpm));
        }
        let Some((0, value)) = response.split_first() else {
            return (None, Step::Fail(SaslFailure::MalformedTpm));
        };
        match self {
            Tpm::AwaitSrk {
                registration_id,
                endorsement_key,
            } => {
                if value.is_empty() {
                    return (None, Step::Fail(SaslFailure::MalformedTpm));
                }
                let keys = TpmKeys {
                    registration_id,
                    endorsement_key,
                    storage_root_key: value.to_vec(),
                };
                let step = Step::Seal(keys.clone());
                (Some(Tpm::Sealing { keys }), step)
            }
            // The blob is being asked for: no response belongs here.
            Tpm::Sealing { .. } => (None, Step::Fail(SaslFailure::Unexpected)),
            Tpm::Sending { keys, blob, sent } if sent < blob.len() => {
                if !value.is_empty() {
                    return (None, Step::Fail(SaslFailure::MalformedTpm));
                }
                Tpm::send(keys, blob, sent)
            }
            Tpm::Sending { keys, .. } => {
                let Ok(token) = std::str::from_utf8(value) else {
                    return (None, Step::Fail(SaslFailure::MalformedTpm));
                };
                if token.is_empty() {
                    return (None, Step::Fail(SaslFailure::MalformedTpm));
                }
                let claim = Claim::Tpm {
                    keys,
                    token: token.to_owned(),
                };
                (None, Step::Done(claim))
            }
        }
    }

    /// The blob arrived: its first segment.
    pub(super) fn sealed(self, blob: Vec<u8>) -> (Option<Tpm>, Step) {
        match self {
            Tpm::Sealing { keys } if !blob.is_empty() && blob.len() <= MAX_BLOB_LEN => {
                Tpm::send(keys, blob, 0)
            }
            Tpm::Sealing { .. } => (None, Step::Fail(SaslFailure::BlobTooLarge)),
            _ => (None, Step::Fail(SaslFailure::Unexpected)),
        }
    }

    /// The segment of `blob` at `sent`, and the state that waits for its answer.
    fn send(keys: TpmKeys, blob: Vec<u8>, sent: usize) -> (Option<Tpm>, Step) {
        let end = blob.len().min(sent.saturating_add(SEGMENT_LEN));
        let control = if end == blob.len() { LAST } else { MORE };
        let mut segment = Vec::with_capacity(1 + end.saturating_sub(sent));
        segment.push(control);
        segment.extend_from_slice(blob.get(sent..end).unwrap_or_default());
        let state = Tpm::Sending {
            keys,
            blob,
            sent: end,
        };
        (Some(state), Step::Challenge(segment))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Exchange;
    use super::*;

    const SCOPE: &str = "0ne00000001";
    /// Stand-ins for the `TPM2B_PUBLIC`s: binary, with NULs inside.
    const EK: &[u8] = b"\x01\x3a\0\x01ek-bytes\0\xff";
    const SRK: &[u8] = b"\x01\x1a\0\x01srk\0";

    fn init_response(scope: &str, id: &str, ek: &[u8]) -> Vec<u8> {
        let mut response = vec![0];
        response.extend_from_slice(scope.as_bytes());
        response.push(0);
        response.extend_from_slice(id.as_bytes());
        response.push(0);
        response.extend_from_slice(ek);
        response
    }

    fn with_zero(value: &[u8]) -> Vec<u8> {
        [&[0][..], value].concat()
    }

    /// An exchange that received the SRK and asked for the blob.
    fn sealing(id: &str) -> Exchange {
        let mut exchange = Exchange::new(IdScope::parse(SCOPE).unwrap());
        assert_eq!(
            exchange.init("TPM", Some(&init_response(SCOPE, id, EK))),
            Step::Challenge(vec![0])
        );
        let Step::Seal(keys) = exchange.response(&with_zero(SRK)) else {
            panic!("no seal step");
        };
        assert_eq!(keys.registration_id.as_str(), id);
        assert_eq!(keys.endorsement_key, EK);
        assert_eq!(keys.storage_root_key, SRK);
        exchange
    }

    #[test]
    fn a_tpm_device_gets_the_blob_in_segments_and_claims_with_its_token() {
        let mut exchange = sealing("tpm-device");
        let blob: Vec<u8> = (0..=255u8).cycle().take(2 * SEGMENT_LEN + 7).collect();
        let mut received = Vec::new();
        let mut step = exchange.sealed(blob.clone());
        let mut controls = Vec::new();
        loop {
            let Step::Challenge(segment) = step else {
                panic!("{step:?}");
            };
            assert!(segment.len() <= 1 + SEGMENT_LEN);
            let (&control, bytes) = segment.split_first().unwrap();
            controls.push(control);
            received.extend_from_slice(bytes);
            if control == LAST {
                break;
            }
            step = exchange.response(&[0]);
        }
        assert_eq!(controls, [MORE, MORE, LAST]);
        assert_eq!(received, blob, "the segments put together are the blob");
        let Step::Done(Claim::Tpm { keys, token }) =
            exchange.response(b"\0SharedAccessSignature sr=x")
        else {
            panic!("no claim");
        };
        assert_eq!(keys.registration_id.as_str(), "tpm-device");
        assert_eq!(token, "SharedAccessSignature sr=x");
        assert_eq!(keys.endorsement_key, EK);
        assert_eq!(
            keys.storage_root_key, SRK,
            "the SRK the hub key is sealed to"
        );
        assert_eq!(
            exchange.response(&[0]),
            Step::Fail(SaslFailure::Unexpected),
            "nothing follows the outcome"
        );
    }

    #[test]
    fn a_blob_of_one_segment_is_sent_as_the_last() {
        let mut exchange = sealing("d");
        assert_eq!(
            exchange.sealed(vec![7; 3]),
            Step::Challenge(vec![LAST, 7, 7, 7])
        );
        let blob = vec![1; SEGMENT_LEN];
        let mut exchange = sealing("d");
        let Step::Challenge(segment) = exchange.sealed(blob) else {
            panic!()
        };
        assert_eq!((segment[0], segment.len()), (LAST, SEGMENT_LEN + 1));
    }

    #[test]
    fn malformed_initial_responses_fail() {
        let long_ek = vec![1; MAX_RESPONSE_LEN];
        let cases: [(Vec<u8>, SaslFailure); 8] = [
            (Vec::new(), SaslFailure::MalformedTpm),
            (b"x0ne00000001\0d\0ek".to_vec(), SaslFailure::MalformedTpm),
            (b"\x000ne00000001\0d".to_vec(), SaslFailure::MalformedTpm),
            (init_response(SCOPE, "d", b""), SaslFailure::MalformedTpm),
            (
                init_response(SCOPE, "d", &long_ek),
                SaslFailure::MalformedTpm,
            ),
            (b"\0\xff\0d\0ek".to_vec(), SaslFailure::MalformedTpm),
            (
                init_response("0ne00000002", "d", EK),
                SaslFailure::WrongIdScope,
            ),
            (
                init_response(SCOPE, "not valid!", EK),
                SaslFailure::InvalidRegistrationId,
            ),
        ];
        for (response, failure) in cases {
            let mut exchange = Exchange::new(IdScope::parse(SCOPE).unwrap());
            assert_eq!(
                exchange.init("TPM", Some(&response)),
                Step::Fail(failure),
                "{response:?}"
            );
            assert_eq!(exchange.response(&[0]), Step::Fail(SaslFailure::Unexpected));
        }
        let mut exchange = Exchange::new(IdScope::parse(SCOPE).unwrap());
        assert_eq!(
            exchange.init("TPM", None),
            Step::Fail(SaslFailure::MalformedTpm)
        );
        let upper = init_response("0NE00000001", "d", EK);
        let mut exchange = Exchange::new(IdScope::parse(SCOPE).unwrap());
        assert_eq!(exchange.init("TPM", Some(&upper)), Step::Challenge(vec![0]));
    }

    #[test]
    fn responses_out_of_turn_or_malformed_end_the_exchange() {
        // An SRK response without its leading NUL, or empty.
        for srk in [&b"srk"[..], b"", b"\0", &[0; MAX_RESPONSE_LEN + 1]] {
            let mut exchange = Exchange::new(IdScope::parse(SCOPE).unwrap());
            exchange.init("TPM", Some(&init_response(SCOPE, "d", EK)));
            assert_eq!(
                exchange.response(srk),
                Step::Fail(SaslFailure::MalformedTpm),
                "{srk:?}"
            );
            assert_eq!(
                exchange.sealed(vec![1]),
                Step::Fail(SaslFailure::Unexpected)
            );
        }
        // A response while the blob is being sealed.
        let mut exchange = sealing("d");
        assert_eq!(exchange.response(&[0]), Step::Fail(SaslFailure::Unexpected));
        // An intermediate answer that is not a lone NUL.
        let mut exchange = sealing("d");
        exchange.sealed(vec![1; SEGMENT_LEN + 1]);
        assert_eq!(
            exchange.response(b"\0x"),
            Step::Fail(SaslFailure::MalformedTpm)
        );
        // A final answer without a token, or not UTF-8.
        for token in [&b"\0"[..], b"\0\xff\xfe", b"tok"] {
            let mut exchange = sealing("d");
            exchange.sealed(vec![1]);
            assert_eq!(
                exchange.response(token),
                Step::Fail(SaslFailure::MalformedTpm),
                "{token:?}"
            );
        }
        // A second init, a blob nobody asked for, a refusal out of turn.
        let mut exchange = sealing("d");
        assert_eq!(
            exchange.init("TPM", Some(b"\0")),
            Step::Fail(SaslFailure::Unexpected)
        );
        assert_eq!(
            exchange.sealed(vec![1]),
            Step::Fail(SaslFailure::Unexpected)
        );
        let mut exchange = Exchange::new(IdScope::parse(SCOPE).unwrap());
        assert_eq!(
            exchange.sealed(vec![1]),
            Step::Fail(SaslFailure::Unexpected)
        );
        assert_eq!(exchange.not_sealed(), Step::Fail(SaslFailure::Unexpected));
    }

    #[test]
    fn a_refused_challenge_or_an_unsendable_blob_fails() {
        let mut exchange = sealing("d");
        assert_eq!(exchange.not_sealed(), Step::Fail(SaslFailure::TpmRefused));
        assert_eq!(exchange.response(&[0]), Step::Fail(SaslFailure::Unexpected));
        for blob in [Vec::new(), vec![0; MAX_BLOB_LEN + 1]] {
            let mut exchange = sealing("d");
            assert_eq!(exchange.sealed(blob), Step::Fail(SaslFailure::BlobTooLarge));
        }
        let mut exchange = sealing("d");
        let mut step = exchange.sealed(vec![0; MAX_BLOB_LEN]);
        let mut challenges = 0;
        while let Step::Challenge(segment) = &step {
            challenges += 1;
            if segment[0] == LAST {
                break;
            }
            step = exchange.response(&[0]);
        }
        assert_eq!(challenges, MAX_BLOB_LEN.div_ceil(SEGMENT_LEN));
    }

    #[test]
    fn debug_shows_neither_keys_nor_token() {
        let keys = TpmKeys {
            registration_id: RegistrationId::parse("d").unwrap(),
            endorsement_key: b"secret-ek".to_vec(),
            storage_root_key: b"secret-srk".to_vec(),
        };
        let claim = Claim::Tpm {
            keys: keys.clone(),
            token: "secret-token".into(),
        };
        for shown in [format!("{keys:?}"), format!("{claim:?}")] {
            assert!(
                !shown.contains("secret") && !shown.contains("115"),
                "{shown}"
            );
        }
    }
}
