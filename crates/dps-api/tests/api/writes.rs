//! What a write may name besides its attestation (linked hubs, custom allocation webhooks),
//! single and bulk, and the request parameters every operation checks (`api-version`,
//! `x-ms-max-item-count`).

use axum::http::StatusCode;
use dps_types::WebhookPolicy;
use serde_json::{json, Value};

use super::{assert_error, symmetric};
use crate::common::{Api, API_VERSION, LINKED_HUBS};

fn with(id: &str, settings: Value) -> Value {
    let mut body = symmetric(id);
    if let (Some(body), Some(settings)) = (body.as_object_mut(), settings.as_object()) {
        body.extend(settings.clone());
    }
    body
}

fn custom(url: &str) -> Value {
    json!({"allocationPolicy": "custom",
        "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"}})
}

async fn put(api: &Api, id: &str, settings: Value) -> crate::common::Reply {
    api.call(
        "PUT",
        &format!("/enrollments/{id}"),
        Some(with(id, settings)),
    )
    .await
}

#[tokio::test]
async fn writes_name_only_linked_hubs() {
    let api = Api::new();
    let ok = put(&api, "dev-1", json!({"iotHubs": LINKED_HUBS})).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    let ok = put(
        &api,
        "dev-2",
        json!({"allocationPolicy": "static", "iotHubHostName": "HUB-B.example.net"}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");

    let unlinked = put(
        &api,
        "dev-3",
        json!({"iotHubs": ["hub-a.example.net", "rogue.example.net"]}),
    )
    .await;
    assert_error(
        &unlinked,
        400,
        400004,
        "iotHubs names 'rogue.example.net', which is not a linked IoT hub",
    );
    let unlinked = put(
        &api,
        "dev-3",
        json!({"allocationPolicy": "static", "iotHubHostName": "rogue.example.net"}),
    )
    .await;
    assert_error(
        &unlinked,
        400,
        400004,
        "iotHubHostName names 'rogue.example.net'",
    );
    let group = api
        .call(
            "PUT",
            "/enrollmentGroups/g1",
            Some(json!({"attestation": {"type": "symmetricKey"},
                "iotHubs": ["rogue.example.net"]})),
        )
        .await;
    assert_error(&group, 400, 400004, "iotHubs names 'rogue.example.net'");
    assert_eq!(
        api.call("GET", "/enrollments/dev-3", None).await.status,
        StatusCode::NOT_FOUND,
        "nothing refused is stored"
    );
}

#[tokio::test]
async fn custom_allocation_needs_its_definition_and_an_allowed_webhook() {
    let api = Api::new();
    let missing = put(&api, "dev-1", json!({"allocationPolicy": "custom"})).await;
    assert_error(
        &missing,
        400,
        400004,
        "allocationPolicy custom needs a customAllocationDefinition",
    );
    for url in [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://127.0.0.1:70/",
        "http://127.0.0.1:8080/api/allocate",
    ] {
        let refused = put(&api, "dev-1", custom(url)).await;
        assert_error(
            &refused,
            400,
            400004,
            "customAllocationDefinition.webhookUrl",
        );
    }
    let https = put(
        &api,
        "dev-1",
        custom("https://alloc.example.net/api/f?code=k"),
    )
    .await;
    assert_eq!(https.status, StatusCode::OK, "{https:?}");

    let mut rules = Api::rules();
    rules.webhook = WebhookPolicy {
        allow_http: true,
        allowed_hosts: Vec::new(),
    };
    let lenient = Api::with_rules(rules);
    let http = put(
        &lenient,
        "dev-1",
        custom("http://127.0.0.1:8080/api/allocate"),
    )
    .await;
    assert_eq!(http.status, StatusCode::OK, "http when allowed: {http:?}");
    let file = put(&lenient, "dev-1", custom("file:///etc/passwd")).await;
    assert_error(&file, 400, 400004, "webhookUrl");
}

#[tokio::test]
async fn bulk_writes_refuse_the_same_items() {
    let api = Api::new();
    let items = json!([
        with("ok-1", json!({"iotHubs": ["hub-a.example.net"]})),
        with("bad-hub", json!({"iotHubs": ["rogue.example.net"]})),
        with(
            "bad-static",
            json!({"allocationPolicy": "static", "iotHubHostName": "rogue.example.net"})
        ),
        with("bad-custom", json!({"allocationPolicy": "custom"})),
        with("bad-webhook", custom("file:///etc/passwd")),
        with("bad-http", custom("http://127.0.0.1:8080/")),
    ]);
    let reply = api
        .call(
            "POST",
            "/enrollments",
            Some(json!({"mode": "create", "enrollments": items})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["isSuccessful"], false);
    let errors = reply.body["errors"].as_array().cloned().unwrap_or_default();
    let failed: Vec<_> = errors
        .iter()
        .map(|e| {
            (
                e["registrationId"].as_str().unwrap_or_default(),
                e["errorCode"].clone(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            ("bad-hub", json!(400004)),
            ("bad-static", json!(400004)),
            ("bad-custom", json!(400004)),
            ("bad-webhook", json!(400004)),
            ("bad-http", json!(400004)),
        ]
    );
    assert!(errors[0]["errorStatus"]
        .as_str()
        .is_some_and(|s| s.contains("not a linked IoT hub")));
    assert_eq!(
        api.call("GET", "/enrollments/ok-1", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call("GET", "/enrollments/bad-hub", None).await.status,
        StatusCode::NOT_FOUND
    );

    let groups = json!({"mode": "update", "enrollmentGroups": [
        {"enrollmentGroupId": "g1", "attestation": {"type": "symmetricKey"},
         "iotHubs": ["rogue.example.net"]}]});
    let reply = api.call("POST", "/enrollmentGroups", Some(groups)).await;
    assert_eq!(reply.body["errors"][0]["enrollmentGroupId"], "g1");
    assert_eq!(reply.body["errors"][0]["errorCode"], 400004);
}

#[tokio::test]
async fn api_version_is_required_and_must_be_one_the_sdks_send() {
    let api = Api::new();
    let token = api.owner_token();
    let send = |uri: &str| api.send(api.exact("GET", uri, &token, &[], None));
    let missing = send("/enrollments/dev-1").await;
    assert_error(
        &missing,
        400,
        400001,
        "api-version query parameter is required",
    );
    assert_eq!(missing.header("x-ms-error-code"), Some("BadRequest"));
    let empty = send("/enrollments/dev-1?api-version=").await;
    assert_error(&empty, 400, 400001, "is required");
    let unsupported = send("/enrollmentGroups/g1?api-version=2099-01-01").await;
    assert_error(
        &unsupported,
        400,
        400001,
        "api-version '2099-01-01' is not supported",
    );
    let query = api
        .send(api.exact(
            "POST",
            "/enrollments/query",
            &token,
            &[],
            Some(json!({"query": "SELECT *"}).to_string()),
        ))
        .await;
    assert_error(&query, 400, 400001, "api-version");
    for version in [
        "2018-04-01",
        "2018-09-01-preview",
        "2019-03-31",
        API_VERSION,
    ] {
        let reply = send(&format!("/enrollments/dev-1?api-version={version}")).await;
        assert_error(&reply, 404, 404201, "enrollment 'dev-1' not found");
    }
    let unknown_path = send("/nothing/here").await;
    assert_error(&unknown_path, 404, 404001, "no operation");
}

#[tokio::test]
async fn max_item_count_must_not_be_negative() {
    let api = Api::new();
    for count in ["-1", "-9223372036854775808"] {
        let reply = api
            .call_with(
                "POST",
                "/enrollments/query",
                &[("x-ms-max-item-count", count)],
                Some(json!({"query": "SELECT *"})),
            )
            .await;
        assert_error(
            &reply,
            400,
            400004,
            "x-ms-max-item-count header is negative",
        );
    }
    let zero = api
        .call_with(
            "POST",
            "/enrollments/query",
            &[("x-ms-max-item-count", "0")],
            Some(json!({"query": "SELECT *"})),
        )
        .await;
    assert_eq!(zero.status, StatusCode::OK);
    assert_eq!(zero.header("x-ms-max-item-count"), Some("100"));
}
