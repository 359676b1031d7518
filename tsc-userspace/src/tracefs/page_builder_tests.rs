//! The builder's pages decode, with the kernel's own layout text, to what
//! was pushed.

use proptest::prelude::*;

use super::*;
use crate::tracefs::{LostEvents, Page};

/// `events/header_page` of this machine's kernel (x86_64, 4 KiB pages).
const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
";

/// A 32-bit kernel's `header_page`: a 4-byte `commit`.
const HEADER_PAGE_32: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:4;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:12;\tsize:4084;\tsigned:0;
";

fn layout() -> PageLayout {
    PageLayout::parse(HEADER_PAGE).unwrap()
}

fn decode(layout: &PageLayout, page: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let page = Page::parse(layout, page).unwrap();
    assert_eq!(page.lost_events(), LostEvents::None);
    page.events()
        .map(|e| e.map(|e| (e.ts, e.data.to_vec())).unwrap())
        .collect()
}

/// What the decoder gives back for a payload: rounded up to 4 with zeros,
/// and 8 bytes to 12.
fn padded(payload: &[u8]) -> Vec<u8> {
    let mut p = payload.to_vec();
    let len = match payload.len().div_ceil(4) * 4 {
        8 => 12,
        n => n,
    };
    p.resize(len, 0);
    p
}

/// Pushes every event, finishing pages as they fill.
fn build(layout: PageLayout, events: &[(u64, Vec<u8>)]) -> Vec<Bytes> {
    let mut builder = PageBuilder::new(layout);
    let mut pages = Vec::new();
    for (ts, payload) in events {
        if !builder.push(*ts, payload).unwrap() {
            pages.push(builder.finish());
            assert!(builder.push(*ts, payload).unwrap(), "fits a fresh page");
        }
    }
    if !builder.is_empty() {
        pages.push(builder.finish());
    }
    pages
}

fn round_trip(layout: PageLayout, events: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    build(layout, events)
        .iter()
        .flat_map(|page| decode(&layout, page))
        .collect()
}

fn expected(events: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    events.iter().map(|(ts, p)| (*ts, padded(p))).collect()
}

