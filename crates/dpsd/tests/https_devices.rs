//! The DPS device REST API as dpsd serves it: on the service API's listener, next to the
//! service API, counted under transport `https` in the metrics and the attempts; and off with
//! `api.device_api = false`.

mod common;

use std::time::Duration;

use common::ServiceClient;
use dps_types::{SymmetricKey, Timestamp};
use serde_json::{json, Value};

const HUB: &str = "hub-1.example.net";

/// A device SAS token for `id` under `scope`, as the Node SDK signs it.
fn device_token(scope: &str, id: &str, key: &SymmetricKey) -> String {
    dps_attest::SasToken::generate(
        &format!("{scope}/registrations/{id}"),
        key,
        Some("registration"),
        Timestamp::now().unix() + 3600,
    )
}

/// Enrolls `id` with a fresh symmetric key through the service API; returns the key.
async fn enroll(service: &ServiceClient, id: &str) -> SymmetricKey {
    let key = SymmetricKey::generate();
    let response = service
        .request(reqwest::Method::PUT, &format!("/enrollments/{id}"))
        .json(&json!({"registrationId": id,
            "attestation": {"type": "symmetricKey",
                "symmetricKey": {"primaryKey": key.expose_base64()}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_registers_over_https_next_to_the_service_api_and_counts_as_https() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start_with_hub(dir.path(), HUB, &[]).await;
    let service = ServiceClient::new(
        &running.connection_string,
        &running.ca_file,
        running.api_addr,
    );
    let scope = running.id_scope.to_string();
    let id = "https-device-1";
    let key = enroll(&service, id).await;
    let device = format!("{}/{scope}/registrations/{id}", service.base);

    let answer = service
        .http
        .put(format!("{device}/register?api-version=2019-03-31"))
        .header("authorization", device_token(&scope, id, &key))
        .json(&json!({ "registrationId": id }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.unwrap();
    let operation = body["operationId"].as_str().unwrap().to_owned();
    let mut done = Value::Null;
    for _ in 0..100 {
        let answer = service
            .http
            .get(format!(
                "{device}/operations/{operation}?api-version=2019-03-31"
            ))
            .header("authorization", device_token(&scope, id, &key))
            .send()
            .await
            .unwrap();
        match answer.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(20)).await,
            200 => {
                done = answer.json().await.unwrap();
                break;
            }
            other => panic!("poll answered {other}: {:?}", answer.text().await),
        }
    }
    assert_eq!(done["status"], "assigned", "{done}");
    assert_eq!(done["registrationState"]["assignedHub"], HUB, "{done}");

    // The service API sees the record; a refused attempt shows with transport https.
    let record: Value = service
        .request(reqwest::Method::GET, &format!("/registrations/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "assigned");
    assert_eq!(
        record["assignedHub"],
        done["registrationState"]["assignedHub"]
    );
    let refused = service
        .http
        .put(format!("{device}/register?api-version=2019-03-31"))
        .header(
            "authorization",
            device_token(&scope, id, &SymmetricKey::generate()),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let attempts: Value = service
        .request(
            reqwest::Method::GET,
            &format!("/registrations/{id}/attempts"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(attempts["attempts"][0]["transport"], "https", "{attempts}");
    assert_eq!(attempts["attempts"][0]["reason"], "sas_signature_mismatch");

    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        running.metrics_addr.expect("metrics on")
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let sample = |name: &str, labels: &[&str]| -> Option<f64> {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|label| l.contains(label)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let assigned = [
        "transport=\"https\"",
        "attestation=\"symmetricKey\"",
        "outcome=\"assigned\"",
    ];
    assert_eq!(sample("dps_registrations_total", &assigned), Some(1.0));
    assert_eq!(
        sample(
            "dps_registration_duration_seconds_count",
            &["transport=\"https\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            "dps_attestation_failures_total",
            &["reason=\"sas_signature_mismatch\""]
        ),
        Some(1.0)
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_the_device_api_off_the_listener_serves_the_service_api_only() {
    let dir = tempfile::tempdir().unwrap();
    let running =
        common::start_with_hub(dir.path(), HUB, &[("DPSD_API_DEVICE_API", "false")]).await;
    assert!(!running.device_api);
    let service = ServiceClient::new(
        &running.connection_string,
        &running.ca_file,
        running.api_addr,
    );
    let id = "https-off";
    let key = enroll(&service, id).await;
    let scope = running.id_scope.to_string();
    let answer = service
        .http
        .put(format!(
            "{}/{scope}/registrations/{id}/register?api-version=2019-03-31",
            service.base
        ))
        .header("authorization", device_token(&scope, id, &key))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no operation matches"),
        "{body}"
    );
    running.shutdown().await.unwrap();
}
