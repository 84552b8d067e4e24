//! The registrar with the assignment feed on, against the real RabbitMQ on 127.0.0.1:5672:
//! what each registration and delete publishes, and what a device hears while the broker is
//! away.

mod common;

use std::time::Duration;

use dps_attest::{attest_x509, AttestedDevice, UnixTime};
use dps_feed::{Feed, FeedConfig};
use dps_registrar::{FeedLink, LinkedHub, Registrar, RegistrarConfig, RegistrarError, Transport};
use dps_store::{Precondition, Store};
use dps_test_util::broker::{self, body, collect_distinct, unique, Cutter, TestBroker};
use dps_test_util::{DeviceCert, TestPki};
use dps_types::{
    DeviceRegistrationResult, EnrollmentGroupId, HubName, IdScope, IndividualEnrollment,
    RegistrationId, RegistrationStatus, SymmetricKey,
};
use lapin::Consumer;
use serde_json::{json, Value};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const SECONDARY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
/// How long to wait for an event that must not come.
const QUIET: Duration = Duration::from_secs(2);

fn hub(name: &str) -> HubName {
    HubName::parse(name).unwrap()
}

fn rid(id: &str) -> RegistrationId {
    RegistrationId::parse(id).unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    registrar: Registrar,
    feed: Feed,
    scope: IdScope,
    exchange: String,
    broker: TestBroker,
    consumer: Consumer,
}

async fn env() -> Env {
    env_with(|_| {}, None).await
}

/// A registrar with hubs a and b linked, its feed on a fresh exchange (through `via` when
/// given), and a consumer bound to every event of that exchange.
async fn env_with(tune: impl FnOnce(&mut FeedConfig), via: Option<&Cutter>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let scope = IdScope::parse("0ne00000001").unwrap();
    let hubs: Vec<LinkedHub> = ["hub-a.example.net", "hub-b.example.net"]
        .iter()
        .map(|h| LinkedHub {
            host_name: hub(h),
            allocation_weight: 1,
            apply_allocation_policy: true,
        })
        .collect();
    let exchange = unique("exchange");
    let broker = TestBroker::connect().await;
    broker.declare_exchange(&exchange).await;
    let queue = broker.bind_queue(&exchange, "#").await;
    let consumer = broker.consume(&queue).await;
    let mut config = FeedConfig {
        exchange: exchange.clone(),
        connection_name: unique("conn"),
        connect_timeout: Duration::from_secs(20),
        confirm_timeout: Duration::from_secs(20),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        sweep_interval: Duration::from_millis(200),
        ..FeedConfig::default()
    };
    if let Some(cutter) = via {
        config.url = dps_feed::BrokerUrl::parse(&cutter.url()).unwrap();
    }
    tune(&mut config);
    let link = FeedLink::start(
        &store,
        config,
        hubs.iter().map(|h| h.host_name.clone()).collect(),
    )
    .await
    .unwrap();
    let feed = link.feed().clone();
    let registrar = Registrar::with_feed(
        store.clone(),
        RegistrarConfig::new(scope.clone(), hubs),
        Some(link),
    )
    .unwrap();
    Env {
        _dir: dir,
        store,
        registrar,
        feed,
        scope,
        exchange,
        broker,
        consumer,
    }
}

impl Env {
    async fn enroll(&self, body: Value) -> IndividualEnrollment {
        let e: IndividualEnrollment = serde_json::from_value(body).unwrap();
        let e = dps_attest::prepare_individual(e, &self.registrar.enrollment_rules()).unwrap();
        let stored = self
            .store
            .put_enrollment(e, &Precondition::Any)
            .await
            .unwrap();
        (*stored).clone()
    }

    async fn enroll_group(&self, body: Value) {
        let g = serde_json::from_value(body).unwrap();
        let g = dps_attest::prepare_group(g, &self.registrar.enrollment_rules()).unwrap();
        self.store.put_group(g, &Precondition::Any).await.unwrap();
    }

    fn sas(&self, id: &str, key: &SymmetricKey) -> AttestedDevice {
        common::sas_device(&self.registrar, &self.scope, id, key)
    }

