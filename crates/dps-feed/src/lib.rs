//! The assignment feed: every assignment, reassignment and deprovisioning of a device is
//! published to RabbitMQ (AMQP 0-9-1, through `lapin`) as a durable JSON event that the hub
//! side consumes to admit or remove the device.
//!
//! What it does: builds the event documents ([`assigned_event`], [`deprovisioned_event`],
//! with a [`message_id`] that is the same for every re-publication of one event); keeps one
//! link to the broker up ([`Feed::start`] connects once and reports precisely why it could
//! not, then a background task reconnects with exponential back-off and jitter); declares a
//! durable topic exchange and, if asked, one durable queue per linked hub (of the
//! [`HubQueueType`] configured); publishes events
//! persistent, on one confirm channel, pipelined ([`Feed::publish`] returns `Ok` only after
//! the broker's confirmation); and relays what the durable [`Outbox`] still holds on every
//! (re)connection and now and then while up. [`Feed::stats`] gives per-hub counters, and a
//! [`FeedObserver`] hears each confirmation's latency.
//!
//! What it must never do: report an event as confirmed before the broker acknowledged it;
//! hold unbounded state (events held unconfirmed are bounded by `max_unconfirmed`, outbox
//! scans are paged); let publishing depend on consumers (the mandatory flag is off); show
//! the broker password in an error, a log line or `Debug`; depend on the store or the
//! registrar (the store implements [`Outbox`]; dependencies point one way).
//!
//! Main types: [`Feed`], [`FeedConfig`] with [`BrokerUrl`], [`FeedEvent`], [`Assignment`],
//! [`Deprovision`], [`DeviceAuthentication`], [`Outbox`], [`FeedStats`], and [`FeedError`],
//! the one error enum of this crate. The event contract is `docs/assignment-feed.md`.

mod config;
mod error;
mod event;
mod feed;
mod link;
mod publisher;
mod tracker;

pub use config::{
    check_name, BrokerUrl, ConfiguredName, FeedConfig, HubQueueType, DEFAULT_BROKER_URL,
};
pub use error::FeedError;
pub use event::{
    assigned_event, deprovisioned_event, message_id, Assignment, Deprovision, DeprovisionReason,
    DeviceAuthentication, EnrollmentRef, EventType, FeedEvent, Seq, Thumbprint, SCHEMA_VERSION,
};
pub use feed::{BoxError, Feed, FeedObserver, FeedStats, HubStats, Outbox};
pub use tracker::HubCounters;
