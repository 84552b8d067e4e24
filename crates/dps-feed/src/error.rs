//! The one error enum of the crate. No message carries the broker password: endpoints are
//! described by host, port and virtual host only.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong, grouped by who is at fault: the configuration, the broker link, or a
/// single publication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The broker URL is not an `amqp://` or `amqps://` URL with a host.
    #[error("is not a usable broker URL: {why}")]
    InvalidUrl {
        /// What is wrong with it (never the URL itself, which may hold a password).
        why: String,
    },
    /// A name in the configuration breaks an AMQP rule.
    #[error("{what} {why}")]
    InvalidName {
        /// Which name (`exchange`, `queue_prefix`, ...).
        what: &'static str,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A duration or count in the configuration is zero or out of order.
    #[error("{what} {why}")]
    InvalidSetting {
        /// Which setting.
        what: &'static str,
        /// The rule it breaks.
        why: &'static str,
    },
    /// The CA file for `amqps://` could not be read or holds no PEM certificate.
    #[error("cannot use TLS CA file {path}: {why}")]
    TlsCa {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
        /// The I/O error, when reading failed.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Nothing listens at the broker's address.
    #[error("connection refused by {endpoint}")]
    Refused {
        /// `host:port`.
        endpoint: String,
        /// The client's error.
        #[source]
        source: Box<lapin::Error>,
    },
    /// The broker did not complete the connection (TCP, TLS, AMQP handshake and declarations)
    /// in time.
    #[error("connecting to {endpoint} timed out after {after:?}")]
    TimedOut {
        /// `host:port`.
        endpoint: String,
        /// The connect timeout.
        after: Duration,
    },
    /// The broker refused the user name or password.
    #[error("access refused by {endpoint} for user '{user}' (wrong user name or password?)")]
    AccessRefused {
        /// `host:port`.
        endpoint: String,
        /// The user name from the URL.
        user: String,
        /// The client's error.
        #[source]
        source: Box<lapin::Error>,
    },
    /// The virtual host named in the URL does not exist (or the user may not use it).
    #[error("virtual host '{vhost}' not found at {endpoint} (or the user may not use it)")]
    VhostNotFound {
        /// `host:port`.
        endpoint: String,
        /// The virtual host from the URL.
        vhost: String,
        /// The client's error.
        #[source]
        source: Box<lapin::Error>,
    },
    /// Any other failure to connect (name resolution, TLS, protocol).
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// `host:port`.
        endpoint: String,
        /// The client's error.
        #[source]
        source: Box<lapin::Error>,
    },
    /// The broker refused a declaration (exchange, queue, binding, confirm mode), e.g. an
    /// exchange of that name exists with another type.
    #[error("the broker refused to {what}: {source}")]
    Declare {
        /// The configuration key that decides what was declared.
        key: &'static str,
        /// What was being declared.
        what: String,
        /// The client's error.
        #[source]
        source: Box<lapin::Error>,
    },
    /// A hub queue exists with other arguments than `hub_queue_type` declares (the broker
    /// answered PRECONDITION_FAILED): RabbitMQ cannot change a queue's kind in place.
    #[error(
        "queue '{queue}' exists with other arguments than hub_queue_type = \"{queue_type}\" \
         declares; set hub_queue_type to the kind of the existing queue, or delete the queue \
         once its consumer drained it ({source})"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The configured kind.
        queue_type: crate::HubQueueType,
        /// The client's error, with the broker's text (which argument differs).
        #[source]
        source: Box<lapin::Error>,
    },
    /// There is no usable link to the broker right now (down, reconnecting, or blocked by
    /// the broker's resource alarm); the event stays in the outbox.
    #[error("the broker link is down")]
    LinkDown,
    /// As many events as `max_unconfirmed` are already waiting for the broker.
    #[error("{limit} events are already waiting for the broker's confirmation")]
    Backlog {
        /// The configured bound.
        limit: usize,
    },
    /// The broker refused the event (negative confirmation); the event stays in the outbox.
    #[error("the broker refused the event (nack)")]
    Nacked,
    /// The broker did not confirm the event in time; it may still, and the event stays in the
    /// outbox until it does.
    #[error("the broker did not confirm the event within {after:?}")]
    ConfirmTimeout {
        /// The confirm timeout.
        after: Duration,
    },
    /// Publishing failed on the link (it broke while the event was on its way).
    #[error("publishing failed: {source}")]
    Publish {
        /// The client's error.
        #[source]
        source: Box<lapin::Error>,
    },
    /// The event cannot be published at all (its routing key or message id is longer than
    /// the 255 bytes AMQP allows).
    #[error("the event cannot be published: {why}")]
    Unpublishable {
        /// Which limit it breaks.
        why: &'static str,
    },
    /// A thumbprint is not 40 or 64 hex digits.
    #[error("a thumbprint must be 40 or 64 hex digits (got {len} characters)")]
    InvalidThumbprint {
        /// The length of what was given.
        len: usize,
    },
    /// The feed was shut down.
    #[error("the feed is shut down")]
    ShutDown,
}

impl FeedError {
    /// The configuration key (within the feed's section) to look at to fix this error.
    pub fn key(&self) -> &'static str {
        match self {
            FeedError::InvalidName { what, .. } | FeedError::InvalidSetting { what, .. } => what,
            FeedError::TlsCa { .. } => "tls_ca_file",
            FeedError::Declare { key, .. } => key,
            FeedError::QueueMismatch { .. } => "hub_queue_type",
            _ => "url",
        }
    }

    /// A short fixed text for stats and logs with bounded values.
    pub fn short(&self) -> &'static str {
        match self {
            FeedError::InvalidUrl { .. }
            | FeedError::InvalidName { .. }
            | FeedError::InvalidSetting { .. }
            | FeedError::TlsCa { .. }
            | FeedError::InvalidThumbprint { .. } => "configuration",
            FeedError::Refused { .. } => "connection refused",
            FeedError::TimedOut { .. } => "connect timed out",
            FeedError::AccessRefused { .. } => "access refused",
            FeedError::VhostNotFound { .. } => "vhost not found",
            FeedError::Connect { .. } => "connect failed",
            FeedError::Declare { .. } => "declaration refused",
            FeedError::QueueMismatch { .. } => "queue type mismatch",
            FeedError::LinkDown => "link down",
            FeedError::Backlog { .. } => "backlog full",
            FeedError::Nacked => "nack",
            FeedError::ConfirmTimeout { .. } => "confirm timed out",
            FeedError::Publish { .. } => "publish failed",
            FeedError::Unpublishable { .. } => "unpublishable event",
            FeedError::ShutDown => "shut down",
        }
    }
}
