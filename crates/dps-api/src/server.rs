//! The HTTPS listener: TLS handshake and HTTP/1.1 with timeouts at every phase, on the
//! project's one accept loop (`dps-listener`: connection slots, per-address limits, accept
//! back-off, drain). Each connection is one task that owns its socket, and a malformed or
//! slow client only ever ends its own connection. Every request carries the peer's address
//! (`ConnectInfo`) and, when the client presented one in the handshake, its certificate chain
//! ([`PeerCertificates`]). A WebSocket upgrade for a protocol of [`WebSockets`] is answered
//! 101 and the connection's task then serves that protocol over the WebSocket stream; such a
//! connection stays unauthenticated for its listener slot until the protocol attests the
//! device.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use dps_listener::{Admitted, Handshake, ListenerCounters, ListenerLimits};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::websocket::{StreamService, Upgrade, WebSockets};
use crate::ApiError;

/// The bounds of every connection and request. `Default` gives the documented values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; one more is closed right after `accept`, before TLS.
    /// Default 1024: far above what management clients open, low enough that file
    /// descriptors and TLS state (tens of KiB each) stay bounded.
    pub max_connections: usize,
    /// Connections served at once from one source address (IPv6: one /64). Default 256: a
    /// quarter of the slots, so one address cannot take them all, and far above what a
    /// management tool opens (the load test's setup uses 32 at once).
    pub max_connections_per_ip: usize,
    /// Connections from one source address that have not yet sent a complete request head
    /// (TLS handshake included). Default 64: clients send their request right after the
    /// handshake, so even a busy tool has only a few in this phase; a flood of handshakes
    /// that never finish is shed here while other addresses are served.
    pub max_unauthenticated_per_ip: usize,
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
            max_connections_per_ip: 256,
            max_unauthenticated_per_ip: 64,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: crate::DEFAULT_MAX_BODY_BYTES,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The certificate chain the client presented in the TLS handshake, leaf first, in every
/// request's extensions when there was one (the server configuration decides whether client
/// certificates are asked for; the device listeners' `PossessionVerifier` has checked that the
/// client holds the leaf's key). Shared by all requests of the connection, with one value a
/// router derived from the chain and keeps for the connection's later requests
/// ([`PeerCertificates::remember`]).
#[derive(Debug, Clone)]
pub struct PeerCertificates {
    chain: Arc<[CertificateDer<'static>]>,
    memo: Arc<Mutex<Option<Memo>>>,
}

/// What [`PeerCertificates::remember`] keeps.
type Memo = Arc<dyn Any + Send + Sync>;

impl PeerCertificates {
    fn new(chain: &[CertificateDer<'_>]) -> Self {
        Self {
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            memo: Arc::default(),
        }
    }

    /// The chain as DER, leaf first.
    pub fn chain(&self) -> Vec<&[u8]> {
        self.chain.iter().map(AsRef::as_ref).collect()
    }

    /// Keeps `value` for the later requests of this connection (replacing what was kept): what
    /// a router learnt from the chain (the device API: the device it attested), so it need not
    /// learn it again. It lives as long as the connection.
    pub fn remember<T: Any + Send + Sync>(&self, value: Arc<T>) {
        *self.memo.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
    }

    /// What [`PeerCertificates::remember`] kept, if it is a `T`.
    pub fn recall<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        memo.clone().and_then(|m| m.downcast::<T>().ok())
    }
}

/// Largest request head (request line and headers) hyper buffers. DPS requests carry a few
/// short headers and a SAS token of a few hundred bytes; 64 KiB is generous and bounded.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting,
/// lets in-flight requests finish for up to `limits.drain_timeout`, and returns.
///
/// Returns an error only when `accept` keeps failing (see `dps_listener::serve`); errors of
/// single connections (TLS, HTTP parsing, timeouts) are logged at `debug` and end only that
/// connection.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_counters(
        listener,
        tls,
        app,
        limits,
        ListenerCounters::default(),
        shutdown,
    )
    .await
}

/// [`serve`], counting admissions and sheds into `counters` (keep a clone to read
/// [`ListenerCounters::snapshot`]).
pub async fn serve_with_counters(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: HttpLimits,
    counters: ListenerCounters,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_websockets(
        listener,
        tls,
        app,
        WebSockets::new(),
        limits,
        counters,
        shutdown,
    )
    .await
}

/// [`serve_with_counters`], and the protocols of `websockets` over WebSocket upgrades (see
/// [`WebSockets::check`]); the TLS configuration should ask for optional client certificates
/// for their X.509 devices.
pub async fn serve_with_websockets(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    websockets: WebSockets,
    limits: HttpLimits,
    counters: ListenerCounters,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let listener_limits = ListenerLimits {
        max_connections: limits.max_connections,
        max_connections_per_ip: limits.max_connections_per_ip,
        max_unauthenticated_per_ip: limits.max_unauthenticated_per_ip,
        drain_timeout: limits.drain_timeout,
    };
    let handshakes = counters.clone();
    dps_listener::serve(listener, listener_limits, counters, shutdown, |admitted| {
        Connection {
            acceptor: acceptor.clone(),
            http: http.clone(),
            app: app.clone(),
            websockets: websockets.clone(),
            limits,
            counters: handshakes.clone(),
        }
        .run(admitted)
    })
    .await
}

/// One accepted TCP connection and what it needs to serve it.
struct Connection {
    acceptor: TlsAcceptor,
    http: http1::Builder,
    app: Router,
    websockets: WebSockets,
    limits: HttpLimits,
    /// Where the handshake's outcome is counted.
    counters: ListenerCounters,
}

