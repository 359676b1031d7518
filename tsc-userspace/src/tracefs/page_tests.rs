//! Hand-built pages covering every record type.

use super::*;

const HEADER_PAGE: &str = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
";

/// Builds page records the way the kernel lays them out.
#[derive(Default)]
struct Builder {
    records: Vec<u8>,
}

impl Builder {
    fn header(&mut self, type_len: u32, delta: u32) -> &mut Self {
        assert!(type_len < 32 && delta < 1 << 27);
        self.records
            .extend_from_slice(&(type_len | delta << 5).to_le_bytes());
        self
    }
    fn word(&mut self, w: u32) -> &mut Self {
        self.records.extend_from_slice(&w.to_le_bytes());
        self
    }
    /// A small event: type_len = payload words.
    fn event(&mut self, delta: u32, payload: &[u8]) -> &mut Self {
        assert_eq!(payload.len() % 4, 0);
        self.header(payload.len() as u32 / 4, delta);
        self.records.extend_from_slice(payload);
        self
    }
    /// A type_len 0 event: array[0] = payload length + 4.
    fn big_event(&mut self, delta: u32, payload: &[u8]) -> &mut Self {
        self.header(0, delta).word(payload.len() as u32 + 4);
        self.records.extend_from_slice(payload);
        while !self.records.len().is_multiple_of(4) {
            self.records.push(0);
        }
        self
    }
    fn extend(&mut self, delta: u64) -> &mut Self {
        self.header(30, (delta & ((1 << 27) - 1)) as u32)
            .word((delta >> 27) as u32)
    }
    fn absolute(&mut self, ts: u64) -> &mut Self {
        self.header(31, (ts & ((1 << 27) - 1)) as u32)
            .word(((ts >> 27) & 0xffff_ffff) as u32)
    }
    fn padding(&mut self, delta: u32, len: u32) -> &mut Self {
        self.header(29, delta).word(len - 4);
        self.records
            .extend(std::iter::repeat_n(0xee, len as usize - 8));
        self
    }
    fn page(&self, ts: u64, flags: u64, lost: Option<u64>) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        p[..8].copy_from_slice(&ts.to_le_bytes());
        let commit = self.records.len() as u64 | flags;
        p[8..16].copy_from_slice(&commit.to_le_bytes());
        p[16..16 + self.records.len()].copy_from_slice(&self.records);
        if let Some(n) = lost {
            let at = 16 + self.records.len();
            p[at..at + 8].copy_from_slice(&n.to_le_bytes());
        }
        p
    }
}

fn layout() -> PageLayout {
    PageLayout::parse(HEADER_PAGE).unwrap()
}

fn decode(page: &[u8]) -> Vec<(u64, Vec<u8>)> {
    Page::parse(&layout(), page)
        .unwrap()
        .events()
        .map(|e| e.map(|e| (e.ts, e.data.to_vec())).unwrap())
        .collect()
}

#[test]
fn header_page_gives_the_layout() {
    let l = layout();
    assert_eq!(l, PageLayout::x86_64(4096));
    assert_eq!(
        (l.page_size(), l.data_offset(), l.long_size()),
        (4096, 16, 8)
    );
    assert!(PageLayout::parse("field: u64 timestamp;\toffset:0;\tsize:8;").is_err());
}

#[test]
fn small_events_add_their_deltas_to_the_page_time_stamp() {
    let page = Builder::default()
        .event(0, &[1, 0, 0, 0])
        .event(5, &[2, 0, 0, 0, 9, 9, 9, 9])
        .event(100, &[3, 0, 0, 0])
        .page(1000, 0, None);
    assert_eq!(
        decode(&page),
        vec![
            (1000, vec![1, 0, 0, 0]),
            (1005, vec![2, 0, 0, 0, 9, 9, 9, 9]),
            (1105, vec![3, 0, 0, 0]),
        ]
    );
}

#[test]
fn type_len_zero_carries_its_length_in_the_first_word() {
    let payload: Vec<u8> = (0..130).collect();
    let page = Builder::default()
        .big_event(7, &payload)
        .event(1, &[4, 0, 0, 0])
        .page(50, 0, None);
    let events = decode(&page);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].0, 57);
    // The ring buffer rounds payloads up to 4 bytes.
    assert_eq!(&events[0].1[..130], &payload[..]);
    assert_eq!(events[0].1.len(), 132);
    assert_eq!(events[1], (58, vec![4, 0, 0, 0]));
}

#[test]
fn time_extend_adds_a_59_bit_delta() {
    let big = (3u64 << 40) + 12345;
    let page = Builder::default()
        .event(10, &[1, 0, 0, 0])
        .extend(big)
        .event(0, &[2, 0, 0, 0])
        .page(1 << 20, 0, None);
    let events = decode(&page);
    assert_eq!(events[0].0, (1 << 20) + 10);
    assert_eq!(events[1].0, (1 << 20) + 10 + big);
}

