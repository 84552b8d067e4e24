//! What allocation must never do, whatever an enrollment or its webhook says: call a webhook
//! the policy refuses, follow a webhook's redirect, pass its texts or URL on, assign a hub that
//! is not linked; and what refused claimants must never do to the failed-attempt history.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use dps_attest::{attest_sas, AttestedDevice, Refusal, SasToken};
use dps_registrar::{LinkedHub, Registrar, RegistrarConfig, Transport, ERROR_NO_HUB};
use dps_store::{Precondition, Store};
use dps_types::{
    DeviceRegistrationResult, EnrollmentSettings, HubName, IdScope, IndividualEnrollment,
    RegistrationStatus, SymmetricKey, WebhookPolicy,
};
use serde_json::{json, Value};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// Put into URLs and webhook answers; must never come back to a device or the diagnostics.
const SECRET: &str = "secret-marker-5f2c";

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    registrar: Registrar,
    scope: IdScope,
}

fn hub(name: &str) -> HubName {
    HubName::parse(name).unwrap()
}

fn key() -> SymmetricKey {
    SymmetricKey::parse(KEY).unwrap()
}

fn env(policy: WebhookPolicy) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let scope = IdScope::parse("0ne00000001").unwrap();
    let linked = ["hub-a.example.net", "hub-b.example.net"]
        .into_iter()
        .map(|h| LinkedHub {
            host_name: hub(h),
            allocation_weight: 1,
            apply_allocation_policy: true,
        })
        .collect();
    let mut config = RegistrarConfig::new(scope.clone(), linked);
    config.webhook_policy = policy;
    let registrar = Registrar::new(store.clone(), config).unwrap();
    Env {
        _dir: dir,
        store,
        registrar,
        scope,
    }
}

fn http_allowed() -> WebhookPolicy {
    WebhookPolicy {
        allow_http: true,
        allowed_hosts: Vec::new(),
    }
}

