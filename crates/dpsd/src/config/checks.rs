//! What makes a value usable beyond its form: the ranges of counts, sizes and timeouts, and
//! the `log` filter.

use std::time::Duration;

use super::ByteSize;

/// A `tracing` filter (`RUST_LOG` syntax), checked when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(String);

/// `info`: what an operator needs (start, shutdown, warnings, errors) without per-request
/// lines.
impl Default for LogFilter {
    fn default() -> Self {
        Self("info".to_owned())
    }
}

impl LogFilter {
    /// Checks `text` the way [`tracing_subscriber::EnvFilter`] reads it.
    pub fn parse(text: &str) -> Result<Self, tracing_subscriber::filter::ParseError> {
        tracing_subscriber::EnvFilter::try_new(text).map(|_| Self(text.to_owned()))
    }

    /// The filter text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The filter, ready for a subscriber.
    pub fn env_filter(&self) -> tracing_subscriber::EnvFilter {
        tracing_subscriber::EnvFilter::new(&self.0)
    }
}

/// Longest timeout a key accepts. No client waits an hour for a handshake, a request or a
/// webhook (the SDKs give up after 30 s); a longer deadline only lets a silent peer hold a
/// connection slot, and is almost certainly a unit mistake (`"30m"` for `"30s"`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The largest MQTT remaining length (four length bytes, MQTT 3.1.1 section 2.2.3): a larger
/// `mqtt.max_packet` could never be reached.
const MQTT_MAX_REMAINING_LENGTH: usize = 268_435_455;

/// A count of connections, requests or registrations: zero would refuse every one.
pub(super) fn positive_count<T: PartialEq + From<u8>>(n: &T) -> Result<(), String> {
    if *n == T::from(0) {
        return Err("must be at least 1".into());
    }
    Ok(())
}

/// A deadline: zero would fail every handshake or request at once.
pub(super) fn timeout(d: &Duration) -> Result<(), String> {
    if d.is_zero() || *d > MAX_TIMEOUT {
        return Err("must be more than 0 and at most 1h".into());
    }
    Ok(())
}

/// A body size: zero would refuse every request with a body.
pub(super) fn body_size(size: &ByteSize) -> Result<(), String> {
    positive_count(&size.0)
}

/// An MQTT packet size: zero would refuse every packet.
pub(super) fn packet_size(size: &ByteSize) -> Result<(), String> {
    if !(1..=MQTT_MAX_REMAINING_LENGTH).contains(&size.0) {
        return Err(format!(
            "must be at least 1B and at most {MQTT_MAX_REMAINING_LENGTH}B (MQTT's largest packet)"
        ));
    }
    Ok(())
}
