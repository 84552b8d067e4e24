//! Publishing against the real RabbitMQ: properties, bodies, confirms, the relay of what the
//! outbox already holds, hub queues, and consumers that reject.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use dps_feed::{EventType, Feed, FeedConfig, FeedError, HubQueueType};
use dps_types::Etag;
use lapin::options::{BasicGetOptions, BasicQosOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_are_confirmed_persistent_and_complete() {
    let exchange = unique("exchange");
    let hub_a = hub("hub-a.example.net");
    let outbox = MemOutbox::new();
    let feed = Feed::start(config(&exchange), vec![hub_a.clone()], outbox.clone())
        .await
        .unwrap();
    assert!(feed.is_up());
    let broker = TestBroker::connect().await;
    let queue = broker.bind_queue(&exchange, "#").await;
    let mut consumer = broker.consume(&queue).await;

    const N: usize = 50;
    let etag = Etag::generate();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = Vec::new();
    for n in 0..N {
        let event = event(n, &hub_a, &etag);
        let seq = outbox.append(event.clone());
        sent.push((seq, event.clone()));
        let (feed, outbox) = (feed.clone(), outbox.clone());
        tasks.spawn(async move {
            let result = feed.publish(seq, event).await;
            // Ok means the broker confirmed, so the outbox has already dropped the entry.
            (seq, result, outbox.was_confirmed(seq))
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (seq, result, confirmed) = done.unwrap();
        result.unwrap_or_else(|e| panic!("publish {seq}: {e}"));
        assert!(
            confirmed,
            "publish {seq} returned Ok before the outbox heard of the ack"
        );
    }
    assert_eq!(outbox.len(), 0);

    let (received, duplicates) = collect_distinct(&mut consumer, N).await;
    assert_eq!(received.len(), N);
    assert_eq!(duplicates, 0);
    for (_, event) in &sent {
        let delivery = &received[&event.message_id];
        let p = &delivery.properties;
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some("device.assigned")
        );
        assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("dpsd"));
        assert_eq!(*p.timestamp(), Some(event.time_utc.unix() as u64));
        assert_eq!(
            delivery.routing_key.as_str(),
            "hub-a.example.net.device.assigned"
        );
        assert_eq!(delivery.data, event.body.as_bytes());
        let doc: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(doc["eventId"], event.message_id.as_str());
        assert!(doc["authentication"]["symmetricKey"]["primaryKey"].is_string());
    }

    let stats = feed.stats();
    assert!(stats.link_up);
    assert_eq!(stats.hubs.len(), 1);
    assert_eq!(stats.hubs[0].hub, hub_a);
    assert_eq!(stats.hubs[0].counters.confirmed, N as u64);
    assert!(stats.hubs[0].counters.published >= N as u64);
    assert_eq!(stats.hubs[0].counters.waiting, 0);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["hubs"][0]["hub"], "hub-a.example.net");
    assert_eq!(json["hubs"][0]["confirmed"], N);
    assert_eq!(json["linkUp"], true);

    // Confirmed events are neither pending nor waited for.
    let (seq, event) = &sent[0];
    assert_eq!(feed.pending(&event.message_id), None);
    assert!(feed.wait_confirmed(*seq, Duration::from_secs(1)).await);
    assert!(!feed.wait_confirmed(999_999, Duration::from_secs(1)).await);
    // Publishing an event the broker already confirmed is a no-op that succeeds.
    feed.publish(*seq, event.clone()).await.unwrap();

    feed.shutdown().await;
    assert!(!feed.is_up());
    let err = feed.publish(seq + 1000, event.clone()).await.unwrap_err();
    assert!(matches!(err, FeedError::ShutDown), "{err}");
    broker.delete(&exchange, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_already_in_the_outbox_are_relayed_at_start() {
    let exchange = unique("exchange");
    let hub_a = hub("hub-a.example.net");
    let broker = TestBroker::connect().await;
    broker.declare_exchange(&exchange).await;
    let queue = broker.bind_queue(&exchange, "hub-a.example.net.#").await;
    let mut consumer = broker.consume(&queue).await;

    // Written by a node that stopped before publishing them.
    let outbox = MemOutbox::new();
    let etag = Etag::generate();
    const N: usize = 600; // more than one scan page and more than the relay's share
    for n in 0..N {
        outbox.append(event(n, &hub_a, &etag));
    }
    let feed = Feed::start(
        FeedConfig {
            max_unconfirmed: 64,
            ..config(&exchange)
        },
        vec![hub_a.clone()],
        outbox.clone(),
    )
    .await
    .unwrap();
    assert!(outbox.wait_empty(PATIENCE).await, "{} left", outbox.len());
    let (received, _) = collect_distinct(&mut consumer, N).await;
    assert_eq!(received.len(), N);
    let stats = feed.stats();
    assert_eq!(stats.hubs[0].counters.confirmed, N as u64);
    assert_eq!(stats.hubs[0].counters.waiting, 0);
    feed.shutdown().await;
    broker.delete(&exchange, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_queues_are_declared_durable_and_bound_per_hub() {
    let exchange = unique("exchange");
    let prefix = format!("{}.", unique("hubq"));
    let (hub_a, hub_b, hub_c) = (
        hub("hub-a.example.net"),
        hub("hub-b.example.net"),
        hub("hub-c.example.net"),
    );
    let outbox = MemOutbox::new();
    let feed = Feed::start(
        FeedConfig {
            hub_queues: true,
            queue_prefix: prefix.clone(),
            ..config(&exchange)
        },
        vec![hub_a.clone(), hub_b.clone()],
        outbox.clone(),
    )
    .await
    .unwrap();
    let etag = Etag::generate();
    for (n, hub) in [(1, &hub_a), (2, &hub_b), (3, &hub_b), (4, &hub_c)] {
        let event = event(n, hub, &etag);
        feed.publish(outbox.append(event.clone()), event)
            .await
            .unwrap();
    }

    let broker = TestBroker::connect().await;
    let queue_a = format!("{prefix}hub-a.example.net");
    let queue_b = format!("{prefix}hub-b.example.net");
    for (queue, expected) in [(&queue_a, 1), (&queue_b, 2)] {
        // Passive declare: fails unless the queue exists; a durable one survives the feed.
        let declared = broker
            .channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        assert_eq!(declared.message_count(), expected, "{queue}");
    }
    let got = broker
        .channel
        .basic_get(queue_a.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.delivery.routing_key.as_str(),
        "hub-a.example.net.device.assigned"
    );
    // No queue for a hub that is not linked; its event was still confirmed (unroutable
    // messages do not block publishing).
    assert_eq!(outbox.len(), 0);
    feed.shutdown().await;
    broker.delete(&exchange, &[queue_a, queue_b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_rejects_everything_does_not_stall_publishing() {
    let exchange = unique("exchange");
    let hub_a = hub("hub-a.example.net");
    let outbox = MemOutbox::new();
    let feed = Feed::start(config(&exchange), vec![hub_a.clone()], outbox.clone())
        .await
        .unwrap();
    let broker = TestBroker::connect().await;
    let queue = broker.bind_queue(&exchange, "#").await;
    broker
        .channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = broker.consume(&queue).await;
    let rejecter = tokio::spawn(async move {
        use futures_core::Stream;
        let mut rejected = 0usize;
        while let Some(Ok(delivery)) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut consumer).poll_next(cx)).await
        {
            delivery
                .reject(BasicRejectOptions { requeue: true })
                .await
                .unwrap();
            rejected += 1;
            if rejected >= 200 {
                break;
            }
        }
        rejected
    });

    let etag = Etag::generate();
    for n in 0..100 {
        let event = event(n, &hub_a, &etag);
        let seq = outbox.append(event.clone());
        feed.publish(seq, event).await.unwrap();
    }
    assert_eq!(outbox.len(), 0);
    assert!(
        rejecter.await.unwrap() >= 200,
        "the consumer kept rejecting"
    );
    feed.shutdown().await;
    broker.delete(&exchange, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_every_type_route_by_hub_and_type() {
    let exchange = unique("exchange");
    let hub_a = hub("hub-a.example.net");
    let outbox = MemOutbox::new();
    let feed = Arc::new(
        Feed::start(config(&exchange), vec![hub_a.clone()], outbox.clone())
            .await
            .unwrap(),
    );
    let broker = TestBroker::connect().await;
    let queue = broker
        .bind_queue(&exchange, "*.*.*.device.deprovisioned")
        .await;
    let mut consumer = broker.consume(&queue).await;
    let etag = Etag::generate();
    let assigned = event(1, &hub_a, &etag);
    let registration_id = dps_types::RegistrationId::parse("device-1").unwrap();
    let device_id = dps_types::DeviceId::from(&registration_id);
    let deprovisioned = dps_feed::deprovisioned_event(&dps_feed::Deprovision {
        registration_id: &registration_id,
        device_id: &device_id,
        hub: &hub_a,
        enrollment: dps_feed::EnrollmentRef::Individual(registration_id.clone()),
        record_etag: &etag,
        reason: dps_feed::DeprovisionReason::RegistrationDeleted,
        time: dps_types::Timestamp::now(),
    });
    for event in [assigned, deprovisioned.clone()] {
        feed.publish(outbox.append(event.clone()), event)
            .await
            .unwrap();
    }
    let delivery = next_delivery(&mut consumer, PATIENCE).await.unwrap();
    assert_eq!(
        delivery.properties.kind().as_ref().map(|s| s.as_str()),
        Some(EventType::Deprovisioned.as_str())
    );
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(deprovisioned.message_id.as_str())
    );
    // Only the deprovisioning matched the binding.
    assert!(next_delivery(&mut consumer, Duration::from_millis(500))
        .await
        .is_none());
    feed.shutdown().await;
    broker.delete(&exchange, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_hub_queues_take_events() {
    let exchange = unique("exchange");
    let prefix = format!("{}.", unique("quorumq"));
    let hub_a = hub("hub-a.example.net");
    let outbox = MemOutbox::new();
    let feed = Feed::start(
        FeedConfig {
            hub_queues: true,
            hub_queue_type: HubQueueType::Quorum,
            queue_prefix: prefix.clone(),
            ..config(&exchange)
        },
        vec![hub_a.clone()],
        outbox.clone(),
    )
    .await
    .unwrap();
    let event = event(1, &hub_a, &Etag::generate());
    feed.publish(outbox.append(event.clone()), event)
        .await
        .unwrap();
    feed.shutdown().await;

    let broker = TestBroker::connect().await;
    let queue = format!("{prefix}hub-a.example.net");
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    // Declaring it again as quorum succeeds only if it is a quorum queue.
    let declared = broker
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            quorum,
        )
        .await
        .unwrap();
    assert_eq!(declared.message_count(), 1);
    broker.delete(&exchange, &[queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_queue_of_another_kind_stops_the_start_naming_hub_queue_type() {
    let exchange = unique("exchange");
    let prefix = format!("{}.", unique("oldq"));
    let queue = format!("{prefix}hub-a.example.net");
    let broker = TestBroker::connect().await;
    broker.declare_exchange(&exchange).await;
    // A classic queue declared without arguments, as earlier releases did.
    broker.bind_durable_queue(&queue, &exchange, "#").await;
    let start = |queue_type| {
        Feed::start(
            FeedConfig {
                hub_queues: true,
                hub_queue_type: queue_type,
                queue_prefix: prefix.clone(),
                ..config(&exchange)
            },
            vec![hub("hub-a.example.net")],
            MemOutbox::new(),
        )
    };
    for queue_type in [HubQueueType::ClassicV2, HubQueueType::Quorum] {
        let err = start(queue_type).await.unwrap_err();
        assert!(matches!(err, FeedError::QueueMismatch { .. }), "{err:?}");
        assert_eq!(err.key(), "hub_queue_type");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "queue '{queue}' exists with other arguments than hub_queue_type = \"{queue_type}\""
            )),
            "{text}"
        );
        assert!(text.contains("PRECONDITION_FAILED"), "{text}");
    }
    // Naming the kind the queue has works.
    let feed = start(HubQueueType::Classic).await.unwrap();
    feed.shutdown().await;
    broker.delete(&exchange, &[queue]).await;
}

/// Counts the confirmations the feed reports and keeps the longest wait.
#[derive(Debug, Default)]
struct Timings {
    count: std::sync::atomic::AtomicUsize,
    longest: std::sync::Mutex<Duration>,
}

impl dps_feed::FeedObserver for Timings {
    fn confirmed(&self, elapsed: Duration) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut longest = self.longest.lock().unwrap();
        *longest = (*longest).max(elapsed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmation_is_timed_once() {
    let exchange = unique("exchange");
    let hub_a = hub("hub-a.example.net");
    let outbox = MemOutbox::new();
    let feed = Feed::start(config(&exchange), vec![hub_a.clone()], outbox.clone())
        .await
        .unwrap();
    let timings = Arc::new(Timings::default());
    assert!(feed.observe(timings.clone()));
    assert!(!feed.observe(Arc::new(Timings::default())), "set twice");
    let etag = Etag::generate();
    let started = std::time::Instant::now();
    for n in 0..20 {
        let event = event(n, &hub_a, &etag);
        feed.publish(outbox.append(event.clone()), event)
            .await
            .unwrap();
    }
    let total = started.elapsed();
    assert_eq!(timings.count.load(std::sync::atomic::Ordering::Relaxed), 20);
    let longest = *timings.longest.lock().unwrap();
    assert!(longest > Duration::ZERO && longest <= total, "{longest:?}");
    feed.shutdown().await;
    TestBroker::connect().await.delete(&exchange, &[]).await;
}