#[test]
fn absolute_time_stamp_replaces_the_time_and_keeps_the_top_bits() {
    // Below 2^59 the stamp is taken as is, even if it goes backwards.
    let page = Builder::default()
        .event(10, &[1, 0, 0, 0])
        .absolute(900)
        .event(3, &[2, 0, 0, 0])
        .page(1000, 0, None);
    assert_eq!(
        decode(&page).iter().map(|e| e.0).collect::<Vec<_>>(),
        [1010, 903]
    );
    // With the top 5 bits set in the page time stamp, they are restored.
    let top = 0b10101u64 << 59;
    let page = Builder::default()
        .absolute(5000)
        .event(1, &[1, 0, 0, 0])
        .page(top | 4000, 0, None);
    assert_eq!(decode(&page)[0].0, top | 5001);
    // And when the low part wrapped, the top part carries.
    let page = Builder::default()
        .absolute(10)
        .event(0, &[1, 0, 0, 0])
        .page(top | ((1 << 59) - 100), 0, None);
    assert_eq!(decode(&page)[0].0, (top + (1 << 59)) | 10);
    // A stamp equal to the running time (an event on the same tick as the
    // one before it) is not a wrap: no carry.
    let page = Builder::default()
        .absolute(4000)
        .event(0, &[1, 0, 0, 0])
        .page(top | 4000, 0, None);
    assert_eq!(decode(&page)[0].0, top | 4000);
}

/// A page frame may be cut right after its records (the agent sends a
/// flushed page that way): exactly the header and the committed bytes
/// decode, one byte less is refused.
#[test]
fn a_page_cut_right_after_its_records_decodes() {
    let l = layout();
    let page = Builder::default()
        .event(5, &[1, 0, 0, 0])
        .event(2, &[2, 0, 0, 0])
        .page(100, 0, None);
    let cut = &page[..16 + 16];
    let events: Vec<_> = Page::parse(&l, cut)
        .unwrap()
        .events()
        .map(|e| e.unwrap().ts)
        .collect();
    assert_eq!(events, [105, 107]);
    assert!(matches!(
        Page::parse(&l, &page[..16 + 15]),
        Err(PageError::Commit {
            commit: 16,
            capacity: 15
        })
    ));
    // An empty page cut after its header.
    let empty = Builder::default().page(7, 0, None);
    let page = Page::parse(&l, &empty[..16]).unwrap();
    assert!(page.is_empty());
    assert_eq!(page.timestamp(), 7);
}

#[test]
fn padding_is_skipped_and_only_a_real_delta_counts() {
    let page = Builder::default()
        .event(0, &[1, 0, 0, 0])
        // A discarded event with a real delta of 40.
        .padding(40, 24)
        .event(2, &[2, 0, 0, 0])
        // A discarded event whose delta was 0 (marked 1).
        .padding(1, 12)
        .event(3, &[3, 0, 0, 0])
        .page(100, 0, None);
    assert_eq!(
        decode(&page)
            .iter()
            .map(|e| (e.0, e.1[0]))
            .collect::<Vec<_>>(),
        [(100, 1), (142, 2), (145, 3)]
    );
}

#[test]
fn null_padding_ends_the_page() {
    let mut b = Builder::default();
    b.event(0, &[1, 0, 0, 0]).header(29, 0).word(0xdead_beef);
    b.event(0, &[2, 0, 0, 0]);
    assert_eq!(decode(&b.page(1, 0, None)).len(), 1);
}

#[test]
fn lost_events_are_reported_with_their_count_when_stored() {
    let b = {
        let mut b = Builder::default();
        b.event(0, &[1, 0, 0, 0]);
        b
    };
    let l = layout();
    let none = b.page(1, 0, None);
    assert_eq!(
        Page::parse(&l, &none).unwrap().lost_events(),
        LostEvents::None
    );
    let unknown = b.page(1, 1 << 31, None);
    assert_eq!(
        Page::parse(&l, &unknown).unwrap().lost_events(),
        LostEvents::Unknown
    );
    let counted = b.page(1, (1 << 31) | (1 << 30), Some(1234));
    let page = Page::parse(&l, &counted).unwrap();
    assert_eq!(page.lost_events(), LostEvents::Count(1234));
    // The flags do not change what the records are.
    assert_eq!(page.events().count(), 1);
    assert_eq!(page.records().len(), 8);
}

#[test]
fn empty_page_has_no_events() {
    let page = Builder::default().page(77, 0, None);
    let page = Page::parse(&layout(), &page).unwrap();
    assert!(page.is_empty());
    assert_eq!(page.timestamp(), 77);
    assert_eq!(page.events().count(), 0);
}