    fn x509(&self, id: &str, device: &DeviceCert) -> AttestedDevice {
        let chain: Vec<&[u8]> = device.chain_der.iter().map(Vec::as_slice).collect();
        attest_x509(&chain, id, self.registrar.lookup(), UnixTime::now())
            .unwrap_or_else(|r| panic!("{:?}", r.reason))
    }

    /// Registers and checks the promise: "assigned" only once the event was confirmed (the
    /// feed holds nothing for the record, and the outbox entry is gone).
    async fn register(&self, device: &AttestedDevice) -> DeviceRegistrationResult {
        let r = self
            .registrar
            .register(device, Transport::Mqtt, None)
            .await
            .unwrap();
        assert_eq!(r.status, RegistrationStatus::Assigned, "{r:?}");
        let etag = r.etag.as_ref().unwrap();
        for t in [
            dps_feed::EventType::Assigned,
            dps_feed::EventType::Reassigned,
        ] {
            let id = dps_feed::message_id(&r.registration_id, etag, t);
            assert_eq!(
                self.feed.pending(&id),
                None,
                "told assigned while unconfirmed"
            );
        }
        assert_eq!(
            self.store.outbox_len(),
            0,
            "a confirmed entry stays in the outbox"
        );
        r
    }

    /// The next `n` distinct events (and no duplicate among them), then nothing more.
    async fn events(&mut self, n: usize) -> Vec<Value> {
        let (seen, duplicates) = collect_distinct(&mut self.consumer, n, broker::PATIENCE).await;
        assert_eq!(seen.len(), n, "events: {:?}", seen.keys());
        assert_eq!(duplicates, 0);
        let extra = broker::next_delivery(&mut self.consumer, QUIET).await;
        assert!(
            extra.is_none(),
            "an unexpected event: {:?}",
            extra.map(|d| body(&d))
        );
        let mut events: Vec<Value> = seen
            .values()
            .map(|d| {
                let e = body(d);
                let p = &d.properties;
                assert_eq!(p.delivery_mode(), &Some(2), "persistent");
                assert_eq!(
                    p.content_type().as_ref().map(|c| c.as_str()),
                    Some("application/json")
                );
                assert_eq!(
                    broker::message_id(d),
                    e["eventId"].as_str().unwrap(),
                    "message_id is the eventId"
                );
                assert_eq!(
                    d.routing_key.as_str(),
                    format!(
                        "{}.{}",
                        e["iotHubHostName"].as_str().unwrap(),
                        e["type"].as_str().unwrap()
                    )
                );
                e
            })
            .collect();
        events.sort_by_key(|e| e["registrationId"].as_str().unwrap_or_default().to_owned());
        events
    }

    async fn cleanup(self) {
        self.feed.shutdown().await;
        self.broker.delete(&self.exchange, &[]).await;
    }
}

fn key() -> SymmetricKey {
    SymmetricKey::parse(KEY).unwrap()
}

