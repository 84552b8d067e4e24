//! [`Feed`]: the broker link kept up in a background task, `publish` with publisher confirms,
//! and the relay that sends what the outbox still holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use dps_types::HubName;
use lapin::types::ShortString;
use lapin::{Confirmation, Event};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Settings;
use crate::link::{self, Backoff, Link};
use crate::publisher::{self, Job, Sent};
use crate::tracker::{Claim, Failure, HubCounters, Observed, Source, Tracker};
use crate::{FeedConfig, FeedError, FeedEvent, Seq};

/// The error type of [`Outbox`] implementations.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the feed needs from the durable outbox (the store implements it).
pub trait Outbox: Send + Sync + 'static {
    /// Entries with `seq > after` (all of them for `None`), in order, at most `limit`.
    fn scan(&self, after: Option<Seq>, limit: usize) -> Result<Vec<(Seq, FeedEvent)>, BoxError>;
    /// The broker confirmed these entries; the store removes them (not necessarily durably:
    /// an entry that comes back after a crash is only published again). Called on the async
    /// runtime for every batch of confirmations, so it must not wait on disk.
    fn confirmed(&self, seqs: &[Seq]);
}

/// Receives the feed's timings (the metrics implement it). Called on the runtime for every
/// confirmation: implementations must be cheap and never block.
pub trait FeedObserver: Send + Sync + std::fmt::Debug + 'static {
    /// The broker acknowledged a publication `elapsed` after it was handed to the client
    /// (publish to ack: what a registration waits beyond its store write).
    fn confirmed(&self, elapsed: Duration);
}

/// Outbox entries read per scan: enough to keep the link busy, small enough to bound memory.
const SCAN_PAGE: usize = 256;

/// Counters of one linked hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HubStats {
    /// The hub.
    pub hub: HubName,
    /// Its counters.
    #[serde(flatten)]
    pub counters: HubCounters,
}

/// What the feed shows operators (served as JSON by the API, camelCase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedStats {
    /// Whether events can be published now.
    pub link_up: bool,
    /// Whether the broker blocked publishing (resource alarm); the link counts as down.
    pub blocked: bool,
    /// The last link failure, as a short fixed text.
    pub last_error: Option<&'static str>,
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Events sent and not yet confirmed.
    pub in_flight: u64,
    /// Per hub (linked hubs first known, then hubs met in events).
    pub hubs: Vec<HubStats>,
    /// Events for hubs beyond those, counted together.
    pub other_hubs: HubCounters,
}

#[derive(Debug, Default)]
struct LinkStatus {
    last_error: Option<&'static str>,
    reconnects: u64,
}

pub(crate) struct Shared {
    pub(crate) settings: Settings,
    outbox: Arc<dyn Outbox>,
    tracker: Mutex<Tracker>,
    /// The queue of the link's publisher, while a link is installed.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    up: AtomicBool,
    blocked: AtomicBool,
    closed: AtomicBool,
    /// An entry left flight (confirmed or failed): room for the relay.
    freed: Notify,
    /// A send saw the link fail.
    broken: Notify,
    /// Someone waits for an entry that waits for the relay.
    kick: Notify,
    status: Mutex<LinkStatus>,
    observer: OnceLock<Arc<dyn FeedObserver>>,
}

/// Locks ignoring poisoning: every critical section leaves the data consistent, and a panic
/// elsewhere must not stop the feed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Settled {
    Confirmed,
    Failed(Failure),
    Unknown,
    TimedOut,
}

