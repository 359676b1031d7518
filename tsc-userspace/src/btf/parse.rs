//! The BTF format: header, type section and string section, as the kernel
//! documents it (Documentation/bpf/btf.rst). Every offset and length read
//! from the data is checked: arbitrary bytes give an error, never a panic.

use std::path::Path;

use super::{BtfError, SYS_BTF};

/// How deep typedef/modifier chains and anonymous-member nesting may go.
const MAX_DEPTH: u32 = 64;
/// How many members one [`Btf::member`] search may visit, anonymous
/// nesting included (`struct kvm_vcpu_arch` alone has about 140).
const MEMBER_BUDGET: u32 = 100_000;
const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;

/// A BTF type kind. [`Kind::Void`] is type id 0 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    const ALL: [Kind; 20] = [
        Kind::Void,
        Kind::Int,
        Kind::Ptr,
        Kind::Array,
        Kind::Struct,
        Kind::Union,
        Kind::Enum,
        Kind::Fwd,
        Kind::Typedef,
        Kind::Volatile,
        Kind::Const,
        Kind::Restrict,
        Kind::Func,
        Kind::FuncProto,
        Kind::Var,
        Kind::Datasec,
        Kind::Float,
        Kind::DeclTag,
        Kind::TypeTag,
        Kind::Enum64,
    ];

    /// The kind from its number in `btf_type.info` (bits 24-28).
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => None, // BTF_KIND_UNKN: never a real type in the section
            n => Self::ALL.get(n as usize).copied(),
        }
    }

    /// The kind's name as bpftool prints it (`STRUCT`, `FUNC_PROTO`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Void => "VOID",
            Kind::Int => "INT",
            Kind::Ptr => "PTR",
            Kind::Array => "ARRAY",
            Kind::Struct => "STRUCT",
            Kind::Union => "UNION",
            Kind::Enum => "ENUM",
            Kind::Fwd => "FWD",
            Kind::Typedef => "TYPEDEF",
            Kind::Volatile => "VOLATILE",
            Kind::Const => "CONST",
            Kind::Restrict => "RESTRICT",
            Kind::Func => "FUNC",
            Kind::FuncProto => "FUNC_PROTO",
            Kind::Var => "VAR",
            Kind::Datasec => "DATASEC",
            Kind::Float => "FLOAT",
            Kind::DeclTag => "DECL_TAG",
            Kind::TypeTag => "TYPE_TAG",
            Kind::Enum64 => "ENUM64",
        }
    }

    /// Qualifiers that do not change layout: skipped when resolving.
    fn is_modifier(self) -> bool {
        matches!(
            self,
            Kind::Const | Kind::Volatile | Kind::Restrict | Kind::TypeTag
        )
    }

    /// Bytes of kind-specific data after the 12-byte `btf_type`.
    fn trailing_len(self, vlen: usize) -> usize {
        match self {
            Kind::Int | Kind::Var | Kind::DeclTag => 4,
            Kind::Array => 12,
            Kind::Struct | Kind::Union | Kind::Datasec | Kind::Enum64 => 12 * vlen,
            Kind::Enum | Kind::FuncProto => 8 * vlen,
            _ => 0,
        }
    }
}

/// One type: the fixed part of `struct btf_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Type {
    /// Offset of the name in the string section (0: anonymous).
    pub name_off: u32,
    /// The kind.
    pub kind: Kind,
    /// `kind_flag`: for STRUCT/UNION, members carry bitfield sizes.
    pub kind_flag: bool,
    /// Number of members, params, enumerators...
    pub vlen: u16,
    /// Size in bytes (INT, STRUCT, UNION, ENUM...) or the referred type id
    /// (PTR, TYPEDEF, modifiers, FUNC, VAR...).
    pub size_or_type: u32,
    /// Index of the first [`Member`] (STRUCT, UNION, FUNC_PROTO).
    members_start: u32,
}

/// A STRUCT/UNION member or a FUNC_PROTO parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Offset of the name (0: anonymous member or unnamed parameter).
    pub name_off: u32,
    /// The member's or parameter's type.
    pub type_id: u32,
    /// Offset from the start of the struct, in bits (0 for parameters).
    pub bit_offset: u32,
    /// Width of a bitfield, 0 when the member is not one.
    pub bitfield_size: u8,
}

/// A parsed BTF blob (or a base plus a split blob on top of it).
#[derive(Clone, Debug)]
pub struct Btf {
    types: Vec<Type>,
    members: Vec<Member>,
    strings: Vec<u8>,
}

const VOID: Type = Type {
    name_off: 0,
    kind: Kind::Void,
    kind_flag: false,
    vlen: 0,
    size_or_type: 0,
    members_start: 0,
};

