//! The bodies of the version 3 authentication frames (the MACs they carry
//! are [`crate::auth`]'s).

use bytes::{BufMut, BytesMut};

use super::{WireError, read::Reader};
use crate::auth::{Nonce, Proof};

/// The host's challenge: prove the key over this nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthChallenge {
    /// The MAC to answer with ([`crate::auth::HMAC_SHA256`], the only one
    /// defined); an agent refuses one it does not know.
    pub method: u32,
    /// Fresh random bytes for this connection only.
    pub host_nonce: Nonce,
}

/// The agent's answer to an [`AuthChallenge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthResponse {
    /// The method of the challenge answered.
    pub method: u32,
    /// The agent's fresh random bytes (the host's proof covers them).
    pub agent_nonce: Nonce,
    /// [`crate::auth::Transcript::agent_proof`].
    pub proof: Proof,
}

impl AuthChallenge {
    pub(super) fn put(&self, dst: &mut BytesMut) {
        dst.put_u32_le(self.method);
        dst.put_slice(&self.host_nonce);
    }

    pub(super) fn get(r: &mut Reader) -> Result<Self, WireError> {
        Ok(Self {
            method: r.u32("method")?,
            host_nonce: r.array("host_nonce")?,
        })
    }
}

impl AuthResponse {
    pub(super) fn put(&self, dst: &mut BytesMut) {
        dst.put_u32_le(self.method);
        dst.put_slice(&self.agent_nonce);
        dst.put_slice(&self.proof);
    }

    pub(super) fn get(r: &mut Reader) -> Result<Self, WireError> {
        Ok(Self {
            method: r.u32("method")?,
            agent_nonce: r.array("agent_nonce")?,
            proof: r.array("proof")?,
        })
    }
}