impl Shared {
    pub(crate) fn tracker(&self) -> MutexGuard<'_, Tracker> {
        lock(&self.tracker)
    }

    /// Hands an attempt to the link's publisher; false when the link cannot take it now.
    fn enqueue(&self, job: Job) -> bool {
        if !self.up.load(Ordering::Acquire) || self.blocked.load(Ordering::Acquire) {
            return false;
        }
        lock(&self.jobs)
            .as_ref()
            .is_some_and(|jobs| jobs.try_send(job).is_ok())
    }

    fn set_error(&self, text: &'static str) {
        lock(&self.status).last_error = Some(text);
    }

    /// Settles the answers the publisher collected (and empties `sent`). The outbox hears of
    /// the confirmations before anyone waiting for the entries does, so a `publish` that
    /// returns `Ok` has always told the outbox.
    pub(crate) fn settle(&self, sent: &mut Vec<Sent>) {
        let mut acked = Vec::with_capacity(sent.len());
        let mut latencies = Vec::with_capacity(sent.len());
        let mut broken = false;
        {
            let mut tracker = self.tracker();
            for Sent {
                seq,
                attempt,
                elapsed,
                outcome,
            } in sent.drain(..)
            {
                match outcome {
                    Ok(Confirmation::Ack(_)) => {
                        latencies.push(elapsed);
                        if tracker.holds(seq) {
                            acked.push(seq);
                        }
                    }
                    Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => {
                        tracker.failed(seq, attempt, Failure::Nacked);
                    }
                    Err(e) => {
                        tracker.failed(seq, attempt, Failure::Publish(e));
                        broken = true;
                    }
                }
            }
        }
        if let Some(observer) = self.observer.get() {
            latencies.into_iter().for_each(|l| observer.confirmed(l));
        }
        if !acked.is_empty() {
            self.outbox.confirmed(&acked);
            let mut tracker = self.tracker();
            for seq in acked {
                tracker.confirmed(seq);
            }
        }
        self.freed.notify_waiters();
        if broken {
            self.broken.notify_one();
        }
    }

    fn fail(&self, seq: Seq, attempt: u64, failure: Failure) {
        self.tracker().failed(seq, attempt, failure);
        self.freed.notify_waiters();
    }

    /// Waits until the entry is confirmed, or (with `stop_on_failure`) its attempt failed,
    /// or the deadline passed.
    async fn wait(&self, seq: Seq, deadline: Instant, stop_on_failure: bool) -> Settled {
        let settled = |observed: Observed| match observed {
            Observed::Confirmed => Err(Settled::Confirmed),
            Observed::Unknown => Err(Settled::Unknown),
            Observed::Waiting(f, _) if stop_on_failure => Err(Settled::Failed(f)),
            Observed::Waiting(_, notify) | Observed::InFlight(notify) => Ok(notify),
        };
        loop {
            let notify = match settled(self.tracker().observe(seq)) {
                Ok(notify) => notify,
                Err(done) => return done,
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let observed = self.tracker().observe(seq);
            if matches!(observed, Observed::Waiting(..)) {
                self.kick.notify_one();
            }
            if let Err(done) = settled(observed) {
                return done;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Settled::TimedOut;
            }
        }
    }
}

/// The AMQP routing key and message id of an event, if they fit AMQP's short strings.
fn publishable(event: &FeedEvent) -> Result<(ShortString, ShortString), FeedError> {
    let routing_key =
        ShortString::try_new(event.routing_key.as_str()).map_err(|_| FeedError::Unpublishable {
            why: "its routing key is longer than 255 bytes",
        })?;
    let message_id =
        ShortString::try_new(event.message_id.as_str()).map_err(|_| FeedError::Unpublishable {
            why: "its message id is longer than 255 bytes",
        })?;
    Ok((routing_key, message_id))
}

