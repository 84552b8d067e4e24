//! A TPM device registers over AMQP with the SASL `TPM` mechanism, its TPM a real software
//! TPM (`swtpm` + `tpm2-tools`): the SASL exchange is driven by hand exactly as the Node SDK's
//! `sasl_tpm.ts` speaks it (fe2o3's client has no custom mechanisms), the activation blob is
//! activated, imported and loaded in the TPM, the TPM signs the SAS token, and the connection
//! then goes on as any device's (fe2o3's client, links, register, poll). Every refusal names
//! its precise reason in the attempt diagnostics.

mod common;

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use dps_amqp::SASL_HEADER;
use dps_test_util::swtpm::{split, SoftwareTpm};
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use fe2o3_amqp::types::primitives::Symbol;
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslResponse};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

/// What the device's TPM does with the blob: the SAS token it signs.
type Answer<'a> = Box<dyn FnOnce(&[u8]) -> String + 'a>;

/// The token the Node TPM client builds (`_createRegistrationSas`): `sr` is
/// `encodeURIComponent(audience)`, the TPM signs `sr + "\n" + se` with `key`.
fn tpm_token(tpm: &SoftwareTpm, key: &Path, id: &str) -> String {
    let expiry = unix_now() + 3600;
    let sr = address(id).replace('/', "%2F");
    let signature = tpm.hmac(key, format!("{sr}\n{expiry}").as_bytes());
    let sig = STANDARD
        .encode(signature)
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn=registration")
}

/// What a TPM client does with the blob: activate, import, load, sign.
fn activate_and_sign(tpm: &SoftwareTpm, id: &str, blob: &[u8]) -> String {
    let parts = split(blob);
    let inner_wrap_key = tpm.activate_credential(&parts).unwrap();
    let key = tpm.import_and_load(&parts, &inner_wrap_key).unwrap();
    tpm_token(tpm, &key, id)
}

/// An individual TPM enrollment of `id` with this EK, through the store as the API writes it.
async fn enroll_tpm(server: &Server, id: &str, endorsement_key: &[u8]) {
    server
        .enroll(json!({"registrationId": id,
            "attestation": {"type": "tpm", "tpm": {"endorsementKey": STANDARD.encode(endorsement_key)}}}))
        .await;
}

