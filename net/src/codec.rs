//! Byte-level primitives: a panic-free [`Reader`] over a borrowed buffer and little-endian
//! writers. Every multi-byte integer dllama sends is little-endian (it writes its in-memory
//! structs on little-endian hosts).

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::DecodeError;

/// dllama's ACK word, `23571114` (`aa aa 67 01` on the wire).
pub const ACK: u32 = 23_571_114;

/// A cursor over untrusted bytes. Reads never panic: a short buffer is a
/// [`DecodeError::Truncated`] that says how many bytes are missing.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the first byte of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, context: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        match rest.split_at_checked(n) {
            Some((head, _)) => {
                self.pos += n;
                Ok(head)
            }
            None => Err(DecodeError::Truncated {
                context,
                needed: n - rest.len(),
            }),
        }
    }

    /// Takes exactly `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, context: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, context)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// A little-endian u32.
    pub fn u32(&mut self, context: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(context)?))
    }

    /// A little-endian i32.
    pub fn i32(&mut self, context: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array(context)?))
    }

    /// A little-endian u64 (dllama's `NnSize` = `size_t` on 64-bit hosts).
    pub fn u64(&mut self, context: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(context)?))
    }

    /// A little-endian IEEE f32, bit for bit (NaN payloads survive a round trip).
    pub fn f32(&mut self, context: &'static str) -> Result<f32, DecodeError> {
        Ok(f32::from_bits(self.u32(context)?))
    }

    /// A u32 that must be [`ACK`].
    pub fn ack(&mut self, context: &'static str) -> Result<(), DecodeError> {
        let value = self.u32(context)?;
        if value != ACK {
            return Err(DecodeError::BadAck { context, value });
        }
        Ok(())
    }

    /// A count checked against `limit` before anything is sized by it.
    pub fn count(&mut self, limit: u32, context: &'static str) -> Result<u32, DecodeError> {
        let value = self.u32(context)?;
        if value > limit {
            return Err(DecodeError::LimitExceeded {
                context,
                value: value.into(),
                limit: limit.into(),
            });
        }
        Ok(value)
    }

    /// dllama's string: u32 length including the NUL, then the bytes and the NUL. The length is
    /// checked against `limit` before the bytes are read; the text must be UTF-8 without an
    /// interior NUL (dllama compares names with `strcmp`, which would stop there).
    pub fn string(&mut self, limit: u32, context: &'static str) -> Result<String, DecodeError> {
        let len = self.count(limit, context)?;
        let bytes = self.take(len as usize, context)?;
        decode_c_string(bytes, context)
    }

    /// Fails with [`DecodeError::TrailingData`] unless every byte was consumed.
    pub fn finish(&self, context: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingData { context, count }),
        }
    }
}

/// Decodes NUL-terminated bytes (terminator included) into a `String`.
pub(crate) fn decode_c_string(bytes: &[u8], context: &'static str) -> Result<String, DecodeError> {
    let Some((&0, text)) = bytes.split_last() else {
        return Err(DecodeError::InvalidString { context });
    };
    if text.contains(&0) {
        return Err(DecodeError::InvalidString { context });
    }
    match core::str::from_utf8(text) {
        Ok(s) => Ok(String::from(s)),
        Err(_) => Err(DecodeError::InvalidString { context }),
    }
}

/// Appends a little-endian u32.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian i32.
pub fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian u64.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends an f32 bit for bit.
pub fn put_f32(out: &mut Vec<u8>, v: f32) {
    put_u32(out, v.to_bits());
}

/// Appends dllama's string form: u32 length with NUL, bytes, NUL.
pub fn put_string(out: &mut Vec<u8>, s: &str) {
    // A name longer than u32::MAX cannot be built by any decoder here; saturate instead of
    // panicking, the receiver's limit check rejects it.
    let len = u32::try_from(s.len() + 1).unwrap_or(u32::MAX);
    put_u32(out, len);
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_reports_missing_bytes() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(
            r.u32("x"),
            Err(DecodeError::Truncated {
                context: "x",
                needed: 1
            })
        );
        assert_eq!(r.position(), 0);
    }

    #[test]
    fn strings() {
        let mut v = Vec::new();
        put_string(&mut v, "abc");
        assert_eq!(v, [4, 0, 0, 0, b'a', b'b', b'c', 0]);
        let mut r = Reader::new(&v);
        assert_eq!(r.string(16, "s").unwrap(), "abc");
        r.finish("s").unwrap();
        let mut r = Reader::new(&[2, 0, 0, 0, b'a', b'b']);
        assert_eq!(
            r.string(16, "s"),
            Err(DecodeError::InvalidString { context: "s" })
        );
        let mut r = Reader::new(&[0, 0, 0, 0]);
        assert_eq!(
            r.string(16, "s"),
            Err(DecodeError::InvalidString { context: "s" })
        );
        let mut r = Reader::new(&[17, 0, 0, 0]);
        assert!(matches!(
            r.string(16, "s"),
            Err(DecodeError::LimitExceeded { .. })
        ));
    }
}
