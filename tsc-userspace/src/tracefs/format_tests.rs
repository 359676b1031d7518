//! Format files as this kernel writes them, and the odd ones.

use super::*;

pub(crate) const SCHED_SWITCH: &str = "name: sched_switch
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;

print fmt: \"prev_comm=%s prev_pid=%d\", REC->prev_comm, REC->prev_pid
";

pub(crate) const PRINT: &str = "name: print
ID: 5
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long ip;\toffset:8;\tsize:8;\tsigned:0;
\tfield:char buf[];\toffset:16;\tsize:0;\tsigned:0;

print fmt: \"%ps: %s\", (void *)REC->ip, REC->buf
";

/// Every kind of field, in a made-up event.
pub(crate) const ALL_KINDS: &str = "name: all_kinds
ID: 999
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:s8 a;\toffset:8;\tsize:1;\tsigned:1;
\tfield:u8 b;\toffset:9;\tsize:1;\tsigned:0;
\tfield:s16 c;\toffset:10;\tsize:2;\tsigned:1;
\tfield:u32 d;\toffset:12;\tsize:4;\tsigned:0;
\tfield:s64 e;\toffset:16;\tsize:8;\tsigned:1;
\tfield:const char * ptr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:u16 arr[3];\toffset:32;\tsize:6;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:40;\tsize:4;\tsigned:0;
\tfield:__data_loc s32[] vals;\toffset:44;\tsize:4;\tsigned:1;
\tfield:__rel_loc char[] rel;\toffset:48;\tsize:4;\tsigned:0;
\tfield:u8 mac[6];\toffset:52;\tsize:6;\tsigned:0;
\tfield:struct foo blob;\toffset:58;\tsize:3;\tsigned:0;
\tfield:u8 tail[];\toffset:64;\tsize:0;\tsigned:0;

print fmt: \"whatever\"
";

#[test]
fn sched_switch_parses_with_common_fields_first() {
    let f = EventFormat::parse("sched", SCHED_SWITCH).unwrap();
    assert_eq!(
        (f.system.as_str(), f.name.as_str(), f.id),
        ("sched", "sched_switch", 372)
    );
    assert_eq!(f.fields.len(), 11);
    assert_eq!(f.own_fields().count(), 7);
    let comm = f.field("prev_comm").unwrap();
    assert_eq!(comm.kind, FieldKind::Str(Location::Fixed));
    assert_eq!(
        (comm.decl.offset, comm.decl.size, comm.decl.array_len),
        (8, 16, Some(16))
    );
    assert_eq!(comm.decl.type_name, "char");
    assert_eq!(
        f.field("prev_state").unwrap().kind,
        FieldKind::Int { signed: true }
    );
    assert_eq!(
        f.field("common_type").unwrap().kind,
        FieldKind::Int { signed: false }
    );
    assert!(f.print_fmt.starts_with("\"prev_comm=%s"));
}

#[test]
fn every_declaration_shape_is_classified() {
    let f = EventFormat::parse("test", ALL_KINDS).unwrap();
    let kind = |n: &str| f.field(n).unwrap().kind;
    assert_eq!(kind("a"), FieldKind::Int { signed: true });
    assert_eq!(kind("ptr"), FieldKind::Pointer);
    assert_eq!(f.field("ptr").unwrap().decl.type_name, "const char *");
    assert_eq!(
        kind("arr"),
        FieldKind::Array {
            location: Location::Fixed,
            elem_size: 2,
            signed: false
        }
    );
    assert_eq!(kind("name"), FieldKind::Str(Location::DataLoc));
    assert_eq!(
        kind("vals"),
        FieldKind::Array {
            location: Location::DataLoc,
            elem_size: 4,
            signed: true
        }
    );
    assert_eq!(kind("rel"), FieldKind::Str(Location::RelLoc));
    assert_eq!(
        kind("mac"),
        FieldKind::Array {
            location: Location::Fixed,
            elem_size: 1,
            signed: false
        }
    );
    assert_eq!(kind("blob"), FieldKind::Bytes);
    assert_eq!(
        kind("tail"),
        FieldKind::Array {
            location: Location::Trailing,
            elem_size: 1,
            signed: false
        }
    );
    let print = EventFormat::parse("ftrace", PRINT).unwrap();
    assert_eq!(
        print.field("buf").unwrap().kind,
        FieldKind::Str(Location::Trailing)
    );
    assert_eq!(
        print.field("ip").unwrap().kind,
        FieldKind::Int { signed: false }
    );
}

#[test]
fn bad_formats_are_errors() {
    assert!(matches!(
        EventFormat::parse("x", "name: x\nformat:\n"),
        Err(FormatError::Header(_))
    ));
    assert!(matches!(
        EventFormat::parse("x", "name: x\nID: 70000\n"),
        Err(FormatError::Header(_))
    ));
    let bad = "name: x\nID: 1\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\n";
    assert!(matches!(
        EventFormat::parse("x", bad),
        Err(FormatError::Field { .. })
    ));
    let nameless = "name: x\nID: 1\n\tfield:int;\toffset:0;\tsize:4;\tsigned:1;\n";
    assert!(EventFormat::parse("x", nameless).is_err());
    let huge = "name: x\nID: 1\n\tfield:int a;\toffset:99999999;\tsize:4;\tsigned:1;\n";
    assert!(matches!(
        EventFormat::parse("x", huge),
        Err(FormatError::FieldRange { .. })
    ));
}

/// Found by the header_page fuzz target: a declaration split at a
/// whitespace character wider than one byte (U+00A0) sliced inside it.
#[test]
fn a_declaration_split_at_a_wide_space_keeps_whole_characters() {
    assert_eq!(
        split_decl("char\u{a0}name"),
        Some(("char".into(), "name".into(), None))
    );
    assert_eq!(
        split_decl("u64 da\u{a0}\u{2}\u{2}ta[4]"),
        Some(("u64 da".into(), "\u{2}\u{2}ta".into(), Some(4)))
    );
    let odd = "name: x\nID: 1\n\tfield: char d\u{a0}\u{2}ata;\toffset:0;\tsize:1;\tsigned:0;\n";
    let f = EventFormat::parse("x", odd).expect("an odd but whole name");
    assert_eq!(f.fields.last().map(|f| f.name()), Some("\u{2}ata"));
}

#[test]
fn format_set_finds_formats_by_common_type() {
    let mut set = FormatSet::new();
    set.insert_text("sched", SCHED_SWITCH).unwrap();
    set.insert_text("ftrace", PRINT).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.event_id(&[5, 0, 0, 0]), Some(5));
    assert_eq!(set.event_id(&[5]), None);
    assert_eq!(set.get(372).unwrap().name, "sched_switch");
    assert_eq!(set.find("ftrace", "print").unwrap().id, 5);
    // A format without common_type cannot join.
    let lone = EventFormat::parse("x", "name: x\nID: 3\n").unwrap();
    assert!(matches!(
        set.insert(lone),
        Err(FormatError::NoCommonType(_))
    ));
    // Nor one whose common_type is elsewhere.
    let moved =
        "name: y\nID: 4\n\tfield:unsigned short common_type;\toffset:2;\tsize:2;\tsigned:0;\n";
    assert!(matches!(
        set.insert_text("x", moved),
        Err(FormatError::CommonType(_))
    ));
}