/// Sends every outbox entry that is neither in flight nor confirmed, in sequence order,
/// within the relay's share of `max_unconfirmed`.
async fn relay_pass(shared: Arc<Shared>, jobs: mpsc::Sender<Job>) {
    shared.tracker().begin_pass();
    let mut after = None;
    let mut unpublishable = 0u64;
    loop {
        let outbox = shared.outbox.clone();
        let page = match tokio::task::spawn_blocking(move || outbox.scan(after, SCAN_PAGE)).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the outbox failed; the next sweep retries");
                shared.tracker().abort_pass();
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "the outbox scan panicked; the next sweep retries");
                shared.tracker().abort_pass();
                return;
            }
        };
        let last_page = page.len() < SCAN_PAGE;
        for (seq, event) in page {
            after = Some(seq);
            shared.tracker().scanned(seq, &event.hub);
            let Ok(names) = publishable(&event) else {
                unpublishable += 1;
                continue;
            };
            loop {
                let freed = shared.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                let claim = shared.tracker().claim(seq, &event, Source::Relay);
                match claim {
                    Claim::Send { attempt } => {
                        let job = Job {
                            seq,
                            attempt,
                            event,
                            names,
                        };
                        if jobs.try_send(job).is_err() {
                            // The publisher is gone with its link; the next link's pass sends.
                            shared.fail(seq, attempt, Failure::LinkDown);
                            shared.tracker().abort_pass();
                            return;
                        }
                        break;
                    }
                    Claim::InFlight | Claim::Confirmed => break,
                    Claim::Full => {
                        // Bounded so a lost wake-up costs one confirm timeout, not the pass.
                        let _ =
                            tokio::time::timeout(shared.settings.confirm_timeout, &mut freed).await;
                    }
                }
            }
        }
        if last_page {
            break;
        }
    }
    shared.tracker().finish_pass();
    if unpublishable > 0 {
        tracing::warn!(
            unpublishable,
            "outbox entries cannot be published (routing key or message id over 255 bytes)"
        );
    }
}

/// Resolves once a stop was asked for or every `Feed` handle is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

enum Ended {
    Lost,
    Stopped,
}

/// A link `publish` uses, with the queue of its publisher.
struct Installed {
    link: Link,
    jobs: mpsc::Sender<Job>,
    queued: mpsc::Receiver<Job>,
}

/// Makes a new link the one `publish` uses.
fn install(shared: &Shared, link: Link) -> Installed {
    let (jobs, queued) = publisher::queue(shared.settings.max_unconfirmed);
    shared.tracker().link_changed();
    *lock(&shared.jobs) = Some(jobs.clone());
    shared.blocked.store(false, Ordering::Release);
    shared.up.store(true, Ordering::Release);
    Installed { link, jobs, queued }
}

/// Publishes on an installed link until it fails or the feed stops.
async fn serve(
    shared: &Arc<Shared>,
    installed: Installed,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let Installed {
        mut link,
        jobs,
        queued,
    } = installed;
    let publisher = tokio::spawn(publisher::run(shared.clone(), link.channel.clone(), queued));
    let mut relay = tokio::spawn(relay_pass(shared.clone(), jobs.clone()));
    let mut sweep = tokio::time::interval(shared.settings.sweep_interval);
    sweep.reset();
    let ended = loop {
        tokio::select! {
            event = link.next_event() => match event {
                Some(Event::Error(e)) => {
                    tracing::warn!(error = %e, "broker link lost");
                    break Ended::Lost;
                }
                Some(Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "the broker blocked publishing");
                    shared.blocked.store(true, Ordering::Release);
                }
                Some(Event::ConnectionUnblocked) => shared.blocked.store(false, Ordering::Release),
                Some(_) => {}
                None => {
                    tracing::warn!("broker link closed");
                    break Ended::Lost;
                }
            },
            () = shared.broken.notified() => {
                if !link.connection.status().connected() || !link.channel.status().connected() {
                    tracing::warn!("broker link failed while publishing");
                    break Ended::Lost;
                }
            }
            _ = sweep.tick() => {
                if relay.is_finished() {
                    relay = tokio::spawn(relay_pass(shared.clone(), jobs.clone()));
                }
            }
            () = shared.kick.notified() => {
                if relay.is_finished() {
                    relay = tokio::spawn(relay_pass(shared.clone(), jobs.clone()));
                }
            }
            () = stopped(stop) => break Ended::Stopped,
        }
    };
    relay.abort();
    shared.up.store(false, Ordering::Release);
    *lock(&shared.jobs) = None;
    drop(jobs);
    match ended {
        Ended::Lost => shared.set_error("link lost"),
        Ended::Stopped => drain(shared).await,
    }
    publisher.abort();
    shared.tracker().link_down();
    shared.freed.notify_waiters();
    link.close(shared.settings.confirm_timeout).await;
    ended
}

