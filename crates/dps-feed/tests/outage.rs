//! The broker unreachable for a while (a loopback proxy in front of RabbitMQ is stopped, then
//! started again on the same port): `publish` fails at once, the events stay pending and are
//! counted as waiting, and they all go out when the broker is back.

mod common;

use std::time::Duration;

use common::*;
use dps_feed::{BrokerUrl, Feed, FeedConfig, FeedError};
use dps_types::Etag;

async fn until(what: &str, ready: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_the_broker_is_unreachable_go_out_when_it_is_back() {
    let proxy = Cutter::start().await;
    let exchange = unique("exchange");
    let hub_a = hub("hub-a.example.net");
    let outbox = MemOutbox::new();
    let feed = Feed::start(
        FeedConfig {
            url: BrokerUrl::parse(&proxy.url()).unwrap(),
            ..config(&exchange)
        },
        vec![hub_a.clone()],
        outbox.clone(),
    )
    .await
    .unwrap();
    let broker = TestBroker::connect().await;
    let queue = broker.bind_queue(&exchange, "#").await;
    let mut consumer = broker.consume(&queue).await;
    let etag = Etag::generate();
    for n in 0..10 {
        let event = event(n, &hub_a, &etag);
        feed.publish(outbox.append(event.clone()), event)
            .await
            .unwrap();
    }

    proxy.cut();
    until("the feed to see the link down", || !feed.is_up()).await;
    let mut held = Vec::new();
    for n in 10..30 {
        let event = event(n, &hub_a, &etag);
        let seq = outbox.append(event.clone());
        let err = feed.publish(seq, event.clone()).await.unwrap_err();
        assert!(matches!(err, FeedError::LinkDown), "{err:?}");
        assert_eq!(feed.pending(&event.message_id), Some(seq));
        held.push(seq);
    }
    until("a failed reconnection", || {
        feed.stats().last_error == Some("connection refused")
    })
    .await;
    let stats = feed.stats();
    assert!(!stats.link_up);
    assert_eq!(stats.hubs[0].counters.waiting, 20);
    assert_eq!(stats.hubs[0].counters.confirmed, 10);
    assert_eq!(outbox.len(), 20);

    proxy.restore().await;
    assert!(
        feed.wait_confirmed(held[0], PATIENCE).await,
        "the relay did not send the held events"
    );
    assert!(outbox.wait_empty(PATIENCE).await, "{} left", outbox.len());
    let (received, _) = collect_distinct(&mut consumer, 30).await;
    assert_eq!(received.len(), 30);
    let stats = feed.stats();
    assert!(stats.link_up);
    assert!(stats.reconnects >= 1);
    assert_eq!(stats.hubs[0].counters.confirmed, 30);
    assert_eq!(stats.hubs[0].counters.waiting, 0);
    feed.shutdown().await;
    broker.delete(&exchange, &[]).await;
}
