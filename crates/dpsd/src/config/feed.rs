//! `[feed]`: the assignment feed on RabbitMQ. Off unless `enabled = true`; every other key
//! defaults to `dps_feed::FeedConfig::default()` and is checked even while the feed is off.

use std::path::PathBuf;

use super::checks::{positive_count, timeout};
use super::reader::Reader;

/// `[feed]`.
#[derive(Debug, Clone)]
pub struct FeedSection {
    /// Whether assignments are published (and wait for the broker's confirmation).
    pub enabled: bool,
    /// Everything the broker link needs.
    pub config: dps_feed::FeedConfig,
}

/// Reads `[feed]`.
pub(super) fn read(r: &mut Reader, root: &mut toml::Table) -> FeedSection {
    let defaults = dps_feed::FeedConfig::default();
    let mut t = r.table(root, "", "feed");
    let enabled = r.take(&mut t, "feed", "enabled", false);
    let url_text = r.take(
        &mut t,
        "feed",
        "url",
        dps_feed::DEFAULT_BROKER_URL.to_owned(),
    );
    let url = dps_feed::BrokerUrl::parse(&url_text)
        .map_err(|e| r.error("feed.url", e))
        .unwrap_or_default();
    let exchange = r.take_valid(
        &mut t,
        "feed",
        "exchange",
        defaults.exchange.clone(),
        |e: &String| name(dps_feed::ConfiguredName::Exchange, e),
    );
    let queue_prefix = r.take_valid(
        &mut t,
        "feed",
        "queue_prefix",
        defaults.queue_prefix.clone(),
        |p: &String| name(dps_feed::ConfiguredName::QueuePrefix, p),
    );
    let hub_queue_type = r.take_valid(
        &mut t,
        "feed",
        "hub_queue_type",
        defaults.hub_queue_type.as_str().to_owned(),
        |k: &String| dps_feed::HubQueueType::parse(k).map(|_| ()).map_err(rule),
    );
    let config = dps_feed::FeedConfig {
        url,
        exchange,
        hub_queues: r.take(&mut t, "feed", "hub_queues", defaults.hub_queues),
        queue_prefix,
        hub_queue_type: dps_feed::HubQueueType::parse(&hub_queue_type).unwrap_or_default(),
        connect_timeout: r.take_valid(
            &mut t,
            "feed",
            "connect_timeout",
            defaults.connect_timeout,
            timeout,
        ),
        confirm_timeout: r.take_valid(
            &mut t,
            "feed",
            "confirm_timeout",
            defaults.confirm_timeout,
            timeout,
        ),
        reconnect_min: r.take_valid(
            &mut t,
            "feed",
            "reconnect_min",
            defaults.reconnect_min,
            timeout,
        ),
        reconnect_max: r.take_valid(
            &mut t,
            "feed",
            "reconnect_max",
            defaults.reconnect_max,
            timeout,
        ),
        tls_ca_file: Some(r.take(&mut t, "feed", "tls_ca_file", PathBuf::new()))
            .filter(|p| !p.as_os_str().is_empty()),
        include_device_keys: r.take(
            &mut t,
            "feed",
            "include_device_keys",
            defaults.include_device_keys,
        ),
        max_unconfirmed: r.take_valid(
            &mut t,
            "feed",
            "max_unconfirmed",
            defaults.max_unconfirmed,
            positive_count,
        ),
        ..defaults.clone()
    };
    if config.reconnect_min > config.reconnect_max {
        r.error(
            "feed.reconnect_min",
            "must not be longer than feed.reconnect_max",
        );
    }
    r.finish_table(t, "feed");
    FeedSection { enabled, config }
}

/// An exchange name or queue prefix, checked by dps-feed's one rule for them.
fn name(kind: dps_feed::ConfiguredName, text: &str) -> Result<(), String> {
    dps_feed::check_name(kind, text).map_err(rule)
}

/// The rule a refused value breaks, without dps-feed's own key name (the reader names the
/// key with its section).
fn rule(e: dps_feed::FeedError) -> String {
    match e {
        dps_feed::FeedError::InvalidName { why, .. }
        | dps_feed::FeedError::InvalidSetting { why, .. } => why.to_owned(),
        other => other.to_string(),
    }
}
