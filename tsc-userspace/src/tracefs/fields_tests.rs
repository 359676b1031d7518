//! Field values read from hand-built records.

use super::*;
use crate::tracefs::format::tests::{ALL_KINDS, PRINT, SCHED_SWITCH};

fn set() -> FormatSet {
    let mut set = FormatSet::new();
    for (sys, text) in [
        ("sched", SCHED_SWITCH),
        ("ftrace", PRINT),
        ("test", ALL_KINDS),
    ] {
        set.insert_text(sys, text).unwrap();
    }
    set
}

fn common(id: u16, pid: i32, len: usize) -> Vec<u8> {
    let mut r = vec![0u8; len];
    r[..2].copy_from_slice(&id.to_le_bytes());
    r[4..8].copy_from_slice(&pid.to_le_bytes());
    r
}

#[test]
fn sched_switch_fields_decode() {
    let mut r = common(372, 42, 64);
    r[8..12].copy_from_slice(b"bash");
    r[24..28].copy_from_slice(&42i32.to_le_bytes());
    r[28..32].copy_from_slice(&120i32.to_le_bytes());
    r[32..40].copy_from_slice(&(-1i64).to_le_bytes());
    r[40..56].copy_from_slice(b"swapper/1\0garbag");
    r[56..60].copy_from_slice(&0i32.to_le_bytes());
    let set = set();
    let e = set.event(&r).unwrap();
    assert_eq!(e.format.name, "sched_switch");
    assert_eq!(e.pid(), Some(42));
    assert_eq!(e.get("prev_comm").unwrap().unwrap(), Value::Str(b"bash"));
    assert_eq!(
        e.get("next_comm").unwrap().unwrap(),
        Value::Str(b"swapper/1")
    );
    assert_eq!(e.get("prev_state").unwrap().unwrap(), Value::Signed(-1));
    assert_eq!(e.get("prev_prio").unwrap().unwrap().as_i64(), Some(120));
    assert!(e.get("nope").is_none());
    assert_eq!(
        e.to_string(),
        "sched_switch: prev_comm=bash prev_pid=42 prev_prio=120 prev_state=-1 \
         next_comm=swapper/1 next_pid=0 next_prio=0"
    );
}

#[test]
fn trailing_string_runs_to_the_nul() {
    let mut r = common(5, 7, 16);
    r[8..16].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
    r.extend_from_slice(b"hello 3\n\0\0\0\0");
    let set = set();
    let e = set.event(&r).unwrap();
    assert_eq!(e.get("buf").unwrap().unwrap(), Value::Str(b"hello 3\n"));
    assert_eq!(
        e.get("ip").unwrap().unwrap(),
        Value::Unsigned(0xffff_ffff_8100_0000)
    );
}

#[test]
fn every_kind_decodes() {
    let mut r = common(999, 1, 80);
    r[8] = 0xfe; // a = -2
    r[9] = 0xfe; // b = 254
    r[10..12].copy_from_slice(&(-300i16).to_le_bytes());
    r[12..16].copy_from_slice(&4_000_000_000u32.to_le_bytes());
    r[16..24].copy_from_slice(&i64::MIN.to_le_bytes());
    r[24..32].copy_from_slice(&0xdead_beefu64.to_le_bytes());
    for (i, v) in [1u16, 2, 65535].iter().enumerate() {
        r[32 + 2 * i..34 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    // name: "abc\0" at 64 (4 bytes); vals: two s32 at 68; rel: "xy\0" 24 bytes after the word's end.
    r[40..44].copy_from_slice(&(64u32 | 4 << 16).to_le_bytes());
    r[44..48].copy_from_slice(&(68u32 | 8 << 16).to_le_bytes());
    r[48..52].copy_from_slice(&(24u32 | 3 << 16).to_le_bytes());
    r[52..58].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
    r[58..61].copy_from_slice(&[0xa, 0xb, 0xc]);
    r[64..68].copy_from_slice(b"abc\0");
    r[68..72].copy_from_slice(&(-5i32).to_le_bytes());
    r[72..76].copy_from_slice(&7i32.to_le_bytes());
    r[76..79].copy_from_slice(b"xy\0");
    let set = set();
    let e = set.event(&r).unwrap();
    let v = |n: &str| e.get(n).unwrap().unwrap();
    assert_eq!(v("a"), Value::Signed(-2));
    assert_eq!(v("b"), Value::Unsigned(254));
    assert_eq!(v("c"), Value::Signed(-300));
    assert_eq!(v("d"), Value::Unsigned(4_000_000_000));
    assert_eq!(v("e"), Value::Signed(i64::MIN));
    assert_eq!(v("ptr"), Value::Pointer(0xdead_beef));
    assert_eq!(v("ptr").to_string(), "0xdeadbeef");
    assert_eq!(v("arr").to_string(), "{1,2,65535}");
    assert_eq!(v("name"), Value::Str(b"abc"));
    let Value::Array(vals) = v("vals") else {
        panic!("vals is an array")
    };
    assert_eq!(
        vals.iter().collect::<Vec<_>>(),
        [Value::Signed(-5), Value::Signed(7)]
    );
    assert_eq!(v("rel"), Value::Str(b"xy"));
    assert_eq!(v("mac").to_string(), "{1,2,3,4,5,6}");
    assert_eq!(v("blob"), Value::Bytes(&[0xa, 0xb, 0xc]));
    assert_eq!(v("blob").to_string(), "0a0b0c");
    let Value::Array(tail) = v("tail") else {
        panic!("tail is an array")
    };
    assert_eq!(tail.len(), 16);
}

#[test]
fn out_of_record_fields_and_unknown_ids_are_errors() {
    let set = set();
    let mut r = common(999, 1, 52);
    // name points past the record.
    r[40..44].copy_from_slice(&(50u32 | 10 << 16).to_le_bytes());
    let e = set.event(&r).unwrap();
    assert!(matches!(
        e.get("name"),
        Some(Err(FieldError::OutOfBounds { .. }))
    ));
    assert!(matches!(
        e.get("mac"),
        Some(Err(FieldError::OutOfBounds { .. }))
    ));
    assert!(e.to_string().contains("mac=<out of record>"));
    assert!(matches!(
        set.event(&common(12, 0, 8)),
        Err(FieldError::UnknownId(12))
    ));
    assert!(matches!(set.event(&[1]), Err(FieldError::NoType)));
}
