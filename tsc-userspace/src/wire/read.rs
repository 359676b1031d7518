//! Bounds-checked reading of a frame body; every short read is a typed error.

use bytes::{Buf, Bytes};

use super::WireError;

/// A cursor over one frame's body that names the frame in its errors.
pub(crate) struct Reader {
    buf: Bytes,
    frame: &'static str,
}

impl Reader {
    pub(crate) fn new(frame: &'static str, buf: Bytes) -> Self {
        Self { buf, frame }
    }

    fn need(&self, n: usize, what: &str) -> Result<(), WireError> {
        if self.buf.remaining() < n {
            return Err(WireError::malformed(
                self.frame,
                format!(
                    "{what} needs {n} bytes, {} left in the frame",
                    self.buf.remaining()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16_le())
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32_le())
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64_le())
    }

    /// A reserved `u32` that must be zero.
    pub(crate) fn reserved_u32(&mut self, field: &'static str) -> Result<(), WireError> {
        match self.u32(field)? {
            0 => Ok(()),
            value => Err(WireError::Reserved {
                frame: self.frame,
                field,
                value: value.into(),
            }),
        }
    }

    /// `n` raw bytes, shared with the frame (no copy).
    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<Bytes, WireError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// `N` raw bytes, copied out.
    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WireError> {
        let raw = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&raw);
        Ok(out)
    }

    /// Everything left, shared with the frame (no copy).
    pub(crate) fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    /// A `u32`-length-prefixed UTF-8 string.
    pub(crate) fn string(&mut self, what: &str) -> Result<String, WireError> {
        let len = self.u32(what)? as usize;
        let raw = self.bytes(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| WireError::malformed(self.frame, format!("{what} is not valid UTF-8")))
    }

    /// A `u32` element count, refused when `min_size`-byte elements could
    /// not fit in what is left (so a hostile count cannot force a huge
    /// allocation).
    pub(crate) fn count(&mut self, min_size: usize, what: &str) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_size) > self.buf.remaining() {
            return Err(WireError::malformed(
                self.frame,
                format!(
                    "{what} of {n} cannot fit in the {} bytes left",
                    self.buf.remaining()
                ),
            ));
        }
        Ok(n)
    }

    /// Ends the body: trailing bytes are an error.
    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.buf.has_remaining() {
            return Err(WireError::malformed(
                self.frame,
                format!("{} trailing bytes", self.buf.remaining()),
            ));
        }
        Ok(())
    }
}
