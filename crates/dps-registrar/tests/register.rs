//! The registration service end to end below the transport: attested device in, durable
//! record and device answer out.

mod common;

use std::sync::{Arc, Mutex};

use dps_attest::AttestedDevice;
use dps_registrar::{
    LinkedHub, Registrar, RegistrarConfig, RegistrarError, Transport, ERROR_NO_HUB,
};
use dps_store::{Precondition, Store};
use dps_types::{
    AssignedDeviceSubstatus, HubName, IdScope, IndividualEnrollment, RegistrationId,
    RegistrationStatus, SymmetricKey,
};
use serde_json::{json, Value};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    registrar: Registrar,
    scope: IdScope,
}

fn hub(name: &str) -> HubName {
    HubName::parse(name).unwrap()
}

fn env_with(hubs: &[(&str, u32)], max_in_flight: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let scope = IdScope::parse("0ne00000001").unwrap();
    let linked = hubs
        .iter()
        .map(|(h, w)| LinkedHub {
            host_name: hub(h),
            allocation_weight: *w,
            apply_allocation_policy: true,
        })
        .collect();
    let mut config = RegistrarConfig::new(scope.clone(), linked);
    config.max_in_flight = max_in_flight;
    // The test webhooks below are plain-http servers on loopback.
    config.webhook_policy.allow_http = true;
    let registrar = Registrar::new(store.clone(), config).unwrap();
    Env {
        _dir: dir,
        store,
        registrar,
        scope,
    }
}

fn env() -> Env {
    env_with(&[("hub-a.example.net", 1), ("hub-b.example.net", 1)], 64)
}

impl Env {
    /// The registrar's rules, with plain-http webhooks allowed (the tests' webhooks are
    /// loopback servers without TLS).
    fn rules(&self) -> dps_attest::EnrollmentRules {
        let mut rules = self.registrar.enrollment_rules();
        rules.webhook.allow_http = true;
        rules
    }

    async fn enroll(&self, body: Value) {
        let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
        let e = dps_attest::prepare_individual(e, &self.rules()).unwrap();
        self.store
            .put_enrollment(e, &Precondition::Any)
            .await
            .unwrap();
    }

    async fn enroll_group(&self, body: Value) {
        let g = serde_json::from_value(body).unwrap();
        let g = dps_attest::prepare_group(g, &self.rules()).unwrap();
        self.store.put_group(g, &Precondition::Any).await.unwrap();
    }

    fn attest(&self, id: &str, key: &SymmetricKey) -> AttestedDevice {
        common::sas_device(&self.registrar, &self.scope, id, key)
    }

    async fn register(&self, id: &str, key: &SymmetricKey) -> dps_types::DeviceRegistrationResult {
        let device = self.attest(id, key);
        self.registrar
            .register(&device, Transport::Mqtt, None)
            .await
            .unwrap()
    }
}

fn key() -> SymmetricKey {
    SymmetricKey::parse(KEY).unwrap()
}

fn sym(id: &str, extra: Value) -> Value {
    let mut v = json!({"registrationId": id, "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": KEY}}});
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    v
}

#[tokio::test]
async fn static_individual_enrollment_is_assigned_durably_with_its_device_id() {
    let env = env();
    env.enroll(sym("dev-1", json!({"deviceId": "custom-id", "allocationPolicy": "static", "iotHubHostName": "hub-b.example.net"})))
        .await;
    let r = env.register("dev-1", &key()).await;
    assert_eq!(r.status, RegistrationStatus::Assigned);
    assert_eq!(r.assigned_hub, Some(hub("hub-b.example.net")));
    assert_eq!(r.device_id.as_ref().map(|d| d.as_str()), Some("custom-id"));
    assert_eq!(
        r.substatus,
        Some(AssignedDeviceSubstatus::InitialAssignment)
    );
    let record = env
        .store
        .registration(&RegistrationId::parse("dev-1").unwrap())
        .expect("record stored");
    assert_eq!(record.state.assigned_hub, r.assigned_hub);
    assert_eq!(record.state.etag, r.etag);
}