#[test]
fn malformed_pages_are_errors_not_panics() {
    let l = layout();
    assert!(matches!(
        Page::parse(&l, &[0; 10]),
        Err(PageError::Short { len: 10, need: 16 })
    ));
    let mut p = Builder::default().page(0, 0, None);
    p[8..16].copy_from_slice(&5000u64.to_le_bytes());
    assert!(matches!(Page::parse(&l, &p), Err(PageError::Commit { .. })));
    // An event claiming more payload than committed.
    let mut b = Builder::default();
    b.header(20, 0).word(1);
    let p = b.page(0, 0, None);
    let errs: Vec<_> = Page::parse(&l, &p).unwrap().events().collect();
    assert_eq!(errs.len(), 1);
    assert!(matches!(errs[0], Err(PageError::Record { offset: 0, .. })));
    // type_len 0 with a length word below 4.
    let mut b = Builder::default();
    b.header(0, 0).word(2);
    let p = b.page(0, 0, None);
    assert!(
        Page::parse(&l, &p)
            .unwrap()
            .events()
            .next()
            .unwrap()
            .is_err()
    );
    // A time extend cut off by the commit.
    let mut b = Builder::default();
    b.header(30, 0);
    let p = b.page(0, 0, None);
    assert!(
        Page::parse(&l, &p)
            .unwrap()
            .events()
            .next()
            .unwrap()
            .is_err()
    );
}

/// A guest's header_page whose offsets overflow `usize` when a size is
/// added (this panicked in debug builds before the ends were checked).
#[test]
fn header_page_offsets_that_overflow_are_errors() {
    let max = usize::MAX;
    let data = format!("field: char data;\toffset:{max};\tsize:1;");
    let header = format!(
        "field: u64 timestamp;\toffset:0;\tsize:8;\nfield: local_t commit;\toffset:8;\tsize:8;\n{data}"
    );
    assert_eq!(
        PageLayout::parse(&header),
        Err(PageError::LayoutRange("data"))
    );
    let header = format!(
        "field: u64 timestamp;\toffset:{max};\tsize:8;\nfield: local_t commit;\toffset:8;\tsize:8;\nfield: char data;\toffset:16;\tsize:8;"
    );
    assert_eq!(
        PageLayout::parse(&header),
        Err(PageError::LayoutRange("timestamp"))
    );
    let header = format!(
        "field: u64 timestamp;\toffset:0;\tsize:8;\nfield: local_t commit;\toffset:{};\tsize:8;\nfield: char data;\toffset:16;\tsize:8;",
        max - 3
    );
    assert_eq!(
        PageLayout::parse(&header),
        Err(PageError::LayoutRange("commit"))
    );
}

#[test]
fn a_32_bit_kernel_layout_reads_a_4_byte_commit() {
    let header = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:4;\tsigned:1;
\tfield: char data;\toffset:12;\tsize:4084;\tsigned:0;
";
    let l = PageLayout::parse(header).unwrap();
    assert_eq!(
        (l.data_offset(), l.long_size(), l.page_size()),
        (12, 4, 4096)
    );
    let mut p = vec![0u8; 4096];
    p[..8].copy_from_slice(&9u64.to_le_bytes());
    p[8..12].copy_from_slice(&(8u32 | 1 << 31 | 1 << 30).to_le_bytes());
    p[12..16].copy_from_slice(&(1u32 | 3 << 5).to_le_bytes());
    p[16..20].copy_from_slice(b"abcd");
    p[20..24].copy_from_slice(&7u32.to_le_bytes());
    let page = Page::parse(&l, &p).unwrap();
    assert_eq!(page.lost_events(), LostEvents::Count(7));
    let e: Vec<_> = page.events().map(Result::unwrap).collect();
    assert_eq!(
        e,
        [RawEvent {
            ts: 12,
            data: b"abcd"
        }]
    );
}

mod arbitrary_bytes {
    use proptest::prelude::*;

    use super::*;
    use crate::tracefs::FormatSet;
    use crate::tracefs::format::tests::{ALL_KINDS, PRINT, SCHED_SWITCH};

    proptest! {
        /// Whatever the bytes, decoding a page and every field of every event
        /// ends without a panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            commit in 0u64..700,
            flags in 0u64..4,
        ) {
            let mut page = bytes;
            if page.len() >= 16 {
                page[8..16].copy_from_slice(&(commit | flags << 30).to_le_bytes());
            }
            let mut set = FormatSet::new();
            for (sys, text) in [("sched", SCHED_SWITCH), ("ftrace", PRINT), ("test", ALL_KINDS)] {
                set.insert_text(sys, text).unwrap();
            }
            let layout = PageLayout::x86_64(page.len().max(16));
            if let Ok(p) = Page::parse(&layout, &page) {
                for event in p.events().flatten() {
                    if let Ok(e) = set.event(event.data) {
                        let _ = e.to_string();
                    }
                }
            }
        }
    }
}
