//! The shared key and its file.

use std::{fmt, io, os::unix::fs::PermissionsExt, path::Path, path::PathBuf};

/// Fewest key bytes accepted: 256 bits, the HMAC-SHA256 output size.
pub const MIN_KEY_LEN: usize = 32;

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("cannot read the key file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        // In the message, so not a `source()` too.
        /// Why.
        cause: io::Error,
    },
    /// Others than its owner may read or change the file.
    #[error(
        "the key file {path} is accessible by group or others (mode {mode:04o}): \
         a key others can read proves nothing; run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file.
    #[error("the key file {0} is not a regular file")]
    NotAFile(PathBuf),
    /// Too short to be a key.
    #[error(
        "the key in {path} is {len} bytes; at least {MIN_KEY_LEN} are needed \
         (make one with `head -c 32 /dev/urandom > FILE` or `openssl rand -hex 32 > FILE`)"
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Key bytes found.
        len: usize,
    },
}

/// The secret both sides hold. Its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedKey(Vec<u8>);

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedKey({} bytes, redacted)", self.0.len())
    }
}

impl SharedKey {
    /// Reads a key file. The file must be a regular file that neither its
    /// group nor others can access (mode 600 or 400, as OpenSSH asks of a
    /// private key). Its contents, with trailing whitespace removed, are
    /// taken as hex when they are only hex digits, an even number of them
    /// (`openssl rand -hex 32`); otherwise the key is the file's bytes as
    /// they are (`head -c 32 /dev/urandom`). Either way at least 32 key
    /// bytes.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let read = |cause| KeyError::Read {
            path: path.to_owned(),
            cause,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile(path.to_owned()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let key = Self::from_contents(&bytes);
        if key.0.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                path: path.to_owned(),
                len: key.0.len(),
            });
        }
        Ok(key)
    }

    /// The key a file's contents give (hex or raw, as
    /// [`SharedKey::from_file`] says), whatever its length.
    pub fn from_contents(bytes: &[u8]) -> Self {
        let text = bytes.trim_ascii_end();
        match decode_hex(text) {
            Some(key) => Self(key),
            None => Self(bytes.to_vec()),
        }
    }

    /// A key from its bytes (tests, callers with their own key store).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The key's bytes: what the MACs are keyed with.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Hex digits to bytes; `None` when it is not an even run of hex digits.
fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn key_file(contents: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn hex_and_raw_keys_read_as_documented() {
        let hex = "00ff10".repeat(11) + "\n";
        let key = SharedKey::from_file(key_file(hex.as_bytes(), 0o600).path()).unwrap();
        assert_eq!(key.bytes().len(), 33);
        assert_eq!(&key.bytes()[..3], &[0x00, 0xff, 0x10]);
        let upper = SharedKey::from_contents("00FF10".repeat(11).as_bytes());
        assert_eq!(upper, key, "hex digits in either case, newline or not");

        let raw: Vec<u8> = (0..40u8).map(|b| b.wrapping_mul(97)).collect();
        let key = SharedKey::from_file(key_file(&raw, 0o400).path()).unwrap();
        assert_eq!(key.bytes(), &raw[..], "raw bytes as they are");
        // A passphrase-like text file: its bytes, newline included.
        let text = b"correct horse battery staple, and then some\n";
        assert_eq!(SharedKey::from_contents(text).bytes(), &text[..]);
    }

    #[test]
    fn short_keys_and_open_files_are_refused_with_the_fix() {
        let short = key_file(&[1u8; 20], 0o600);
        let err = SharedKey::from_file(short.path()).unwrap_err().to_string();
        assert!(err.contains("is 20 bytes; at least 32"), "{err}");
        // 31 bytes in hex: hex, so too short (not 62 raw bytes).
        let short_hex = key_file(&"ab".repeat(31).into_bytes(), 0o600);
        assert!(matches!(
            SharedKey::from_file(short_hex.path()),
            Err(KeyError::TooShort { len: 31, .. })
        ));

        let open = key_file(&[7u8; 32], 0o644);
        let err = SharedKey::from_file(open.path()).unwrap_err().to_string();
        assert!(
            err.contains("accessible by group or others (mode 0644)"),
            "{err}"
        );
        assert!(err.contains("chmod 600"), "{err}");
        let group = key_file(&[7u8; 32], 0o640);
        assert!(matches!(
            SharedKey::from_file(group.path()),
            Err(KeyError::Permissions { mode: 0o640, .. })
        ));

        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            SharedKey::from_file(dir.path()),
            Err(KeyError::NotAFile(_))
        ));
        let err = SharedKey::from_file(&dir.path().join("none")).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read the key file"),
            "{err}"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = SharedKey::from_bytes(b"super secret key material 123456".to_vec());
        let shown = format!("{key:?}");
        assert_eq!(shown, "SharedKey(32 bytes, redacted)");
    }
}
