//! The agent-to-host wire protocol (specified in `docs/PROTOCOL.md`).
//!
//! Every frame is an 8-byte little-endian header (`u32` body length, `u16`
//! frame type, `u16` reserved) followed by its body. [`FrameCodec`] is the
//! tokio-util codec for both directions; [`Frame::encode_parts`] gives the
//! header and a page payload separately so a sender can write pages with a
//! vectored write instead of copying them.

mod auth;
mod codec;
mod endpoint;
mod error;
mod frame;
mod read;
mod sample;

pub use auth::{AuthChallenge, AuthResponse};
pub use codec::FrameCodec;
pub use endpoint::{Endpoint, EndpointError};
pub use error::WireError;
pub use frame::{CpuApic, DrainedCpu, EventFormat, Frame, FrameType, Hello, HelloAck, Lost, Page};
pub use sample::{TscMethod, TscSample, UNKNOWN_CPU, cpu_has_rdtscp, rdtsc};

/// The first four bytes of a Hello body: the protocol's magic.
pub const MAGIC: [u8; 4] = *b"TSCW";
/// The newest protocol version this build speaks (2 added the Drained
/// frame, 3 the authentication frames).
pub const VERSION: u16 = 3;
/// The first protocol version in which an agent can prove a shared key: a
/// host with a key serves no older agent.
pub const AUTH_VERSION: u16 = 3;
/// The oldest protocol version this build still speaks: a host serves
/// agents of every version from this one to [`VERSION`].
pub const MIN_VERSION: u16 = 1;
/// Length of every frame header in bytes.
pub const HEADER_LEN: usize = 8;
/// Default largest body a receiver accepts: a 1 MiB page plus its prefix.
pub const DEFAULT_MAX_BODY: u32 = (1 << 20) + 64;
/// The trace clock an agent must record with.
pub const TRACE_CLOCK: &str = "x86-tsc";

#[cfg(test)]
mod tests;
