//! A device over the DPS device REST API (`dps-protocol.md` §5): `PUT
//! /{idScope}/registrations/{id}/register`, then `GET .../operations/{operationId}`, on one TLS
//! connection kept alive (HTTP/1.1, as the C SDK keeps it); the SAS token in `Authorization`,
//! or the client certificate of the TLS handshake for X.509. A small HTTP/1.1 client: each
//! request written whole, each response read until its head (parsed by `httparse`) and its
//! `Content-Length` body are complete.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Answer, Exchange, Failure, Identity, Stream};

/// The device api-version of the request URLs (the C SDK's).
const API_VERSION: &str = "2021-06-01";
/// Largest response (head and body) accepted: DPS's maximum message size.
const MAX_RESPONSE: usize = 96 * 1024;
/// Headers parsed in a response; dpsd sends five or six.
const MAX_HEADERS: usize = 32;

/// One device's HTTPS connection: bytes read into `buf` until a whole response is there.
pub(super) struct Client {
    stream: Stream,
    buf: BytesMut,
    out: Vec<u8>,
    /// `/{idScope}/registrations/{registrationId}`.
    path: String,
    /// The `Host` header: the name in the server certificate and the port.
    host: String,
    /// The SAS token of a symmetric-key device.
    authorization: Option<String>,
    register_body: String,
}

/// The device's client over its TLS `stream` to `port`; nothing is sent yet (HTTP has no
/// open step).
pub(super) fn open(stream: Stream, device: &Identity<'_>, port: u16) -> Client {
    Client {
        stream,
        buf: BytesMut::with_capacity(2048),
        out: Vec::with_capacity(1024),
        path: format!("/{}", device.resource),
        host: format!("{}:{port}", super::SERVER_NAME),
        authorization: device.sas_token(),
        register_body: serde_json::json!({ "registrationId": device.registration_id }).to_string(),
    }
}

impl Client {
    /// Writes one request with `body` (JSON) and sends it.
    async fn send(&mut self, method: &str, target: &str, body: &str) -> Result<(), Failure> {
        use std::fmt::Write as _;
        let mut head = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "{method} {}{target}?api-version={API_VERSION} HTTP/1.1\r\nHost: {}\r\n\
             Accept: application/json\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\n",
            self.path,
            self.host,
            body.len()
        );
        if let Some(token) = &self.authorization {
            let _ = write!(head, "Authorization: {token}\r\n");
        }
        head.push_str("\r\n");
        self.out.clear();
        self.out.extend_from_slice(head.as_bytes());
        self.out.extend_from_slice(body.as_bytes());
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|_| Failure::Closed)?;
        self.stream.flush().await.map_err(|_| Failure::Closed)
    }

    /// Reads one whole response.
    async fn recv(&mut self) -> Result<(Answer, Bytes), Failure> {
        loop {
            if let Some((answer, head_len, body_len)) = parse_head(&self.buf)? {
                let total = head_len + body_len;
                if total > MAX_RESPONSE {
                    return Err(Failure::Protocol("response too large"));
                }
                if self.buf.len() >= total {
                    self.buf.advance(head_len);
                    let body = self.buf.split_to(body_len).freeze();
                    return Ok((answer, body));
                }
            } else if self.buf.len() > MAX_RESPONSE {
                return Err(Failure::Protocol("response head too large"));
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(Failure::Closed),
                Ok(_) => {}
            }
        }
    }
}

/// The answer, head length and body length of the response at the start of `buf`, once its
/// head is complete. Only `Content-Length` bodies: dpsd answers every request with one.
fn parse_head(buf: &[u8]) -> Result<Option<(Answer, usize, usize)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::Protocol("malformed HTTP response")),
    };
    let status = response
        .code
        .ok_or(Failure::Protocol("malformed HTTP response"))?;
    let mut body_len = None;
    let mut retry_after = None;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).ok().map(str::trim);
        if header.name.eq_ignore_ascii_case("content-length") {
            body_len = Some(
                value
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or(Failure::Protocol("bad Content-Length"))?,
            );
        } else if header.name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.and_then(|v| v.parse().ok());
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Failure::Protocol("chunked response"));
        }
    }
    let body_len = body_len.ok_or(Failure::Protocol("response without Content-Length"))?;
    Ok(Some((
        Answer {
            status,
            retry_after,
        },
        head_len,
        body_len,
    )))
}

impl Exchange for Client {
    /// A register (`PUT .../register` with the `DeviceRegistration` body) or a poll (`GET
    /// .../operations/{id}`, no body), and its response.
    async fn request(
        &mut self,
        _n: u32,
        operation: Option<&str>,
    ) -> Result<(Answer, Bytes), Failure> {
        match operation {
            None => {
                let body = std::mem::take(&mut self.register_body);
                let sent = self.send("PUT", "/register", &body).await;
                self.register_body = body;
                sent?;
            }
            Some(id) => self.send("GET", &format!("/operations/{id}"), "").await?,
        }
        self.recv().await
    }

    /// The TLS close, best effort.
    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_parse_with_their_retry_after_and_body_length() {
        let text = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        let (answer, head, body) = parse_head(text).unwrap().unwrap();
        assert_eq!(
            answer,
            Answer {
                status: 202,
                retry_after: Some(1)
            }
        );
        assert_eq!(&text[head..head + body], b"{\"a\":1}");
        assert_eq!(parse_head(&text[..20]).unwrap(), None);
        for bad in [
            &b"HTTP/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
