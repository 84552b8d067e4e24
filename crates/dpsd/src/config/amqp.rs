//! `[amqp]`: the AMQP device listener. Defaults are `dps_amqp::AmqpLimits::default()`.

use std::net::SocketAddr;
use std::time::Duration;

use super::checks::{positive_count, timeout};
use super::reader::{ByteSize, Reader};

/// AMQP 1.0's smallest maximum frame size (`MIN-MAX-FRAME-SIZE`, §2.7.1): a smaller one
/// cannot be announced.
const MIN_FRAME_SIZE: usize = 512;

/// `[amqp]`.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Whether the listener runs at all.
    pub enabled: bool,
    /// Listen address (AMQP over TLS).
    pub listen: SocketAddr,
    /// Connections beyond this are closed before the TLS handshake.
    pub max_connections: usize,
    /// Connections from one source address beyond this are closed before the handshake.
    pub max_connections_per_ip: usize,
    /// Connections from one source address not yet attested, beyond which more are closed
    /// before the handshake.
    pub max_unauthenticated_per_ip: usize,
    /// Deadline for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Deadline from the handshake to both links attached (header, SASL, OPEN, BEGIN, ATTACH).
    pub open_timeout: Duration,
    /// Idle timeout announced in OPEN.
    pub idle_timeout: Duration,
    /// Longest a device connection stays open.
    pub max_connection_lifetime: Duration,
    /// Attested connections one registration id may hold at once.
    pub max_connections_per_device: usize,
    /// Largest frame.
    pub max_frame: ByteSize,
    /// Largest message.
    pub max_message: ByteSize,
    /// Requests a device may have in flight (its sender link's credit).
    pub link_credit: u32,
    /// Register and poll requests per connection.
    pub max_requests_per_connection: u32,
    /// Registrations running at once per connection.
    pub max_operations_per_connection: usize,
    /// How long an answer may wait for the device's credit.
    pub send_timeout: Duration,
}

impl AmqpConfig {
    /// The listener's limits.
    pub fn limits(&self) -> dps_amqp::AmqpLimits {
        dps_amqp::AmqpLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_unauthenticated_per_ip: self.max_unauthenticated_per_ip,
            tls_handshake_timeout: self.tls_handshake_timeout,
            open_timeout: self.open_timeout,
            idle_timeout: self.idle_timeout,
            max_connection_lifetime: self.max_connection_lifetime,
            max_connections_per_device: self.max_connections_per_device,
            max_frame_size: self.max_frame.0,
            max_message_size: self.max_message.0,
            link_credit: self.link_credit,
            max_requests_per_connection: self.max_requests_per_connection,
            max_operations_per_connection: self.max_operations_per_connection,
            send_timeout: self.send_timeout,
            ..dps_amqp::AmqpLimits::default()
        }
    }
}

/// A frame size AMQP can announce (OPEN's `max-frame-size` is a 32-bit count).
fn frame_size(size: &ByteSize) -> Result<(), String> {
    if !(MIN_FRAME_SIZE..=u32::MAX as usize).contains(&size.0) {
        return Err(format!(
            "must be at least {MIN_FRAME_SIZE}B (AMQP's smallest) and at most 4GiB"
        ));
    }
    Ok(())
}

/// A message size: zero would refuse every request.
fn message_size(size: &ByteSize) -> Result<(), String> {
    positive_count(&size.0)
}

/// Reads `[amqp]` from `root`.
pub(super) fn read(r: &mut Reader, root: &mut toml::Table) -> AmqpConfig {
    let d = dps_amqp::AmqpLimits::default();
    let mut t = r.table(root, "", "amqp");
    let p = "amqp";
    let config = AmqpConfig {
        enabled: r.take(&mut t, p, "enabled", true),
        listen: r.take(&mut t, p, "listen", SocketAddr::from(([0, 0, 0, 0], 5671))),
        max_connections: r.take_valid(
            &mut t,
            p,
            "max_connections",
            d.max_connections,
            positive_count,
        ),
        max_connections_per_ip: r.take_valid(
            &mut t,
            p,
            "max_connections_per_ip",
            d.max_connections_per_ip,
            positive_count,
        ),
        max_unauthenticated_per_ip: r.take_valid(
            &mut t,
            p,
            "max_unauthenticated_per_ip",
            d.max_unauthenticated_per_ip,
            positive_count,
        ),
        tls_handshake_timeout: r.take_valid(
            &mut t,
            p,
            "tls_handshake_timeout",
            d.tls_handshake_timeout,
            timeout,
        ),
        open_timeout: r.take_valid(&mut t, p, "open_timeout", d.open_timeout, timeout),
        idle_timeout: r.take_valid(&mut t, p, "idle_timeout", d.idle_timeout, timeout),
        max_connection_lifetime: r.take_valid(
            &mut t,
            p,
            "max_connection_lifetime",
            d.max_connection_lifetime,
            timeout,
        ),
        max_connections_per_device: r.take_valid(
            &mut t,
            p,
            "max_connections_per_device",
            d.max_connections_per_device,
            positive_count,
        ),
        max_frame: r.take_valid(
            &mut t,
            p,
            "max_frame",
            ByteSize(d.max_frame_size),
            frame_size,
        ),
        max_message: r.take_valid(
            &mut t,
            p,
            "max_message",
            ByteSize(d.max_message_size),
            message_size,
        ),
        link_credit: r.take_valid(&mut t, p, "link_credit", d.link_credit, positive_count),
        max_requests_per_connection: r.take_valid(
            &mut t,
            p,
            "max_requests_per_connection",
            d.max_requests_per_connection,
            positive_count,
        ),
        max_operations_per_connection: r.take_valid(
            &mut t,
            p,
            "max_operations_per_connection",
            d.max_operations_per_connection,
            positive_count,
        ),
        send_timeout: r.take_valid(&mut t, p, "send_timeout", d.send_timeout, timeout),
    };
    r.finish_table(t, p);
    config
}
