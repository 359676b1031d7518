//! Field values of one event record, read in place from its payload.

use std::fmt;

use super::format::{EventFormat, Field, FieldKind, FormatSet, Location};

/// Errors reading a field or finding a record's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The field's bytes are not all inside the record.
    #[error("field bytes {start}..{end} lie outside the {record}-byte record")]
    OutOfBounds {
        /// First byte wanted.
        start: usize,
        /// One past the last byte wanted.
        end: usize,
        /// Record length.
        record: usize,
    },
    /// The record's `common_type` names no known format.
    #[error("no format for event id {0}")]
    UnknownId(u16),
    /// The record is too short to hold `common_type`.
    #[error("record too short for common_type")]
    NoType,
}

/// A decoded field value, borrowing the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// An unsigned integer.
    Unsigned(u64),
    /// A signed integer (sign-extended from its size).
    Signed(i64),
    /// A pointer.
    Pointer(u64),
    /// Text, up to (not including) the first NUL. Not checked to be UTF-8.
    Str(&'a [u8]),
    /// An array of integers.
    Array(ArrayValue<'a>),
    /// Raw bytes.
    Bytes(&'a [u8]),
}

impl Value<'_> {
    /// The value as an unsigned integer (signed ones reinterpreted).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Unsigned(v) | Self::Pointer(v) => Some(v),
            Self::Signed(v) => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a signed integer (unsigned ones reinterpreted).
    pub fn as_i64(&self) -> Option<i64> {
        self.as_u64().map(|v| v as i64)
    }

    /// The text of a string field, lossily converted to UTF-8.
    pub fn as_str_lossy(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Self::Str(b) => Some(String::from_utf8_lossy(b)),
            _ => None,
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsigned(v) => write!(f, "{v}"),
            Self::Signed(v) => write!(f, "{v}"),
            Self::Pointer(v) => write!(f, "{v:#x}"),
            Self::Str(b) => f.write_str(&String::from_utf8_lossy(b)),
            Self::Array(a) => {
                f.write_str("{")?;
                for (i, v) in a.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep}{v}")?;
                }
                f.write_str("}")
            }
            Self::Bytes(b) => {
                for byte in *b {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// An array of integers in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayValue<'a> {
    bytes: &'a [u8],
    elem_size: u8,
    signed: bool,
}

impl<'a> ArrayValue<'a> {
    /// Number of whole elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / usize::from(self.elem_size.max(1))
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements.
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let (size, signed) = (usize::from(self.elem_size.max(1)), self.signed);
        self.bytes
            .chunks_exact(size)
            .map(move |c| int_value(c, signed))
    }
}

/// Little-endian integer of 1..=8 bytes.
fn int_value(bytes: &[u8], signed: bool) -> Value<'static> {
    // The sizes fields have, read without a copy of variable length (which
    // is a call to memcpy per field).
    let (raw, n) = match *bytes {
        [a] => (u64::from(a), 1),
        [a, b] => (u64::from(u16::from_le_bytes([a, b])), 2),
        [a, b, c, d] => (u64::from(u32::from_le_bytes([a, b, c, d])), 4),
        [a, b, c, d, e, f, g, h] => (u64::from_le_bytes([a, b, c, d, e, f, g, h]), 8),
        _ => return int_value_any(bytes, signed),
    };
    if !signed {
        return Value::Unsigned(raw);
    }
    let shift = 64 - 8 * n;
    Value::Signed(((raw << shift) as i64) >> shift)
}

/// [`int_value`] of any length (past 8 bytes, the first 8).
fn int_value_any(bytes: &[u8], signed: bool) -> Value<'static> {
    let mut le = [0u8; 8];
    let n = bytes.len().min(8);
    le[..n].copy_from_slice(&bytes[..n]);
    let raw = u64::from_le_bytes(le);
    if !signed || n == 0 {
        return Value::Unsigned(raw);
    }
    let shift = 64 - 8 * n as u32;
    Value::Signed(((raw << shift) as i64) >> shift)
}