async fn send(tls: &mut TlsStream<TcpStream>, frame: Frame) {
    let mut body = BytesMut::new();
    FrameCodec {}.encode(frame, &mut body).unwrap();
    let size = u32::try_from(body.len() + 4).unwrap();
    tls.write_all(&size.to_be_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
}

async fn receive(tls: &mut TlsStream<TcpStream>) -> (usize, Frame) {
    let mut size = [0; 4];
    tls.read_exact(&mut size).await.unwrap();
    let size = usize::try_from(u32::from_be_bytes(size)).unwrap();
    let mut body = vec![0; size - 4];
    tls.read_exact(&mut body).await.unwrap();
    let frame = FrameCodec {}
        .decode(&mut BytesMut::from(&body[..]))
        .unwrap()
        .unwrap();
    (size, frame)
}

/// The SASL `TPM` exchange as the Node SDK runs it, on a fresh TLS connection; the TPM work
/// runs in `answer`. The stream, ready for the AMQP header, or the outcome's failure code.
async fn tpm_sasl(
    server: &Server,
    id: &str,
    endorsement_key: &[u8],
    storage_root_key: &[u8],
    answer: Answer<'_>,
) -> Result<TlsStream<TcpStream>, SaslCode> {
    let mut tls = server.tls(None).await;
    tls.write_all(&SASL_HEADER).await.unwrap();
    let mut header = [0; 8];
    tls.read_exact(&mut header).await.unwrap();
    assert_eq!(header, SASL_HEADER);
    let (_, Frame::Mechanisms(mechanisms)) = receive(&mut tls).await else {
        panic!("no mechanisms");
    };
    assert!(mechanisms
        .sasl_server_mechanisms
        .0
        .contains(&Symbol::from("TPM")));

    let init = [
        &[0][..],
        SCOPE.as_bytes(),
        &[0],
        id.as_bytes(),
        &[0],
        endorsement_key,
    ]
    .concat();
    send(
        &mut tls,
        Frame::Init(SaslInit {
            mechanism: Symbol::from("TPM"),
            initial_response: Some(init.into()),
            hostname: Some(address(id)),
        }),
    )
    .await;
    let mut answer = Some(answer);
    let mut blob = Vec::new();
    loop {
        let response = match receive(&mut tls).await {
            (_, Frame::Outcome(outcome)) if outcome.code == SaslCode::Ok => return Ok(tls),
            (_, Frame::Outcome(outcome)) => return Err(outcome.code),
            (size, Frame::Challenge(challenge)) => {
                assert!(size <= 512, "a SASL frame of {size} bytes");
                let challenge = challenge.challenge.into_vec();
                match challenge.split_first() {
                    Some((_, [])) => [&[0][..], storage_root_key].concat(),
                    Some((&control, segment)) if control & 0xC0 == 0xC0 => {
                        blob.extend_from_slice(segment);
                        let answer = answer.take().expect("one last segment");
                        let token = tokio::task::block_in_place(|| answer(&blob));
                        [&[0][..], token.as_bytes()].concat()
                    }
                    Some((&control, segment)) if control & 0x80 == 0x80 => {
                        blob.extend_from_slice(segment);
                        vec![0]
                    }
                    _ => panic!("a challenge the Node SDK rejects: {challenge:?}"),
                }
            }
            (_, other) => panic!("unexpected SASL frame {other:?}"),
        };
        send(
            &mut tls,
            Frame::Response(SaslResponse {
                response: response.into(),
            }),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_software_tpm_registers_over_amqp_and_uses_its_challenge_up() {
    let server = Server::start().await;
    let tpm = SoftwareTpm::start();
    let id = unique("tpm");
    enroll_tpm(&server, &id, &tpm.endorsement_key()).await;

    let tls = tpm_sasl(
        &server,
        &id,
        &tpm.endorsement_key(),
        &tpm.storage_root_key(),
        Box::new(|blob| activate_and_sign(&tpm, &id, blob)),
    )
    .await
    .expect("SASL outcome ok");
    let connection = dps_test_util::amqp::connect(tls, None).await;
    let mut device = Device::attach(connection, &address(&id)).await;
    let state = device.register_until_done().await;
    assert_eq!(state["status"], "assigned", "{state}");
    assert_eq!(state["registrationState"]["assignedHub"], HUB);
    assert_eq!(state["registrationState"]["deviceId"], id.as_str());
    // The hub key, sealed to this TPM as its challenge was: the TPM imports it.
    let hub_key = state["registrationState"]["tpm"]["authenticationKey"]
        .as_str()
        .expect("an assigned TPM device gets its hub key");
    tpm.activate(hub_key).expect("the TPM imports its hub key");
    device.close().await;

    let record = server.store.cache().registration(&id).expect("a record");
    assert_eq!(
        record.state.assigned_hub.as_ref().map(|h| h.as_str()),
        Some(HUB)
    );
    assert_eq!(server.refusals(&id), []);
    assert_eq!(
        server.registrar.tpm_challenges().len(),
        0,
        "the challenge is used up"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endorsement_key_not_enrolled_fails_sasl_with_the_reason_recorded() {
    let server = Server::start().await;
    let tpm = SoftwareTpm::start();
    let other = SoftwareTpm::start();
    let enrolled_elsewhere = unique("tpm-other-ek");
    enroll_tpm(&server, &enrolled_elsewhere, &other.endorsement_key()).await;
    let unknown = unique("tpm-unknown");

    for (id, reason) in [
        (&enrolled_elsewhere, "tpm_endorsement_key_mismatch"),
        (&unknown, "no_enrollment"),
    ] {
        let outcome = tpm_sasl(
            &server,
            id,
            &tpm.endorsement_key(),
            &tpm.storage_root_key(),
            Box::new(|_| panic!("no blob for a device that is not enrolled")),
        )
        .await;
        assert_eq!(outcome.err(), Some(SaslCode::Auth), "{id}");
        assert_eq!(server.refusals(id), [(reason, "amqp".to_owned())]);
    }
    assert_eq!(server.stats().sasl_failures, 2);
    assert_eq!(server.registrar.tpm_challenges().len(), 0);
    server.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_signed_with_another_key_or_replayed_is_closed_as_unauthorized() {
    let server = Server::start().await;
    let tpm = SoftwareTpm::start();
    let id = unique("tpm");
    enroll_tpm(&server, &id, &tpm.endorsement_key()).await;
    let (ek, srk) = (tpm.endorsement_key(), tpm.storage_root_key());

    // Signed in the TPM, but with a key of its own instead of the one sealed to it.
    let tls = tpm_sasl(
        &server,
        &id,
        &ek,
        &srk,
        Box::new(|_| tpm_token(&tpm, &tpm.own_hmac_key(), &id)),
    )
    .await
    .expect("the token is checked after SASL, as PLAIN's");
    let mut connection = dps_test_util::amqp::connect(tls, None).await;
    let error = closed_with(&mut connection)
        .await
        .expect("closed with an error");
    assert!(error.contains("UnauthorizedAccess"), "{error}");
    assert!(error.contains("401002"), "{error}");
    assert_eq!(
        server.refusals(&id),
        [("tpm_signature_invalid", "amqp".to_owned())]
    );

    // A token that registered once, sent again: the new exchange sealed a new key.
    let mut first = None;
    let tls = tpm_sasl(
        &server,
        &id,
        &ek,
        &srk,
        Box::new(|blob| {
            let token = activate_and_sign(&tpm, &id, blob);
            first = Some(token.clone());
            token
        }),
    )
    .await
    .unwrap();
    let connection = dps_test_util::amqp::connect(tls, None).await;
    let mut device = Device::attach(connection, &address(&id)).await;
    assert_eq!(device.register_until_done().await["status"], "assigned");
    device.close().await;
    let replayed = first.expect("a token");
    let tls = tpm_sasl(&server, &id, &ek, &srk, Box::new(move |_| replayed))
        .await
        .unwrap();
    let mut connection = dps_test_util::amqp::connect(tls, None).await;
    let error = closed_with(&mut connection)
        .await
        .expect("closed with an error");
    assert!(error.contains("UnauthorizedAccess"), "{error}");
    let reasons: Vec<_> = server.refusals(&id).into_iter().map(|(r, _)| r).collect();
    assert_eq!(reasons, ["tpm_signature_invalid", "tpm_signature_invalid"]);
    assert_eq!(server.stats().not_authorized, 2);
    server.assert_still_serving().await;
}
