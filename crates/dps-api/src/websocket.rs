//! MQTT and AMQP over WebSocket on the HTTPS listener (`dps-protocol.md` §1): devices that
//! reach only port 443 send an HTTP/1.1 upgrade on `/$iothub/websocket` (the C# SDK: `/`) with
//! the subprotocol of their transport (`mqtt`, `AMQPWSB10`, compared without case), and the
//! connection's bytes then go to that protocol's frontend as a plain byte stream.
//!
//! [`WebSockets`] holds the protocols the listener serves; [`WebSockets::check`] decides an
//! upgrade request (101 with the chosen subprotocol, or a clear 4xx); [`WebSocketBytes`] is the
//! byte stream over binary WebSocket messages (tokio-tungstenite's framing: messages and
//! frames bounded, pings answered, a close ends the stream) that the frontends read as they
//! read TLS.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::{Buf, Bytes};
use dps_listener::Admitted;
use futures_util::{Sink, Stream};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The path every SDK but C#'s dials; C# dials `/`.
pub const WEBSOCKET_PATH: &str = "/$iothub/websocket";

/// Largest WebSocket message (and frame) accepted: DPS messages are at most 96 KiB and an MQTT
/// packet or AMQP frame may be split over messages but SDKs send one per message, so 128 KiB
/// fits every legitimate one with its framing; a larger message closes its connection.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// Bytes the WebSocket layer reads from the socket at once. tungstenite's default (128 KiB,
/// allocated up front) would cost every idle device connection that much; answers and requests
/// are a few hundred bytes.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Most bytes the WebSocket layer buffers for writing before it refuses more (a peer that
/// reads nothing): a few answers' worth.
const MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// What serves one protocol's connections: the stream with the listener's slot, peer and drain
/// signal (the connection counts as unauthenticated until the protocol says otherwise), and the
/// TLS client certificate chain, leaf first (empty when none was sent).
pub type StreamService = Arc<
    dyn Fn(
            Admitted<WebSocketBytes>,
            Vec<CertificateDer<'static>>,
        ) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// The protocols served over WebSocket on the listener, by subprotocol.
#[derive(Clone, Default)]
pub struct WebSockets {
    protocols: Vec<(&'static str, StreamService)>,
    max_message_bytes: Option<usize>,
}

impl fmt::Debug for WebSockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.protocols.iter().map(|(name, _)| *name).collect();
        f.debug_struct("WebSockets")
            .field("protocols", &names)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`WebSockets::check`] on a request.
pub(crate) enum Upgrade {
    /// Not a WebSocket upgrade: an ordinary request.
    No,
    /// An upgrade we answer with this error.
    Refused(Response<Body>),
    /// An upgrade we accept: send the 101, then serve the stream with the service.
    Accepted(Response<Body>, StreamService),
}

impl WebSockets {
    /// Serves nothing yet; add protocols with [`WebSockets::protocol`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `subprotocol` (compared without case) with `service`.
    pub fn protocol(mut self, subprotocol: &'static str, service: StreamService) -> Self {
        self.protocols.push((subprotocol, service));
        self
    }

    /// The largest message accepted (default [`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// Whether any protocol is served.
    pub fn is_empty(&self) -> bool {
        self.protocols.is_empty()
    }

    /// Decides `request` (RFC 6455 §4.2): a request with `Upgrade: websocket` is an upgrade,
    /// accepted only as a GET on [`WEBSOCKET_PATH`] or `/`, with version 13, a key, and a
    /// subprotocol we serve.
    pub(crate) fn check<B>(&self, request: &Request<B>) -> Upgrade {
        let headers = request.headers();
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Upgrade::No;
        }
        let path = request.uri().path();
        if path != WEBSOCKET_PATH && path != "/" {
            return Upgrade::Refused(refusal(
                StatusCode::NOT_FOUND,
                "WebSocket upgrades are served on /$iothub/websocket",
            ));
        }
        if request.method() != Method::GET || !has_token(headers, header::CONNECTION, "upgrade") {
            return Upgrade::Refused(refusal(
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade is a GET with Connection: Upgrade",
            ));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
            let mut response = refusal(
                StatusCode::UPGRADE_REQUIRED,
                "only WebSocket version 13 is served",
            );
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Upgrade::Refused(response);
        }
        let Some(key) = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|k| !k.is_empty())
        else {
            return Upgrade::Refused(refusal(
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade needs Sec-WebSocket-Key",
            ));
        };
        let offered = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for name in offered {
            let served = self
                .protocols
                .iter()
                .find(|(ours, _)| ours.eq_ignore_ascii_case(name));
            if let (Some((_, service)), Ok(chosen)) = (served, HeaderValue::from_str(name)) {
                let response = Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::CONNECTION, "upgrade")
                    .header(header::UPGRADE, "websocket")
                    .header(
                        header::SEC_WEBSOCKET_ACCEPT,
                        derive_accept_key(key.as_bytes()),
                    )
                    // As the client spelled it: clients compare it exactly.
                    .header(header::SEC_WEBSOCKET_PROTOCOL, chosen)
                    .body(Body::empty());
                return match response {
                    Ok(response) => Upgrade::Accepted(response, Arc::clone(service)),
                    Err(e) => {
                        tracing::error!(error = %e, "bug: cannot build the 101 response");
                        Upgrade::Refused(refusal(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "cannot upgrade",
                        ))
                    }
                };
            }
        }
        let names: Vec<_> = self.protocols.iter().map(|(name, _)| *name).collect();
        Upgrade::Refused(refusal(
            StatusCode::BAD_REQUEST,
            &format!(
                "unsupported WebSocket subprotocol; this service speaks {}",
                names.join(", ")
            ),
        ))
    }

    /// The byte stream over an upgraded connection.
    pub(crate) async fn stream(&self, upgraded: Upgraded) -> WebSocketBytes {
        let max = self.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        WebSocketBytes::new(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await,
        )
    }
}

