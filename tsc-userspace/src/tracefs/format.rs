//! Event formats: the `events/SYSTEM/NAME/format` files that say where each
//! field of an event's payload is, and a [`FormatSet`] to find an event's
//! format by the id in its `common_type` field.
//!
//! Nothing here knows any particular event: every field is described by its
//! declaration (`type name[len]`), offset, size and signedness, and the
//! declaration alone decides how it decodes ([`FieldKind`]).

/// Errors parsing a format file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A `field:` line is not `field:DECL; offset:N; size:N; signed:N;`.
    #[error("malformed field line {line:?}: {what}")]
    Field {
        /// The line.
        line: String,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The file has no `name:` or `ID:` line, or an ID that is not a u16.
    #[error("format of {0}: no valid name or ID")]
    Header(String),
    /// A field lies outside any possible record.
    #[error("format of {event}: field {field} is out of range")]
    FieldRange {
        /// `system:name` of the event.
        event: String,
        /// The field.
        field: String,
    },
    /// Two formats disagree on where `common_type` is.
    #[error("format of {0}: common_type differs from the other events' formats")]
    CommonType(String),
    /// A format lacks a `common_type` field.
    #[error("format of {0}: no common_type field")]
    NoCommonType(String),
}

/// One `field:` line, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDecl {
    /// Field name.
    pub name: String,
    /// Type as declared, without the name and array suffix
    /// (`unsigned short`, `__data_loc char[]`, `const char *`).
    pub type_name: String,
    /// Array length: `Some(0)` for `name[]`, `None` when not an array.
    pub array_len: Option<usize>,
    /// Offset in the payload.
    pub offset: usize,
    /// Size in the payload (4 for `__data_loc`: the location word).
    pub size: usize,
    /// Whether the kernel calls it signed.
    pub signed: bool,
}

/// Parses one line of a format file or `header_page`. `None` when the line
/// is not a `field:` line.
pub fn parse_field_line(line: &str) -> Option<Result<FieldDecl, FormatError>> {
    let rest = line.trim_start().strip_prefix("field:")?;
    let err = |what| FormatError::Field {
        line: line.trim().to_string(),
        what,
    };
    let mut parts = rest.split(';').map(str::trim);
    let decl = parts.next().unwrap_or_default();
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in parts {
        let number = |p: &str| p.parse::<usize>().map_err(|_| err("not a number"));
        if let Some(v) = part.strip_prefix("offset:") {
            offset = Some(match number(v) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            });
        } else if let Some(v) = part.strip_prefix("size:") {
            size = Some(match number(v) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            });
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v == "1";
        }
    }
    let (Some(offset), Some(size)) = (offset, size) else {
        return Some(Err(err("no offset or size")));
    };
    Some(split_decl(decl).ok_or_else(|| err("no field name")).map(
        |(type_name, name, array_len)| FieldDecl {
            name,
            type_name,
            array_len,
            offset,
            size,
            signed,
        },
    ))
}

/// `unsigned char prev_comm[16]` -> (`unsigned char`, `prev_comm`, Some(16)).
fn split_decl(decl: &str) -> Option<(String, String, Option<usize>)> {
    let decl = decl.trim();
    let (decl, array_len) = match decl.strip_suffix(']') {
        Some(open) => {
            let at = open.rfind('[')?;
            // A length the kernel printed as a symbol counts as unknown (0):
            // the size then says how much there is.
            let len = open[at + 1..].trim().parse().unwrap_or(0);
            (open[..at].trim_end(), Some(len))
        }
        None => (decl, None),
    };
    // The separator may be any whitespace, some of it wider than a byte
    // (U+00A0 is two): step over the character found, not one byte.
    let (at, sep) = decl
        .char_indices()
        .rev()
        .find(|&(_, c)| c.is_whitespace() || c == '*')?;
    let at = at + sep.len_utf8();
    let name = decl[at..].trim();
    let type_name = decl[..at].trim();
    if name.is_empty() || type_name.is_empty() {
        return None;
    }
    Some((type_name.to_string(), name.to_string(), array_len))
}

/// Where a string's or array's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// At the field's offset, `size` bytes.
    Fixed,
    /// `__data_loc`: a u32 at the field's offset holds `offset | len << 16`,
    /// the offset from the start of the payload.
    DataLoc,
    /// `__rel_loc`: like `DataLoc`, the offset counted from the end of the
    /// location word.
    RelLoc,
    /// `name[]` of size 0: from the field's offset to the end of the record.
    Trailing,
}

/// How a field decodes; decided by its declaration alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// An integer of 1, 2, 4 or 8 bytes.
    Int {
        /// Sign-extend it.
        signed: bool,
    },
    /// A pointer (shown in hex).
    Pointer,
    /// A `char` array: text up to the first NUL.
    Str(Location),
    /// An array of integers.
    Array {
        /// Where the elements are.
        location: Location,
        /// Bytes per element (1, 2, 4 or 8).
        elem_size: u8,
        /// Elements are signed.
        signed: bool,
    },
    /// Anything else (a struct, an odd size): raw bytes.
    Bytes,
}

