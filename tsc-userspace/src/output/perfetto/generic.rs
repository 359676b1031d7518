//! `GenericFtraceEvent`s: every event Perfetto has no message for, the
//! companion that carries what a typed payload cannot, and events of
//! unknown format.

use super::proto::{GenericField, GenericFtraceEvent, GenericValue};
use crate::{
    Flags,
    output::value::push_json_value,
    tracefs::{Event, FieldError, Value},
};

/// The name of the companion event that follows a typed one when it has
/// flags or fields its message lacks.
pub const EXTRA_EVENT: &str = "tsc_tracer_extra";
/// The field that carries an event's flags (`late,offset-not-applied`).
pub const FLAGS_FIELD: &str = "tsc_tracer_flags";
/// The companion's field naming the event it completes (`system:name`).
pub const OF_FIELD: &str = "tsc_tracer_of";
/// The name of an event whose format is unknown.
pub const UNKNOWN_EVENT: &str = "tsc_tracer_unknown";

/// A field as a generic one: signed integers as `int_value`, unsigned ones
/// and pointers as `uint_value`, text as `str_value` (lossy UTF-8), arrays
/// and other bytes as `str_value` holding their JSON text (what the JSON
/// writer prints), and no value for a field beyond the record.
pub(super) fn field(name: &str, value: Result<Value<'_>, FieldError>) -> GenericField {
    let value = match value {
        Ok(Value::Unsigned(v) | Value::Pointer(v)) => Some(GenericValue::Uint(v)),
        Ok(Value::Signed(v)) => Some(GenericValue::Int(v)),
        Ok(Value::Str(s)) => Some(GenericValue::Str(String::from_utf8_lossy(s).into_owned())),
        Ok(v @ (Value::Array(_) | Value::Bytes(_))) => {
            let mut json = Vec::new();
            push_json_value(&mut json, Ok(v));
            Some(GenericValue::Str(
                String::from_utf8_lossy(&json).into_owned(),
            ))
        }
        Err(_) => None,
    };
    GenericField {
        name: Some(name.to_owned()),
        value,
    }
}

/// `flags` as a field, when any is set.
pub(super) fn flags_field(flags: Flags) -> Option<GenericField> {
    let mut names = flags.names();
    let first = names.next()?;
    let text = names.fold(first.to_owned(), |mut s, n| {
        s.push(',');
        s.push_str(n);
        s
    });
    Some(GenericField {
        name: Some(FLAGS_FIELD.to_owned()),
        value: Some(GenericValue::Str(text)),
    })
}

/// Every field of `event`, and its flags.
pub(super) fn event(event: &Event<'_>, flags: Flags) -> GenericFtraceEvent {
    let mut fields: Vec<GenericField> = event.fields().map(|(f, v)| field(f.name(), v)).collect();
    fields.extend(flags_field(flags));
    GenericFtraceEvent {
        event_name: Some(event.format.name.clone()),
        field: fields,
    }
}

/// The companion of a typed `event`: the fields its message lacks, then
/// its flags; `None` when there is nothing to carry.
pub(super) fn extra(
    event: &Event<'_>,
    mut fields: Vec<GenericField>,
    flags: Flags,
) -> Option<GenericFtraceEvent> {
    fields.extend(flags_field(flags));
    if fields.is_empty() {
        return None;
    }
    let of = format!("{}:{}", event.format.system, event.format.name);
    fields.insert(
        0,
        GenericField {
            name: Some(OF_FIELD.to_owned()),
            value: Some(GenericValue::Str(of)),
        },
    );
    Some(GenericFtraceEvent {
        event_name: Some(EXTRA_EVENT.to_owned()),
        field: fields,
    })
}

/// An event whose format is unknown: its `common_type` when known, its
/// payload length and flags.
pub(super) fn unknown(id: Option<u16>, payload_len: usize, flags: Flags) -> GenericFtraceEvent {
    let uint = |name: &str, v: u64| GenericField {
        name: Some(name.to_owned()),
        value: Some(GenericValue::Uint(v)),
    };
    let mut fields = Vec::with_capacity(3);
    fields.extend(id.map(|id| uint("id", u64::from(id))));
    fields.push(uint("payload_len", payload_len as u64));
    fields.extend(flags_field(flags));
    GenericFtraceEvent {
        event_name: Some(UNKNOWN_EVENT.to_owned()),
        field: fields,
    }
}