#[tokio::test]
async fn group_devices_get_derived_ids_and_a_stable_hashed_hub() {
    let env = env();
    env.enroll_group(json!({"enrollmentGroupId": "grp", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": KEY}}}))
        .await;
    let derived = dps_attest::derive_device_key(&key(), "sensor-7");
    let first = env.register("sensor-7", &derived).await;
    assert_eq!(first.status, RegistrationStatus::Assigned);
    assert_eq!(
        first.device_id.as_ref().map(|d| d.as_str()),
        Some("sensor-7")
    );
    let group = first
        .symmetric_key
        .as_ref()
        .and_then(|s| s.enrollment_group_id.as_ref())
        .map(|g| g.as_str());
    assert_eq!(group, Some("grp"));
    let again = env.register("sensor-7", &derived).await;
    assert_eq!(
        again.assigned_hub, first.assigned_hub,
        "hashed allocation is stable per registration id"
    );
    let page = env
        .store
        .query_registrations(&"grp".parse().unwrap(), 10, None)
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

#[tokio::test]
async fn disabled_and_hubless_registrations_are_answered_and_diagnosed() {
    let env = env_with(&[], 64);
    env.enroll(sym("off", json!({"provisioningStatus": "disabled"})))
        .await;
    env.enroll(sym("nohub", json!({}))).await;
    let off = env.register("off", &key()).await;
    assert_eq!(off.status, RegistrationStatus::Disabled);
    assert!(env
        .store
        .registration(&RegistrationId::parse("off").unwrap())
        .is_none());
    let nohub = env.register("nohub", &key()).await;
    assert_eq!(nohub.status, RegistrationStatus::Failed);
    assert_eq!(nohub.error_code, Some(ERROR_NO_HUB));
    assert!(nohub.error_message.is_some());
    let d = env.registrar.diagnostics();
    assert_eq!(d.attempts("off")[0].reason, "enrollment_disabled");
    assert_eq!(d.attempts("NOHUB")[0].reason, "no_hub");
}

#[tokio::test]
async fn reprovision_policy_decides_hub_and_substatus() {
    let env = env();
    let enroll = |hub: &str, update: bool, migrate: bool| {
        sym(
            "roamer",
            json!({"allocationPolicy": "static", "iotHubHostName": hub,
                   "reprovisionPolicy": {"updateHubAssignment": update, "migrateDeviceData": migrate}}),
        )
    };
    env.enroll(enroll("hub-a.example.net", true, true)).await;
    assert_eq!(
        env.register("roamer", &key()).await.assigned_hub,
        Some(hub("hub-a.example.net"))
    );

    env.enroll(enroll("hub-b.example.net", false, true)).await;
    let kept = env.register("roamer", &key()).await;
    assert_eq!(
        kept.assigned_hub,
        Some(hub("hub-a.example.net")),
        "never re-provision keeps the hub"
    );

    env.enroll(enroll("hub-b.example.net", true, true)).await;
    let moved = env.register("roamer", &key()).await;
    assert_eq!(moved.assigned_hub, Some(hub("hub-b.example.net")));
    assert_eq!(
        moved.substatus,
        Some(AssignedDeviceSubstatus::DeviceDataMigrated)
    );

    env.enroll(enroll("hub-a.example.net", true, false)).await;
    let reset = env.register("roamer", &key()).await;
    assert_eq!(reset.assigned_hub, Some(hub("hub-a.example.net")));
    assert_eq!(
        reset.substatus,
        Some(AssignedDeviceSubstatus::DeviceDataReset)
    );
}

#[tokio::test]
async fn saturated_registrar_answers_busy() {
    let env = env_with(&[("hub-a.example.net", 1)], 0);
    env.enroll(sym("dev", json!({}))).await;
    let device = env.attest("dev", &key());
    let err = env
        .registrar
        .register(&device, Transport::Mqtt, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistrarError::Busy { retry_after_secs } if retry_after_secs > 0));
}

/// A webhook on loopback that records requests and answers with `answer`.
async fn webhook(answer: Value) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = {
        let seen = Arc::clone(&seen);
        axum::Router::new().route(
            "/allocate",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let (seen, answer) = (Arc::clone(&seen), answer.clone());
                async move {
                    seen.lock().unwrap().push(body);
                    axum::Json(answer)
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/allocate", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn custom_webhook_gets_the_device_payload_and_its_payload_reaches_the_device() {
    let env = env();
    let (url, seen) =
        webhook(json!({"iotHubHostName": "hub-b.example.net", "payload": {"firmware": "2.0"}}))
            .await;
    env.enroll(sym(
        "custom-1",
        json!({"allocationPolicy": "custom",
        "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"}}),
    ))
    .await;
    let device = env.attest("custom-1", &key());
    let r = env
        .registrar
        .register(&device, Transport::Mqtt, Some(json!({"model": "t-1000"})))
        .await
        .unwrap();
    assert_eq!(r.status, RegistrationStatus::Assigned);
    assert_eq!(r.assigned_hub, Some(hub("hub-b.example.net")));
    assert_eq!(r.payload, Some(json!({"firmware": "2.0"})));
    let request = seen.lock().unwrap()[0].clone();
    assert_eq!(
        request["deviceRuntimeContext"]["registrationId"],
        "custom-1"
    );
    assert_eq!(
        request["deviceRuntimeContext"]["payload"],
        json!({"model": "t-1000"})
    );
    assert_eq!(request["deviceRuntimeContext"]["symmetricKey"], json!({}));
    assert_eq!(
        request["individualEnrollment"]["attestation"],
        json!({"type": "symmetricKey"})
    );
    let mut offered: Vec<_> = request["linkedHubs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    offered.sort();
    assert_eq!(offered, ["hub-a.example.net", "hub-b.example.net"]);
}

#[tokio::test]
async fn custom_webhook_choosing_an_unlinked_hub_fails_the_registration() {
    let env = env();
    let (url, _) = webhook(json!({"iotHubHostName": "rogue.example.net"})).await;
    env.enroll(sym(
        "custom-2",
        json!({"allocationPolicy": "custom",
        "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"}}),
    ))
    .await;
    let r = env.register("custom-2", &key()).await;
    assert_eq!(r.status, RegistrationStatus::Failed);
    assert!(!r.error_message.unwrap().contains("rogue.example.net"));
    assert_eq!(
        env.registrar.diagnostics().attempts("custom-2")[0].reason,
        "webhook_failed"
    );
}

/// Hubs the alternating webhook hands out, in turn.
const ALTERNATING: [&str; 2] = ["hub-a.example.net", "hub-b.example.net"];

/// A webhook that assigns the hubs of [`ALTERNATING`] in turn and records, per call, the hub
/// the device was in (as the request says) and the hub it assigned.
async fn alternating_webhook() -> (String, Arc<Mutex<Vec<(Option<String>, String)>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let app = {
        let calls = Arc::clone(&calls);
        axum::Router::new().route(
            "/allocate",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let calls = Arc::clone(&calls);
                async move {
                    let current = body["deviceRuntimeContext"]["currentIotHubHostName"]
                        .as_str()
                        .map(str::to_owned);
                    let mut calls = calls.lock().unwrap();
                    let assigned = ALTERNATING[calls.len() % 2].to_owned();
                    calls.push((current, assigned.clone()));
                    axum::Json(json!({"iotHubHostName": assigned}))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/allocate", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_one_device_run_as_if_one_after_another() {
    const REGISTRATIONS: usize = 16;
    let env = env();
    let (url, calls) = alternating_webhook().await;
    env.enroll(sym(
        "roamer",
        json!({"allocationPolicy": "custom",
               "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"},
               "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true}}),
    ))
    .await;
    let mut registrations = tokio::task::JoinSet::new();
    for _ in 0..REGISTRATIONS {
        let (registrar, device) = (env.registrar.clone(), env.attest("roamer", &key()));
        registrations
            .spawn(async move { registrar.register(&device, Transport::Mqtt, None).await });
    }
    let results: Vec<_> = registrations
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();

    assert!(results
        .iter()
        .all(|r| r.status == RegistrationStatus::Assigned));
    let initial = results
        .iter()
        .filter(|r| r.substatus == Some(AssignedDeviceSubstatus::InitialAssignment))
        .count();
    assert_eq!(
        initial, 1,
        "only the first registration is an initial assignment"
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), REGISTRATIONS);
    let mut expected_current = None;
    for (current, assigned) in &calls {
        assert_eq!(
            current, &expected_current,
            "each call sees the hub the last one chose"
        );
        expected_current = Some(assigned.clone());
    }
    let record = env
        .store
        .registration(&RegistrationId::parse("roamer").unwrap())
        .unwrap();
    assert_eq!(
        record.state.assigned_hub.as_ref().map(HubName::as_str),
        expected_current.as_deref()
    );
    assert_eq!(
        record.state.substatus,
        Some(AssignedDeviceSubstatus::DeviceDataMigrated)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_of_different_devices_run_in_parallel() {
    // The webhook answers nobody until both devices' calls have arrived: registrations that
    // waited for each other would time out in it instead.
    let arrived = Arc::new(tokio::sync::Barrier::new(2));
    let app = {
        let arrived = Arc::clone(&arrived);
        axum::Router::new().route(
            "/allocate",
            axum::routing::post(move || {
                let arrived = Arc::clone(&arrived);
                async move {
                    arrived.wait().await;
                    axum::Json(json!({"iotHubHostName": "hub-a.example.net"}))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/allocate", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let env = env();
    let mut registrations = tokio::task::JoinSet::new();
    for id in ["parallel-1", "parallel-2"] {
        env.enroll(sym(
            id,
            json!({"allocationPolicy": "custom",
                   "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"}}),
        ))
        .await;
        let (registrar, device) = (env.registrar.clone(), env.attest(id, &key()));
        registrations
            .spawn(async move { registrar.register(&device, Transport::Mqtt, None).await });
    }
    for result in registrations.join_all().await {
        assert_eq!(result.unwrap().status, RegistrationStatus::Assigned);
    }
}
