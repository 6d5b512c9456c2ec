//! Byte-level reading and writing shared by every binary codec in the crate.
//! All integers are big-endian. A [`Reader`] never panics: every read is
//! checked, and [`Reader::finish`] rejects trailing bytes.

use thiserror::Error;

/// Why a byte string could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended before the field named here.
    #[error("truncated: input ended inside {0}")]
    Truncated(&'static str),
    /// Bytes were left after the last field.
    #[error("{0} trailing bytes after the last field")]
    TrailingBytes(usize),
    /// A string field was not UTF-8.
    #[error("field {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A field held a value outside its range.
    #[error("field {0} holds an invalid value")]
    BadValue(&'static str),
    /// A field was longer than its limit.
    #[error("field {field} is {len} bytes; the limit is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A checked cursor over a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Start reading `buf`.
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] if fewer remain.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(CodecError::Truncated(field))?;
        self.buf = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] if fewer remain.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        let b = self.bytes(N, field)?;
        b.try_into().map_err(|_| CodecError::Truncated(field))
    }

    /// One byte.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] at the end of input.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian u16.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] at the end of input.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// A big-endian u32.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] at the end of input.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A big-endian u64.
    ///
    /// # Errors
    /// [`CodecError::Truncated`] at the end of input.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A UTF-8 string with a u16 length prefix, at most `max` bytes.
    ///
    /// # Errors
    /// Truncated input, an over-long string or invalid UTF-8.
    pub fn str16(&mut self, max: usize, field: &'static str) -> Result<&'a str, CodecError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(CodecError::TooLong { field, len, max });
        }
        std::str::from_utf8(self.bytes(len, field)?).map_err(|_| CodecError::NotUtf8(field))
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Succeeds only if nothing is left.
    ///
    /// # Errors
    /// [`CodecError::TrailingBytes`] otherwise.
    pub fn finish(self) -> Result<(), CodecError> {
        if self.buf.is_empty() { Ok(()) } else { Err(CodecError::TrailingBytes(self.buf.len())) }
    }
}

/// Appends big-endian fields to a `Vec<u8>`.
pub(crate) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put(&mut self, b: &[u8]);
    /// A string with a u16 length prefix; the caller has checked the length.
    fn put_str16(&mut self, s: &str);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn put_str16(&mut self, s: &str) {
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.put_u16(len);
        self.extend_from_slice(s.as_bytes().get(..usize::from(len)).unwrap_or_default());
    }
}
