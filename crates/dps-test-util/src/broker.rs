//! The real RabbitMQ on 127.0.0.1:5672 as a hub back end sees it: names no other test uses,
//! queues bound to an exchange, deliveries collected and deduplicated by message id.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

/// The local broker's default account and virtual host.
pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Generous: tests share two cores with other builds.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A name no other test (or concurrent run) uses, starting with `dps-test.{what}.`.
pub fn unique(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "dps-test.{what}.{}.{nanos}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One connection and channel to the broker.
pub struct TestBroker {
    /// The connection.
    pub connection: Connection,
    /// Its channel.
    pub channel: Channel,
}

impl TestBroker {
    /// Connects to [`BROKER`].
    pub async fn connect() -> Self {
        let connection = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {BROKER}: {e}"));
        let channel = connection
            .create_channel()
            .await
            .unwrap_or_else(|e| panic!("open a channel: {e}"));
        Self {
            connection,
            channel,
        }
    }

    /// Declares a durable topic exchange, as the feed does (for a queue bound before the
    /// feed starts).
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
            .unwrap_or_else(|e| panic!("declare exchange {exchange}: {e}"));
    }

    /// A queue of this connection (gone with it) bound to `exchange` with `binding`.
    pub async fn bind_queue(&self, exchange: &str, binding: &str) -> String {
        let queue = unique("queue");
        self.declare_queue(&queue, true).await;
        self.bind(&queue, exchange, binding).await;
        queue
    }

    /// A durable queue, named `queue`, bound to `exchange` with `binding`: it keeps what is
    /// published while no consumer (or no broker) runs. Delete it with [`TestBroker::delete`].
    pub async fn bind_durable_queue(&self, queue: &str, exchange: &str, binding: &str) {
        self.declare_queue(queue, false).await;
        self.bind(queue, exchange, binding).await;
    }

    async fn declare_queue(&self, queue: &str, exclusive: bool) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    exclusive,
                    auto_delete: exclusive,
                    durable: !exclusive,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("declare queue {queue}: {e}"));
    }

    async fn bind(&self, queue: &str, exchange: &str, binding: &str) {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
    }

    /// Starts consuming `queue` (deliveries need an ack: [`next_delivery`] gives it).
    pub async fn consume(&self, queue: &str) -> Consumer {
        self.channel
            .basic_consume(
                queue.into(),
                unique("consumer").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
    }

    /// Deletes what a test declared that outlives its connection (best effort).
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

/// The message id of a delivery (empty when it has none).
pub fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Deliveries until `expected` distinct message ids were seen (duplicates are counted, not
/// returned), or [`PATIENCE`] ran out, or nothing came for `idle`.
pub async fn collect_distinct(
    consumer: &mut Consumer,
    expected: usize,
    idle: Duration,
) -> (BTreeMap<String, Delivery>, usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = BTreeMap::new();
    let mut duplicates = 0;
    while seen.len() < expected {
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(idle);
        let Some(delivery) = next_delivery(consumer, left).await else {
            break;
        };
        if seen.insert(message_id(&delivery), delivery).is_some() {
            duplicates += 1;
        }
    }
    (seen, duplicates)
}

/// The JSON body of a delivery.
pub fn body(delivery: &Delivery) -> serde_json::Value {
    serde_json::from_slice(&delivery.data)
        .unwrap_or_else(|e| panic!("an event body that is not JSON: {e}"))
}

/// A TCP relay in front of the broker that a test can cut: while cut, it closes every relayed
/// connection and refuses new ones (nothing listens on its port), as a broker that went away
/// would; restored, it listens on the same port again. Point a feed at [`Cutter::url`].
pub struct Cutter {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Cutter {
    /// A relay on a free loopback port to 127.0.0.1:5672.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind the relay: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("relay address: {e}"))
            .port();
        let (cut, _) = tokio::sync::watch::channel(false);
        tokio::spawn(relay(listener, cut.subscribe()));
        Self { port, cut }
    }

    /// The broker URL through this relay.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Closes every relayed connection and stops listening until [`Cutter::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Listens on the same port and relays again.
    pub async fn restore(&self) {
        self.cut.send_replace(false);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap_or_else(|e| panic!("bind the relay again: {e}"));
        tokio::spawn(relay(listener, self.cut.subscribe()));
    }
}

/// Relays each accepted connection to the broker until `cut` turns true (the listener is
/// dropped then, so connections are refused).
async fn relay(listener: tokio::net::TcpListener, mut cut: tokio::sync::watch::Receiver<bool>) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => return,
            },
            _ = cut.wait_for(|cut| *cut) => return,
        };
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                return;
            };
            let mut client = client;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        });
    }
}

/// Closes the connection the broker knows by `connection_name` (its client-provided name)
/// from the broker's side, as an operator or a broker restart would; only that one, since
/// other tests share the broker.
pub fn close_connection_from_broker(connection_name: &str) {
    let list = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl runs: {e}"));
    let text = String::from_utf8_lossy(&list.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(connection_name))
        .unwrap_or_else(|| panic!("no broker connection named {connection_name}:\n{text}"));
    let pid = line.split_whitespace().next().unwrap_or_default();
    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", pid, "closed by a test"])
        .status()
        .unwrap_or_else(|e| panic!("rabbitmqctl runs: {e}"));
    assert!(status.success(), "rabbitmqctl close_connection failed");
}