/// One field of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The declaration as the format file gives it.
    pub decl: FieldDecl,
    /// How it decodes.
    pub kind: FieldKind,
}

impl Field {
    /// Classifies a declaration.
    pub fn new(decl: FieldDecl) -> Self {
        let kind = classify(&decl);
        Self { decl, kind }
    }

    /// The field's name.
    pub fn name(&self) -> &str {
        &self.decl.name
    }
}

fn classify(d: &FieldDecl) -> FieldKind {
    let dynamic = [
        ("__data_loc", Location::DataLoc),
        ("__rel_loc", Location::RelLoc),
    ];
    for (prefix, location) in dynamic {
        if let Some(elem) = d.type_name.strip_prefix(prefix) {
            let elem = elem.trim().trim_end_matches("[]").trim();
            return element_kind(elem, elem_size(elem), d.signed, location);
        }
    }
    match d.array_len {
        Some(0) if d.size == 0 => {
            let elem = d.type_name.as_str();
            element_kind(elem, elem_size(elem), d.signed, Location::Trailing)
        }
        Some(len) => {
            let elem = d.type_name.as_str();
            let size = if len > 0 && d.size.is_multiple_of(len) {
                d.size / len
            } else {
                elem_size(elem)
            };
            element_kind(elem, size, d.signed, Location::Fixed)
        }
        None if d.type_name.contains('*') && matches!(d.size, 4 | 8) => FieldKind::Pointer,
        None if matches!(d.size, 1 | 2 | 4 | 8) => FieldKind::Int { signed: d.signed },
        None => FieldKind::Bytes,
    }
}

fn element_kind(elem: &str, size: usize, signed: bool, location: Location) -> FieldKind {
    if is_char(elem) {
        return FieldKind::Str(location);
    }
    match u8::try_from(size) {
        Ok(elem_size @ (1 | 2 | 4 | 8)) => FieldKind::Array {
            location,
            elem_size,
            signed,
        },
        _ if location == Location::Fixed => FieldKind::Bytes,
        _ => FieldKind::Array {
            location,
            elem_size: 1,
            signed: false,
        },
    }
}

fn is_char(elem: &str) -> bool {
    matches!(
        elem.trim_start_matches("const ").trim(),
        "char" | "signed char"
    )
}

/// Element size of a dynamic or trailing array, which the format does not
/// give: from the element type's name (64-bit kernel), 1 when unknown.
fn elem_size(elem: &str) -> usize {
    let elem = elem.trim_start_matches("const ").trim();
    if elem.contains('*') {
        return 8;
    }
    match elem {
        "short" | "unsigned short" | "u16" | "s16" | "__u16" | "__s16" | "__le16" | "__be16" => 2,
        "int" | "unsigned int" | "unsigned" | "u32" | "s32" | "__u32" | "__s32" | "pid_t"
        | "__le32" | "__be32" => 4,
        "long" | "unsigned long" | "long long" | "unsigned long long" | "u64" | "s64" | "__u64"
        | "__s64" | "size_t" | "__le64" | "__be64" => 8,
        _ => 1,
    }
}

/// One event's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    /// Event system (the directory under `events/`).
    pub system: String,
    /// Event name.
    pub name: String,
    /// The id its records carry in `common_type`.
    pub id: u16,
    /// All fields in order, common fields (`common_*`) first.
    pub fields: Vec<Field>,
    /// The `print fmt:` line, kept for tools that want it.
    pub print_fmt: String,
    /// Where the fields every event asks for are, found once at parse
    /// time: every record of the format would otherwise search `fields`
    /// by name for them.
    index: FieldIndex,
}

/// Indices into [`EventFormat::fields`] of the fields decoding asks for by
/// name, resolved once per format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldIndex {
    /// `common_pid`.
    pid: Option<usize>,
    /// Fields not named `common_*`, in order.
    own: Vec<usize>,
    /// `(pid, comm)` field pairs naming a task, in
    /// [`TASK_PAIRS`] order (see [`Event::named_tasks`](super::Event::named_tasks)).
    tasks: Vec<(usize, usize)>,
}

/// Field pairs that name a task with its command name: `X_pid`/`X_comm`
/// (`prev_`, `next_`, `child_`), `pid`/`comm` and `pid`/`newcomm`.
const TASK_PAIRS: [(&str, &str); 5] = [
    ("prev_pid", "prev_comm"),
    ("next_pid", "next_comm"),
    ("child_pid", "child_comm"),
    ("pid", "comm"),
    ("pid", "newcomm"),
];

impl FieldIndex {
    fn of(fields: &[Field]) -> Self {
        let find = |name: &str| fields.iter().position(|f| f.decl.name == name);
        Self {
            pid: find("common_pid"),
            own: (0..fields.len())
                .filter(|&i| !fields[i].decl.name.starts_with("common_"))
                .collect(),
            tasks: TASK_PAIRS
                .iter()
                .filter_map(|(pid, comm)| Some((find(pid)?, find(comm)?)))
                .collect(),
        }
    }
}

