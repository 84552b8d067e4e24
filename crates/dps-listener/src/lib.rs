//! The one TCP listener every frontend of the provisioning service runs on (HTTPS - the
//! service and device APIs, the portal and WebSocket devices -, MQTT and AMQP), shaped like
//! mini-redis's
//! `Listener`: [`serve`] accepts, admits or sheds, spawns one task per connection, and on
//! shutdown drains.
//!
//! What it does:
//! * **slots**: a global limit on open connections, a per-source-address limit, and a
//!   per-source-address limit on connections that have not authenticated yet (the protocol
//!   says when: [`Slot::authenticated`]). A connection over any limit is closed right after
//!   `accept`, before any TLS work, and counted by reason in [`ListenerCounters`];
//! * **accept errors**: a failed `accept` (nearly always "out of file descriptors", which frees
//!   up as connections close) is retried with doubling back-off; after
//!   [`MAX_ACCEPT_FAILURES`] failures in a row the listener is broken and [`serve`] returns the
//!   error, so the process can exit and be restarted rather than half-live;
//! * **drain**: once `shutdown` resolves, the socket closes, every connection sees
//!   [`Draining`], and connections still open after the drain timeout are aborted;
//! * **devices**: [`DeviceConnections`], the authenticated connections each registration id
//!   holds, so that one identity holds a bounded number of a device listener's slots;
//! * **handshakes**: the frontends report how each TLS handshake ended
//!   ([`ListenerCounters::handshake`]), so one handle per listener carries every connection
//!   metric, and a [`HandshakeTimer`] gets the duration of the completed ones.
//!
//! What it must never do: speak a protocol (TLS, HTTP, MQTT belong to the frontends), log or
//! count per address (addresses only key the limits; counters are fixed names), or hold a
//! lock across an await.
//!
//! Main types: [`serve`], [`ListenerLimits`], [`Admitted`] (what a connection task gets),
//! [`Slot`], [`Draining`], [`DeviceConnections`], [`ListenerCounters`] / [`ListenerStats`], [`Handshake`]. The crate has no error
//! type of its own: the only error it returns is the listener's `std::io::Error`.

mod devices;
mod handshake;
mod slots;

use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use devices::{DeviceConnections, DevicePlace};
pub use handshake::{Handshake, HandshakeTimer};
pub use slots::{ListenerCounters, ListenerStats, Slot};

/// First pause after a failed `accept`; doubles up to [`MAX_ACCEPT_BACKOFF`].
pub const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Longest pause between `accept` retries: a recovered listener is back within a second, and
/// a persistent error does not spin a core.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Consecutive failed `accept`s after which the listener gives up and [`serve`] returns the
/// error: with the back-off above, about a minute (7 short pauses, then 1 s each) - long
/// enough for a burst of connections to close and free descriptors, short enough that a
/// broken listener is restarted by the supervisor instead of refusing devices for hours.
pub const MAX_ACCEPT_FAILURES: u32 = 64;

/// The bounds of one listener. Each frontend sets its own values (and documents them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections open at once; one more is closed right after `accept`.
    pub max_connections: usize,
    /// Connections open at once from one source (an IPv4 address or an IPv6 /64).
    pub max_connections_per_ip: usize,
    /// Connections from one source that have not authenticated yet (from `accept` until
    /// [`Slot::authenticated`]): a flood of handshakes that never finish is shed here while
    /// devices from other addresses connect.
    pub max_unauthenticated_per_ip: usize,
    /// After shutdown, how long open connections may finish before they are aborted.
    pub drain_timeout: Duration,
}

/// A source of connections: [`TcpListener`], or in tests one that fails on purpose.
pub trait Accept: Send {
    /// The connection type.
    type Stream: Send + 'static;
    /// Polls for the next connection and its peer address.
    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(Self::Stream, SocketAddr)>>;
}

impl Accept for TcpListener {
    type Stream = TcpStream;

    fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<(TcpStream, SocketAddr)>> {
        TcpListener::poll_accept(self, cx)
    }
}

/// What a connection task is given: the stream, its peer, its slot (hold it as long as the
/// connection lives) and the drain signal.
#[derive(Debug)]
pub struct Admitted<S> {
    /// The accepted connection.
    pub stream: S,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection's slot; dropping it (every clone) frees it.
    pub slot: Slot,
    /// Set once the listener drains.
    pub draining: Draining,
}

/// Whether the listener is draining: a connection should finish what is in flight and close.
#[derive(Debug, Clone)]
pub struct Draining(watch::Receiver<bool>);

impl Draining {
    /// Resolves once the listener drains (at once if it already does). Cancel-safe.
    pub async fn wait(&mut self) {
        // An error means the listener is gone, which is a drain too.
        let _ = self.0.wait_for(|draining| *draining).await;
    }

    /// Whether the listener drains now.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}

/// Accepts on `listener` until `shutdown` resolves, running `handler` as its own task for
/// every admitted connection; then stops accepting, signals [`Draining`], and waits up to
/// `limits.drain_timeout` for the connection tasks before aborting them.
///
/// Returns `Err` only when `accept` failed [`MAX_ACCEPT_FAILURES`] times in a row (after
/// draining the open connections); errors that concern one connection that died before it
/// was accepted are not counted.
pub async fn serve<A, H, F>(
    mut listener: A,
    limits: ListenerLimits,
    counters: ListenerCounters,
    shutdown: impl Future<Output = ()>,
    mut handler: H,
) -> std::io::Result<()>
where
    A: Accept,
    H: FnMut(Admitted<A::Stream>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = slots::Slots::new(limits, counters);
    let (drain, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut failures = 0u32;
    let mut backoff = FIRST_ACCEPT_BACKOFF;
    let mut result = Ok(());
    tokio::pin!(shutdown);

    loop {
        // Every branch is cancel-safe: a pending `accept` or `join_next` loses nothing when
        // another branch wins.
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = ended {
                    if e.is_panic() {
                        tracing::error!(error = %e, "bug: a connection task panicked");
                    }
                }
                continue;
            }
            accepted = std::future::poll_fn(|cx| listener.poll_accept(cx)) => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                failures = 0;
                backoff = FIRST_ACCEPT_BACKOFF;
                match slots.admit(peer.ip()) {
                    Ok(slot) => {
                        connections.spawn(handler(Admitted {
                            stream,
                            peer,
                            slot,
                            draining: Draining(draining.clone()),
                        }));
                    }
                    Err(why) => {
                        tracing::debug!(%peer, ?why, "connection shed");
                        drop(stream);
                    }
                }
            }
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "accept: a connection died before it was accepted");
            }
            Err(e) => {
                slots.counters().accept_error();
                failures += 1;
                if failures >= MAX_ACCEPT_FAILURES {
                    tracing::error!(error = %e, failures, "accept keeps failing; the listener gives up");
                    result = Err(e);
                    break;
                }
                tracing::warn!(error = %e, pause_ms = backoff.as_millis(), "accept failed; backing off");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }

    drop(listener);
    drain.send_replace(true);
    let open = connections.len();
    let wait_all = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.drain_timeout, wait_all)
        .await
        .is_err()
    {
        tracing::info!(open, "drain timeout: aborting the remaining connections");
        connections.shutdown().await;
    }
    result
}

/// `accept` errors that concern one connection that died before it was accepted, not the
/// listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}

#[cfg(test)]
mod tests;
