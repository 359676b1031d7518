//! The offset journal reader on arbitrary file contents: it must never
//! panic; every record it accepts must encode to a frame that reads back as
//! the same record; and a journal written from what it accepted must read
//! back whole, with nothing skipped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsc_userspace::offsets::journal::{frame, reader};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = reader::decode(data) else {
        return;
    };
    let mut again = frame::header().to_vec();
    let mut payload = Vec::new();
    for record in &decoded.records {
        payload.clear();
        record.encode(&mut payload);
        frame::put(&payload, &mut again);
    }
    let back = reader::decode(&again).expect("a journal we wrote reads");
    assert_eq!(back.records, decoded.records);
    assert!(back.skipped.is_empty() && back.torn_tail.is_none() && back.undecodable == 0);
    let skipped: u64 = decoded.skipped.iter().map(|s| s.bytes).sum::<u64>()
        + decoded.torn_tail.map_or(0, |t| t.bytes);
    assert!(skipped <= data.len() as u64);
});