impl EventFormat {
    /// Parses a `format` file of an event of `system`.
    pub fn parse(system: &str, text: &str) -> Result<Self, FormatError> {
        let (mut name, mut id, mut fields, mut print_fmt) = (None, None, Vec::new(), String::new());
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("name:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("ID:") {
                id = v.trim().parse::<u16>().ok();
            } else if let Some(v) = line.strip_prefix("print fmt:") {
                print_fmt = v.trim().to_string();
            } else if let Some(decl) = parse_field_line(line) {
                fields.push(Field::new(decl?));
            }
        }
        let (Some(name), Some(id)) = (name, id) else {
            return Err(FormatError::Header(system.to_string()));
        };
        let format = Self {
            system: system.to_string(),
            name,
            id,
            index: FieldIndex::of(&fields),
            fields,
            print_fmt,
        };
        format.check_ranges()?;
        Ok(format)
    }

    /// Records are at most a page: a field that could not fit in one is a
    /// corrupt format, refused here so decoding never has to wonder.
    fn check_ranges(&self) -> Result<(), FormatError> {
        const MAX: usize = 1 << 20;
        for f in &self.fields {
            if f.decl.offset > MAX || f.decl.size > MAX {
                return Err(FormatError::FieldRange {
                    event: format!("{}:{}", self.system, self.name),
                    field: f.decl.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.decl.name == name)
    }

    /// Fields that are not common ones.
    pub fn own_fields(&self) -> impl Iterator<Item = &Field> {
        self.index.own.iter().filter_map(|&i| self.fields.get(i))
    }

    /// The `common_pid` field.
    pub fn pid_field(&self) -> Option<&Field> {
        self.fields.get(self.index.pid?)
    }

    /// The `(pid, comm)` field pairs that name a task, in the order
    /// [`Event::named_tasks`](super::Event::named_tasks) yields them.
    pub fn task_fields(&self) -> impl Iterator<Item = (&Field, &Field)> {
        self.index
            .tasks
            .iter()
            .filter_map(|&(p, c)| Some((self.fields.get(p)?, self.fields.get(c)?)))
    }
}

/// Formats by event id, for decoding a stream of records.
#[derive(Debug, Clone, Default)]
pub struct FormatSet {
    /// Indexed by id: every event of a trace looks its format up, and a
    /// slot index is several times cheaper than hashing (ids are small:
    /// the kernel numbers events from a few hundred up; at most 2^16 slots).
    by_id: Vec<Option<Box<EventFormat>>>,
    count: usize,
    /// Offset and size of `common_type`, the same in every format.
    common_type: Option<(usize, usize)>,
}

impl FormatSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a format (replacing one with the same id). Its `common_type` must
    /// sit where the other formats have it.
    pub fn insert(&mut self, format: EventFormat) -> Result<(), FormatError> {
        let event = || format!("{}:{}", format.system, format.name);
        let common = format
            .field("common_type")
            .ok_or_else(|| FormatError::NoCommonType(event()))?;
        let at = (common.decl.offset, common.decl.size);
        if !matches!(at.1, 1 | 2 | 4) {
            return Err(FormatError::NoCommonType(event()));
        }
        match self.common_type {
            Some(known) if known != at => return Err(FormatError::CommonType(event())),
            _ => self.common_type = Some(at),
        }
        let slot = usize::from(format.id);
        if self.by_id.len() <= slot {
            self.by_id.resize_with(slot + 1, || None);
        }
        if self.by_id[slot].replace(Box::new(format)).is_none() {
            self.count += 1;
        }
        Ok(())
    }

    /// Parses a format file and adds it.
    pub fn insert_text(&mut self, system: &str, text: &str) -> Result<u16, FormatError> {
        let format = EventFormat::parse(system, text)?;
        let id = format.id;
        self.insert(format)?;
        Ok(id)
    }

    /// The format with this id.
    pub fn get(&self, id: u16) -> Option<&EventFormat> {
        self.by_id.get(usize::from(id))?.as_deref()
    }

    /// The format of `system:name`.
    pub fn find(&self, system: &str, name: &str) -> Option<&EventFormat> {
        self.iter().find(|f| f.system == system && f.name == name)
    }

    /// All formats, by id.
    pub fn iter(&self) -> impl Iterator<Item = &EventFormat> {
        self.by_id.iter().filter_map(|f| f.as_deref())
    }

    /// Number of formats.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The event id of a record payload (its `common_type`), if it has one.
    pub fn event_id(&self, data: &[u8]) -> Option<u16> {
        let (offset, size) = self.common_type?;
        let bytes = data.get(offset..offset + size)?;
        let mut le = [0u8; 4];
        le[..size].copy_from_slice(bytes);
        u16::try_from(u32::from_le_bytes(le)).ok()
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
pub(crate) mod tests;
