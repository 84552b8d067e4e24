//! Test support: an in-memory outbox, unique broker names per test, events built with the
//! crate's own builders, and a consumer on the real RabbitMQ at 127.0.0.1:5672.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dps_feed::{
    assigned_event, Assignment, BoxError, DeviceAuthentication, EnrollmentRef, FeedConfig,
    FeedEvent, Outbox, Seq,
};
use dps_types::{
    AssignedDeviceSubstatus, DeviceId, EnrollmentGroupId, Etag, HubName, RegistrationId,
    SymmetricKey, Timestamp,
};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Generous: tests share two cores with other builds.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A name no other test (or concurrent run) uses.
pub fn unique(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "dps-feed-test.{what}.{}.{nanos}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn config(exchange: &str) -> FeedConfig {
    FeedConfig {
        exchange: exchange.to_owned(),
        connection_name: unique("conn"),
        connect_timeout: Duration::from_secs(20),
        confirm_timeout: Duration::from_secs(20),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        sweep_interval: Duration::from_millis(500),
        ..FeedConfig::default()
    }
}

pub fn hub(name: &str) -> HubName {
    HubName::parse(name).unwrap()
}

/// A `device.assigned` event for device `n` of a symmetric-key group.
pub fn event(n: usize, hub: &HubName, etag: &Etag) -> FeedEvent {
    let registration_id = RegistrationId::parse(&format!("device-{n}")).unwrap();
    let device_id = DeviceId::from(&registration_id);
    let payload = serde_json::json!({ "n": n });
    assigned_event(
        &Assignment {
            registration_id: &registration_id,
            device_id: &device_id,
            hub,
            previous_hub: None,
            enrollment: EnrollmentRef::Group(EnrollmentGroupId::parse("group-1").unwrap()),
            iot_edge: false,
            initial_twin: None,
            payload: Some(&payload),
            substatus: AssignedDeviceSubstatus::InitialAssignment,
            authentication: DeviceAuthentication::SymmetricKey {
                primary: SymmetricKey::generate(),
                secondary: SymmetricKey::generate(),
            },
            record_etag: etag,
            time: Timestamp::now(),
        },
        true,
    )
}

#[derive(Default)]
struct Entries {
    next: Seq,
    entries: BTreeMap<Seq, FeedEvent>,
    confirmed: HashSet<Seq>,
}

/// The outbox the store would keep, in memory.
pub struct MemOutbox {
    inner: Mutex<Entries>,
    len: tokio::sync::watch::Sender<usize>,
}

impl MemOutbox {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Entries::default()),
            len: tokio::sync::watch::channel(0).0,
        })
    }

    /// Makes an event durable, as the store does before calling `publish`.
    pub fn append(&self, event: FeedEvent) -> Seq {
        let mut inner = self.inner.lock().unwrap();
        inner.next += 1;
        let seq = inner.next;
        inner.entries.insert(seq, event);
        self.len.send_replace(inner.entries.len());
        seq
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().entries.len()
    }

    pub fn was_confirmed(&self, seq: Seq) -> bool {
        self.inner.lock().unwrap().confirmed.contains(&seq)
    }

    /// Waits until every entry was confirmed.
    pub async fn wait_empty(&self, timeout: Duration) -> bool {
        let mut len = self.len.subscribe();
        tokio::time::timeout(timeout, len.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Outbox for MemOutbox {
    fn scan(&self, after: Option<Seq>, limit: usize) -> Result<Vec<(Seq, FeedEvent)>, BoxError> {
        let inner = self.inner.lock().unwrap();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(inner
            .entries
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(s, e)| (*s, e.clone()))
            .collect())
    }

    fn confirmed(&self, seqs: &[Seq]) {
        let mut inner = self.inner.lock().unwrap();
        for seq in seqs {
            inner.entries.remove(seq);
            inner.confirmed.insert(*seq);
        }
        self.len.send_replace(inner.entries.len());
    }
}

/// A consumer of the test's exchange, as a hub back end would run one.
pub struct TestBroker {
    pub connection: Connection,
    pub channel: Channel,
}

impl TestBroker {
    pub async fn connect() -> Self {
        let connection = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        Self {
            connection,
            channel,
        }
    }

    /// Declares the exchange as the feed does (for tests that need it before the feed).
    pub async fn declare_exchange(&self, exchange: &str) {
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// A queue of this connection bound to `exchange` with `binding`.
    pub async fn bind_queue(&self, exchange: &str, binding: &str) -> String {
        let queue = unique("queue");
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        queue
    }

    pub async fn consume(&self, queue: &str) -> Consumer {
        self.channel
            .basic_consume(
                queue.into(),
                unique("consumer").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap()
    }

    /// Deletes what a test declared that outlives its connection.
    pub async fn delete(&self, exchange: &str, queues: &[String]) {
        for queue in queues {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self
            .channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// The next delivery, acked; `None` when nothing came within `timeout`.
pub async fn next_delivery(consumer: &mut Consumer, timeout: Duration) -> Option<Delivery> {
    use futures_core::Stream;
    let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *consumer).poll_next(cx));
    let delivery = tokio::time::timeout(timeout, next).await.ok()??.ok()?;
    delivery.ack(BasicAckOptions::default()).await.ok()?;
    Some(delivery)
}

/// Deliveries until `expected` distinct message ids were seen (duplicates are counted, not
/// returned), or `PATIENCE` ran out.
pub async fn collect_distinct(
    consumer: &mut Consumer,
    expected: usize,
) -> (BTreeMap<String, Delivery>, usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = BTreeMap::new();
    let mut duplicates = 0;
    while seen.len() < expected {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(delivery) = next_delivery(consumer, left).await else {
            break;
        };
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        if seen.insert(id, delivery).is_some() {
            duplicates += 1;
        }
    }
    (seen, duplicates)
}

/// Closes the feed's connection from the broker's side (only that one: other tests share
/// the broker).
pub fn close_connection_from_broker(connection_name: &str) {
    let list = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&list.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(connection_name))
        .unwrap_or_else(|| panic!("no broker connection named {connection_name}:\n{text}"));
    let pid = line.split_whitespace().next().unwrap();
    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", pid, "closed by a dps-feed test"])
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl close_connection failed");
}
