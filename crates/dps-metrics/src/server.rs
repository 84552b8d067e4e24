//! The metrics listener: plain HTTP/1.1 on the project's accept loop (`dps-listener`), so it
//! has the same connection limits, accept back-off and drain as every other listener. Three
//! routes, `GET` (or `HEAD`) only: `/metrics`, `/healthz`, `/readyz`; anything else is 404,
//! another method 405. Requests carry no body worth reading; the head is bounded in size and
//! time, and an idle connection is closed after the header timeout.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dps_listener::{Admitted, ListenerCounters, ListenerLimits};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::{Health, Metrics};

/// The bounds of the metrics listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsLimits {
    /// Connections at once. Default 64: Prometheus keeps one connection per server scraping,
    /// probes open one each; more is a misconfiguration or an attack.
    pub max_connections: usize,
    /// Connections at once from one source address. Default 16.
    pub max_connections_per_ip: usize,
    /// Connections from one source that have not sent a complete request head yet.
    /// Default 16.
    pub max_unauthenticated_per_ip: usize,
    /// Time to send a request head (also closes idle keep-alive connections). Default 10 s:
    /// Prometheus' default scrape timeout.
    pub header_read_timeout: Duration,
    /// How long open connections may finish after shutdown. Default 2 s: a scrape is
    /// answered in milliseconds.
    pub drain_timeout: Duration,
}

impl Default for MetricsLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_connections_per_ip: 16,
            max_unauthenticated_per_ip: 16,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(2),
        }
    }
}

/// Largest request head: a scrape or probe sends a few short headers.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves, then
/// drains. Returns `Err` only when `accept` keeps failing (see `dps_listener::serve`).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
    limits: MetricsLimits,
    counters: ListenerCounters,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
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
    dps_listener::serve(listener, listener_limits, counters, shutdown, |admitted| {
        connection(admitted, http.clone(), metrics.clone(), health.clone())
    })
    .await
}

async fn connection(
    admitted: Admitted<TcpStream>,
    http: http1::Builder,
    metrics: Arc<Metrics>,
    health: Health,
) {
    let Admitted {
        stream,
        slot,
        mut draining,
        ..
    } = admitted;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        slot.authenticated();
        let response = respond(&request, &metrics, &health);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = draining.wait() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}

/// The answer to one request.
fn respond<B>(request: &Request<B>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/metrics" => match metrics.encode() {
            Ok(body) => reply(StatusCode::OK, prometheus::TEXT_FORMAT, body),
            Err(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "bug: metrics do not encode");
                text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n")
            }
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let failing = health.failing();
            if failing.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                let body = format!("not ready: {}\n", failing.join(", "));
                reply(StatusCode::SERVICE_UNAVAILABLE, PLAIN, body.into_bytes())
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, PLAIN, body.as_bytes().to_vec())
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}