impl Env {
    /// Stores an enrollment as it is, without the write-time checks of the service API (as
    /// enrollments written before those checks existed).
    async fn enroll(&self, id: &str, extra: Value) {
        let mut body = json!({"registrationId": id,
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": KEY}}});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
        // Prepared under rules that link every hub it names and allow any webhook, as the
        // write path was before it checked them.
        let rules = dps_attest::EnrollmentRules {
            linked_hubs: e
                .iot_hubs()
                .iter()
                .chain(e.iot_hub_host_name())
                .cloned()
                .collect(),
            webhook: http_allowed(),
        };
        let e = dps_attest::prepare_individual(e, &rules).unwrap();
        self.store
            .put_enrollment(e, &Precondition::Any)
            .await
            .unwrap();
    }

    async fn enroll_custom(&self, id: &str, webhook_url: &str) {
        self.enroll(
            id,
            json!({"allocationPolicy": "custom",
                "customAllocationDefinition": {"webhookUrl": webhook_url, "apiVersion": "2021-10-01"}}),
        )
        .await;
    }

    fn attest(&self, id: &str) -> Result<AttestedDevice, Refusal> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let token = SasToken::generate(
            &format!("{}/registrations/{id}", self.scope),
            &key(),
            Some("registration"),
            now + 600,
        );
        attest_sas(&token, &self.scope, id, self.registrar.lookup(), now)
    }

    async fn register(&self, id: &str) -> DeviceRegistrationResult {
        let device = self.attest(id).unwrap_or_else(|r| panic!("{:?}", r.reason));
        self.registrar
            .register(&device, Transport::Mqtt, None)
            .await
            .unwrap()
    }

    /// Everything about `id` an outsider or operator can see: the device's answer and the
    /// recorded attempts, as text.
    fn visible(&self, id: &str, answer: &DeviceRegistrationResult) -> String {
        let attempts = self.registrar.diagnostics().attempts(id);
        format!("{}\n{attempts:?}", serde_json::to_string(answer).unwrap())
    }
}

/// A loopback HTTP server that answers every request with `status`, `location` (when given)
/// and `body`, and counts the requests. Returns its base URL (`http://127.0.0.1:port`).
async fn server(status: u16, location: Option<String>, body: String) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = {
        let hits = Arc::clone(&hits);
        axum::Router::new().fallback(move || {
            let (hits, location, body) = (Arc::clone(&hits), location.clone(), body.clone());
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let status = StatusCode::from_u16(status).unwrap();
                let mut headers = vec![(header::CONTENT_TYPE, "application/json".to_owned())];
                headers.extend(location.map(|l| (header::LOCATION, l)));
                let headers: axum::http::HeaderMap = headers
                    .into_iter()
                    .map(|(k, v)| (k, v.parse().unwrap()))
                    .collect();
                (status, headers, body)
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

fn allocation_to_b() -> String {
    json!({"iotHubHostName": "hub-b.example.net", "payload": {"from": SECRET}}).to_string()
}

#[tokio::test]
async fn plain_http_webhooks_are_refused_by_default_and_called_when_allowed() {
    let (url, hits) = server(200, None, allocation_to_b()).await;
    let url = format!("{url}/api/allocate?code={SECRET}");

    let strict = env(WebhookPolicy::default());
    strict.enroll_custom("dev-http", &url).await;
    let refused = strict.register("dev-http").await;
    assert_eq!(refused.status, RegistrationStatus::Failed);
    assert_eq!(
        refused.error_message.as_deref(),
        Some("the allocation webhook URL is not allowed by the webhook policy")
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the webhook was called");
    let attempts = strict.registrar.diagnostics().attempts("dev-http");
    assert_eq!(attempts[0].reason, "webhook_failed");
    assert!(!strict.visible("dev-http", &refused).contains(SECRET));

    let relaxed = env(http_allowed());
    relaxed.enroll_custom("dev-http", &url).await;
    let assigned = relaxed.register("dev-http").await;
    assert_eq!(assigned.status, RegistrationStatus::Assigned);
    assert_eq!(assigned.assigned_hub, Some(hub("hub-b.example.net")));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (second, second_hits) = server(200, None, allocation_to_b()).await;
    let (first, first_hits) = server(302, Some(format!("{second}/elsewhere")), String::new()).await;
    let env = env(http_allowed());
    env.enroll_custom("dev-redirect", &format!("{first}/allocate"))
        .await;
    let r = env.register("dev-redirect").await;
    assert_eq!(r.status, RegistrationStatus::Failed);
    assert_eq!(r.payload, None);
    assert!(r.error_message.unwrap().contains("redirect"));
    assert_eq!(first_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        second_hits.load(Ordering::SeqCst),
        0,
        "the redirect target was contacted"
    );
}

#[tokio::test]
async fn the_allow_list_refuses_other_hosts() {
    let (url, hits) = server(200, None, allocation_to_b()).await;
    let env = env(WebhookPolicy {
        allow_http: true,
        allowed_hosts: vec!["alloc.example.net".into()],
    });
    env.enroll_custom("dev-list", &format!("{url}/allocate"))
        .await;
    let r = env.register("dev-list").await;
    assert_eq!(r.status, RegistrationStatus::Failed);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a host off the list was called"
    );
}

#[tokio::test]
async fn failures_never_carry_the_url_the_answer_or_library_texts() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (error_body, _) = server(502, None, format!("{{\"error\": \"{SECRET}\"}}")).await;
    let (not_json, _) = server(200, None, format!("\"{SECRET}\"")).await;
    let (unlinked, _) = server(
        200,
        None,
        json!({"iotHubHostName": format!("{SECRET}.example.net")}).to_string(),
    )
    .await;
    let env = env(http_allowed());
    for (id, base, reason) in [
        ("dev-closed", &closed, "could not be reached"),
        ("dev-502", &error_body, "answered HTTP 502"),
        ("dev-invalid", &not_json, "invalid allocation"),
        ("dev-unlinked", &unlinked, "not one of the linked hubs"),
    ] {
        let url = format!("{base}/api/allocate?code={SECRET}");
        env.enroll_custom(id, &url).await;
        let r = env.register(id).await;
        assert_eq!(r.status, RegistrationStatus::Failed, "{id}");
        let message = r.error_message.clone().unwrap_or_default();
        assert!(message.contains(reason), "{id}: {message}");
        let visible = env.visible(id, &r);
        let host = base.trim_start_matches("http://");
        assert!(
            !visible.contains(SECRET) && !visible.contains(host),
            "{id} leaks: {visible}"
        );
    }
}

#[tokio::test]
async fn hubs_that_are_not_linked_are_never_assigned() {
    let env = env(http_allowed());
    env.enroll(
        "dev-static",
        json!({"allocationPolicy": "static", "iotHubHostName": "rogue.example.net"}),
    )
    .await;
    let r = env.register("dev-static").await;
    assert_eq!(r.status, RegistrationStatus::Failed);
    assert_eq!(r.error_code, Some(ERROR_NO_HUB));
    let attempt = &env.registrar.diagnostics().attempts("dev-static")[0];
    assert_eq!(attempt.reason, "no_hub");
    assert!(attempt.detail.contains("not linked"), "{}", attempt.detail);

    env.enroll(
        "dev-list",
        json!({"allocationPolicy": "hashed", "iotHubs": ["rogue.example.net", "hub-b.example.net"]}),
    )
    .await;
    let r = env.register("dev-list").await;
    assert_eq!(r.assigned_hub, Some(hub("hub-b.example.net")));

    let (url, hits) = server(200, None, allocation_to_b()).await;
    env.enroll(
        "dev-custom",
        json!({"allocationPolicy": "custom", "iotHubs": ["rogue.example.net"],
            "customAllocationDefinition": {"webhookUrl": format!("{url}/a"), "apiVersion": "2021-10-01"}}),
    )
    .await;
    let r = env.register("dev-custom").await;
    assert_eq!(r.status, RegistrationStatus::Failed);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing linked to offer");
}

#[tokio::test]
async fn a_flood_of_refused_claimants_does_not_freeze_or_erase_diagnostics() {
    let env = env(http_allowed());
    env.enroll("known", json!({})).await;
    assert_eq!(
        env.register("known").await.status,
        RegistrationStatus::Assigned
    );
    let Err(refusal) = env.attest("nobody") else {
        panic!("attested without an enrollment");
    };
    env.registrar
        .record_refusal("known", Transport::Mqtt, &refusal);
    // Three times the largest tier the registrar keeps for either kind of id.
    let flood = 60_000;
    for i in 0..flood {
        env.registrar
            .record_refusal(&format!("made-up-{i}"), Transport::Mqtt, &refusal);
    }
    let d = env.registrar.diagnostics();
    assert_eq!(
        d.attempts("known").len(),
        1,
        "a registered device's history"
    );
    assert_eq!(d.attempts(&format!("made-up-{}", flood - 1)).len(), 1);
    assert!(d.attempts("made-up-0").is_empty());
}
