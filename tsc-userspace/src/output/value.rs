//! Appending numbers, text and field values to a line buffer.

use crate::tracefs::{FieldError, Value};

pub(crate) fn push_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub(crate) fn push_i64(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `v` zero-padded to `width` digits.
pub(crate) fn push_u64_padded(buf: &mut Vec<u8>, v: u64, width: usize) {
    // The common case (a CPU, a timestamp's nanoseconds) fits the width:
    // written two digits at a time into a fixed array, without itoa's
    // buffer and a separate padding step.
    const MAX: usize = 19;
    const LIMIT: [u64; MAX + 1] = {
        let mut limit = [1u64; MAX + 1];
        let mut i = 1;
        while i <= MAX {
            limit[i] = limit[i - 1] * 10;
            i += 1;
        }
        limit
    };
    if width <= MAX && v < LIMIT[width] {
        let mut digits = [b'0'; MAX];
        let (mut v, mut at) = (v, width);
        while v >= 10 {
            let pair = (v % 100) as usize * 2;
            v /= 100;
            at -= 2;
            digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        }
        if v > 0 {
            digits[at - 1] = b'0' + v as u8;
        }
        buf.extend_from_slice(&digits[..width]);
        return;
    }
    let mut itoa = itoa::Buffer::new();
    let digits = itoa.format(v).as_bytes();
    buf.resize(buf.len() + width.saturating_sub(digits.len()), b'0');
    buf.extend_from_slice(digits);
}

/// "00" to "99".
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// `0x` and lowercase hex digits.
pub(crate) fn push_hex(buf: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    buf.extend_from_slice(b"0x");
    let nibbles = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..nibbles).rev() {
        buf.push(DIGITS[((v >> (i * 4)) & 0xf) as usize]);
    }
}

/// Text for a line of text output: UTF-8 kept, control characters and
/// bytes that are not UTF-8 escaped, so one event stays one line.
pub(crate) fn push_text(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Nearly every string a kernel traces (comms, marker text) is printable
    // ASCII, often ending in a newline: runs of it are copied as they are,
    // ASCII that needs escaping is escaped in place, and only text with a
    // byte past ASCII goes through the UTF-8 chunking below (which costs
    // several times as much per byte).
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            continue;
        }
        buf.extend_from_slice(&bytes[from..i]);
        if b >= 0x80 {
            return push_text_utf8(buf, &bytes[i..]);
        }
        push_escape(buf, b);
        from = i + 1;
    }
    buf.extend_from_slice(&bytes[from..]);
}

/// [`push_text`] of text that may hold UTF-8 and invalid bytes.
fn push_text_utf8(buf: &mut Vec<u8>, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut from = 0;
        for (i, &b) in valid.iter().enumerate() {
            if b < 0x20 || b == 0x7f || b == b'\\' {
                buf.extend_from_slice(&valid[from..i]);
                push_escape(buf, b);
                from = i + 1;
            }
        }
        buf.extend_from_slice(&valid[from..]);
        for &b in chunk.invalid() {
            push_escape(buf, b);
        }
    }
}

fn push_escape(buf: &mut Vec<u8>, b: u8) {
    match b {
        b'\n' => buf.extend_from_slice(b"\\n"),
        b'\t' => buf.extend_from_slice(b"\\t"),
        b'\r' => buf.extend_from_slice(b"\\r"),
        b'\\' => buf.extend_from_slice(b"\\\\"),
        _ => {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            buf.extend_from_slice(b"\\x");
            buf.push(DIGITS[usize::from(b >> 4)]);
            buf.push(DIGITS[usize::from(b & 0xf)]);
        }
    }
}

/// A JSON string of `s`, escaped by serde_json.
pub(crate) fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    if !push_plain(buf, s.as_bytes()) {
        // Serializing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// A JSON string of bytes that should be text (lossy UTF-8).
pub(crate) fn push_json_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    if !push_plain(buf, bytes) && !push_json_ascii(buf, bytes) {
        push_json_str(buf, &String::from_utf8_lossy(bytes));
    }
}

/// ASCII with characters to escape (a marker's trailing newline), escaped
/// exactly as serde_json escapes them: `\"`, `\\`, `\b`, `\f`, `\n`,
/// `\r`, `\t`, other control characters as `\u00xx`. False (nothing
/// written) when `bytes` is not all ASCII.
fn push_json_ascii(buf: &mut Vec<u8>, bytes: &[u8]) -> bool {
    if !bytes.is_ascii() {
        return false;
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0..0x20 => 0,
            _ => continue,
        };
        buf.extend_from_slice(&bytes[from..i]);
        from = i + 1;
        buf.push(b'\\');
        if short != 0 {
            buf.push(short);
        } else {
            buf.extend_from_slice(b"u00");
            buf.push(DIGITS[usize::from(b >> 4)]);
            buf.push(DIGITS[usize::from(b & 0xf)]);
        }
    }
    buf.extend_from_slice(&bytes[from..]);
    buf.push(b'"');
    true
}

