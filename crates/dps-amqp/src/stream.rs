//! The byte stream handed to fe2o3: the TLS stream with the protocol header we already read
//! put back in front, frame sizes checked ([`FrameGuard`]: a frame shorter than its header
//! ends the stream with `InvalidData` before fe2o3's decoders see it), and a switch that ends
//! it.
//!
//! Why the switch: fe2o3 runs each connection's engine as a task of its own, which owns the
//! stream. When our connection task ends (closed, timed out, aborted by the listener's drain),
//! [`Kill`] is dropped and every later read or write of the stream fails, so the engine ends
//! too and the socket closes with the slot: no peer can keep an engine alive (with heartbeats,
//! say) after its connection was given up.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};

use crate::frame::FrameGuard;

/// Ends the paired [`PeerStream`] when dropped.
#[derive(Debug)]
pub(crate) struct Kill {
    _guard: DropGuard,
}

/// A stream that first yields `prefix`, then `inner`'s bytes, until its [`Kill`] is dropped or
/// a frame is too short.
pub(crate) struct PeerStream<S> {
    prefix: Vec<u8>,
    inner: S,
    guard: FrameGuard,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> std::fmt::Debug for PeerStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStream")
            .field("prefix", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

impl<S> PeerStream<S> {
    /// `inner` with `prefix` put back in front, its bytes checked by `guard`, and the switch
    /// that ends it.
    pub(crate) fn new(prefix: Vec<u8>, inner: S, guard: FrameGuard) -> (Self, Kill) {
        let token = CancellationToken::new();
        let stream = Self {
            prefix,
            inner,
            guard,
            killed: Box::pin(token.clone().cancelled_owned()),
        };
        (
            stream,
            Kill {
                _guard: token.drop_guard(),
            },
        )
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was ended",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PeerStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.drain(..n);
        } else {
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        }
        // On an error the caller counts none of the bytes read.
        this.guard
            .check(&buf.filled()[before..])
            .map_err(|bad| io::Error::new(io::ErrorKind::InvalidData, bad))?;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PeerStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn the_prefix_comes_first_then_the_stream() {
        let (client, server) = tokio::io::duplex(64);
        let (mut stream, _kill) =
            PeerStream::new(b"AMQP".to_vec(), server, FrameGuard::new(8192, 8192));
        let mut client = client;
        client.write_all(b"rest").await.unwrap();
        let mut got = [0u8; 8];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"AMQPrest");
    }

    #[tokio::test]
    async fn a_frame_shorter_than_its_header_ends_the_stream() {
        let (client, server) = tokio::io::duplex(64);
        let (mut stream, _kill) = PeerStream::new(
            crate::AMQP_HEADER.to_vec(),
            server,
            FrameGuard::new(8192, 8192),
        );
        let mut client = client;
        client.write_all(&[0, 0, 0, 4]).await.unwrap();
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).await.unwrap();
        let mut rest = [0u8; 16];
        let read = stream.read(&mut rest).await.map_err(|e| e.kind());
        assert_eq!(read, Err(io::ErrorKind::InvalidData));
    }

    #[tokio::test]
    async fn dropping_the_kill_switch_ends_a_pending_read_and_every_write() {
        let (_client, server) = tokio::io::duplex(64);
        let (mut stream, kill) = PeerStream::new(Vec::new(), server, FrameGuard::new(8192, 8192));
        let reader = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let read = stream.read(&mut byte).await;
            (read.map_err(|e| e.kind()), stream)
        });
        tokio::task::yield_now().await;
        drop(kill);
        let (read, mut stream) = tokio::time::timeout(std::time::Duration::from_secs(30), reader)
            .await
            .expect("the read ends")
            .unwrap();
        assert_eq!(read, Err(io::ErrorKind::ConnectionAborted));
        let write = stream.write_all(b"x").await.map_err(|e| e.kind());
        assert_eq!(write, Err(io::ErrorKind::ConnectionAborted));
    }
}
