//! The message bytes of TRANSFER frames, checked before fe2o3 decodes them.
//!
//! Why: a message that fits one frame is decoded by fe2o3 from a slice, which bounds every
//! value by the frame. A message sent in several frames (`more = true` on all but the last) is
//! decoded from their concatenation by serde_amqp's IO reader, which makes room for the size a
//! value claims before reading it: a few frames claiming a 4 GiB binary would make the server
//! allocate it. [`Transfers`] keeps each link's unfinished message (at most `max_message_size`
//! bytes in all, the size we announce at attach) and walks the sections of every whole message
//! with [`crate::encoding`], so one that claims more than it holds ends the connection first.

use std::collections::HashMap;

use crate::encoding::check_value;
use crate::frame::BadFrame;

/// The TRANSFER performative's descriptor code (AMQP 1.0 §2.7.5).
const TRANSFER_CODE: u64 = 0x14;
const TRANSFER_NAME: &[u8] = b"amqp:transfer:list";

/// The fields of a TRANSFER the guard needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transfer {
    handle: u32,
    more: bool,
    aborted: bool,
}

/// Most unfinished messages held at once (a device has one sender link; fe2o3 allows a few
/// link handles on one channel).
const MAX_PARTIAL: usize = 8;

/// An unfinished message of one link.
#[derive(Debug, Clone)]
enum Partial {
    /// Its bytes so far.
    Held(Vec<u8>),
    /// Over `max_message_size`: fe2o3 detaches the link with `message-size-exceeded` on the
    /// transfer that goes over and never decodes the message, so its bytes are not kept.
    Over,
}

impl Partial {
    fn len(&self) -> usize {
        match self {
            Partial::Held(bytes) => bytes.len(),
            Partial::Over => 0,
        }
    }
}

/// The unfinished multi-frame messages of one connection, by channel and link handle.
#[derive(Debug, Clone)]
pub struct Transfers {
    partial: HashMap<(u16, u32), Partial>,
    held: usize,
    max_message_size: usize,
}

impl Transfers {
    /// No unfinished message. A message over `max_message_size` is not held (fe2o3 refuses
    /// it), and together the unfinished ones may hold at most that much.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            partial: HashMap::new(),
            held: 0,
            max_message_size,
        }
    }

    /// Takes one AMQP frame's body on `channel`: its performative (`performative_len` bytes,
    /// already walked) and what follows. Anything but a TRANSFER passes; a transfer's message
    /// bytes are held while `more` is set and walked once the message is whole.
    pub fn frame(
        &mut self,
        channel: u16,
        body: &[u8],
        performative_len: usize,
    ) -> Result<(), BadFrame> {
        let (performative, payload) = body.split_at(performative_len.min(body.len()));
        let Some(transfer) = transfer_fields(performative)? else {
            return Ok(());
        };
        let key = (channel, transfer.handle);
        let earlier = self.partial.remove(&key);
        self.held -= earlier.as_ref().map_or(0, Partial::len);
        if transfer.aborted {
            return Ok(());
        }
        let message = match earlier {
            None if !transfer.more => return check_sections(payload),
            None => Vec::new(),
            Some(Partial::Held(bytes)) => bytes,
            Some(Partial::Over) if transfer.more => {
                self.partial.insert(key, Partial::Over);
                return Ok(());
            }
            Some(Partial::Over) => return Ok(()),
        };
        let size = message.len() + payload.len();
        if size > self.max_message_size {
            if transfer.more {
                self.keep(key, Partial::Over)?;
            }
            return Ok(());
        }
        if self.held + size > self.max_message_size {
            return Err(BadFrame::MessageTooLarge {
                max: self.max_message_size,
            });
        }
        let mut message = message;
        message.extend_from_slice(payload);
        if transfer.more {
            self.held += message.len();
            return self.keep(key, Partial::Held(message));
        }
        check_sections(&message)
    }

    fn keep(&mut self, key: (u16, u32), partial: Partial) -> Result<(), BadFrame> {
        if self.partial.len() >= MAX_PARTIAL {
            return Err(BadFrame::TooManyPartial { max: MAX_PARTIAL });
        }
        self.partial.insert(key, partial);
        Ok(())
    }
}

