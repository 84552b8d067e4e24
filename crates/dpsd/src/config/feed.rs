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
        |e: &String| amqp_name(e),
    );
    let queue_prefix = r.take_valid(
        &mut t,
        "feed",
        "queue_prefix",
        defaults.queue_prefix.clone(),
        |p: &String| amqp_name(p),
    );
    let config = dps_feed::FeedConfig {
        url,
        exchange,
        hub_queues: r.take(&mut t, "feed", "hub_queues", defaults.hub_queues),
        queue_prefix,
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

/// An exchange or queue name RabbitMQ accepts (AMQP 0-9-1 short string: 1 to 255 bytes of
/// letters, digits, `-`, `_`, `.`, `:`).
fn amqp_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 255 letters, digits, '-', '_', '.' or ':'".into())
    }
}