fn secondary() -> SymmetricKey {
    SymmetricKey::parse(SECONDARY).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_device_gets_one_assigned_event_with_its_credentials() {
    let mut env = env().await;
    env.enroll(
        json!({"registrationId": "sas-one", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": KEY, "secondaryKey": SECONDARY}},
        "allocationPolicy": "static", "iotHubHostName": "hub-b.example.net",
        "initialTwin": {"tags": {"room": "12"}}, "capabilities": {"iotEdge": true}}),
    )
    .await;
    env.enroll_group(
        json!({"enrollmentGroupId": "sas-grp", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": KEY, "secondaryKey": SECONDARY}}}),
    )
    .await;
    let pki = TestPki::new();
    let individual = pki.device("x509-one");
    let enrolled = env
        .enroll(
            json!({"registrationId": "x509-one", "attestation": {"type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": individual.cert_pem}}}}}),
        )
        .await;
    env.enroll_group(
        json!({"enrollmentGroupId": "x509-grp", "attestation": {"type": "x509",
        "x509": {"signingCertificates": {"primary": {"certificate": pki.intermediate_pem()}}}}}),
    )
    .await;
    let member = pki.device("x509-member");

    env.register(&env.sas("sas-one", &key())).await;
    let derived = dps_attest::derive_device_key(&key(), "sas-member");
    env.register(&env.sas("sas-member", &derived)).await;
    env.register(&env.x509("x509-one", &individual)).await;
    let r = env.register(&env.x509("x509-member", &member)).await;
    assert_eq!(
        r.device_id.as_ref().map(|d| d.as_str()),
        Some("x509-member")
    );

    let events = env.events(4).await;
    let [sas_member, sas_one, x509_member, x509_one] = &events[..] else {
        panic!("{events:?}")
    };
    for e in &events {
        assert_eq!(e["type"], "device.assigned", "{e}");
        assert_eq!(e["schemaVersion"], 1);
        assert_eq!(e["substatus"], "initialAssignment");
        assert_eq!(e["deviceId"], e["registrationId"]);
    }
    assert_eq!(sas_one["iotHubHostName"], "hub-b.example.net");
    assert_eq!(
        sas_one["enrollment"],
        json!({"kind": "individual", "id": "sas-one"})
    );
    assert_eq!(sas_one["iotEdge"], true);
    assert_eq!(sas_one["initialTwin"], json!({"tags": {"room": "12"}}));
    assert_eq!(
        sas_one["authentication"],
        json!({"type": "sas", "symmetricKey": {"primaryKey": KEY, "secondaryKey": SECONDARY}})
    );
    assert_eq!(
        sas_member["enrollment"],
        json!({"kind": "group", "id": "sas-grp"})
    );
    assert_eq!(
        sas_member["authentication"]["symmetricKey"],
        json!({"primaryKey": derived.expose_base64(),
               "secondaryKey": dps_attest::derive_device_key(&secondary(), "sas-member").expose_base64()})
    );
    let x509 = match &enrolled.attestation {
        dps_types::Attestation::X509(x) => x,
        other => panic!("{other:?}"),
    };
    let thumbprint = x509
        .client_certificates
        .as_ref()
        .unwrap()
        .primary
        .as_ref()
        .unwrap();
    let thumbprint = &thumbprint.info.as_ref().unwrap().sha1_thumbprint;
    assert_eq!(x509_one["authentication"]["type"], "selfSigned");
    assert_eq!(
        x509_one["authentication"]["x509Thumbprint"]["primaryThumbprint"]
            .as_str()
            .unwrap()
            .to_ascii_uppercase(),
        thumbprint.replace(':', "").to_ascii_uppercase()
    );
    assert_eq!(
        x509_member["enrollment"],
        json!({"kind": "group", "id": "x509-grp"})
    );
    assert_eq!(
        x509_member["authentication"]["type"],
        "certificateAuthority"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprovisioning_publishes_reassigned_with_the_previous_hub() {
    let mut env = env().await;
    let enroll = |hub: &str, update: bool, migrate: bool| {
        json!({"registrationId": "roamer", "attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": KEY}}, "allocationPolicy": "static", "iotHubHostName": hub,
            "reprovisionPolicy": {"updateHubAssignment": update, "migrateDeviceData": migrate}})
    };
    env.enroll(enroll("hub-a.example.net", true, true)).await;
    let first = env.register(&env.sas("roamer", &key())).await;
    env.enroll(enroll("hub-b.example.net", true, true)).await;
    env.register(&env.sas("roamer", &key())).await;
    env.enroll(enroll("hub-a.example.net", true, false)).await;
    env.register(&env.sas("roamer", &key())).await;
    // Not allowed to move: it stays on hub-a, and the hub is told again (a new record).
    env.enroll(enroll("hub-b.example.net", false, true)).await;
    let stay = env.register(&env.sas("roamer", &key())).await;
    assert_eq!(stay.assigned_hub, first.assigned_hub);

    // One registration at a time, each confirmed before the next: they arrive in order.
    let mut events = Vec::new();
    for _ in 0..4 {
        let d = broker::next_delivery(&mut env.consumer, broker::PATIENCE)
            .await
            .expect("an event per registration");
        events.push(body(&d));
    }
    let summary: Vec<(String, String, Option<String>, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["iotHubHostName"].as_str().unwrap().to_owned(),
                e["previousIotHubHostName"].as_str().map(str::to_owned),
                e["substatus"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let s = |t: &str, h: &str, p: Option<&str>, sub: &str| {
        (
            t.to_owned(),
            h.to_owned(),
            p.map(str::to_owned),
            sub.to_owned(),
        )
    };
    assert_eq!(
        summary,
        [
            s(
                "device.assigned",
                "hub-a.example.net",
                None,
                "initialAssignment"
            ),
            s(
                "device.reassigned",
                "hub-b.example.net",
                Some("hub-a.example.net"),
                "deviceDataMigrated"
            ),
            s(
                "device.reassigned",
                "hub-a.example.net",
                Some("hub-b.example.net"),
                "deviceDataReset"
            ),
            s(
                "device.assigned",
                "hub-a.example.net",
                None,
                "deviceDataReset"
            ),
        ]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_publish_deprovisioned_for_every_device_they_covered() {
    let mut env = env().await;
    env.enroll(
        json!({"registrationId": "solo", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": KEY}}}),
    )
    .await;
    env.enroll(
        json!({"registrationId": "record-only", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": KEY}}}),
    )
    .await;
    env.enroll_group(
        json!({"enrollmentGroupId": "fleet", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": KEY}}}),
    )
    .await;
    for id in ["solo", "record-only"] {
        env.register(&env.sas(id, &key())).await;
    }
    for id in ["fleet-1", "fleet-2"] {
        let k = dps_attest::derive_device_key(&key(), id);
        env.register(&env.sas(id, &k)).await;
    }
    env.events(4).await;

    env.registrar
        .delete_registration(&rid("record-only"), &Precondition::Any)
        .await
        .unwrap();
    env.registrar
        .delete_enrollment(&rid("solo"), &Precondition::Any)
        .await
        .unwrap();
    env.registrar
        .delete_group(
            &EnrollmentGroupId::parse("fleet").unwrap(),
            &Precondition::Any,
        )
        .await
        .unwrap();
    let events = env.events(4).await;
    let summary: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["registrationId"].as_str().unwrap(),
                e["type"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("fleet-1", "device.deprovisioned", "enrollmentDeleted"),
            ("fleet-2", "device.deprovisioned", "enrollmentDeleted"),
            ("record-only", "device.deprovisioned", "registrationDeleted"),
            ("solo", "device.deprovisioned", "enrollmentDeleted"),
        ]
    );
    assert_eq!(
        events[0]["enrollment"],
        json!({"kind": "group", "id": "fleet"})
    );
    assert!(events.iter().all(|e| e.get("authentication").is_none()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_device_keys_the_events_carry_no_key() {
    let mut env = env_with(|c| c.include_device_keys = false, None).await;
    env.enroll(
        json!({"registrationId": "quiet", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": KEY}}}),
    )
    .await;
    env.register(&env.sas("quiet", &key())).await;
    let events = env.events(1).await;
    assert_eq!(events[0]["authentication"], json!({"type": "sas"}));
    assert!(!events[0].to_string().contains(KEY));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_away_devices_retry_and_deletes_wait_in_the_outbox() {
    let cutter = Cutter::start().await;
    let mut env = env_with(|_| {}, Some(&cutter)).await;
    env.enroll(
        json!({"registrationId": "patient", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": KEY}}}),
    )
    .await;
    env.enroll(
        json!({"registrationId": "gone", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": KEY}}}),
    )
    .await;
    env.register(&env.sas("gone", &key())).await;
    env.events(1).await;

    cutter.cut();
    let deadline = tokio::time::Instant::now() + broker::PATIENCE;
    while env.feed.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never saw the link go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = env
        .registrar
        .register(&env.sas("patient", &key()), Transport::Mqtt, None)
        .await;
    assert!(
        matches!(refused, Err(RegistrarError::BrokerUnavailable { retry_after_secs }) if retry_after_secs > 0),
        "{refused:?}"
    );
    assert!(
        env.store.registration(&rid("patient")).is_none(),
        "no assignment without its event"
    );
    let attempts = env.registrar.diagnostics().attempts("patient");
    assert_eq!(
        attempts.last().map(|a| a.reason),
        Some("broker_unavailable")
    );
    // A delete is durable at once; its event waits in the outbox.
    env.registrar
        .delete_registration(&rid("gone"), &Precondition::Any)
        .await
        .unwrap();
    assert_eq!(env.store.outbox_len(), 1);

    cutter.restore().await;
    let deadline = tokio::time::Instant::now() + broker::PATIENCE;
    while !env.feed.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.register(&env.sas("patient", &key())).await;
    let events = env.events(2).await;
    assert_eq!(
        (
            events[0]["registrationId"].as_str(),
            events[0]["type"].as_str()
        ),
        (Some("gone"), Some("device.deprovisioned"))
    );
    assert_eq!(
        (
            events[1]["registrationId"].as_str(),
            events[1]["type"].as_str()
        ),
        (Some("patient"), Some("device.assigned"))
    );
    assert_eq!(env.store.outbox_len(), 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_told_to_retry_gets_its_record_after_a_restart_not_a_second_assignment() {
    // No reconnection while the first process runs: its unconfirmed event stays unconfirmed.
    let env = env_with(
        |c| {
            c.reconnect_min = Duration::from_secs(120);
            c.reconnect_max = Duration::from_secs(120);
        },
        None,
    )
    .await;
    env.enroll(
        json!({"registrationId": "restarted", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": KEY}}}),
    )
    .await;
    // Publishing to an exchange that is gone fails (NOT_FOUND closes the channel) after the
    // record and its outbox entry were written.
    env.broker
        .channel
        .exchange_delete(env.exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    let refused = env
        .registrar
        .register(&env.sas("restarted", &key()), Transport::Mqtt, None)
        .await;
    assert!(
        matches!(refused, Err(RegistrarError::BrokerUnavailable { .. })),
        "{refused:?}"
    );
    let written = env.store.registration(&rid("restarted")).unwrap();
    assert_eq!(env.store.outbox_len(), 1, "the event waits in the outbox");

    // dpsd stops before the broker confirmed the event, and starts again.
    let Env {
        _dir: dir,
        store,
        registrar,
        feed,
        scope,
        exchange,
        broker,
        consumer,
    } = env;
    feed.shutdown().await;
    // Every handle on the store goes (the feed's outbox holds one): sled's lock is released.
    drop((feed, registrar, consumer, store));
    broker.declare_exchange(&exchange).await;
    let queue = broker.bind_queue(&exchange, "#").await;
    let mut consumer = broker.consume(&queue).await;
    let store = Store::open(dir.path()).unwrap();
    let hubs: Vec<LinkedHub> = ["hub-a.example.net", "hub-b.example.net"]
        .iter()
        .map(|h| LinkedHub {
            host_name: hub(h),
            allocation_weight: 1,
            apply_allocation_policy: true,
        })
        .collect();
    let link = FeedLink::start(
        &store,
        FeedConfig {
            exchange: exchange.clone(),
            connection_name: unique("conn"),
            sweep_interval: Duration::from_millis(200),
            ..FeedConfig::default()
        },
        hubs.iter().map(|h| h.host_name.clone()).collect(),
    )
    .await
    .unwrap();
    let feed = link.feed().clone();
    let registrar = Registrar::with_feed(
        store.clone(),
        RegistrarConfig::new(scope.clone(), hubs),
        Some(link),
    )
    .unwrap();
    // The relay sends what the outbox holds; the broker confirms it before the device is back.
    let deadline = tokio::time::Instant::now() + broker::PATIENCE;
    while store.outbox_len() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never confirmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let device = common::sas_device(&registrar, &scope, "restarted", &key());
    let told = registrar
        .register(&device, Transport::Mqtt, None)
        .await
        .unwrap();
    assert_eq!(told.status, RegistrationStatus::Assigned, "{told:?}");
    assert_eq!(
        told.etag, written.state.etag,
        "told of the record written before"
    );
    assert_eq!(
        store.registration(&rid("restarted")).unwrap().state.etag,
        written.state.etag,
        "no second assignment"
    );
    let (events, duplicates) = collect_distinct(&mut consumer, 1, broker::PATIENCE).await;
    assert_eq!((events.len(), duplicates), (1, 0));
    let event = body(events.values().next().unwrap());
    assert_eq!(event["type"], "device.assigned");
    assert!(
        broker::next_delivery(&mut consumer, QUIET).await.is_none(),
        "a second event"
    );
    feed.shutdown().await;
    broker.delete(&exchange, &[queue]).await;
}