/// Gives the events in flight up to a confirm timeout to be confirmed, so that a clean stop
/// leaves as little as possible to publish again.
async fn drain(shared: &Shared) {
    let deadline = Instant::now() + shared.settings.confirm_timeout;
    loop {
        let freed = shared.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if shared.tracker().in_flight() == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            return;
        }
    }
}

/// The background task: serve the link, reconnect with back-off and jitter when it is lost.
async fn run(shared: Arc<Shared>, first: Installed, mut stop: watch::Receiver<bool>) {
    let settings = &shared.settings;
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut next = Some(first);
    loop {
        let link = match next.take() {
            Some(link) => link,
            None => {
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = stopped(&mut stop) => return,
                }
                let attempt = tokio::select! {
                    attempt = link::connect(settings) => attempt,
                    () = stopped(&mut stop) => return,
                };
                match attempt {
                    Ok(link) => {
                        let installed = install(&shared, link);
                        lock(&shared.status).reconnects += 1;
                        tracing::info!(broker = %settings.url, "broker link re-established");
                        installed
                    }
                    Err(e) => {
                        shared.set_error(e.short());
                        tracing::warn!(error = %e, "reconnecting to the broker failed");
                        continue;
                    }
                }
            }
        };
        backoff.reset();
        if let Ended::Stopped = serve(&shared, link, &mut stop).await {
            return;
        }
    }
}