/// Whether the comma-separated `name` headers hold `token` (without case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn refusal(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A byte stream over binary WebSocket messages: reads yield the messages' bytes in order
/// (pings are answered by the framing layer, a close or the end of the socket is the end of
/// the stream, a text message or a message over the limit is an `InvalidData` error); each
/// write is sent as one binary message. Over the server's upgraded connection by default; the
/// tests' clients use it over their own.
pub struct WebSocketBytes<S = TokioIo<Upgraded>> {
    inner: WebSocketStream<S>,
    /// What is left of the last message read.
    read: Bytes,
}

impl<S> WebSocketBytes<S> {
    /// The bytes of `inner`'s binary messages.
    pub fn new(inner: WebSocketStream<S>) -> Self {
        Self {
            inner,
            read: Bytes::new(),
        }
    }
}

impl<S> fmt::Debug for WebSocketBytes<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketBytes")
            .field("buffered", &self.read.len())
            .finish_non_exhaustive()
    }
}

/// The I/O error for a WebSocket error: the socket's own, or `InvalidData` for what the peer
/// sent.
fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::NotConnected, "the WebSocket is closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WebSocketBytes<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.read.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                // A close frame or the end of the socket.
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(bytes))) => this.read = bytes,
                // Answered by the framing layer (pongs), or nothing to do (unsolicited pongs).
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT and AMQP travel in binary WebSocket messages, not text",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WebSocketBytes<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = Pin::new(&mut self.get_mut().inner);
        ready!(inner.as_mut().poll_ready(cx)).map_err(io_error)?;
        inner
            .start_send(Message::binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(io_error)
    }

    /// Sends a close frame and flushes.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(path: &str, protocol: &str) -> Request<()> {
        Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
            .body(())
            .unwrap()
    }

    /// A server's byte stream and the client's message stream, over a pipe.
    async fn pipe() -> (
        WebSocketBytes<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (WebSocketBytes::new(server), client)
    }

    #[tokio::test]
    async fn messages_are_one_byte_stream_each_write_one_binary_message_and_text_an_error() {
        use futures_util::{SinkExt, StreamExt};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut server, mut client) = pipe().await;
        client.send(Message::binary(&b"abc"[..])).await.unwrap();
        client.send(Message::Ping("p".into())).await.unwrap();
        client.send(Message::binary(&b"de"[..])).await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcde");
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Pong("p".into())
        );

        server.write_all(b"xyz").await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::binary(&b"xyz"[..])
        );

        client.send(Message::text("hello")).await.unwrap();
        let read = server.read(&mut [0u8; 8]).await.map_err(|e| e.kind());
        assert_eq!(read, Err(io::ErrorKind::InvalidData));
    }

    #[tokio::test]
    async fn a_close_is_the_end_of_the_stream() {
        use futures_util::SinkExt;
        use tokio::io::AsyncReadExt;

        let (mut server, mut client) = pipe().await;
        client.send(Message::binary(&b"last"[..])).await.unwrap();
        client.close(None).await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
    }

    fn served() -> WebSockets {
        let service: StreamService = Arc::new(|_, _| Box::pin(async {}));
        WebSockets::new()
            .protocol("mqtt", Arc::clone(&service))
            .protocol("AMQPWSB10", service)
    }

    fn status(upgrade: Upgrade) -> Option<StatusCode> {
        match upgrade {
            Upgrade::No => None,
            Upgrade::Refused(r) | Upgrade::Accepted(r, _) => Some(r.status()),
        }
    }

    #[test]
    fn an_upgrade_on_either_path_gets_the_subprotocol_as_spelled_and_the_rfc_accept_key() {
        for (path, protocol) in [
            ("/$iothub/websocket", "mqtt"),
            ("/", "MQTT"),
            ("/$iothub/websocket?x=1", "amqpwsb10"),
        ] {
            let Upgrade::Accepted(response, _) = served().check(&upgrade(path, protocol)) else {
                panic!("{path} {protocol} refused");
            };
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            let headers = response.headers();
            assert_eq!(headers[header::SEC_WEBSOCKET_PROTOCOL], protocol);
            // RFC 6455 §1.3's example.
            assert_eq!(
                headers[header::SEC_WEBSOCKET_ACCEPT],
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            );
        }
    }

    #[test]
    fn bad_upgrades_get_clear_errors_and_plain_requests_pass() {
        let ws = served();
        assert_eq!(
            status(ws.check(&upgrade("/enrollments", "mqtt"))),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            status(ws.check(&upgrade("/", "xmpp"))),
            Some(StatusCode::BAD_REQUEST)
        );
        let mut old = upgrade("/", "mqtt");
        old.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(status(ws.check(&old)), Some(StatusCode::UPGRADE_REQUIRED));
        let mut keyless = upgrade("/", "mqtt");
        keyless.headers_mut().remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(status(ws.check(&keyless)), Some(StatusCode::BAD_REQUEST));
        let plain = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(status(ws.check(&plain)), None);
    }
}
