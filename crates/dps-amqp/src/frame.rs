//! A check on the frames a device sends, applied to the byte stream before fe2o3 reads it.
//!
//! Why: fe2o3's frame decoders (AMQP and SASL) read the 4 bytes after a frame's size field
//! (`doff`, type, channel) without checking they are there, and panic on a frame whose size is
//! 4 to 7. AMQP 1.0 §2.3.1 makes 8 (the frame header) the smallest size, so [`FrameGuard`]
//! refuses anything smaller and the connection ends with an error instead. And fe2o3 decodes a
//! frame's performative through a reader that makes room for the size a value claims before
//! reading it, so the guard holds each frame (at most the largest frame size we announce) until
//! it is whole and walks its performative's encoding ([`crate::encoding`]): a value that claims
//! more than the frame holds ends the connection before fe2o3 sees the frame. The message bytes
//! after a TRANSFER are walked too, once the message is whole (`transfer.rs`).
//!
//! The stream fe2o3 reads is protocol headers and frames: a protocol header first, then SASL
//! frames, then (after SASL) the AMQP protocol header again, then AMQP frames. A protocol
//! header starts with `AMQP`; read as a frame size that is over 1 GiB, far beyond any frame
//! size we announce, so at a frame boundary `AMQP` always starts a protocol header.

use crate::transfer::Transfers;

/// The frame header: size (4), data offset, type, channel (2); the smallest frame there is.
pub const FRAME_HEADER_LEN: u32 = 8;

/// Protocol headers are 8 bytes: `AMQP`, the protocol id and the version.
const PROTOCOL_HEADER_LEN: u64 = 8;

