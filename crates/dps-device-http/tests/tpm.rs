//! TPM devices over the DPS device REST API, with a real software TPM (`swtpm` driven by
//! `tpm2-tools`) as the device: enrolled through the service API, challenged with `401`, the
//! activation blob activated, imported and loaded in the TPM, the token signed by the TPM,
//! registered and polled to `assigned`, and the hub key of the result imported too: it signs
//! as the key the assignment feed (on the local RabbitMQ) told the hub. Every refusal names
//! its precise reason in the registrar's diagnostics.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{Answer, Credential, Server, SCOPE};
use dps_test_util::broker::{body, next_delivery};
use dps_test_util::swtpm::SoftwareTpm;
use dps_types::{EndorsementKey, Timestamp};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// A swtpm whose EK is enrolled (through the service API) under its default registration id.
struct TpmDevice {
    tpm: SoftwareTpm,
    id: String,
}

impl TpmDevice {
    /// A fresh swtpm, and its enrollment with `enrolled_ek` (its own EK when `None`).
    async fn enrolled(server: &Server, enrolled_ek: Option<Vec<u8>>) -> TpmDevice {
        let tpm = SoftwareTpm::start();
        let ek = EndorsementKey::parse(&STANDARD.encode(tpm.endorsement_key())).unwrap();
        let id = dps_attest::tpm::default_registration_id(&ek)
            .unwrap()
            .to_string();
        let enrolled = STANDARD.encode(enrolled_ek.unwrap_or_else(|| tpm.endorsement_key()));
        let status = server
            .enroll_through_service_api(json!({"registrationId": id,
                "attestation": {"type": "tpm", "tpm": {"endorsementKey": enrolled}}}))
            .await;
        assert_eq!(status, 200);
        TpmDevice { tpm, id }
    }

    /// The register body the Node and C clients send, first and with their answer.
    fn body(&self) -> Value {
        json!({"registrationId": self.id, "tpm": {
            "endorsementKey": STANDARD.encode(self.tpm.endorsement_key()),
            "storageRootKey": STANDARD.encode(self.tpm.storage_root_key())}})
    }

    /// The first register, without credentials: the challenge's `authenticationKey`.
    async fn challenge(&self, server: &Server) -> String {
        let answer = server
            .device(&self.id, Credential::None)
            .register(self.body())
            .await;
        assert_eq!(answer.status, 401, "{answer:?}");
        assert_eq!(answer.body["keyName"], "registration", "{answer:?}");
        assert!(answer.body["message"].is_string(), "{answer:?}");
        answer.body["authenticationKey"]
            .as_str()
            .expect("the challenge carries the blob")
            .to_owned()
    }

    /// The token the TPM signs with the loaded key `key`, valid an hour.
    fn token(&self, key: &std::path::Path) -> String {
        self.tpm
            .sas_token(key, SCOPE, &self.id, Timestamp::now().unix() + 3600)
    }

    /// The challenge activated in the TPM: the loaded key's context.
    async fn activated(&self, server: &Server) -> PathBuf {
        let blob = self.challenge(server).await;
        self.tpm.activate(&blob).unwrap()
    }

    /// Register with `token` and the `tpm` body again.
    async fn answer(&self, server: &Server, token: &str) -> Answer {
        server
            .device(&self.id, Credential::Token(token))
            .register(self.body())
            .await
    }
}

