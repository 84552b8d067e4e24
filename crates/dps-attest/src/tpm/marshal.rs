//! TPM 2.0 marshalling (Part 2: big-endian integers, `TPM2B_*` as a 16-bit size and that many
//! bytes): a bounds-checked reader for what a device sends and a writer for what we build.

use crate::AttestError;

/// Reads marshalled TPM values; every read checks the bytes are there.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    /// Which key is being read, for errors.
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { rest: bytes, what }
    }

    /// `n` raw bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], AttestError> {
        if self.rest.len() < n {
            return Err(self.invalid("is truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AttestError> {
        let bytes = self.bytes(N)?;
        bytes.try_into().map_err(|_| self.invalid("is truncated"))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, AttestError> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, AttestError> {
        self.array().map(u32::from_be_bytes)
    }

    /// A `TPM2B_*`: its size, then that many bytes.
    pub(crate) fn sized(&mut self) -> Result<&'a [u8], AttestError> {
        let len = self.u16()?;
        self.bytes(usize::from(len))
    }

    /// Refuses bytes left over after the structure.
    pub(crate) fn finish(self) -> Result<(), AttestError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(format!("has {} bytes after its structure", self.rest.len())))
        }
    }

    pub(crate) fn invalid(&self, why: impl Into<String>) -> AttestError {
        AttestError::TpmKeyInvalid {
            key: self.what,
            why: why.into(),
        }
    }
}

/// Builds marshalled TPM values.
#[derive(Default)]
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(crate) fn u16(&mut self, value: u16) -> &mut Self {
        self.out.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub(crate) fn u32(&mut self, value: u32) -> &mut Self {
        self.out.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// A `TPM2B_*` of `bytes`. Every structure this crate builds is far below 64 KiB; a longer
    /// one is an error rather than a wrong size field.
    pub(crate) fn sized(&mut self, bytes: &[u8]) -> Result<&mut Self, AttestError> {
        let len = u16::try_from(bytes.len())
            .map_err(|_| AttestError::TpmStructureTooLarge { len: bytes.len() })?;
        Ok(self.u16(len).bytes(bytes))
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_what_is_not_there() {
        let mut r = Reader::new(&[0, 3, 1, 2], "endorsement key");
        assert!(r.sized().unwrap_err().to_string().contains("truncated"));
        let mut r = Reader::new(&[0, 2, 1, 2, 9], "storage root key");
        assert_eq!(r.sized().unwrap(), &[1, 2]);
        let err = r.finish().unwrap_err().to_string();
        assert_eq!(
            err,
            "the TPM storage root key has 1 bytes after its structure"
        );
    }

    #[test]
    fn writer_marshals_big_endian_and_sizes() {
        let mut w = Writer::default();
        w.u16(0x0102).u32(0x0304_0506);
        w.sized(&[7, 8]).unwrap();
        assert_eq!(w.into_bytes(), [1, 2, 3, 4, 5, 6, 0, 2, 7, 8]);
        let mut w = Writer::default();
        assert!(w.sized(&vec![0; 65_536]).is_err());
    }
}