/// Why the guard ended the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadFrame {
    /// A frame whose size cannot even hold its own header.
    #[error("a frame of {size} bytes is shorter than the 8-byte frame header")]
    Short {
        /// The frame's size field.
        size: u32,
    },
    /// A frame larger than the largest frame size announced.
    #[error("a frame of {size} bytes is over the {max} byte maximum")]
    TooLarge {
        /// The frame's size field.
        size: u32,
        /// The largest frame size announced.
        max: usize,
    },
    /// A data offset outside the frame.
    #[error("a frame's data offset {doff} is outside its {size} bytes")]
    Offset {
        /// The data offset, in 4-byte words.
        doff: u8,
        /// The frame's size field.
        size: u32,
    },
    /// A performative whose encoding does not fit its frame.
    #[error("a frame's performative is malformed: {0}")]
    Malformed(#[from] crate::encoding::Malformed),
    /// A TRANSFER whose handle or flags are not what the specification allows.
    #[error("a transfer's handle or flags are malformed")]
    TransferFields,
    /// Unfinished multi-frame messages would hold more than the largest message announced.
    #[error("unfinished messages are over the {max} byte maximum")]
    MessageTooLarge {
        /// The largest message size announced.
        max: usize,
    },
    /// More multi-frame messages unfinished at once than links a connection may have.
    #[error("more than {max} messages unfinished at once")]
    TooManyPartial {
        /// The most held at once.
        max: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// At a frame boundary: `have` bytes of the next size field (or protocol header) read.
    Boundary { head: [u8; 4], have: usize },
    /// Inside a protocol header: this many bytes left.
    Skip(u64),
    /// Inside a frame of `size` bytes: what came after its size field so far.
    Frame { size: u32, rest: Vec<u8> },
    /// A bad frame was seen; everything after it is refused.
    Failed(BadFrame),
}

/// Follows frame boundaries through a byte stream and refuses a frame shorter than its
/// header, larger than `max_frame_size`, whose performative claims more than it holds, or
/// whose transfer carries a malformed message or more than `max_message_size` bytes.
/// Sans-IO: feed it every byte in order with [`FrameGuard::check`].
#[derive(Debug, Clone)]
pub struct FrameGuard {
    state: State,
    max_frame_size: usize,
    transfers: Transfers,
}

impl FrameGuard {
    /// A guard at the start of a stream (a protocol header or a frame comes first).
    pub fn new(max_frame_size: usize, max_message_size: usize) -> Self {
        Self {
            state: State::Boundary {
                head: [0; 4],
                have: 0,
            },
            max_frame_size,
            transfers: Transfers::new(max_message_size),
        }
    }

    /// Checks the next bytes of the stream; after an error, every later call fails too.
    pub fn check(&mut self, mut bytes: &[u8]) -> Result<(), BadFrame> {
        let max = self.max_frame_size;
        while !bytes.is_empty() {
            match &mut self.state {
                State::Failed(bad) => return Err(*bad),
                State::Skip(left) => {
                    let n = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    bytes = &bytes[n..];
                    // `n` is at most `left`, which fits in u64.
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = Self::boundary();
                    }
                }
                State::Frame { size, rest } => {
                    // The frame's bytes after its 4-byte size field.
                    let want = *size as usize - 4;
                    let n = (want - rest.len()).min(bytes.len());
                    rest.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if rest.len() == want {
                        let (size, frame) = (*size, std::mem::take(rest));
                        self.state = match self.whole(size, &frame) {
                            Ok(()) => Self::boundary(),
                            Err(bad) => State::Failed(bad),
                        };
                    }
                }
                State::Boundary { head, have } => {
                    let n = (head.len() - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == head.len() {
                        self.state = match Self::after_head(*head, max) {
                            Ok(next) => next,
                            Err(bad) => State::Failed(bad),
                        };
                    }
                }
            }
        }
        match self.state {
            State::Failed(bad) => Err(bad),
            _ => Ok(()),
        }
    }

    fn boundary() -> State {
        State::Boundary {
            head: [0; 4],
            have: 0,
        }
    }

    /// The state after the first 4 bytes of a frame or protocol header.
    fn after_head(head: [u8; 4], max_frame_size: usize) -> Result<State, BadFrame> {
        let head_len = head.len() as u64;
        if &head == b"AMQP" {
            return Ok(State::Skip(PROTOCOL_HEADER_LEN - head_len));
        }
        let size = u32::from_be_bytes(head);
        if size < FRAME_HEADER_LEN {
            return Err(BadFrame::Short { size });
        }
        if size as usize > max_frame_size {
            return Err(BadFrame::TooLarge {
                size,
                max: max_frame_size,
            });
        }
        Ok(State::Frame {
            size,
            rest: Vec::with_capacity(size as usize - 4),
        })
    }

    /// Checks a whole frame (`rest`: its bytes after the size field, at least the 4 of the
    /// header): the data offset, the encoding of the performative, if there is one (a frame
    /// of header only is a heartbeat), and for an AMQP frame (type 0) what follows a TRANSFER.
    fn whole(&mut self, size: u32, rest: &[u8]) -> Result<(), BadFrame> {
        let [doff, frame_type, channel_hi, channel_lo, ..] = *rest else {
            return Err(BadFrame::Short { size });
        };
        let body_start = usize::from(doff) * 4;
        if body_start < FRAME_HEADER_LEN as usize || body_start > size as usize {
            return Err(BadFrame::Offset { doff, size });
        }
        let body = &rest[body_start - 4..];
        if body.is_empty() {
            return Ok(());
        }
        let performative_len = crate::encoding::check_value(body)?;
        if frame_type == 0 {
            let channel = u16::from_be_bytes([channel_hi, channel_lo]);
            self.transfers.frame(channel, body, performative_len)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AMQP_HEADER, SASL_HEADER};

    /// An empty AMQP frame (a heartbeat): just the header.
    const EMPTY_FRAME: [u8; 8] = [0, 0, 0, 8, 2, 0, 0, 0];
    const MAX: usize = 8 * 1024;

    #[test]
    fn headers_and_frames_of_a_whole_connection_pass_in_any_chunking() {
        let mut stream = SASL_HEADER.to_vec();
        // A SASL frame of 12 bytes, the AMQP header again, a heartbeat and a 20-byte frame.
        stream.extend_from_slice(&[0, 0, 0, 12, 2, 1, 0, 0, 0x40, 0x40, 0x40, 0x40]);
        stream.extend_from_slice(&AMQP_HEADER);
        stream.extend_from_slice(&EMPTY_FRAME);
        stream.extend_from_slice(&[0, 0, 0, 20, 2, 0, 0, 0]);
        stream.extend_from_slice(&[0x41; 12]);
        for chunk in 1..=stream.len() {
            let mut guard = FrameGuard::new(MAX, MAX);
            for part in stream.chunks(chunk) {
                assert_eq!(guard.check(part), Ok(()), "chunks of {chunk}");
            }
            assert!(matches!(guard.state, State::Boundary { have: 0, .. }));
        }
    }

    #[test]
    fn a_frame_shorter_than_its_header_is_refused_then_everything_after_it() {
        for size in 0..FRAME_HEADER_LEN {
            let mut guard = FrameGuard::new(MAX, MAX);
            assert_eq!(guard.check(&AMQP_HEADER), Ok(()));
            assert_eq!(guard.check(&EMPTY_FRAME), Ok(()));
            assert_eq!(guard.check(&size.to_be_bytes()[..3]), Ok(()));
            assert_eq!(
                guard.check(&size.to_be_bytes()[3..]),
                Err(BadFrame::Short { size })
            );
            assert_eq!(guard.check(&EMPTY_FRAME), Err(BadFrame::Short { size }));
        }
    }

    #[test]
    fn a_frame_over_the_maximum_is_refused_not_buffered() {
        let mut guard = FrameGuard::new(MAX, MAX);
        assert_eq!(
            guard.check(&u32::MAX.to_be_bytes()),
            Err(BadFrame::TooLarge {
                size: u32::MAX,
                max: MAX
            })
        );
    }

    #[test]
    fn a_performative_claiming_more_than_its_frame_is_refused_before_the_frame_passes() {
        // What a fuzzer sent: a descriptor encoded as a sym32 of 0x5312c043 bytes.
        let mut frame = vec![0, 0, 0, 16, 2, 0, 0, 0];
        frame.extend_from_slice(&[0x00, 0xb3, 0x53, 0x12, 0xc0, 0x43, 0x07, 0xa1]);
        let mut guard = FrameGuard::new(MAX, MAX);
        assert_eq!(guard.check(&AMQP_HEADER), Ok(()));
        assert_eq!(guard.check(&frame[..15]), Ok(()));
        assert!(matches!(
            guard.check(&frame[15..]),
            Err(BadFrame::Malformed(_))
        ));
        // A data offset inside the header, or past the frame.
        for doff in [0, 1, 3] {
            let mut guard = FrameGuard::new(MAX, MAX);
            let frame = [0, 0, 0, 8, doff, 0, 0, 0];
            assert_eq!(guard.check(&frame), Err(BadFrame::Offset { doff, size: 8 }));
        }
    }
}
