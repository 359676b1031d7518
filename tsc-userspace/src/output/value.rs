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
    let mut itoa = itoa::Buffer::new();
    let digits = itoa.format(v).as_bytes();
    buf.resize(buf.len() + width.saturating_sub(digits.len()), b'0');
    buf.extend_from_slice(digits);
}

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
    // ASCII: copied as it is, without the UTF-8 chunking below (a tenth of
    // the text writer's instructions per event when it was not skipped).
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'\\')
    {
        buf.extend_from_slice(bytes);
        return;
    }
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
    if !push_plain(buf, bytes) {
        push_json_str(buf, &String::from_utf8_lossy(bytes));
    }
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