/// The common case, without the escaper's per-call cost: printable ASCII
/// with nothing to escape goes in as it is. False when it needs escaping.
fn push_plain(buf: &mut Vec<u8>, bytes: &[u8]) -> bool {
    let plain = bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        buf.push(b'"');
        buf.extend_from_slice(bytes);
        buf.push(b'"');
    }
    plain
}

/// A field value as text output shows it.
pub(crate) fn push_text_value(buf: &mut Vec<u8>, value: Result<Value<'_>, FieldError>) {
    match value {
        Ok(Value::Unsigned(v)) => push_u64(buf, v),
        Ok(Value::Signed(v)) => push_i64(buf, v),
        Ok(Value::Pointer(v)) => push_hex(buf, v),
        Ok(Value::Str(s)) => push_text(buf, s),
        Ok(Value::Array(a)) => {
            buf.push(b'{');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                push_text_value(buf, Ok(v));
            }
            buf.push(b'}');
        }
        Ok(Value::Bytes(b)) => {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            for &byte in b {
                buf.push(DIGITS[usize::from(byte >> 4)]);
                buf.push(DIGITS[usize::from(byte & 0xf)]);
            }
        }
        Err(_) => buf.extend_from_slice(b"<out of record>"),
    }
}

/// A field value as JSON.
pub(crate) fn push_json_value(buf: &mut Vec<u8>, value: Result<Value<'_>, FieldError>) {
    match value {
        Ok(Value::Unsigned(v)) => push_u64(buf, v),
        Ok(Value::Signed(v)) => push_i64(buf, v),
        Ok(Value::Pointer(v)) => {
            buf.push(b'"');
            push_hex(buf, v);
            buf.push(b'"');
        }
        Ok(Value::Str(s)) => push_json_bytes(buf, s),
        Ok(Value::Array(a)) => {
            buf.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                push_json_value(buf, Ok(v));
            }
            buf.push(b']');
        }
        Ok(Value::Bytes(b)) => {
            buf.push(b'[');
            for (i, &byte) in b.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                push_u64(buf, u64::from(byte));
            }
            buf.push(b']');
        }
        Err(_) => buf.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text escaping as it was before its fast paths: the reference
    /// the fast paths must match byte for byte.
    fn text_reference(bytes: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        push_text_utf8(&mut buf, bytes);
        buf
    }

    /// Strings mixing every kind of byte the escapers treat apart.
    fn samples() -> Vec<Vec<u8>> {
        let mut samples: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for b in 0..=255u8 {
            samples.push([b"e2e:12:34".as_slice(), &[b], b"tail\n"].concat());
        }
        samples.extend(
            [
                "plain",
                "marker\n",
                "tab\there\r\n",
                "back\\slash \"quoted\"",
                "caf\u{e9} \u{1f600}\n",
                "\u{7f}del",
                "",
            ]
            .map(|s| s.as_bytes().to_vec()),
        );
        samples.push(b"bad \xff\xfe utf8\n".to_vec());
        samples.push(b"\xe2\x82 cut\x01".to_vec());
        samples
    }

    #[test]
    fn text_escaping_matches_the_utf8_path_for_every_byte() {
        for s in samples() {
            let mut fast = Vec::new();
            push_text(&mut fast, &s);
            assert_eq!(fast, text_reference(&s), "{s:?}");
        }
    }

    #[test]
    fn json_escaping_matches_serde_json_for_every_byte() {
        for s in samples() {
            let mut ours = Vec::new();
            push_json_bytes(&mut ours, &s);
            let theirs = serde_json::to_string(&String::from_utf8_lossy(&s)).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), theirs, "{s:?}");
        }
    }

    #[test]
    fn padded_numbers_match_format() {
        let values = [
            0u64,
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            123_456_789,
            999_999_999,
        ];
        for width in [1, 2, 3, 9, 19, 20] {
            for v in values.into_iter().chain([u64::MAX, 10u64.pow(18)]) {
                let mut ours = Vec::new();
                push_u64_padded(&mut ours, v, width);
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    format!("{v:0width$}"),
                    "{v} width {width}"
                );
            }
        }
    }
}
