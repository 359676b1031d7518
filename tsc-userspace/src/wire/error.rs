//! Errors of the wire codec. Each one ends the connection it happened on.

/// Why a byte stream is not a valid frame sequence.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The underlying transport failed.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
    /// A header announced a body larger than this receiver accepts.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    Oversize {
        /// Announced body length.
        len: u64,
        /// The receiver's limit.
        max: u32,
    },
    /// A header carried a frame type this version does not define.
    #[error("unknown frame type {0:#06x}")]
    UnknownType(u16),
    /// A reserved field or flag bit was not zero.
    #[error("{frame} frame: reserved field {field} is {value:#x}, must be 0")]
    Reserved {
        /// Frame type name.
        frame: &'static str,
        /// Which reserved field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A Hello did not start with the protocol's magic.
    #[error("bad magic {0:02x?}: peer does not speak the tsc-tracer protocol")]
    BadMagic([u8; 4]),
    /// A Hello asked for a protocol version this build does not speak.
    #[error(
        "unsupported protocol version {got} (this build speaks {} to {ours})",
        super::MIN_VERSION
    )]
    UnsupportedVersion {
        /// Version the peer sent.
        got: u16,
        /// Version this build speaks.
        ours: u16,
    },
    /// A body did not match its frame type's layout.
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        /// Frame type name.
        frame: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// A frame to send does not fit the protocol's limits.
    #[error("cannot encode {frame} frame: {reason}")]
    Encode {
        /// Frame type name.
        frame: &'static str,
        /// Which limit it breaks.
        reason: String,
    },
}

impl WireError {
    pub(crate) fn malformed(frame: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            frame,
            reason: reason.into(),
        }
    }
}