impl Connection {
    /// TLS, then HTTP/1.1 until the peer closes, a timeout cuts it, or the listener drains.
    ///
    /// The connection stops counting as unauthenticated at its first complete request head:
    /// the TLS handshake alone costs an attacker little, while a request head means the peer
    /// speaks HTTP, and from then on every request is bounded by `request_timeout` and the
    /// idle time between requests by `header_read_timeout`. (Checking the SAS token instead
    /// would keep a management client that reads public errors unauthenticated forever.)
    async fn run(self, admitted: Admitted<TcpStream>) {
        let Admitted {
            stream,
            peer,
            slot,
            mut draining,
        } = admitted;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let started = std::time::Instant::now();
        let handshake = tokio::time::timeout(
            self.limits.tls_handshake_timeout,
            self.acceptor.accept(stream),
        );
        let tls = tokio::select! {
            result = handshake => match result {
                Ok(Ok(tls)) => {
                    self.counters.handshake(Handshake::Done, started.elapsed());
                    tls
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    self.counters.handshake(Handshake::Failed, started.elapsed());
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    self.counters.handshake(Handshake::TimedOut, started.elapsed());
                    return;
                }
            },
            () = draining.wait() => return,
        };
        let certificates = tls
            .get_ref()
            .1
            .peer_certificates()
            .filter(|chain| !chain.is_empty())
            .map(PeerCertificates::new);
        // For a protocol over WebSocket, which reads it from no request.
        let chain = certificates.clone();
        let app = self.app;
        let limits = self.limits;
        let websockets = self.websockets;
        // The upgrade accepted on this connection, taken up once hyper hands the socket over.
        let upgrade: Arc<Mutex<Option<Pending>>> = Arc::default();
        let service = {
            let slot = slot.clone();
            let websockets = websockets.clone();
            let upgrade = Arc::clone(&upgrade);
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let peer = Peer {
                    address: peer,
                    certificates: certificates.clone(),
                };
                let response = match websockets.check(&request) {
                    Upgrade::No => {
                        slot.authenticated();
                        None
                    }
                    Upgrade::Refused(response) => {
                        slot.authenticated();
                        Some(response)
                    }
                    // Unauthenticated until the protocol attests the device.
                    Upgrade::Accepted(response, service) => {
                        let on_upgrade = hyper::upgrade::on(&mut request);
                        *upgrade.lock().unwrap_or_else(PoisonError::into_inner) = Some(Pending {
                            on_upgrade,
                            service,
                        });
                        Some(response)
                    }
                };
                let app = app.clone();
                async move {
                    match response {
                        Some(response) => Ok(response),
                        None => handle(app, limits, peer, request).await,
                    }
                }
            })
        };
        let connection = self
            .http
            .serve_connection(TokioIo::new(tls), service)
            .with_upgrades();
        tokio::pin!(connection);
        let finished = tokio::select! {
            result = connection.as_mut() => Some(result),
            () = draining.wait() => None,
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
            return;
        }
        let pending = upgrade
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(Pending {
            on_upgrade,
            service,
        }) = pending
        {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let stream = websockets.stream(upgraded).await;
                    let admitted = Admitted {
                        stream,
                        peer,
                        slot,
                        draining,
                    };
                    let chain = chain.map(|c| c.chain.to_vec()).unwrap_or_default();
                    service(admitted, chain).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        }
    }
}

/// A WebSocket upgrade answered 101, waiting for hyper to hand over the connection.
struct Pending {
    on_upgrade: hyper::upgrade::OnUpgrade,
    service: StreamService,
}

/// Who sent a request: the connection's address and client certificates.
struct Peer {
    address: SocketAddr,
    certificates: Option<PeerCertificates>,
}

/// One request: the body bounded in size and in pace, the whole exchange in time.
/// The peer's address goes into the request's extensions as axum's `ConnectInfo`, its
/// certificate chain (if any) as [`PeerCertificates`].
async fn handle(
    app: Router,
    limits: HttpLimits,
    peer: Peer,
    request: Request<Incoming>,
) -> Result<Response, Infallible> {
    let mut request = request.map(|body| {
        axum::body::Body::new(Limited::new(
            TimeoutBody::new(limits.body_read_timeout, body),
            limits.max_body_bytes,
        ))
    });
    request.extensions_mut().insert(ConnectInfo(peer.address));
    if let Some(certificates) = peer.certificates {
        request.extensions_mut().insert(certificates);
    }
    Ok(
        match tokio::time::timeout(limits.request_timeout, app.oneshot(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => ApiError::RequestTimeout.into_response(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_remembers_one_value_of_the_type_asked_for() {
        let certificates = PeerCertificates::new(&[CertificateDer::from(vec![0x30, 0x00])]);
        assert_eq!(certificates.chain(), [&[0x30, 0x00][..]]);
        assert!(certificates.recall::<String>().is_none());
        // Clones are the same connection's.
        let later = certificates.clone();
        certificates.remember(Arc::new("device-1".to_owned()));
        assert_eq!(
            later.recall::<String>().as_deref().map(String::as_str),
            Some("device-1")
        );
        assert!(later.recall::<u32>().is_none(), "another type is not there");
        later.remember(Arc::new(7u32));
        assert!(certificates.recall::<String>().is_none(), "replaced");
        assert_eq!(certificates.recall::<u32>().as_deref(), Some(&7));
    }
}
