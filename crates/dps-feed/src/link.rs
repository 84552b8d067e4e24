//! One connection to the broker: connecting under a timeout (and telling precisely why it
//! failed), declaring the topology, and the confirm channel events are published on.

use std::time::Duration;

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, Event, ExchangeKind};
use rand::Rng;

use crate::config::Settings;
use crate::FeedError;

/// A connection with its confirm channel and the stream of its events.
pub(crate) struct Link {
    pub(crate) connection: Connection,
    pub(crate) channel: Channel,
    pub(crate) events: std::pin::Pin<Box<dyn futures_core::Stream<Item = Event> + Send>>,
}

impl Link {
    /// The next connection event; `None` once the connection is gone for good.
    pub(crate) async fn next_event(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.events.as_mut().poll_next(cx)).await
    }

    /// Closes the connection politely, within `timeout`; errors do not matter any more.
    pub(crate) async fn close(self, timeout: Duration) {
        if self.connection.status().connected() {
            let closing = self.connection.close(200, "dpsd feed closing".into());
            if tokio::time::timeout(timeout, closing).await.is_err() {
                tracing::debug!("broker did not answer connection.close in time");
            }
        }
    }
}

/// Connects, declares the exchange (and the hub queues), and opens a confirm channel, all
/// within the connect timeout.
pub(crate) async fn connect(settings: &Settings) -> Result<Link, FeedError> {
    let endpoint = settings.url.endpoint();
    match tokio::time::timeout(settings.connect_timeout, connect_unbounded(settings)).await {
        Ok(result) => result,
        Err(_) => Err(FeedError::TimedOut {
            endpoint,
            after: settings.connect_timeout,
        }),
    }
}

async fn connect_unbounded(settings: &Settings) -> Result<Link, FeedError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(settings.connection_name.as_str().into());
    let runtime = lapin::runtime::default_runtime().map_err(|source| FeedError::Connect {
        endpoint: settings.url.endpoint(),
        source: Box::new(source),
    })?;
    let connection = Connection::connect_uri_with_config(
        settings.url.uri().clone(),
        properties,
        settings.tls.clone(),
        runtime,
    )
    .await
    .map_err(|e| classify(settings, e))?;
    let events = Box::pin(connection.events_listener());
    let declare = |key: &'static str, what: String| {
        move |source| FeedError::Declare {
            key,
            what,
            source: Box::new(source),
        }
    };
    let channel = connection
        .create_channel()
        .await
        .map_err(declare("url", "open a channel".into()))?;
    channel
        .exchange_declare(
            settings.exchange.clone(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(declare(
            "exchange",
            format!("declare the durable topic exchange '{}'", settings.exchange),
        ))?;
    for (queue, binding) in &settings.queues {
        channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions::durable(),
                settings.hub_queue_type.arguments(),
            )
            .await
            .map_err(|source| {
                if is_precondition_failed(&source) {
                    FeedError::QueueMismatch {
                        queue: queue.to_string(),
                        queue_type: settings.hub_queue_type,
                        source: Box::new(source),
                    }
                } else {
                    declare(
                        "queue_prefix",
                        format!("declare the durable queue '{queue}'"),
                    )(source)
                }
            })?;
        channel
            .queue_bind(
                queue.clone(),
                settings.exchange.clone(),
                binding.clone(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(declare(
                "queue_prefix",
                format!("bind queue '{queue}' with '{binding}'"),
            ))?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(declare("url", "enable publisher confirms".into()))?;
    Ok(Link {
        connection,
        channel,
        events,
    })
}

/// Whether the broker refused a declaration because the entity exists with other arguments.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

/// Names the failure the way an operator fixes it.
fn classify(settings: &Settings, error: lapin::Error) -> FeedError {
    let endpoint = settings.url.endpoint();
    let kind = error.kind().clone();
    let source = Box::new(error);
    match &kind {
        ErrorKind::IOError(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            FeedError::Refused { endpoint, source }
        }
        ErrorKind::ProtocolError(e)
            if matches!(
                e.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            ) =>
        {
            if matches!(e.kind(), AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)) {
                FeedError::VhostNotFound {
                    endpoint,
                    vhost: settings.url.vhost().to_owned(),
                    source,
                }
            } else {
                FeedError::AccessRefused {
                    endpoint,
                    user: settings.url.user().to_owned(),
                    source,
                }
            }
        }
        _ => FeedError::Connect { endpoint, source },
    }
}

/// Reconnection delays: doubling from `min` up to `max`, each drawn uniformly from the upper
/// half of its step so that many nodes restarted together do not reconnect in step.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            failures: 0,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self
            .min
            .saturating_mul(2u32.saturating_pow(self.failures.min(31)))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = step / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=step - half)
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_with_jitter() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        let mut backoff = Backoff::new(min, max);
        let mut steps = Vec::new();
        for _ in 0..40 {
            steps.push(backoff.next_delay());
        }
        for (i, d) in steps.iter().enumerate() {
            let step = min.saturating_mul(1 << i.min(20)).min(max);
            assert!(*d >= step / 2 && *d <= step, "step {i}: {d:?}");
        }
        assert!(steps[39] >= max / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
            backoff.next_delay();
            seen.insert(backoff.next_delay());
        }
        assert!(seen.len() > 1, "fifty draws gave one delay");
    }
}
