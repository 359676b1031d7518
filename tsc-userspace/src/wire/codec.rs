//! The tokio-util codec: frame headers, the size limit, and body dispatch.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{DEFAULT_MAX_BODY, Frame, FrameType, HEADER_LEN, WireError};

/// Encodes and decodes [`Frame`]s; one per connection (it keeps the header
/// of a frame whose body has not all arrived).
#[derive(Debug)]
pub struct FrameCodec {
    max_body: u32,
    pending: Option<(FrameType, usize)>,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY)
    }
}

impl FrameCodec {
    /// A codec that refuses bodies longer than `max_body` bytes, both ways.
    pub fn new(max_body: u32) -> Self {
        Self {
            max_body,
            pending: None,
        }
    }

    /// The body length limit.
    pub fn max_body(&self) -> u32 {
        self.max_body
    }

    /// Checks a header as soon as its 8 bytes are in, so an oversize or
    /// unknown frame fails before its body is waited for.
    fn header(&self, src: &mut BytesMut) -> Result<(FrameType, usize), WireError> {
        let len = src.get_u32_le();
        let code = src.get_u16_le();
        let reserved = src.get_u16_le();
        if len > self.max_body {
            return Err(WireError::Oversize {
                len: len.into(),
                max: self.max_body,
            });
        }
        let ty = FrameType::from_code(code).ok_or(WireError::UnknownType(code))?;
        if reserved != 0 {
            return Err(WireError::Reserved {
                frame: ty.name(),
                field: "header reserved",
                value: reserved.into(),
            });
        }
        Ok((ty, len as usize))
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let (ty, len) = match self.pending {
            Some(pending) => pending,
            None if src.len() < HEADER_LEN => return Ok(None),
            None => {
                let header = self.header(src)?;
                self.pending = Some(header);
                header
            }
        };
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        self.pending = None;
        let body = src.split_to(len).freeze();
        Frame::decode_body(ty, body).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() && self.pending.is_none() {
            return Ok(None);
        }
        let header = if self.pending.is_some() {
            HEADER_LEN
        } else {
            0
        };
        Err(WireError::Truncated {
            buffered: header + src.len(),
        })
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        frame.encode_into(dst, self.max_body)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        frame.encode_into(dst, self.max_body)
    }
}
