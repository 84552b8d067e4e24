//! RabbitMQ stopped (`rabbitmqctl stop_app`) in the middle of a stream of 1,000 MQTT
//! registrations with the assignment feed on, then started again: every device ends up
//! assigned, each assignment a device was told of has its event (exactly one per device after
//! deduplication by message id), and no device heard "assigned" while its event was
//! unconfirmed.
//!
//! This binary holds this one test: it stops the shared broker, which no other test may be
//! using meanwhile (cargo runs test binaries one after another).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Server, HUB};
use dps_feed::{EventType, FeedConfig};
use dps_mqtt::MqttLimits;
use dps_test_util::broker::{self, unique, TestBroker};
use dps_types::{Etag, RegistrationId, SymmetricKey};
use serde_json::json;

const DEVICES: usize = 1000;
/// Devices registering at once.
const CONCURRENCY: usize = 32;
/// Completed registrations before the broker is stopped.
const STOP_AFTER: usize = 300;
/// How long the broker stays away (registrations go on meanwhile, told to retry).
const OUTAGE: Duration = Duration::from_secs(3);
/// A device's pause before it tries again after a retry answer (the server says 5 s; a
/// test device is more impatient, which only means more retry answers).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What one device was finally told.
struct Told {
    etag: Etag,
    retries: usize,
}

/// Registers one group device until it is told "assigned", reconnecting after every retry
/// answer; checks at that moment that its event is not waiting unconfirmed.
async fn register(server: &Server, id: &str, key: &SymmetricKey) -> Told {
    let mut retries = 0;
    loop {
        let mut client = server.sas_device(id, key).await;
        let registered = client.register("r1", json!({"registrationId": id})).await;
        assert_eq!(registered.status, 202, "{registered:?}");
        let operation = registered.body["operationId"].as_str().unwrap().to_owned();
        for attempt in 0.. {
            let polled = client.poll(&format!("p{attempt}"), &operation).await;
            match polled.status {
                202 => tokio::time::sleep(Duration::from_millis(20)).await,
                200 => {
                    let state = &polled.body["registrationState"];
                    assert_eq!(polled.body["status"], "assigned", "{polled:?}");
                    assert_eq!(state["assignedHub"], HUB);
                    let etag = Etag::parse(state["etag"].as_str().unwrap()).unwrap();
                    let rid = RegistrationId::parse(id).unwrap();
                    let feed = server.registrar.feed().unwrap();
                    for t in [EventType::Assigned, EventType::Reassigned] {
                        let message = dps_feed::message_id(&rid, &etag, t);
                        assert_eq!(
                            feed.pending(&message),
                            None,
                            "{id} told assigned unconfirmed"
                        );
                    }
                    return Told { etag, retries };
                }
                429 => break,
                _ => panic!("unexpected answer {polled:?}"),
            }
        }
        retries += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_stopped_mid_stream_loses_no_assignment() {
    let exchange = unique("exchange");
    let queue = unique("outage");
    let admin = TestBroker::connect().await;
    admin.declare_exchange(&exchange).await;
    admin.bind_durable_queue(&queue, &exchange, "#").await;
    drop(admin);

    let server = Arc::new(
        Server::with_feed(
            MqttLimits::default(),
            FeedConfig {
                exchange: exchange.clone(),
                connection_name: unique("conn"),
                connect_timeout: Duration::from_secs(20),
                confirm_timeout: Duration::from_secs(2),
                reconnect_min: Duration::from_millis(100),
                reconnect_max: Duration::from_millis(500),
                sweep_interval: Duration::from_millis(500),
                ..FeedConfig::default()
            },
        )
        .await,
    );
    let group_key = SymmetricKey::generate();
    server
        .enroll_group(
            json!({"enrollmentGroupId": "fleet", "attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": group_key.expose_base64()}}}),
        )
        .await;

    let done = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut devices = Vec::new();
    for n in 0..DEVICES {
        let (server, done, slots) = (server.clone(), done.clone(), slots.clone());
        let id = format!("device-{n:04}");
        let key = dps_attest::derive_device_key(&group_key, &id);
        devices.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let told = register(&server, &id, &key).await;
            done.fetch_add(1, Ordering::Relaxed);
            (id, told)
        }));
    }

    while done.load(Ordering::Relaxed) < STOP_AFTER {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
        .await
        .unwrap();
    let stopped_at = done.load(Ordering::Relaxed);
    tokio::time::sleep(OUTAGE).await;
    let during = done.load(Ordering::Relaxed) - stopped_at;
    tokio::task::spawn_blocking(|| rabbitmqctl(&["start_app"]))
        .await
        .unwrap();

    let mut told = HashMap::new();
    let mut retried = 0;
    for device in devices {
        let (id, t) = device.await.unwrap();
        retried += usize::from(t.retries > 0);
        told.insert(id, t.etag);
    }
    assert_eq!(told.len(), DEVICES);
    assert!(
        retried > 0,
        "no device was asked to retry: the outage did not bite"
    );
    // Registrations completed while the broker was away were at most those whose events the
    // broker had confirmed just before it went.
    assert!(
        during < CONCURRENCY,
        "{during} devices were assigned during the outage"
    );

    let admin = TestBroker::connect().await;
    let mut consumer = admin.consume(&queue).await;
    let (events, _duplicates) =
        broker::collect_distinct(&mut consumer, DEVICES, Duration::from_secs(10)).await;
    let mut per_device: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (message_id, delivery) in &events {
        let body = broker::body(delivery);
        assert_eq!(body["type"], "device.assigned", "{body}");
        per_device
            .entry(body["registrationId"].as_str().unwrap().to_owned())
            .or_default()
            .push(message_id.clone());
    }
    let missing: Vec<&String> = told
        .keys()
        .filter(|id| !per_device.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events for {} devices; none for {missing:?} (stopped after {stopped_at})",
        events.len(),
        told.len()
    );
    for (id, etag) in &told {
        let rid = RegistrationId::parse(id).unwrap();
        let expected = dps_feed::message_id(&rid, etag, EventType::Assigned);
        assert_eq!(
            per_device.get(id),
            Some(&vec![expected]),
            "{id}: one event, for the assignment it was told"
        );
        let record = server.store.registration(&rid).unwrap();
        assert_eq!(record.state.etag.as_ref(), Some(etag));
    }
    assert_eq!(server.store.outbox_len(), 0);
    admin.delete(&exchange, &[queue]).await;
}
