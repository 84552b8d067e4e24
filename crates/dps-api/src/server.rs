//! The HTTPS listener: accept loop, connection limit, TLS handshake, HTTP/1.1 with timeouts at
//! every phase, graceful shutdown. Shaped like mini-redis's `server.rs`: the loop only accepts
//! and spawns; each connection is one task that owns its socket, and a malformed or slow
//! client only ever ends its own connection.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::ApiError;

/// The bounds of every connection and request. `Default` gives the documented values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; one more is closed right after `accept`, before TLS.
    /// Default 1024: far above what management clients open, low enough that file
    /// descriptors and TLS state (tens of KiB each) stay bounded.
    pub max_connections: usize,
    /// Time from `accept` to a finished TLS handshake. Default 10 s: a handshake is two round
    /// trips; anything slower is a dead or hostile peer holding a connection slot.
    pub tls_handshake_timeout: Duration,
    /// Time to receive a complete request head, counted from the moment the server starts
    /// waiting for one: it also closes idle keep-alive connections. Default 30 s, the same as
    /// the SDKs' per-request timeout, and longer than the 5 s idle timeout of Node's agent.
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body before the request is answered
    /// 408. Default 10 s: bodies are at most a few hundred KiB and clients send them at once.
    pub body_read_timeout: Duration,
    /// Time from a complete request head to the end of the response head, body reading and
    /// store writes included; answered 408 when exceeded. Default 30 s: the SDKs give up
    /// after 30 s, so finishing later helps no one.
    pub request_timeout: Duration,
    /// Largest request body read on any route (413 above it; the API's own limit in
    /// `ApiState` applies too). Default [`crate::DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// After shutdown is signalled, how long in-flight requests may take before their
    /// connections are closed anyway. Default 10 s, well under the 30 s a process manager
    /// usually waits before killing.
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: crate::DEFAULT_MAX_BODY_BYTES,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Largest request head (request line and headers) hyper buffers. DPS requests carry a few
/// short headers and a SAS token of a few hundred bytes; 64 KiB is generous and bounded.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// First pause after a failed `accept` (usually out of file descriptors); doubles up to
/// `MAX_ACCEPT_BACKOFF` so a persistent failure does not spin a core.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between `accept` retries.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Consecutive failed `accept`s (about a minute of backoff) after which the listener is
/// considered broken and `serve` returns the error so the process can restart.
const MAX_ACCEPT_FAILURES: u32 = 64;

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting,
/// lets in-flight requests finish for up to `limits.drain_timeout`, and returns.
///
/// Returns an error only when `accept` keeps failing (`MAX_ACCEPT_FAILURES` in a row);
/// errors of single connections (TLS, HTTP parsing, timeouts) are logged at `debug` and end
/// only that connection.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut connections = JoinSet::new();
    let mut failures = 0u32;
    let mut result = Ok(());
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    failures = 0;
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        tracing::debug!(%peer, "connection limit reached; closing");
                        continue;
                    };
                    let connection = Connection {
                        acceptor: acceptor.clone(),
                        http: http.clone(),
                        app: app.clone(),
                        limits,
                        stopped: stopped.clone(),
                        peer,
                    };
                    connections.spawn(async move {
                        connection.run(stream).await;
                        drop(slot);
                    });
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "accept: connection aborted by the peer");
                }
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_ACCEPT_FAILURES {
                        tracing::error!(error = %e, "accept keeps failing; stopping the listener");
                        result = Err(e);
                        break;
                    }
                    let pause = FIRST_ACCEPT_BACKOFF
                        .saturating_mul(1 << failures.min(7))
                        .min(MAX_ACCEPT_BACKOFF);
                    tracing::warn!(error = %e, ?pause, "accept failed; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut shutdown => break,
                    }
                }
            }
        }
    }

    drop(listener);
    // Receivers only fail once `stop` is dropped, which happens after the drain below.
    let _ = stop.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.drain_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = connections.len(),
            "drain deadline passed; closing the remaining connections"
        );
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

/// One accepted TCP connection and what it needs to serve it.
struct Connection {
    acceptor: TlsAcceptor,
    http: http1::Builder,
    app: Router,
    limits: HttpLimits,
    stopped: watch::Receiver<bool>,
    /// The client's address, given to handlers as `ConnectInfo` (per-address limits).
    peer: std::net::SocketAddr,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let handshake = tokio::time::timeout(
            self.limits.tls_handshake_timeout,
            self.acceptor.accept(stream),
        );
        let tls = tokio::select! {
            result = handshake => match result {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            },
            _ = self.stopped.wait_for(|stop| *stop) => return,
        };
        let app = self.app;
        let limits = self.limits;
        let peer = self.peer;
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            handle(app.clone(), limits, request)
        });
        let connection = self.http.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(connection);
        let finished = tokio::select! {
            result = connection.as_mut() => Some(result),
            _ = self.stopped.wait_for(|stop| *stop) => None,
        };
        let result = match finished {
            Some(result) => result,
            None => {
                // Finish the request in flight (if any), then close.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// One request: the body bounded in size and in pace, the whole exchange in time.
async fn handle(
    app: Router,
    limits: HttpLimits,
    request: Request<Incoming>,
) -> Result<Response, Infallible> {
    let request = request.map(|body| {
        axum::body::Body::new(Limited::new(
            TimeoutBody::new(limits.body_read_timeout, body),
            limits.max_body_bytes,
        ))
    });
    Ok(
        match tokio::time::timeout(limits.request_timeout, app.oneshot(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => ApiError::RequestTimeout.into_response(),
        },
    )
}
