//! A hostile event format (a guest sends its format files as text) and a
//! record's payload, separated by a NUL: parsing the format, and decoding
//! and printing every field of the record with it, must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsc_userspace::tracefs::{EventFormat, FormatSet};

fuzz_target!(|data: &[u8]| {
    let Some(at) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (text, record) = (&data[..at], &data[at + 1..]);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(format) = EventFormat::parse("fuzz", text) else {
        return;
    };
    // Every field on its own, whatever the record's `common_type` says.
    for field in &format.fields {
        if let Ok(value) = field.value(record) {
            let _ = (value.to_string(), value.as_u64(), value.as_i64());
            let _ = value.as_str_lossy();
        }
    }
    // And as the host decodes a stream: looked up by id in a set.
    let mut set = FormatSet::new();
    if set.insert(format).is_err() {
        return;
    }
    let _ = set.event_id(record);
    if let Ok(event) = set.event(record) {
        let _ = (event.to_string(), event.pid());
        for (field, value) in event.fields() {
            let _ = (&field.decl.name, value.map(|v| v.to_string()));
        }
        for (pid, comm) in event.named_tasks() {
            let _ = (pid, comm.len());
        }
    }
});