/// Stops the background task when the last [`Feed`] handle is dropped.
struct Owner {
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

/// The broker link. Cheap to clone; the link stays up until [`Feed::shutdown`] or until the
/// last clone is dropped.
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("broker", &self.shared.settings.url)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Feed {
    /// Connects once within `connect_timeout` (declaring the exchange and, if configured,
    /// one durable queue per hub bound with `{hub}.#`), then keeps the link up in a
    /// background task, reconnecting with exponential back-off and jitter. The first pass of
    /// the relay sends what the outbox already holds.
    ///
    /// A first connection that fails is an error saying what failed (refused, timed out,
    /// access refused, vhost not found), without the password.
    pub async fn start(
        config: FeedConfig,
        hubs: Vec<HubName>,
        outbox: Arc<dyn Outbox>,
    ) -> Result<Feed, FeedError> {
        let settings = Settings::new(&config, &hubs)?;
        let first = link::connect(&settings).await?;
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::new(settings.max_unconfirmed, &hubs)),
            settings,
            outbox,
            jobs: Mutex::new(None),
            up: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            freed: Notify::new(),
            broken: Notify::new(),
            kick: Notify::new(),
            status: Mutex::new(LinkStatus::default()),
            observer: OnceLock::new(),
        });
        let first = install(&shared, first);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(shared.clone(), first, stop_rx));
        tracing::info!(broker = %shared.settings.url, exchange = %shared.settings.exchange, "assignment feed linked");
        Ok(Feed {
            shared,
            owner: Arc::new(Owner {
                stop,
                task: tokio::sync::Mutex::new(Some(task)),
            }),
        })
    }

    /// Whether `device.assigned` documents should carry symmetric keys (the configuration's
    /// `include_device_keys`, for whoever builds the events).
    pub fn include_device_keys(&self) -> bool {
        self.shared.settings.include_device_keys
    }

    /// Whether events can be published now.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire) && !self.shared.blocked.load(Ordering::Acquire)
    }

    /// Publishes an event just made durable in the outbox (persistent, pipelined on one
    /// confirm channel with every other publication) and waits up to `confirm_timeout` for
    /// the broker's confirmation. `Ok` only after the broker confirmed it, and then the
    /// outbox has been told to drop the entry. On a nack, a timeout or a link that is down
    /// the entry stays, and the relay sends it later. Beyond `max_unconfirmed` events held,
    /// fails at once with [`FeedError::Backlog`].
    ///
    /// Cancel-safe: the publication goes on without the caller.
    pub async fn publish(&self, seq: Seq, event: FeedEvent) -> Result<(), FeedError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(FeedError::ShutDown);
        }
        let names = publishable(&event)?;
        let timeout = shared.settings.confirm_timeout;
        let deadline = Instant::now() + timeout;
        let claim = shared.tracker().claim(seq, &event, Source::Publish);
        match claim {
            Claim::Confirmed => return Ok(()),
            Claim::Full => {
                return Err(FeedError::Backlog {
                    limit: shared.settings.max_unconfirmed,
                })
            }
            Claim::InFlight => {}
            Claim::Send { attempt } => {
                let job = Job {
                    seq,
                    attempt,
                    event,
                    names,
                };
                if !shared.enqueue(job) {
                    shared.fail(seq, attempt, Failure::LinkDown);
                    return Err(FeedError::LinkDown);
                }
            }
        }
        match shared.wait(seq, deadline, true).await {
            // The tracker held the entry when it was claimed, and lets entries go only once
            // confirmed: one it no longer knows was confirmed, then forgotten under a burst
            // of later confirmations before this call looked again.
            Settled::Confirmed | Settled::Unknown => Ok(()),
            Settled::Failed(failure) => Err(failure.into()),
            Settled::TimedOut => Err(FeedError::ConfirmTimeout { after: timeout }),
        }
    }

    /// The outbox sequence number of the event with this message id, while the feed holds it
    /// unconfirmed (handed to `publish`, or taken from the outbox by the relay). `None` for
    /// a confirmed event, and for one the feed has not met yet: the outbox is the authority.
    pub fn pending(&self, message_id: &str) -> Option<Seq> {
        self.shared.tracker().pending(message_id)
    }

    /// Waits up to `timeout` for the broker to confirm the entry. False when the time ran
    /// out, or when the feed does not know the entry (never held, or confirmed so long ago
    /// that it was forgotten).
    pub async fn wait_confirmed(&self, seq: Seq, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        matches!(
            self.shared.wait(seq, deadline, false).await,
            Settled::Confirmed
        )
    }

    /// Reports every confirmation's latency to `observer` from now on; false if an observer
    /// was set before (it stays).
    pub fn observe(&self, observer: Arc<dyn FeedObserver>) -> bool {
        self.shared.observer.set(observer).is_ok()
    }

    /// Counters per hub and the state of the link.
    pub fn stats(&self) -> FeedStats {
        let (hubs, other_hubs, in_flight) = {
            let tracker = self.shared.tracker();
            let (hubs, other) = tracker.hub_counters();
            (hubs, other, tracker.in_flight())
        };
        let status = lock(&self.shared.status);
        FeedStats {
            link_up: self.shared.up.load(Ordering::Acquire),
            blocked: self.shared.blocked.load(Ordering::Acquire),
            last_error: status.last_error,
            reconnects: status.reconnects,
            in_flight: in_flight as u64,
            hubs: hubs
                .into_iter()
                .map(|(hub, counters)| HubStats { hub, counters })
                .collect(),
            other_hubs,
        }
    }

    /// Stops publishing, gives events in flight up to a confirm timeout, and closes the
    /// link. Later `publish` calls fail with [`FeedError::ShutDown`].
    pub async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.owner.stop.send_replace(true);
        let task = self.owner.task.lock().await.take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the feed's link task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_whose_names_break_amqp_limits_is_unpublishable() {
        // A 253-character hub name is a valid host name, but its routing key is too long.
        let label = "a".repeat(63);
        let hub = HubName::parse(&format!("{label}.{label}.{label}.{}", "b".repeat(61))).unwrap();
        let mut event = FeedEvent {
            message_id: "id".into(),
            routing_key: format!("{hub}.device.assigned"),
            hub,
            event_type: crate::EventType::Assigned,
            time_utc: dps_types::Timestamp::now(),
            body: "{}".into(),
        };
        let err = publishable(&event).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the event cannot be published: its routing key is longer than 255 bytes"
        );
        event.routing_key = "hub.device.assigned".into();
        assert!(publishable(&event).is_ok());
        event.message_id = "m".repeat(256);
        assert!(publishable(&event).is_err());
    }
}