impl Btf {
    /// Parses a self-contained BTF blob such as `/sys/kernel/btf/vmlinux`.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let empty = Self {
            types: vec![VOID],
            members: Vec::new(),
            strings: Vec::new(),
        };
        empty.extend(data)
    }

    /// Parses split BTF (a module's, e.g. `/sys/kernel/btf/kvm`) on top of
    /// its base: its type ids and string offsets continue the base's.
    pub fn parse_split(data: &[u8], base: &Btf) -> Result<Self, BtfError> {
        base.clone().extend(data)
    }

    /// Reads and parses a file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        Self::parse(&read(path.as_ref())?)
    }

    /// The running kernel's BTF: vmlinux, plus the `kvm` module's split BTF
    /// when KVM is a module (`/sys/kernel/btf/kvm` exists).
    pub fn running_kernel() -> Result<Self, BtfError> {
        let root = Path::new(SYS_BTF);
        let vmlinux = Self::from_file(root.join("vmlinux"))?;
        let module = root.join("kvm");
        if !module.exists() {
            return Ok(vmlinux);
        }
        tracing::debug!("KVM is a module: adding {}", module.display());
        Self::parse_split(&read(&module)?, &vmlinux)
    }

    fn extend(mut self, data: &[u8]) -> Result<Self, BtfError> {
        let header = Header::parse(data)?;
        let strings = header.section(data, header.str_off, header.str_len, "string section")?;
        let types = header.section(data, header.type_off, header.type_len, "type section")?;
        self.strings.extend_from_slice(strings);
        let mut at = 0;
        while at < types.len() {
            at = self.parse_type(types, at)?;
        }
        Ok(self)
    }

    /// Parses the type at `at` of the type section; returns where the next starts.
    fn parse_type(&mut self, section: &[u8], at: usize) -> Result<usize, BtfError> {
        let id = u32::try_from(self.types.len()).map_err(|_| BtfError::BadTypeId(u32::MAX))?;
        let [name_off, info, size_or_type] = words::<3>(section, at, "type")?;
        let raw_kind = (info >> 24) & 0x1f;
        let kind = Kind::from_raw(raw_kind).ok_or(BtfError::UnknownKind { id, kind: raw_kind })?;
        let vlen = (info & 0xffff) as u16;
        let kind_flag = info >> 31 == 1;
        let extra = at + TYPE_LEN;
        let next = extra + kind.trailing_len(usize::from(vlen));
        if next > section.len() {
            return Err(BtfError::Truncated {
                what: "type data",
                offset: at,
            });
        }
        let members_start = u32::try_from(self.members.len()).map_err(|_| BtfError::Truncated {
            what: "member table (over 2^32 members)",
            offset: at,
        })?;
        match kind {
            Kind::Struct | Kind::Union => self.parse_members(section, extra, vlen, kind_flag)?,
            Kind::FuncProto => self.parse_params(section, extra, vlen)?,
            _ => {}
        }
        self.types.push(Type {
            name_off,
            kind,
            kind_flag,
            vlen,
            size_or_type,
            members_start,
        });
        Ok(next)
    }

    fn parse_members(
        &mut self,
        section: &[u8],
        at: usize,
        vlen: u16,
        bitfields: bool,
    ) -> Result<(), BtfError> {
        for i in 0..usize::from(vlen) {
            let [name_off, type_id, offset] = words::<3>(section, at + i * 12, "member")?;
            let (bit_offset, bitfield_size) = if bitfields {
                (offset & 0x00ff_ffff, (offset >> 24) as u8)
            } else {
                (offset, 0)
            };
            self.members.push(Member {
                name_off,
                type_id,
                bit_offset,
                bitfield_size,
            });
        }
        Ok(())
    }

    fn parse_params(&mut self, section: &[u8], at: usize, vlen: u16) -> Result<(), BtfError> {
        for i in 0..usize::from(vlen) {
            let [name_off, type_id] = words::<2>(section, at + i * 8, "parameter")?;
            self.members.push(Member {
                name_off,
                type_id,
                bit_offset: 0,
                bitfield_size: 0,
            });
        }
        Ok(())
    }

    /// Number of type ids, including 0 (void).
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Never true: id 0 (void) always exists.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The type with this id.
    pub fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types.get(id as usize).ok_or(BtfError::BadTypeId(id))
    }

    /// The NUL-terminated string at `offset` of the string section.
    pub fn string(&self, offset: u32) -> Result<&str, BtfError> {
        let tail = self
            .strings
            .get(offset as usize..)
            .ok_or(BtfError::BadString(offset))?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or(BtfError::BadString(offset))?;
        std::str::from_utf8(&tail[..end]).map_err(|_| BtfError::BadString(offset))
    }

    /// A type's name ("" when anonymous).
    pub fn name(&self, ty: &Type) -> Result<&str, BtfError> {
        self.string(ty.name_off)
    }

    /// Members of a STRUCT/UNION, parameters of a FUNC_PROTO, else empty.
    pub fn members(&self, ty: &Type) -> &[Member] {
        if !matches!(ty.kind, Kind::Struct | Kind::Union | Kind::FuncProto) {
            return &[];
        }
        let start = ty.members_start as usize;
        self.members
            .get(start..start + usize::from(ty.vlen))
            .unwrap_or(&[])
    }

    /// The first type of `kind` named `name`.
    pub fn find(&self, kind: Kind, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| t.kind == kind && self.string(t.name_off).is_ok_and(|n| n == name))
            .map(|id| id as u32)
            .ok_or_else(|| BtfError::NoType {
                kind: kind.name(),
                name: name.to_string(),
            })
    }

    /// Follows CONST/VOLATILE/RESTRICT/TYPE_TAG and, if `typedefs`, TYPEDEF
    /// links to the type they qualify.
    pub fn skip(&self, mut id: u32, typedefs: bool) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            let ty = self.get(id)?;
            if !(ty.kind.is_modifier() || typedefs && ty.kind == Kind::Typedef) {
                return Ok(id);
            }
            id = ty.size_or_type;
        }
        Err(BtfError::TooDeep(id))
    }

    /// Size in bytes of a type, through typedefs and modifiers (None for
    /// kinds without one, e.g. FUNC_PROTO or void).
    pub fn size_of(&self, id: u32) -> Result<Option<u32>, BtfError> {
        let ty = self.get(self.skip(id, true)?)?;
        Ok(match ty.kind {
            Kind::Int | Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Float => {
                Some(ty.size_or_type)
            }
            Kind::Ptr => Some(8),
            _ => None,
        })
    }

    /// Finds member `name` of the STRUCT/UNION `id`, looking inside
    /// anonymous struct/union members too; the bit offset is from the start
    /// of `id`.
    pub fn member(&self, id: u32, name: &str) -> Result<Option<(u32, Member)>, BtfError> {
        let mut budget = MEMBER_BUDGET;
        self.member_within(id, name, 0, &mut budget)
    }

    fn member_within(
        &self,
        id: u32,
        name: &str,
        depth: u32,
        budget: &mut u32,
    ) -> Result<Option<(u32, Member)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep(id));
        }
        let ty = self.get(self.skip(id, true)?)?;
        if ty.kind == Kind::FuncProto {
            return Ok(None);
        }
        for member in self.members(ty) {
            // Anonymous members that nest each other many times over would
            // otherwise make this search exponential.
            *budget = budget.checked_sub(1).ok_or(BtfError::TooDeep(id))?;
            let member_name = self.string(member.name_off)?;
            if member_name == name {
                return Ok(Some((member.bit_offset, *member)));
            }
            if member_name.is_empty() {
                let nested = self.member_within(member.type_id, name, depth + 1, budget)?;
                if let Some((bits, found)) = nested {
                    let bits = bits
                        .checked_add(member.bit_offset)
                        .ok_or(BtfError::TooDeep(id))?;
                    return Ok(Some((bits, found)));
                }
            }
        }
        Ok(None)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BtfError> {
    std::fs::read(path).map_err(|source| BtfError::Io {
        path: path.to_owned(),
        source,
    })
}