#[test]
fn small_event_is_one_header_word_then_payload() {
    let mut b = PageBuilder::new(layout());
    assert!(
        b.push(1000, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
            .unwrap()
    );
    assert!(b.push(1003, &[9, 9, 9, 9]).unwrap());
    let page = b.finish();
    assert_eq!(&page[..8], &1000u64.to_le_bytes(), "page time stamp");
    assert_eq!(&page[8..16], &24u64.to_le_bytes(), "commit: 4+12 + 4+4");
    assert_eq!(&page[16..20], &3u32.to_le_bytes(), "type_len 3, delta 0");
    let second = (1u32 | 3 << 5).to_le_bytes();
    assert_eq!(&page[32..36], &second, "type_len 1, delta 3");
    assert_eq!(page.len(), 16 + 24, "cut after the records");
}

#[test]
fn an_eight_byte_payload_takes_twelve_as_in_the_kernel() {
    let mut b = PageBuilder::new(layout());
    assert!(b.push(1, &[7; 5]).unwrap());
    let page = b.finish();
    assert_eq!(page[16] & 0x1f, 3, "type_len 3: never a 12-byte record");
    assert_eq!(decode(&layout(), &page), vec![(1, padded(&[7; 5]))]);
    assert_eq!(padded(&[7; 5]).len(), 12);
}

#[test]
fn big_and_empty_payloads_use_the_length_word() {
    let events = vec![
        (5, vec![7u8; 113]), // 116 bytes padded: more than 28 words
        (6, vec![]),
        (7, vec![1u8; 112]), // exactly 28 words: still small
    ];
    let page = &build(layout(), &events)[0];
    assert_eq!(
        &page[16..24],
        &[0, 0, 0, 0, 120, 0, 0, 0],
        "type_len 0, len+4"
    );
    assert_eq!(decode(&layout(), page), expected(&events));
    // Page header, big event (header, length word, 116 bytes), empty event.
    let small = 16 + 8 + 116 + 8;
    assert_eq!(page[small] & 0x1f, 28);
}

#[test]
fn big_gaps_get_a_time_extend_before_the_event() {
    let base = 9_117_568_865_573u64;
    let events = vec![
        (base, vec![1; 4]),
        (base + (1 << 27) - 1, vec![2; 4]), // still fits the header
        (base + (1 << 27) - 1 + (1 << 27), vec![3; 4]),
        (base + (1 << 40), vec![4; 4]),
    ];
    let page = &build(layout(), &events)[0];
    assert_eq!(decode(&layout(), page), expected(&events));
    let types: Vec<u8> = [16, 24, 32, 40, 48, 56]
        .iter()
        .map(|&i| page[i] & 0x1f)
        .collect();
    assert_eq!(types, [1, 1, 30, 1, 30, 1]);
}

#[test]
fn time_going_back_gets_an_absolute_stamp() {
    let events = vec![(5000, vec![1; 8]), (4000, vec![2; 8]), (4001, vec![3; 8])];
    let page = &build(layout(), &events)[0];
    // The first record: header and 8 bytes padded to 12.
    assert_eq!(page[16 + 16] & 0x1f, 31, "absolute stamp before the second");
    assert_eq!(decode(&layout(), page), expected(&events));
}

#[test]
fn time_that_no_record_can_say_is_refused() {
    let mut b = PageBuilder::new(layout());
    let high = 1u64 << 63;
    b.push(high + 10, &[0; 4]).unwrap();
    let err = b.push(high + 5, &[0; 4]).unwrap_err();
    assert_eq!(
        err,
        PageBuildError::Unrepresentable {
            ts: high + 5,
            current: high + 10
        }
    );
    assert_eq!(b.len(), 1, "nothing written");
}

#[test]
fn a_full_page_says_so_and_the_next_one_starts_clean() {
    let mut b = PageBuilder::new(layout());
    // 24-byte payloads: 28-byte records; 4080 bytes hold 145 of them.
    let mut ts = 100;
    while b.push(ts, &[0xab; 24]).unwrap() {
        ts += 1;
    }
    assert_eq!(b.len(), 145);
    let page = b.finish();
    assert_eq!(page.len(), 16 + 145 * 28);
    assert!(b.is_empty());
    assert!(b.push(ts, &[0xcd; 24]).unwrap());
    assert_eq!(decode(&layout(), &b.finish()), vec![(ts, vec![0xcd; 24])]);
}

#[test]
fn an_event_larger_than_a_page_is_an_error() {
    let mut b = PageBuilder::new(layout());
    assert_eq!(
        b.push(1, &[0; 4080]).unwrap_err(),
        PageBuildError::TooBig {
            len: 4080,
            room: 4080
        }
    );
    assert!(
        b.push(1, &[0; 4072]).unwrap(),
        "len word + 4072 fills it exactly"
    );
}

#[test]
fn a_32_bit_layout_round_trips() {
    let layout = PageLayout::parse(HEADER_PAGE_32).unwrap();
    let events = vec![(1, vec![1; 4]), (2, vec![2; 200]), (1 << 33, vec![3; 12])];
    assert_eq!(round_trip(layout, &events), expected(&events));
}

/// A time step: mostly small, sometimes past 27 bits, sometimes backwards.
fn step() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0i64..5_000,
        2 => (1i64 << 27) - 2..(1i64 << 27) + 2,
        1 => (1i64 << 27)..(1i64 << 45),
        1 => -1_000_000i64..0,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn pages_decode_to_what_was_pushed(
        start in 0u64..(1 << 50),
        events in prop::collection::vec(
            (step(), prop::collection::vec(any::<u8>(), 0..300)),
            1..400,
        ),
    ) {
        let mut ts = start;
        let events: Vec<(u64, Vec<u8>)> = events
            .into_iter()
            .map(|(step, payload)| {
                ts = ts.saturating_add_signed(step);
                (ts, payload)
            })
            .collect();
        let layout = layout();
        let pages = build(layout, &events);
        for page in &pages {
            prop_assert!(page.len() <= layout.page_size());
        }
        prop_assert_eq!(round_trip(layout, &events), expected(&events));
    }
}
