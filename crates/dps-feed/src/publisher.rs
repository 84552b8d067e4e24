//! The one task per link that talks to the broker: it takes the attempts `publish` and the
//! relay queue for it, hands each to lapin as it comes (pipelined on the confirm channel, no
//! task per event), and settles confirmations in batches, whatever the broker acknowledged
//! since it last woke: one outbox call and one wake-up of each waiting registration.
//!
//! Why one task: lapin's I/O thread wakes whoever waits on a write or a confirmation; with a
//! task per event that was two wake-ups per event, and each confirmation removed its outbox
//! entry alone. Here the wake-ups of a burst of confirmations land on one task.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::feed::Shared;
use crate::{FeedEvent, Seq};

/// Attempts taken from the queue at once: enough for a burst, small enough that the first of
/// them is not kept waiting while the rest are handed over.
const TAKE: usize = 64;

/// One attempt at publishing an outbox entry.
pub(crate) struct Job {
    pub(crate) seq: Seq,
    pub(crate) attempt: u64,
    pub(crate) event: FeedEvent,
    /// The routing key and message id, checked to fit AMQP's short strings.
    pub(crate) names: (ShortString, ShortString),
}

/// How an attempt ended.
pub(crate) struct Sent {
    pub(crate) seq: Seq,
    pub(crate) attempt: u64,
    /// From handing the event to lapin to the broker's answer.
    pub(crate) elapsed: Duration,
    pub(crate) outcome: Result<Confirmation, lapin::Error>,
}

/// A link's queue of attempts. Its capacity is `max_unconfirmed`: an attempt is queued only
/// for an entry the tracker holds in flight on this link, and it holds at most that many.
pub(crate) fn queue(capacity: usize) -> (mpsc::Sender<Job>, mpsc::Receiver<Job>) {
    mpsc::channel(capacity.max(1))
}

/// Publishes what the queue brings on `channel` and settles the answers, until the queue is
/// closed and every attempt answered (or the task is aborted with its link).
pub(crate) async fn run(shared: Arc<Shared>, channel: Channel, mut jobs: mpsc::Receiver<Job>) {
    let mut sending = FuturesUnordered::new();
    let mut taken = Vec::with_capacity(TAKE);
    let mut settled = Vec::new();
    let mut open = true;
    loop {
        tokio::select! {
            // Answers first: they free room and wake registrations.
            biased;
            Some(first) = sending.next(), if !sending.is_empty() => {
                settled.push(first);
                while let Some(Some(more)) = sending.next().now_or_never() {
                    settled.push(more);
                }
                shared.settle(&mut settled);
            }
            received = jobs.recv_many(&mut taken, TAKE), if open => {
                open = received > 0;
                sending.extend(taken.drain(..).map(|job| send(&shared, &channel, job)));
            }
            else => return,
        }
    }
}

/// Publishes one attempt (persistent) and waits for the broker's answer.
async fn send(shared: &Shared, channel: &Channel, job: Job) -> Sent {
    let Job {
        seq,
        attempt,
        event,
        names: (routing_key, message_id),
    } = job;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(message_id)
        .with_content_type("application/json".into())
        .with_timestamp(u64::try_from(event.time_utc.unix()).unwrap_or(0))
        .with_type(event.event_type.as_str().into())
        .with_app_id("dpsd".into());
    let started = Instant::now();
    let outcome = async {
        let confirm = channel
            .basic_publish(
                shared.settings.exchange.clone(),
                routing_key,
                BasicPublishOptions::default(),
                event.body.as_bytes(),
                properties,
            )
            .await?;
        shared.tracker().published(&event.hub);
        confirm.await
    }
    .await;
    Sent {
        seq,
        attempt,
        elapsed: started.elapsed(),
        outcome,
    }
}
