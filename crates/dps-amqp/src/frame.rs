//! A check on the frame sizes a device sends, applied to the byte stream before fe2o3 reads it.
//!
//! Why: fe2o3's frame decoders (AMQP and SASL) read the 4 bytes after a frame's size field
//! (`doff`, type, channel) without checking they are there, and panic on a frame whose size is
//! 4 to 7. AMQP 1.0 §2.3.1 makes 8 (the frame header) the smallest size, so [`FrameGuard`]
//! refuses anything smaller and the connection ends with an error instead.
//!
//! The stream fe2o3 reads is protocol headers and frames: a protocol header first, then SASL
//! frames, then (after SASL) the AMQP protocol header again, then AMQP frames. A protocol
//! header starts with `AMQP`; read as a frame size that is over 1 GiB, far beyond any frame
//! size we announce (fe2o3 refuses frames over it), so at a frame boundary `AMQP` always starts
//! a protocol header. Everything else passes through unchanged: fe2o3 checks the rest.

/// The frame header: size (4), data offset, type, channel (2); the smallest frame there is.
pub const FRAME_HEADER_LEN: u32 = 8;

/// Protocol headers are 8 bytes: `AMQP`, the protocol id and the version.
const PROTOCOL_HEADER_LEN: u64 = 8;

/// A frame whose size cannot even hold its own header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a frame of {size} bytes is shorter than the 8-byte frame header")]
pub struct ShortFrame {
    /// The frame's size field.
    pub size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a frame boundary: `have` bytes of the next size field (or protocol header) read.
    Boundary { head: [u8; 4], have: usize },
    /// Inside a frame or protocol header: this many bytes left.
    Skip(u64),
    /// A short frame was seen; everything after it is refused.
    Failed(ShortFrame),
}

/// Follows frame boundaries through a byte stream and refuses a frame shorter than its
/// header. Sans-IO: feed it every byte in order with [`FrameGuard::check`].
#[derive(Debug, Clone)]
pub struct FrameGuard {
    state: State,
}

impl Default for FrameGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameGuard {
    /// A guard at the start of a stream (a protocol header or a frame comes first).
    pub fn new() -> Self {
        Self {
            state: State::Boundary {
                head: [0; 4],
                have: 0,
            },
        }
    }

    /// Checks the next bytes of the stream; after an error, every later call fails too.
    pub fn check(&mut self, mut bytes: &[u8]) -> Result<(), ShortFrame> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Failed(short) => return Err(*short),
                State::Skip(left) => {
                    let n = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    bytes = &bytes[n..];
                    // `n` is at most `left`, which fits in u64.
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Boundary {
                            head: [0; 4],
                            have: 0,
                        };
                    }
                }
                State::Boundary { head, have } => {
                    let n = (head.len() - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == head.len() {
                        self.state = match Self::after_head(*head) {
                            Ok(next) => next,
                            Err(short) => State::Failed(short),
                        };
                    }
                }
            }
        }
        match self.state {
            State::Failed(short) => Err(short),
            _ => Ok(()),
        }
    }

    /// The state after the first 4 bytes of a frame or protocol header.
    fn after_head(head: [u8; 4]) -> Result<State, ShortFrame> {
        let head_len = head.len() as u64;
        if &head == b"AMQP" {
            return Ok(State::Skip(PROTOCOL_HEADER_LEN - head_len));
        }
        let size = u32::from_be_bytes(head);
        if size < FRAME_HEADER_LEN {
            return Err(ShortFrame { size });
        }
        Ok(State::Skip(u64::from(size) - head_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AMQP_HEADER, SASL_HEADER};

    /// An empty AMQP frame (a heartbeat): just the header.
    const EMPTY_FRAME: [u8; 8] = [0, 0, 0, 8, 2, 0, 0, 0];

    #[test]
    fn headers_and_frames_of_a_whole_connection_pass_in_any_chunking() {
        let mut stream = SASL_HEADER.to_vec();
        // A SASL frame of 12 bytes, the AMQP header again, a heartbeat and a 20-byte frame.
        stream.extend_from_slice(&[0, 0, 0, 12, 2, 1, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
        stream.extend_from_slice(&AMQP_HEADER);
        stream.extend_from_slice(&EMPTY_FRAME);
        stream.extend_from_slice(&[0, 0, 0, 20, 2, 0, 0, 0]);
        stream.extend_from_slice(&[0x41; 12]);
        for chunk in 1..=stream.len() {
            let mut guard = FrameGuard::new();
            for part in stream.chunks(chunk) {
                assert_eq!(guard.check(part), Ok(()), "chunks of {chunk}");
            }
            assert!(matches!(guard.state, State::Boundary { have: 0, .. }));
        }
    }

    #[test]
    fn a_frame_shorter_than_its_header_is_refused_then_everything_after_it() {
        for size in 0..FRAME_HEADER_LEN {
            let mut guard = FrameGuard::new();
            assert_eq!(guard.check(&AMQP_HEADER), Ok(()));
            assert_eq!(guard.check(&EMPTY_FRAME), Ok(()));
            assert_eq!(guard.check(&size.to_be_bytes()[..3]), Ok(()));
            assert_eq!(
                guard.check(&size.to_be_bytes()[3..]),
                Err(ShortFrame { size })
            );
            assert_eq!(guard.check(&EMPTY_FRAME), Err(ShortFrame { size }));
        }
    }

    #[test]
    fn a_huge_frame_is_skipped_not_buffered() {
        let mut guard = FrameGuard::new();
        assert_eq!(guard.check(&u32::MAX.to_be_bytes()), Ok(()));
        assert_eq!(guard.state, State::Skip(u64::from(u32::MAX) - 4));
        assert_eq!(guard.check(&[0; 4096]), Ok(()));
    }
}
