//! A walk over the AMQP 1.0 type encoding (§1.6) of a frame's performative that checks every
//! size and count against the bytes the frame really has, before fe2o3 decodes it.
//!
//! Why: fe2o3 decodes performatives through serde_amqp's reader, which makes room for a
//! variable-width value (a symbol, string, binary, list, map or array) by growing a buffer to
//! the size the value claims before reading it. A frame of a few dozen bytes that claims a
//! 1 GiB symbol therefore made the server allocate and zero 1 GiB. This walk decodes nothing:
//! it only follows constructors and sizes, refuses a value that claims more bytes than are
//! left, and stops at [`MAX_DEPTH`] levels of nesting.

/// Deepest nesting of described types, lists, maps and arrays walked.
pub const MAX_DEPTH: usize = 32;

/// Why an encoded value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A value, size or element runs past the end of the frame.
    #[error("a value claims more bytes than its frame holds")]
    Overrun,
    /// A constructor byte that AMQP 1.0 does not define.
    #[error("unknown AMQP type constructor 0x{0:02x}")]
    Constructor(u8),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("values nested more than {MAX_DEPTH} deep")]
    TooDeep,
}

/// How the bytes after a constructor are laid out.
enum Width {
    /// This many bytes of data.
    Fixed(usize),
    /// A size of this many bytes, then that many bytes.
    Variable(usize),
    /// A size and a count of this many bytes each, then `count` values in `size` bytes
    /// (the size counts the count field).
    Compound(usize),
    /// A size and a count of this many bytes each, one element constructor, then `count`
    /// elements without constructors.
    Array(usize),
}

fn width(constructor: u8) -> Result<Width, Malformed> {
    Ok(match constructor {
        0x40..=0x45 => Width::Fixed(0),
        0x50..=0x56 => Width::Fixed(1),
        0x60 | 0x61 => Width::Fixed(2),
        0x70..=0x74 => Width::Fixed(4),
        0x80..=0x84 => Width::Fixed(8),
        0x94 | 0x98 => Width::Fixed(16),
        0xa0 | 0xa1 | 0xa3 => Width::Variable(1),
        0xb0 | 0xb1 | 0xb3 => Width::Variable(4),
        0xc0 | 0xc1 => Width::Compound(1),
        0xd0 | 0xd1 => Width::Compound(4),
        0xe0 => Width::Array(1),
        0xf0 => Width::Array(4),
        other => return Err(Malformed::Constructor(other)),
    })
}

/// The bytes of one encoded value, consumed from the front.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.bytes.len() {
            return Err(Malformed::Overrun);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// A big-endian unsigned number of `n` (1 or 4) bytes.
    fn number(&mut self, n: usize) -> Result<usize, Malformed> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
    }
}

/// Checks the one value at the start of `bytes` and returns how many bytes it takes.
pub fn check_value(bytes: &[u8]) -> Result<usize, Malformed> {
    let mut cursor = Cursor { bytes };
    value(&mut cursor, 0)?;
    Ok(bytes.len() - cursor.bytes.len())
}

/// One value: a constructor (a described type's descriptor is itself a value) and its data.
fn value(cursor: &mut Cursor<'_>, depth: usize) -> Result<(), Malformed> {
    let kind = constructor(cursor, depth)?;
    data(cursor, kind, depth)
}

/// A constructor: its byte, after walking the descriptor of a described type (0x00).
fn constructor(cursor: &mut Cursor<'_>, depth: usize) -> Result<u8, Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed::TooDeep);
    }
    let byte = cursor.take(1)?[0];
    if byte != 0x00 {
        return Ok(byte);
    }
    value(cursor, depth + 1)?;
    constructor(cursor, depth + 1)
}

/// The data that follows the constructor byte `kind`.
fn data(cursor: &mut Cursor<'_>, kind: u8, depth: usize) -> Result<(), Malformed> {
    match width(kind)? {
        Width::Fixed(n) => cursor.take(n).map(drop),
        Width::Variable(n) => {
            let size = cursor.number(n)?;
            cursor.take(size).map(drop)
        }
        Width::Compound(n) => {
            let size = cursor.number(n)?;
            let mut inner = Cursor {
                bytes: cursor.take(size)?,
            };
            let count = inner.number(n)?;
            for _ in 0..count {
                value(&mut inner, depth + 1)?;
            }
            Ok(())
        }
        Width::Array(n) => {
            let size = cursor.number(n)?;
            let mut inner = Cursor {
                bytes: cursor.take(size)?,
            };
            let count = inner.number(n)?;
            let element = constructor(&mut inner, depth + 1)?;
            for _ in 0..count {
                data(&mut inner, element, depth + 1)?;
                // Zero-width elements take no bytes: no array of them needs walking further.
                if matches!(width(element)?, Width::Fixed(0)) {
                    break;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_performatives_pass_and_their_length_is_counted() {
        // OPEN (0x10) with a container id "device": 0x00 0x53 0x10, list8 of one str8.
        let open = [
            0x00, 0x53, 0x10, 0xc0, 0x09, 0x01, 0xa1, 0x06, b'd', b'e', b'v', b'i', b'c', b'e',
        ];
        assert_eq!(check_value(&open), Ok(open.len()));
        let mut with_payload = open.to_vec();
        with_payload.extend_from_slice(b"{\"payload\":1}");
        assert_eq!(check_value(&with_payload), Ok(open.len()));
        // An array8 of two sym8 ("a", "bc"), and a map8 of one pair.
        let array = [0xe0, 0x07, 0x02, 0xa3, 0x01, b'a', 0x02, b'b', b'c'];
        assert_eq!(check_value(&array), Ok(array.len()));
        let map = [0xc1, 0x05, 0x02, 0xa1, 0x01, b'k', 0x41];
        assert_eq!(check_value(&map), Ok(map.len()));
    }

    #[test]
    fn a_size_beyond_the_frame_is_refused() {
        // The descriptor as a sym32 claiming 0x5312c043 bytes (what a fuzzer sent).
        let huge = [0x00, 0xb3, 0x53, 0x12, 0xc0, 0x43, 0x07, 0xa1];
        assert_eq!(check_value(&huge), Err(Malformed::Overrun));
        for bad in [
            &[0xa1, 0x05, b'a'][..],
            &[0xd0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1],
            &[0xc0, 0x02, 0x05, 0x41],
            &[0xe0, 0x03, 0x09, 0xa1, 0x01],
            &[0x00],
            &[],
        ] {
            assert_eq!(check_value(bad), Err(Malformed::Overrun), "{bad:?}");
        }
    }

    #[test]
    fn unknown_constructors_and_deep_nesting_are_refused() {
        assert_eq!(check_value(&[0x33]), Err(Malformed::Constructor(0x33)));
        let deep: Vec<u8> = std::iter::repeat_n(0x00, 100).chain([0x40]).collect();
        assert_eq!(check_value(&deep), Err(Malformed::TooDeep));
    }
}