/// `N` little-endian u32 words at `at`.
fn words<const N: usize>(data: &[u8], at: usize, what: &'static str) -> Result<[u32; N], BtfError> {
    let bytes = at
        .checked_add(4 * N)
        .and_then(|end| data.get(at..end))
        .ok_or(BtfError::Truncated { what, offset: at })?;
    let mut out = [0; N];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    Ok(out)
}

/// `struct btf_header`.
struct Header {
    len: usize,
    type_off: u32,
    type_len: u32,
    str_off: u32,
    str_len: u32,
}

impl Header {
    fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic_bytes = data.get(..2).ok_or(BtfError::Truncated {
            what: "header",
            offset: 0,
        })?;
        let magic = u16::from_le_bytes([magic_bytes[0], magic_bytes[1]]);
        if magic == MAGIC.swap_bytes() {
            return Err(BtfError::BigEndian);
        }
        if magic != MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        let [first, hdr_len, type_off, type_len, str_off, str_len] = words::<6>(data, 0, "header")?;
        let version = (first >> 16) as u8;
        if version != 1 {
            return Err(BtfError::Version(version));
        }
        let len = hdr_len as usize;
        if len < HEADER_LEN || len > data.len() {
            return Err(BtfError::Truncated {
                what: "header",
                offset: 0,
            });
        }
        Ok(Self {
            len,
            type_off,
            type_len,
            str_off,
            str_len,
        })
    }

    /// A section, which starts `off` bytes after the header.
    fn section<'a>(
        &self,
        data: &'a [u8],
        off: u32,
        len: u32,
        what: &'static str,
    ) -> Result<&'a [u8], BtfError> {
        let start = self.len.checked_add(off as usize);
        start
            .and_then(|s| Some(s..s.checked_add(len as usize)?))
            .and_then(|range| data.get(range))
            .ok_or(BtfError::Truncated {
                what,
                offset: start.unwrap_or(usize::MAX),
            })
    }
}
