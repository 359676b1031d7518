//! Agents proving who they are: a shared key, and the HMAC-SHA256
//! challenge-response of the handshake (`docs/PROTOCOL.md` §9).
//!
//! The host and each agent hold the same key ([`SharedKey::from_file`]).
//! After the agent's Hello the host sends a fresh random nonce; the agent
//! answers with its own nonce and a MAC over both nonces and the digest of
//! its Hello; the host checks it (in constant time) and proves the key
//! back the same way under another label. A response recorded on one
//! connection does not verify on another: the host's nonce differs.
//!
//! This authenticates the peer at the start of a connection; it neither
//! hides nor protects the frames that follow (run the connection through a
//! VPN or a tunnel when the network between guest and host is hostile).

mod key;
mod proof;

pub use key::{KeyError, MIN_KEY_LEN, SharedKey};
pub use proof::{
    HMAC_SHA256, NONCE_LEN, Nonce, PROOF_LEN, Proof, Transcript, fresh_nonce, hello_digest,
};
