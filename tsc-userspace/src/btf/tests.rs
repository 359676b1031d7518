//! Unit tests on hand-built BTF blobs.

use proptest::prelude::*;

use super::*;

const INT: u32 = 1;
const PTR: u32 = 2;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const FUNC_PROTO: u32 = 13;
const TYPE_TAG: u32 = 18;

/// Writes BTF the way the kernel lays it out, with type ids and string
/// offsets starting where a base leaves off (0/1 for a self-contained blob).
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    str_base: u32,
    next_id: u32,
}

impl Builder {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            str_base: 0,
            next_id: 1,
        }
    }

    /// For split BTF on top of a base with `base_types` ids and
    /// `base_str_len` bytes of strings.
    fn split(base_types: u32, base_str_len: u32) -> Self {
        Self {
            types: Vec::new(),
            strings: Vec::new(),
            str_base: base_str_len,
            next_id: base_types,
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        // Offset 0 is the empty name, in a base and in split BTF alike.
        if s.is_empty() {
            return 0;
        }
        let off = self.str_base + self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn raw(&mut self, name: &str, kind: u32, flag: bool, vlen: u32, st: u32, extra: &[u32]) -> u32 {
        let name = self.str(name);
        let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
        for word in [name, info, st].iter().chain(extra) {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        self.raw(name, INT, false, 0, size, &[size * 8])
    }

    fn link(&mut self, kind: u32, name: &str, to: u32) -> u32 {
        self.raw(name, kind, false, 0, to, &[])
    }

    /// Members are (name, type, bit offset, bitfield size).
    fn composite(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let flag = members.iter().any(|m| m.3 != 0);
        let mut extra = Vec::new();
        for (member, ty, bits, bitfield) in members {
            let offset = if flag { bitfield << 24 | bits } else { *bits };
            extra.extend([self.str(member), *ty, offset]);
        }
        self.raw(name, kind, flag, members.len() as u32, size, &extra)
    }

    fn proto(&mut self, params: &[u32]) -> u32 {
        let extra: Vec<u32> = params.iter().flat_map(|&t| [0, t]).collect();
        self.raw("", FUNC_PROTO, false, params.len() as u32, 0, &extra)
    }

    fn blob(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let type_len = self.types.len() as u32;
        for word in [24, 0, type_len, type_len, self.strings.len() as u32] {
            out.extend_from_slice(&u32::to_le_bytes(word));
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A miniature kernel: `kvm_vcpu { kvm *; u32 vcpu_id; volatile arch }`,
/// `kvm_vcpu_arch` with `l1_tsc_offset` inside an anonymous union, a const
/// field, a bitfield, and both tracepoint shapes (`kvm_entry(vcpu, bool)`,
/// the older `kvm_exit(exit_reason, vcpu, isa)`).
fn tiny_kernel(b: &mut Builder, omit: &str) {
    let u32_ = b.int("unsigned int", 4);
    let u64_raw = b.int("long long unsigned int", 8);
    let u64_ = b.link(TYPEDEF, "u64", u64_raw);
    let const_u64 = b.link(CONST, "", u64_);
    let union = b.composite(
        UNION,
        "",
        8,
        &[("l1_tsc_offset", u64_, 0, 0), ("alias", u32_, 0, 0)],
    );
    let mut arch_members = vec![
        ("regs", u64_, 0, 0),
        ("", union, 64, 0),
        ("mode", u32_, 128, 3),
        ("tsc_offset", u64_, 192, 0),
        ("l1_tsc_scaling_ratio", const_u64, 256, 0),
        ("tsc_scaling_ratio", u64_, 320, 0),
    ];
    arch_members.retain(|m| omit.is_empty() || m.0 != omit);
    let arch = b.composite(STRUCT, "kvm_vcpu_arch", 48, &arch_members);
    let volatile_arch = b.link(VOLATILE, "", arch);
    let void_ptr = b.link(PTR, "", 0);
    let vcpu = b.composite(
        STRUCT,
        "kvm_vcpu",
        64,
        &[
            ("kvm", void_ptr, 0, 0),
            ("vcpu_id", u32_, 64, 0),
            ("arch", volatile_arch, 128, 0),
        ],
    );
    // `struct kvm_vcpu __rcu *`: the pointee is reached through a tag.
    let tagged = b.link(TYPE_TAG, "rcu", vcpu);
    let ptr_to_vcpu = b.link(PTR, "", tagged);
    let bool_ = b.int("_Bool", 1);
    let entry = b.proto(&[void_ptr, ptr_to_vcpu, bool_]);
    let entry_ptr = b.link(PTR, "", entry);
    b.link(TYPEDEF, "btf_trace_kvm_entry", entry_ptr);
    let exit = b.proto(&[void_ptr, u32_, ptr_to_vcpu, u32_]);
    let exit_ptr = b.link(PTR, "", exit);
    b.link(TYPEDEF, "btf_trace_kvm_exit", exit_ptr);
}

fn tiny_blob() -> Vec<u8> {
    let mut b = Builder::new();
    tiny_kernel(&mut b, "");
    b.blob()
}

const TINY_LAYOUT: KvmLayout = KvmLayout {
    vcpu_id: 8,
    arch: 16,
    l1_tsc_offset: 16 + 8,
    tsc_offset: 16 + 24,
    l1_tsc_scaling_ratio: 16 + 32,
    tsc_scaling_ratio: 16 + 40,
    kvm_entry: TracepointArg { index: 0, count: 2 },
    kvm_exit: TracepointArg { index: 1, count: 3 },
};

#[test]
fn resolves_the_tiny_kernel() {
    let btf = Btf::parse(&tiny_blob()).unwrap();
    assert_eq!(KvmLayout::resolve(&btf).unwrap(), TINY_LAYOUT);
}

#[test]
fn reads_names_kinds_and_bitfields() {
    let btf = Btf::parse(&tiny_blob()).unwrap();
    let arch = btf.find(Kind::Struct, "kvm_vcpu_arch").unwrap();
    let ty = btf.get(arch).unwrap();
    assert!(ty.kind_flag, "a struct with a bitfield sets kind_flag");
    assert_eq!(btf.members(ty).len(), 6);
    let (bits, mode) = btf.member(arch, "mode").unwrap().unwrap();
    assert_eq!((bits, mode.bitfield_size), (128, 3));
    let (bits, _) = btf.member(arch, "alias").unwrap().unwrap();
    assert_eq!(bits, 64, "anonymous union member offsets add up");
    assert_eq!(btf.member(arch, "nope").unwrap(), None);
    let u64_ = btf.find(Kind::Typedef, "u64").unwrap();
    assert_eq!(btf.size_of(u64_).unwrap(), Some(8));
    assert_eq!(btf.get(0).unwrap().kind, Kind::Void);
    assert!(matches!(
        btf.get(btf.len() as u32),
        Err(BtfError::BadTypeId(_))
    ));
}

#[test]
fn a_missing_field_is_an_error_naming_it() {
    for field in ["tsc_offset", "tsc_scaling_ratio", "l1_tsc_scaling_ratio"] {
        let mut b = Builder::new();
        tiny_kernel(&mut b, field);
        let err = KvmLayout::resolve(&Btf::parse(&b.blob()).unwrap()).unwrap_err();
        assert!(
            matches!(&err, BtfError::NoField { ty, field: f } if ty == "kvm_vcpu_arch" && f == field),
            "{err}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn a_missing_struct_or_tracepoint_is_named() {
    let btf = Btf::parse(&Builder::new().blob()).unwrap();
    let err = KvmLayout::resolve(&btf).unwrap_err();
    assert_eq!(err.to_string(), "no STRUCT named \"kvm_vcpu\" in BTF");
    let mut b = Builder::new();
    let u32_ = b.int("unsigned int", 4);
    let vcpu = b.composite(STRUCT, "kvm_vcpu", 4, &[("vcpu_id", u32_, 0, 0)]);
    let void_ptr = b.link(PTR, "", 0);
    let proto = b.proto(&[void_ptr, u32_]);
    let ptr = b.link(PTR, "", proto);
    b.link(TYPEDEF, "btf_trace_kvm_entry", ptr);
    let btf = Btf::parse(&b.blob()).unwrap();
    let err = kvm::vcpu_arg(&btf, "kvm_entry", vcpu).unwrap_err();
    assert_eq!(
        err.to_string(),
        "btf_trace_kvm_entry has no struct kvm_vcpu * argument"
    );
    let err = kvm::vcpu_arg(&btf, "kvm_exit", vcpu).unwrap_err();
    assert!(err.to_string().contains("btf_trace_kvm_exit"), "{err}");
}

#[test]
fn a_bitfield_has_no_byte_offset() {
    let mut b = Builder::new();
    let u32_ = b.int("unsigned int", 4);
    b.composite(
        STRUCT,
        "kvm_vcpu",
        8,
        &[("cpu", u32_, 0, 0), ("vcpu_id", u32_, 33, 4)],
    );
    let err = KvmLayout::resolve(&Btf::parse(&b.blob()).unwrap()).unwrap_err();
    assert!(
        matches!(err, BtfError::NotByteAligned { bits: 33, .. }),
        "{err}"
    );
}

#[test]
fn split_btf_continues_the_base_ids_and_strings() {
    let mut base = Builder::new();
    base.int("int", 4);
    let base_blob = base.blob();
    let base_btf = Btf::parse(&base_blob).unwrap();
    assert_eq!(base_btf.len(), 2);
    let mut module = Builder::split(2, base.strings.len() as u32);
    tiny_kernel(&mut module, "");
    let btf = Btf::parse_split(&module.blob(), &base_btf).unwrap();
    assert_eq!(btf.len(), 2 + (module.next_id - 2) as usize);
    assert_eq!(btf.name(btf.get(1).unwrap()).unwrap(), "int");
    assert_eq!(KvmLayout::resolve(&btf).unwrap(), TINY_LAYOUT);
}

#[test]
fn malformed_blobs_are_errors() {
    let good = tiny_blob();
    assert!(matches!(Btf::parse(&[]), Err(BtfError::Truncated { .. })));
    assert!(matches!(
        Btf::parse(&[0x12, 0x34]),
        Err(BtfError::BadMagic(0x3412))
    ));
    assert!(matches!(
        Btf::parse(&[0xeb, 0x9f, 0, 1]),
        Err(BtfError::BigEndian)
    ));
    let mut version = good.clone();
    version[2] = 2;
    assert!(matches!(Btf::parse(&version), Err(BtfError::Version(2))));
    assert!(matches!(
        Btf::parse(&good[..good.len() - 1]),
        Err(BtfError::Truncated { .. })
    ));
    let mut kind = good.clone();
    kind[24 + 7] = 31; // first type's info high byte: kind 31
    assert!(matches!(
        Btf::parse(&kind),
        Err(BtfError::UnknownKind { id: 1, kind: 31 })
    ));
    let mut b = Builder::new();
    b.link(TYPEDEF, "loop", 1);
    // A struct made of 50 anonymous copies of itself.
    let nest: Vec<_> = (0..50).map(|_| ("", 2, 0, 0)).collect();
    b.composite(STRUCT, "nest", 4, &nest);
    let btf = Btf::parse(&b.blob()).unwrap();
    assert!(matches!(btf.skip(1, true), Err(BtfError::TooDeep(_))));
    assert!(matches!(btf.member(2, "x"), Err(BtfError::TooDeep(_))));
    assert!(matches!(
        btf.string(10_000),
        Err(BtfError::BadString(10_000))
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(btf) = Btf::parse(&data) {
            let _ = KvmLayout::resolve(&btf);
        }
    }

    #[test]
    fn arbitrary_sections_behind_a_valid_header_never_panic(
        types in proptest::collection::vec(any::<u32>(), 0..96),
        strings in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut data = vec![0x9f, 0xeb, 1, 0];
        let type_len = types.len() as u32 * 4;
        for word in [24, 0, type_len, type_len, strings.len() as u32] {
            data.extend_from_slice(&u32::to_le_bytes(word));
        }
        data.extend(types.iter().flat_map(|w| w.to_le_bytes()));
        data.extend_from_slice(&strings);
        if let Ok(btf) = Btf::parse(&data) {
            let _ = KvmLayout::resolve(&btf);
            for id in 0..btf.len() as u32 {
                let _ = btf.skip(id, true);
                let _ = btf.size_of(id);
                let _ = btf.member(id, "x");
            }
        }
    }

    #[test]
    fn corrupted_tiny_kernels_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut data = tiny_blob();
        for (at, value) in flips {
            let i = at.index(data.len());
            data[i] = value;
        }
        if let Ok(btf) = Btf::parse(&data) {
            let _ = KvmLayout::resolve(&btf);
        }
    }
}
