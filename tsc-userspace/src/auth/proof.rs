//! The MACs of the handshake, and the nonces they bind.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::SharedKey;
use crate::wire::{Hello, WireError};

/// Bytes in a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes in a proof (an HMAC-SHA256 tag).
pub const PROOF_LEN: usize = 32;
/// The one method protocol version 3 defines: HMAC-SHA256.
pub const HMAC_SHA256: u32 = 1;

/// A random value one side picks for one connection.
pub type Nonce = [u8; NONCE_LEN];
/// An HMAC-SHA256 tag proving the key over a [`Transcript`].
pub type Proof = [u8; PROOF_LEN];

/// What each label starts, so an agent's proof is never a host's and the
/// MACs of this protocol are never those of another use of the key.
const AGENT_LABEL: &[u8] = b"TSCW auth v3 agent\0";
const HOST_LABEL: &[u8] = b"TSCW auth v3 host\0";

/// Everything both proofs of one connection cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transcript {
    /// The host's nonce (its AuthChallenge).
    pub host_nonce: Nonce,
    /// The agent's nonce (its AuthResponse).
    pub agent_nonce: Nonce,
    /// SHA-256 of the Hello's body ([`hello_digest`]).
    pub hello: [u8; 32],
}

impl Transcript {
    /// The agent's proof: it holds `key`, answers this challenge, and sent
    /// this Hello.
    pub fn agent_proof(&self, key: &SharedKey) -> Proof {
        self.mac(key, AGENT_LABEL).finalize().into_bytes().into()
    }

    /// The host's proof back, under its own label.
    pub fn host_proof(&self, key: &SharedKey) -> Proof {
        self.mac(key, HOST_LABEL).finalize().into_bytes().into()
    }

    /// Checks an agent's proof in constant time.
    pub fn verify_agent(&self, key: &SharedKey, proof: &[u8]) -> bool {
        self.mac(key, AGENT_LABEL).verify_slice(proof).is_ok()
    }

    /// Checks a host's proof in constant time.
    pub fn verify_host(&self, key: &SharedKey, proof: &[u8]) -> bool {
        self.mac(key, HOST_LABEL).verify_slice(proof).is_ok()
    }

    fn mac(&self, key: &SharedKey, label: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length (a long one is hashed first).
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(label);
        mac.update(&self.host_nonce);
        mac.update(&self.agent_nonce);
        mac.update(&self.hello);
        mac
    }
}

/// SHA-256 of a Hello's encoded body: the bytes the agent sent (decoding
/// is strict and encoding canonical, so the host re-encodes the same).
pub fn hello_digest(hello: &Hello) -> Result<[u8; 32], WireError> {
    let body = hello.encode_body()?;
    Ok(Sha256::digest(&body).into())
}

/// A fresh nonce from the operating system's random source.
pub fn fresh_nonce() -> Result<Nonce, std::io::Error> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SharedKey {
        SharedKey::from_bytes(vec![b; 32])
    }

    fn transcript() -> Transcript {
        Transcript {
            host_nonce: [1; 32],
            agent_nonce: [2; 32],
            hello: [3; 32],
        }
    }

    /// RFC 4231 test case 2 through the same construction, so the MAC is
    /// HMAC-SHA256 and not something like it.
    #[test]
    fn the_mac_is_hmac_sha256() {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let tag: [u8; 32] = mac.finalize().into_bytes().into();
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let got: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn each_proof_verifies_only_for_its_key_transcript_and_role() {
        let t = transcript();
        let agent = t.agent_proof(&key(9));
        let host = t.host_proof(&key(9));
        assert!(t.verify_agent(&key(9), &agent));
        assert!(t.verify_host(&key(9), &host));
        assert_ne!(agent, host, "the labels differ");
        assert!(
            !t.verify_host(&key(9), &agent),
            "an agent proof is no host proof"
        );
        assert!(!t.verify_agent(&key(9), &host), "nor the other way");
        assert!(!t.verify_agent(&key(8), &agent), "another key");
        for changed in [
            Transcript {
                host_nonce: [7; 32],
                ..t
            },
            Transcript {
                agent_nonce: [7; 32],
                ..t
            },
            Transcript {
                hello: [7; 32],
                ..t
            },
        ] {
            assert!(!changed.verify_agent(&key(9), &agent), "{changed:?}");
            assert!(!changed.verify_host(&key(9), &host), "{changed:?}");
        }
        assert!(!t.verify_agent(&key(9), &agent[..31]), "a cut proof");
        assert!(!t.verify_agent(&key(9), &[]), "no proof");
    }

    #[test]
    fn nonces_are_fresh() {
        let a = fresh_nonce().unwrap();
        let b = fresh_nonce().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
    }
}
