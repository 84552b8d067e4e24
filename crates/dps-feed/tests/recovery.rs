//! The broker drops the feed's connection while events are being published: `publish` is
//! `Ok` only after a real confirmation, the link comes back by itself, and every event is
//! eventually consumed.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dps_feed::{Feed, FeedError};
use dps_types::Etag;

/// Polls `ready` until it holds or `PATIENCE` runs out.
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
async fn the_link_comes_back_after_the_broker_drops_it_and_no_event_is_lost() {
    let exchange = unique("exchange");
    let hub_a = hub("hub-a.example.net");
    let config = config(&exchange);
    let connection_name = config.connection_name.clone();
    let outbox = MemOutbox::new();
    let feed = Feed::start(config, vec![hub_a.clone()], outbox.clone())
        .await
        .unwrap();
    let broker = TestBroker::connect().await;
    let queue = broker.bind_queue(&exchange, "#").await;
    let mut consumer = broker.consume(&queue).await;

    // Publishes about 500 events a second, 16 at a time at most, until told to stop (and at
    // most MAX events): a steady stream like registrations, not a flood that ends before the
    // broker-side close lands.
    const MAX: usize = 50_000;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (feed, outbox, stop, hub_a) =
            (feed.clone(), outbox.clone(), stop.clone(), hub_a.clone());
        tokio::spawn(async move {
            let etag = Etag::generate();
            let mut tasks = tokio::task::JoinSet::new();
            let mut outcomes = Vec::new();
            let mut n = 0;
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while n < MAX && !stop.load(Ordering::Acquire) {
                pace.tick().await;
                let event = event(n, &hub_a, &etag);
                let seq = outbox.append(event.clone());
                let (feed, outbox) = (feed.clone(), outbox.clone());
                tasks.spawn(async move {
                    let result = feed.publish(seq, event).await;
                    (result, outbox.was_confirmed(seq))
                });
                n += 1;
                if tasks.len() >= 16 {
                    outcomes.push(tasks.join_next().await.unwrap().unwrap());
                }
            }
            while let Some(done) = tasks.join_next().await {
                outcomes.push(done.unwrap());
            }
            (n, outcomes)
        })
    };

    until("100 confirmed events", || {
        feed.stats().hubs[0].counters.confirmed >= 100
    })
    .await;
    tokio::task::spawn_blocking(move || close_connection_from_broker(&connection_name))
        .await
        .unwrap();
    until("the link to come back", || {
        let stats = feed.stats();
        stats.reconnects >= 1 && stats.link_up
    })
    .await;
    let confirmed_at_reconnect = feed.stats().hubs[0].counters.confirmed;
    until("publishing on the new link", || {
        feed.stats().hubs[0].counters.confirmed >= confirmed_at_reconnect + 100
    })
    .await;
    stop.store(true, Ordering::Release);
    let (total, outcomes) = publisher.await.unwrap();

    let mut failed = 0;
    for (result, confirmed) in &outcomes {
        match result {
            Ok(()) => assert!(
                confirmed,
                "publish returned Ok without a broker confirmation"
            ),
            Err(
                FeedError::LinkDown
                | FeedError::Backlog { .. }
                | FeedError::Publish { .. }
                | FeedError::Nacked
                | FeedError::ConfirmTimeout { .. },
            ) => failed += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(outcomes.len(), total);
    // The stream went on through the outage, so some calls must have seen the link down.
    assert!(
        failed > 0,
        "no publish call failed: the close did not hit the stream"
    );

    // The relay sends what failed; every event reaches the consumer.
    assert!(
        outbox.wait_empty(PATIENCE).await,
        "{} of {total} events still unconfirmed ({failed} publish calls failed)",
        outbox.len()
    );
    let (received, _duplicates) = collect_distinct(&mut consumer, total).await;
    assert_eq!(received.len(), total);
    let stats = feed.stats();
    assert_eq!(stats.last_error, Some("link lost"));
    assert_eq!(stats.hubs[0].counters.confirmed, total as u64);
    assert_eq!(stats.hubs[0].counters.waiting, 0);
    feed.shutdown().await;
    broker.delete(&exchange, &[]).await;
}
