//! Publisher-confirm latency of the feed against a real RabbitMQ, per kind of queue behind
//! the exchange: what one registration waits between handing its event to `Feed::publish`
//! and the broker's confirmation, and how many events per second the link confirms with a
//! fixed number of publications in flight.
//!
//! ```text
//! cargo run --release -p dps-feed --example confirm_latency -- [EVENTS] [IN_FLIGHT...]
//! ```
//!
//! Defaults: 20,000 events, 64 and 256 in flight, against `amqp://guest:guest@127.0.0.1:5672`
//! (or `DPS_FEED_BENCH_URL`). Each variant gets a fresh exchange (and queue), deleted after.
//! Variants: no queue bound (the broker drops the events: the floor), the feed's hub queue
//! of each [`HubQueueType`] (declared by the feed, as `hub_queues = true` does), and for
//! reference raw `lapin` publishing to a classic queue without the feed. Nobody consumes:
//! the queues grow by `EVENTS` during a run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dps_feed::{
    BoxError, BrokerUrl, EventType, Feed, FeedConfig, FeedEvent, HubQueueType, Outbox, Seq,
};
use dps_types::{HubName, Timestamp};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// An outbox that holds nothing: every event is handed to `publish` directly.
struct NoOutbox;

impl Outbox for NoOutbox {
    fn scan(&self, _: Option<Seq>, _: usize) -> Result<Vec<(Seq, FeedEvent)>> {
        Ok(Vec::new())
    }
    fn confirmed(&self, _: &[Seq]) {}
}

/// What is bound behind the exchange: nothing (the broker drops every event: the floor), or
/// the feed's own hub queue of one kind.
const VARIANTS: [Option<HubQueueType>; 4] = [
    None,
    Some(HubQueueType::Classic),
    Some(HubQueueType::ClassicV2),
    Some(HubQueueType::Quorum),
];

type Result<T> = std::result::Result<T, BoxError>;

fn event(n: u64, hub: &HubName) -> FeedEvent {
    // About the size of a real device.assigned document with keys and a small twin.
    let body = format!(
        "{{\"schemaVersion\":1,\"type\":\"device.assigned\",\"eventId\":\"bench-{n}\",\
         \"registrationId\":\"device-{n}\",\"deviceId\":\"device-{n}\",\"iotHubHostName\":\"{hub}\",\
         \"padding\":\"{}\"}}",
        "x".repeat(600)
    );
    FeedEvent {
        message_id: format!("bench-{n}"),
        routing_key: format!("{hub}.device.assigned"),
        hub: hub.clone(),
        event_type: EventType::Assigned,
        time_utc: Timestamp::now(),
        body,
    }
}

struct Outcome {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Outcome {
    fn report(mut self, label: &str, in_flight: usize) {
        self.latencies.sort();
        let pick = |q: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies[i].as_secs_f64() * 1000.0
        };
        let rate = self.latencies.len() as f64 / self.elapsed.as_secs_f64();
        println!(
            "{label:<22} in flight {in_flight:>4}: {rate:>8.0} events/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            pick(0.5),
            pick(0.99),
            pick(1.0)
        );
    }
}

/// Runs `events` publications, `in_flight` at a time, each timed from call to confirmation.
async fn closed_loop<F, Fut>(events: u64, in_flight: usize, publish: F) -> Result<Outcome>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(events as usize)));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (next, latencies, publish) = (next.clone(), latencies.clone(), publish.clone());
        workers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= events {
                    break;
                }
                let t = Instant::now();
                publish(n).await?;
                mine.push(t.elapsed());
            }
            latencies.lock().map_err(|_| "poisoned")?.extend(mine);
            Ok::<_, BoxError>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let elapsed = start.elapsed();
    let latencies = std::mem::take(&mut *latencies.lock().map_err(|_| "poisoned")?);
    Ok(Outcome { latencies, elapsed })
}

/// The exchange, and for raw lapin a classic queue of the same name bound to everything.
async fn declare(channel: &Channel, exchange: &str, classic_queue: bool) -> Result<()> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    if classic_queue {
        channel
            .queue_declare(
                exchange.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                exchange.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

async fn tidy(channel: &Channel, exchange: &str, queue: &str) -> Result<()> {
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}

async fn through_feed(
    url: &str,
    admin: &Channel,
    queue: Option<HubQueueType>,
    events: u64,
    in_flight: usize,
) -> Result<()> {
    let exchange = format!("bench.confirm.{}", std::process::id());
    declare(admin, &exchange, false).await?;
    let hub = HubName::parse("hub-a.example.net")?;
    let prefix = format!("{exchange}.");
    let feed = Feed::start(
        FeedConfig {
            url: BrokerUrl::parse(url)?,
            exchange: exchange.clone(),
            hub_queues: queue.is_some(),
            hub_queue_type: queue.unwrap_or_default(),
            queue_prefix: prefix.clone(),
            confirm_timeout: Duration::from_secs(60),
            max_unconfirmed: in_flight * 2,
            connection_name: "dps-feed confirm_latency".into(),
            ..FeedConfig::default()
        },
        vec![hub.clone()],
        Arc::new(NoOutbox),
    )
    .await?;
    let hub_name = hub.to_string();
    let publish = {
        let feed = feed.clone();
        move |n: u64| {
            let (feed, event) = (feed.clone(), event(n, &hub));
            async move { feed.publish(n, event).await.map_err(Into::into) }
        }
    };
    let outcome = closed_loop(events, in_flight, publish).await?;
    feed.shutdown().await;
    tidy(admin, &exchange, &format!("{prefix}{hub_name}")).await?;
    let label = queue.map_or("no queue", HubQueueType::as_str);
    outcome.report(&format!("feed, {label}"), in_flight);
    Ok(())
}

async fn raw_lapin(
    connection: &Connection,
    admin: &Channel,
    events: u64,
    in_flight: usize,
) -> Result<()> {
    let exchange = format!("bench.confirm.raw.{}", std::process::id());
    declare(admin, &exchange, true).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let hub = HubName::parse("hub-a.example.net")?;
    let exchange_name = ShortString::from(exchange.as_str());
    let publish = move |n: u64| {
        let (channel, exchange, event) = (channel.clone(), exchange_name.clone(), event(n, &hub));
        async move {
            let confirm = channel
                .basic_publish(
                    exchange,
                    event.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    event.body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            match confirm.await? {
                lapin::Confirmation::Ack(_) => Ok(()),
                _ => Err("not acknowledged".into()),
            }
        }
    };
    let outcome = closed_loop(events, in_flight, publish).await?;
    tidy(admin, &exchange, &exchange).await?;
    outcome.report("raw lapin, classic", in_flight);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let mut in_flight: Vec<usize> = args
        .map(|a| a.parse())
        .collect::<std::result::Result<_, _>>()?;
    if in_flight.is_empty() {
        in_flight = vec![64, 256];
    }
    let url = std::env::var("DPS_FEED_BENCH_URL")
        .unwrap_or_else(|_| dps_feed::DEFAULT_BROKER_URL.to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let admin = connection.create_channel().await?;
    println!("{events} persistent events per run, timed from publish to the broker's confirm");
    for &k in &in_flight {
        for queue in VARIANTS {
            through_feed(&url, &admin, queue, events, k).await?;
        }
        raw_lapin(&connection, &admin, events, k).await?;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}
