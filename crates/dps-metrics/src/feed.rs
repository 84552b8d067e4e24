//! The assignment feed's metrics, read from [`Feed::stats`] at scrape time: the broker link,
//! and per linked hub the events published, confirmed and waiting in the outbox; and the
//! publisher-confirm latency, which the feed reports through [`dps_feed::FeedObserver`].

use std::time::Duration;

use dps_feed::{Feed, FeedObserver};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts};

use crate::family::{desc, Family};
use crate::MetricsError;

const LINK_UP: (&str, &str) = (
    "dps_feed_link_up",
    "1 while the assignment feed can publish to the broker (link up and not blocked), else 0.",
);
const RECONNECTS: (&str, &str) = (
    "dps_feed_reconnects_total",
    "Broker links re-established after a loss.",
);
const PUBLISHED: (&str, &str) = (
    "dps_feed_events_published_total",
    "Assignment events sent to the broker, re-publications included, by hub.",
);
const CONFIRMED: (&str, &str) = (
    "dps_feed_events_confirmed_total",
    "Assignment events the broker confirmed, by hub.",
);
const OUTBOX: (&str, &str) = (
    "dps_feed_outbox_events",
    "Events durable in the outbox and not yet confirmed by the broker, by hub.",
);
const IN_FLIGHT: (&str, &str) = (
    "dps_feed_events_in_flight",
    "Events sent to the broker and not yet confirmed.",
);

/// Confirm latency buckets, seconds: a loopback broker confirms in a fraction of a millisecond
/// with nothing to write, a durable queue after its disk write (ms to a hundred under load);
/// the confirm timeout is 5 s by default.
const CONFIRM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `dps_feed_confirm_duration_seconds`, resolved once: a confirmation costs one observation.
#[derive(Debug)]
pub(crate) struct ConfirmMetrics(Histogram);

impl ConfirmMetrics {
    pub(crate) fn new() -> Result<Self, MetricsError> {
        Histogram::with_opts(
            HistogramOpts::new(
                "dps_feed_confirm_duration_seconds",
                "Assignment events from their publication to the broker's confirmation (ack).",
            )
            .buckets(CONFIRM_BUCKETS.to_vec()),
        )
        .map(Self)
        .map_err(MetricsError::Register)
    }

    /// The histogram, to register.
    pub(crate) fn histogram(&self) -> Histogram {
        self.0.clone()
    }
}

impl FeedObserver for ConfirmMetrics {
    fn confirmed(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }
}

/// The feed's counters, labelled by hub (the linked hubs; events for other hubs count under
/// `hub="other"`).
pub(crate) struct FeedCollector {
    feed: Feed,
    descs: Vec<Desc>,
}

impl FeedCollector {
    pub(crate) fn new(feed: Feed) -> Result<Self, MetricsError> {
        let descs = vec![
            desc(LINK_UP.0, LINK_UP.1, &[], None)?,
            desc(RECONNECTS.0, RECONNECTS.1, &[], None)?,
            desc(PUBLISHED.0, PUBLISHED.1, &["hub"], None)?,
            desc(CONFIRMED.0, CONFIRMED.1, &["hub"], None)?,
            desc(OUTBOX.0, OUTBOX.1, &["hub"], None)?,
            desc(IN_FLIGHT.0, IN_FLIGHT.1, &[], None)?,
        ];
        Ok(Self { feed, descs })
    }
}

impl Collector for FeedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.feed.stats();
        let hubs: Vec<(&str, dps_feed::HubCounters)> = s
            .hubs
            .iter()
            .map(|h| (h.hub.as_str(), h.counters))
            .chain(std::iter::once(("other", s.other_hubs)))
            .collect();
        let per_hub =
            |name: (&str, &str), gauge: bool, value: fn(&dps_feed::HubCounters) -> u64| {
                let family = if gauge {
                    Family::gauge(name.0, name.1)
                } else {
                    Family::counter(name.0, name.1)
                };
                hubs.iter()
                    .fold(family, |f, (hub, c)| f.sample(&[("hub", hub)], value(c)))
                    .done()
            };
        vec![
            Family::gauge(LINK_UP.0, LINK_UP.1)
                .sample(&[], u64::from(s.link_up && !s.blocked))
                .done(),
            Family::counter(RECONNECTS.0, RECONNECTS.1)
                .sample(&[], s.reconnects)
                .done(),
            per_hub(PUBLISHED, false, |c| c.published),
            per_hub(CONFIRMED, false, |c| c.confirmed),
            per_hub(OUTBOX, true, |c| c.waiting),
            Family::gauge(IN_FLIGHT.0, IN_FLIGHT.1)
                .sample(&[], s.in_flight)
                .done(),
        ]
    }
}
