//! Test support: an in-memory outbox, unique broker names per test, events built with the
//! crate's own builders, and a consumer on the real RabbitMQ at 127.0.0.1:5672.

#![allow(dead_code, unused_imports)] // each test binary uses its own part of this module

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
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

pub use dps_test_util::broker::{
    close_connection_from_broker, next_delivery, unique, Cutter, TestBroker, BROKER, PATIENCE,
};

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

/// Deliveries until `expected` distinct message ids were seen (duplicates are counted, not
/// returned), or `PATIENCE` ran out.
pub async fn collect_distinct(
    consumer: &mut lapin::Consumer,
    expected: usize,
) -> (BTreeMap<String, lapin::message::Delivery>, usize) {
    dps_test_util::broker::collect_distinct(consumer, expected, PATIENCE).await
}