/// A message is a sequence of encoded sections filling its bytes exactly.
fn check_sections(mut bytes: &[u8]) -> Result<(), BadFrame> {
    while !bytes.is_empty() {
        let n = check_value(bytes)?;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// The handle, `more` and `aborted` of a TRANSFER performative (an encoding already walked);
/// `None` for any other performative.
fn transfer_fields(performative: &[u8]) -> Result<Option<Transfer>, BadFrame> {
    let Some((&0x00, rest)) = performative.split_first() else {
        return Ok(None);
    };
    let descriptor_len = check_value(rest)?;
    if !is_transfer(&rest[..descriptor_len]) {
        return Ok(None);
    }
    let list = &rest[descriptor_len..];
    let (count, mut fields) = match list.split_first() {
        Some((0x45, _)) => (0, &[][..]),
        Some((0xc0, [_size, count, fields @ ..])) => (usize::from(*count), fields),
        Some((0xd0, tail)) if tail.len() >= 8 => {
            let count = u32::from_be_bytes([tail[4], tail[5], tail[6], tail[7]]);
            (count as usize, &tail[8..])
        }
        _ => return Err(BadFrame::TransferFields),
    };
    let mut transfer = Transfer {
        handle: 0,
        more: false,
        aborted: false,
    };
    let mut handle = None;
    for index in 0..count.min(10) {
        let n = check_value(fields)?;
        let field = &fields[..n];
        match index {
            0 => handle = uint(field),
            5 => transfer.more = boolean(field).ok_or(BadFrame::TransferFields)?,
            9 => transfer.aborted = boolean(field).ok_or(BadFrame::TransferFields)?,
            _ => {}
        }
        fields = &fields[n..];
    }
    transfer.handle = handle.ok_or(BadFrame::TransferFields)?;
    Ok(Some(transfer))
}

/// Whether a walked descriptor names TRANSFER, by code (ulong or smallulong) or by name.
fn is_transfer(descriptor: &[u8]) -> bool {
    match descriptor {
        [0x53, code] => u64::from(*code) == TRANSFER_CODE,
        [0x80, code @ ..] => {
            <[u8; 8]>::try_from(code).is_ok_and(|code| u64::from_be_bytes(code) == TRANSFER_CODE)
        }
        [0xa3, _, name @ ..] | [0xb3, _, _, _, _, name @ ..] => name == TRANSFER_NAME,
        _ => false,
    }
}

/// A uint field (uint0, smalluint or uint).
fn uint(field: &[u8]) -> Option<u32> {
    match field {
        [0x43] => Some(0),
        [0x52, n] => Some(u32::from(*n)),
        [0x70, a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// A boolean field; null (absent) is false.
fn boolean(field: &[u8]) -> Option<bool> {
    match field {
        [0x40] | [0x42] | [0x56, 0x00] => Some(false),
        [0x41] | [0x56, 0x01] => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Malformed;

    const MAX: usize = 1024;

    /// A TRANSFER on `handle` with delivery id 0, tag "t", and the given `more` (list8).
    fn transfer(handle: u8, more: bool) -> Vec<u8> {
        let fields = [
            0x52,
            handle,
            0x43,
            0xa0,
            0x01,
            b't',
            0x43,
            0x42,
            if more { 0x41 } else { 0x42 },
        ];
        let mut bytes = vec![0x00, 0x53, 0x14, 0xc0, (fields.len() + 1) as u8, 0x06];
        bytes.extend_from_slice(&fields);
        bytes
    }

    /// A data section (0x75) holding `data` as vbin8.
    fn data_section(data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x00, 0x53, 0x75, 0xa0, data.len() as u8];
        bytes.extend_from_slice(data);
        bytes
    }

    fn send(
        transfers: &mut Transfers,
        handle: u8,
        more: bool,
        payload: &[u8],
    ) -> Result<(), BadFrame> {
        let mut body = transfer(handle, more);
        let performative_len = body.len();
        body.extend_from_slice(payload);
        transfers.frame(0, &body, performative_len)
    }

    #[test]
    fn a_message_in_one_frame_or_in_several_passes_when_well_formed() {
        let message = data_section(b"{\"registrationId\":\"dev-1\"}");
        let mut transfers = Transfers::new(MAX);
        assert_eq!(send(&mut transfers, 0, false, &message), Ok(()));
        for split in 1..message.len() {
            assert_eq!(send(&mut transfers, 0, true, &message[..split]), Ok(()));
            assert_eq!(send(&mut transfers, 0, false, &message[split..]), Ok(()));
            assert_eq!(transfers.held, 0);
        }
    }

    #[test]
    fn a_section_claiming_more_than_the_whole_message_is_refused() {
        // A data section as vbin32 claiming 4 GiB, sent over two frames.
        let huge = [0x00, 0x53, 0x75, 0xb0, 0xff, 0xff, 0xff, 0xff, b'x'];
        let mut transfers = Transfers::new(MAX);
        assert_eq!(send(&mut transfers, 1, true, &huge[..5]), Ok(()));
        assert_eq!(
            send(&mut transfers, 1, false, &huge[5..]),
            Err(BadFrame::Malformed(Malformed::Overrun))
        );
        assert_eq!(
            send(&mut Transfers::new(MAX), 1, false, &huge),
            Err(BadFrame::Malformed(Malformed::Overrun))
        );
    }

    #[test]
    fn unfinished_messages_are_bounded_in_all() {
        let mut transfers = Transfers::new(MAX);
        assert_eq!(send(&mut transfers, 0, true, &[0x40; 600]), Ok(()));
        assert_eq!(
            send(&mut transfers, 1, true, &[0x40; 600]),
            Err(BadFrame::MessageTooLarge { max: MAX })
        );
        let mut transfers = Transfers::new(MAX);
        for handle in 0..MAX_PARTIAL as u8 {
            assert_eq!(send(&mut transfers, handle, true, &[0x40]), Ok(()));
        }
        assert_eq!(
            send(&mut transfers, MAX_PARTIAL as u8, true, &[0x40]),
            Err(BadFrame::TooManyPartial { max: MAX_PARTIAL })
        );
    }

    #[test]
    fn a_message_over_the_maximum_is_left_to_fe2o3_and_not_held() {
        // fe2o3 detaches the link with `message-size-exceeded` and never decodes it.
        let mut transfers = Transfers::new(MAX);
        assert_eq!(send(&mut transfers, 0, true, &[0x40; 1000]), Ok(()));
        assert_eq!(send(&mut transfers, 0, true, &[0x40; 1000]), Ok(()));
        assert_eq!(transfers.held, 0);
        assert_eq!(send(&mut transfers, 0, true, &[0xff; 1000]), Ok(()));
        assert_eq!(send(&mut transfers, 0, false, &[0xff; 10]), Ok(()));
        assert!(transfers.partial.is_empty());
        assert_eq!(send(&mut transfers, 0, false, &data_section(b"{}")), Ok(()));
    }

    #[test]
    fn an_aborted_message_is_forgotten() {
        let mut transfers = Transfers::new(MAX);
        assert_eq!(send(&mut transfers, 0, true, &[0xa0, 0x10]), Ok(()));
        // aborted = true is field 9.
        let fields = [0x43, 0x43, 0x40, 0x40, 0x40, 0x41, 0x40, 0x40, 0x40, 0x41];
        let mut body = vec![0x00, 0x53, 0x14, 0xc0, (fields.len() + 1) as u8, 0x0a];
        body.extend_from_slice(&fields);
        let len = body.len();
        assert_eq!(transfers.frame(0, &body, len), Ok(()));
        assert_eq!(transfers.held, 0);
        assert_eq!(send(&mut transfers, 0, false, &data_section(b"{}")), Ok(()));
    }

    #[test]
    fn other_performatives_and_bad_transfer_fields() {
        let mut transfers = Transfers::new(MAX);
        // FLOW (0x13) with trailing bytes is not ours to check.
        let flow = [0x00, 0x53, 0x13, 0x45, 0xff];
        assert_eq!(transfers.frame(0, &flow, 4), Ok(()));
        // A TRANSFER without a handle, or whose `more` is a string.
        let no_handle = [0x00, 0x53, 0x14, 0x45];
        assert_eq!(
            transfers.frame(0, &no_handle, 4),
            Err(BadFrame::TransferFields)
        );
        let mut odd_more = vec![0x00, 0x53, 0x14, 0xc0, 0x09, 0x06];
        odd_more.extend_from_slice(&[0x43, 0x43, 0x40, 0x40, 0x40, 0xa1, 0x01, b'y']);
        let len = odd_more.len();
        assert_eq!(
            transfers.frame(0, &odd_more, len),
            Err(BadFrame::TransferFields)
        );
    }
}