/// Polls `operation_id` with `token`, each time on a new connection (as HTTP clients do),
/// until the answer is final.
async fn poll_until_done(server: &Server, id: &str, token: &str, operation_id: &str) -> Answer {
    for _ in 0..50 {
        let answer = server
            .device(id, Credential::Token(token))
            .poll(operation_id)
            .await;
        if answer.status != 202 {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("still assigning after 50 polls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_software_tpm_registers_and_imports_the_hub_key_the_feed_tells_the_hub() {
    let (server, _hub_side, mut events) = Server::with_feed().await;
    let device = TpmDevice::enrolled(&server, None).await;

    let key = device.activated(&server).await;
    let token = device.token(&key);
    let answer = device.answer(&server, &token).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.body["status"], "assigning");
    let operation_id = answer.body["operationId"].as_str().unwrap().to_owned();

    let done = poll_until_done(&server, &device.id, &token, &operation_id).await;
    assert_eq!(done.status, 200, "{done:?}");
    let state = &done.body["registrationState"];
    assert_eq!(done.body["status"], "assigned", "{done:?}");
    assert_eq!(state["assignedHub"], common::HUB);
    assert_eq!(state["deviceId"], device.id.as_str());
    // The hub key is sealed to this TPM, as the challenge was: the TPM imports it and signs
    // as the hub, told the key by the assignment feed, expects.
    let hub_blob = state["tpm"]["authenticationKey"].as_str().unwrap();
    let hub_key = device.tpm.activate(hub_blob).unwrap();
    let delivery = next_delivery(&mut events, Duration::from_secs(20))
        .await
        .expect("the assignment event");
    let event = body(&delivery);
    assert_eq!(event["type"], "device.assigned", "{event}");
    assert_eq!(event["registrationId"], device.id.as_str());
    assert_eq!(event["authentication"]["type"], "sas", "{event}");
    let told = event["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&STANDARD.decode(told).unwrap()).unwrap();
    mac.update(b"a hub's SAS token");
    assert_eq!(
        device.tpm.hmac(&hub_key, b"a hub's SAS token"),
        mac.finalize().into_bytes().to_vec()
    );

    // The status lookup with the same token tells the same.
    let status = server
        .device(&device.id, Credential::Token(&token))
        .status(json!({"registrationId": device.id}))
        .await;
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!(status.body["status"], "assigned");
    assert!(status.body["tpm"]["authenticationKey"].is_string());
    assert!(server.attempts(&device.id).is_empty());

    // The token only polls: replayed, with or without the tpm body, it registers nothing.
    let replayed = device.answer(&server, &token).await;
    assert_eq!(replayed.status, 401, "{replayed:?}");
    assert_eq!(replayed.error_code.as_deref(), Some("InvalidCertificate"));
    let bare = server
        .device(&device.id, Credential::Token(&token))
        .register(json!({"registrationId": device.id}))
        .await;
    assert_eq!(bare.status, 401, "{bare:?}");
    assert_eq!(
        server.attempts(&device.id),
        [
            ("https".to_owned(), "tpm_challenge_unknown"),
            ("https".to_owned(), "wrong_attestation_type"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_refusals_name_their_precise_reasons() {
    let server = Server::start().await;

    // Enrolled with another TPM's EK: no challenge at all.
    let other = SoftwareTpm::start();
    let stranger = TpmDevice::enrolled(&server, Some(other.endorsement_key())).await;
    let answer = server
        .device(&stranger.id, Credential::None)
        .register(stranger.body())
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.get("authenticationKey").is_none(), "{answer:?}");
    assert_eq!(answer.error_code.as_deref(), Some("InvalidCertificate"));
    assert_eq!(
        server.attempts(&stranger.id),
        [("https".to_owned(), "tpm_endorsement_key_mismatch")]
    );

    let device = TpmDevice::enrolled(&server, None).await;
    // A tampered blob fails inside the TPM; signing with a key of the TPM's own making
    // instead is refused.
    let blob = device.challenge(&server).await;
    let mut tampered = STANDARD.decode(&blob).unwrap();
    tampered[10] ^= 0x01;
    let failure = device
        .tpm
        .activate(&STANDARD.encode(&tampered))
        .unwrap_err();
    assert!(
        failure.contains("tpm2_activatecredential failed"),
        "{failure}"
    );
    let own = device.tpm.own_hmac_key();
    let answer = device.answer(&server, &device.token(&own)).await;
    assert_eq!(answer.status, 401, "{answer:?}");

    // The right key, but the answer tampered with after signing (a later expiry).
    let key = device.tpm.activate(&blob).unwrap();
    let token = device.token(&key);
    let forged = token.replace("&se=", "&se=9");
    assert_eq!(device.answer(&server, &forged).await.status, 401);
    // A poll with a token nobody registered with.
    let poll = server
        .device(&device.id, Credential::Token(&token))
        .poll("00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(poll.status, 401, "{poll:?}");
    assert_eq!(
        server.attempts(&device.id),
        [
            ("https".to_owned(), "tpm_signature_invalid"),
            ("https".to_owned(), "tpm_signature_invalid"),
            ("https".to_owned(), "wrong_attestation_type"),
        ]
    );
    // The challenge survived the strangers' answers: the device's own still registers.
    assert_eq!(device.answer(&server, &token).await.status, 202);
}

#[tokio::test]
async fn tpm_bodies_are_checked_before_anything_is_sealed() {
    let server = Server::start().await;
    let id = common::unique("tpm");
    let device = server.device(&id, Credential::None);
    let half = device
        .register(json!({"registrationId": id, "tpm": {"endorsementKey": "AToAAQ"}}))
        .await;
    assert_eq!(half.status, 400, "{half:?}");
    assert!(
        half.body["message"]
            .as_str()
            .unwrap()
            .contains("storageRootKey"),
        "{half:?}"
    );
    let garbled = device
        .register(json!({"registrationId": id,
            "tpm": {"endorsementKey": "AToAAQALAAMAsgAg", "storageRootKey": "ARgAAQALAAMAcgAA"}}))
        .await;
    assert_eq!(garbled.status, 401, "{garbled:?}");
    assert_eq!(
        server.attempts(&id),
        [("https".to_owned(), "tpm_key_invalid")]
    );
}
