//! `tsc-tracer demo`'s parts: a toy guest on `/dev/kvm` that takes `rdtsc`
//! readings, and a demo agent that sends them through the real wire into a
//! session as `tsc_demo:rdtsc` events, each stamped with its reading.
//!
//! Every reading comes with the host's `rdtsc` bracket around the
//! `KVM_RUN` that produced it, so where the session puts the event on the
//! host timeline can be checked: inside the bracket, or wrong.
//!
//! ```no_run
//! # async fn demo(session_port: u16) -> Result<(), Box<dyn std::error::Error>> {
//! use tsc_userspace::{demo, wire::Endpoint};
//!
//! let mut guest = demo::ToyGuest::new(&[0, 1])?;
//! let endpoint = Endpoint::Tcp { host: "127.0.0.1".into(), port: session_port };
//! let mut agent = demo::DemoAgent::connect(&endpoint, demo::hello("toy-vm", guest.vcpus())).await?;
//! guest.set_offset(0, -123_456_789)?;
//! let readings = guest.run(4)?; // 4 per vCPU
//! agent.send(&readings).await?;
//! agent.bye().await?;
//! # Ok(()) }
//! ```

mod agent;
mod event;
mod guest;
mod observe;

pub use agent::{DemoAgent, DemoAgentError, DemoReport};
pub use event::{
    EVENT_ID, FORMAT, GUEST_COMM, GUEST_PID, HEADER_EVENT, HEADER_PAGE, NAME, PAGE_SIZE,
    PAYLOAD_LEN, Reading, SEQ_OFFSET, SYSTEM, hello, seq_of,
};
pub use guest::ToyGuest;
pub use observe::{Observer, Placed, Placements};
