//! The file header and the frame around each record: magic, length,
//! CRC32 (IEEE, `crc32fast`) over the length and the payload.

use super::record::MAX_PAYLOAD;

/// First bytes of every journal file.
pub const FILE_MAGIC: [u8; 8] = *b"TSCJRNL\0";
/// File format version.
pub const FILE_VERSION: u32 = 1;
/// Bytes of the file header: magic, version, reserved.
pub const HEADER_LEN: usize = 16;
/// First bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"TSCR";
/// Bytes of a frame before its payload: magic, length, CRC32.
pub const FRAME_HEADER: usize = 12;

/// The file header.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0; HEADER_LEN];
    h[..8].copy_from_slice(&FILE_MAGIC);
    h[8..12].copy_from_slice(&FILE_VERSION.to_le_bytes());
    h
}

/// Appends one frame holding `payload` to `out`.
pub fn put(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc(&len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn crc(len: &[u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

/// What is at one position of a file.
#[derive(Debug, PartialEq, Eq)]
pub enum At<'a> {
    /// A whole frame whose checksum holds; the next one starts `next`
    /// bytes on.
    Frame {
        /// Its payload.
        payload: &'a [u8],
        /// Its whole length.
        next: usize,
    },
    /// The frame's bytes run past the end of the data.
    Short,
    /// Not a frame (bad magic, length or checksum).
    Bad,
}

/// Reads the frame at the start of `data`, checking everything before
/// it touches the payload.
pub fn at(data: &[u8]) -> At<'_> {
    let Some(head) = data.get(..FRAME_HEADER) else {
        // A prefix of a frame header is a torn write; anything else is not.
        let n = data.len().min(FRAME_MAGIC.len());
        return if data[..n] == FRAME_MAGIC[..n] {
            At::Short
        } else {
            At::Bad
        };
    };
    if head[..4] != FRAME_MAGIC {
        return At::Bad;
    }
    let len = [head[4], head[5], head[6], head[7]];
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_PAYLOAD {
        return At::Bad;
    }
    let Some(payload) = data.get(FRAME_HEADER..FRAME_HEADER + n) else {
        return At::Short;
    };
    let want = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if crc(&len, payload) != want {
        return At::Bad;
    }
    At::Frame {
        payload,
        next: FRAME_HEADER + n,
    }
}

/// The first position at or after `from` where a whole, checksummed frame
/// starts.
pub fn resync(data: &[u8], from: usize) -> Option<usize> {
    let mut pos = from;
    while let Some(rest) = data.get(pos..) {
        let found = rest
            .windows(FRAME_MAGIC.len())
            .position(|w| w == FRAME_MAGIC)?;
        pos += found;
        if matches!(at(&data[pos..]), At::Frame { .. }) {
            return Some(pos);
        }
        pos += 1;
    }
    None
}