impl Field {
    /// Reads this field from a record payload.
    pub fn value<'a>(&self, data: &'a [u8]) -> Result<Value<'a>, FieldError> {
        let d = &self.decl;
        match self.kind {
            FieldKind::Int { signed } => Ok(int_value(slice(data, d.offset, d.size)?, signed)),
            FieldKind::Pointer => Ok(Value::Pointer(
                int_value(slice(data, d.offset, d.size)?, false)
                    .as_u64()
                    .unwrap_or_default(),
            )),
            FieldKind::Str(location) => {
                let bytes = self.located(data, location)?;
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                Ok(Value::Str(&bytes[..end]))
            }
            FieldKind::Array {
                location,
                elem_size,
                signed,
            } => Ok(Value::Array(ArrayValue {
                bytes: self.located(data, location)?,
                elem_size,
                signed,
            })),
            FieldKind::Bytes => Ok(Value::Bytes(slice(data, d.offset, d.size)?)),
        }
    }

    fn located<'a>(&self, data: &'a [u8], location: Location) -> Result<&'a [u8], FieldError> {
        let d = &self.decl;
        match location {
            Location::Fixed => slice(data, d.offset, d.size),
            Location::Trailing => slice(data, d.offset, data.len().saturating_sub(d.offset)),
            Location::DataLoc | Location::RelLoc => {
                let word = slice(data, d.offset, 4)?;
                let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                let (mut start, len) = ((word & 0xffff) as usize, (word >> 16) as usize);
                if location == Location::RelLoc {
                    start += d.offset + 4;
                }
                slice(data, start, len)
            }
        }
    }
}

fn slice(data: &[u8], start: usize, len: usize) -> Result<&[u8], FieldError> {
    let end = start.saturating_add(len);
    data.get(start..end).ok_or(FieldError::OutOfBounds {
        start,
        end,
        record: data.len(),
    })
}

/// One record with its format.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The record's format.
    pub format: &'a EventFormat,
    /// The record payload (starts at `common_type`).
    pub data: &'a [u8],
}

impl<'a> Event<'a> {
    /// The value of the field called `name`; `None` if there is no such field.
    pub fn get(&self, name: &str) -> Option<Result<Value<'a>, FieldError>> {
        self.format.field(name).map(|f| f.value(self.data))
    }

    /// `common_pid`: the task that was current when the event fired.
    pub fn pid(&self) -> Option<i32> {
        // The field's place is resolved once per format, not searched for
        // by name per event.
        let field = self.format.pid_field()?;
        field.value(self.data).ok()?.as_i64().map(|v| v as i32)
    }

    /// The tasks an event names with their command names: any pair of
    /// fields `X_pid`/`X_comm` (`prev_`, `next_`, `child_`), `pid`/`comm`
    /// and `pid`/`newcomm`. This covers `sched_switch`, `sched_wakeup*`,
    /// `sched_process_fork` and `task_rename` without naming any of them.
    /// Comms are the kernel's `char[16]` bytes, not necessarily UTF-8.
    pub fn named_tasks(&self) -> impl Iterator<Item = (i32, &'a [u8])> + 'a {
        let data = self.data;
        self.format.task_fields().filter_map(move |(pid, comm)| {
            let pid = pid.value(data).ok()?.as_i64()?;
            match comm.value(data).ok()? {
                Value::Str(comm) => Some((pid as i32, comm)),
                _ => None,
            }
        })
    }

    /// Every field that is not a common one, with its value.
    pub fn fields(&self) -> impl Iterator<Item = (&'a Field, Result<Value<'a>, FieldError>)> {
        let data = self.data;
        self.format.own_fields().map(move |f| (f, f.value(data)))
    }
}

impl fmt::Display for Event<'_> {
    /// `name: field=value field=value`, the raw form of `trace-cmd report -R`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.format.name)?;
        for (field, value) in self.fields() {
            match value {
                Ok(v) => write!(f, " {}={v}", field.name())?,
                Err(_) => write!(f, " {}=<out of record>", field.name())?,
            }
        }
        Ok(())
    }
}

impl FormatSet {
    /// The record with its format, found by its `common_type`.
    pub fn event<'a>(&'a self, data: &'a [u8]) -> Result<Event<'a>, FieldError> {
        let id = self.event_id(data).ok_or(FieldError::NoType)?;
        let format = self.get(id).ok_or(FieldError::UnknownId(id))?;
        Ok(Event { format, data })
    }
}

#[cfg(test)]
#[path = "fields_tests.rs"]
mod tests;
