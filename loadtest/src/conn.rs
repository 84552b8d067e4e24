//! An MQTT connection over TLS for the baselines and hold mode: packets to send collected in
//! `out`, bytes read into `buf` until [`crate::mqtt::decode`] has a whole packet.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::mqtt::{self, Packet};

/// Largest packet read: these clients only get CONNACK, SUBACK, PUBACK, PINGRESP and the echo
/// of their own small PUBLISH.
const MAX_PACKET: usize = 64 * 1024;

/// One connection. Errors are bounded labels (`closed`, `protocol`) for the reports.
pub(crate) struct MqttConn {
    pub(crate) tls: TlsStream<TcpStream>,
    buf: BytesMut,
    /// Encoded packets not sent yet.
    pub(crate) out: Vec<u8>,
}

impl MqttConn {
    pub(crate) fn new(tls: TlsStream<TcpStream>) -> Self {
        Self {
            tls,
            buf: BytesMut::with_capacity(256),
            out: Vec::with_capacity(256),
        }
    }

    /// Sends what is in `out`.
    pub(crate) async fn flush(&mut self) -> Result<(), &'static str> {
        self.tls.write_all(&self.out).await.map_err(|_| "closed")?;
        self.out.clear();
        self.tls.flush().await.map_err(|_| "closed")
    }

    /// The next packet.
    pub(crate) async fn recv(&mut self) -> Result<Packet, &'static str> {
        loop {
            if let Some(packet) = mqtt::decode(&mut self.buf, MAX_PACKET).map_err(|_| "protocol")? {
                return Ok(packet);
            }
            match self.tls.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err("closed"),
                Ok(_) => {}
            }
        }
    }

    /// Sends `out`, then reads one packet.
    pub(crate) async fn exchange(&mut self) -> Result<Packet, &'static str> {
        self.flush().await?;
        self.recv().await
    }

    /// DISCONNECT and the TLS close, best effort.
    pub(crate) async fn close(&mut self) {
        mqtt::disconnect(&mut self.out);
        if self.flush().await.is_ok() {
            let _ = self.tls.shutdown().await;
        }
    }
}
