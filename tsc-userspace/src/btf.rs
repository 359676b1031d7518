//! Kernel struct layouts from BTF, for the `kvm_entry`/`kvm_exit` programs.
//!
//! Rust eBPF has no CO-RE relocations, so the programs are handed the byte
//! offsets of the `struct kvm_vcpu` fields they read, resolved here from the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`, plus `/sys/kernel/btf/kvm`
//! when KVM is a module). aya-obj 0.3.0 parses BTF but keeps type lookup,
//! members and strings crate-private, so this module reads the format itself:
//! [`parse`] is the format (header, type and string sections, split BTF),
//! [`kvm`] the questions the project asks of it.

pub mod kvm;
pub mod parse;

pub use kvm::{KvmLayout, TracepointArg};
pub use parse::{Btf, Kind, Member, Type};

use std::{io, path::PathBuf};

/// Where the running kernel publishes its BTF.
pub const SYS_BTF: &str = "/sys/kernel/btf";

/// Why BTF could not be read or did not answer a question.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The data ends before something it declares.
    #[error("BTF truncated: {what} at byte {offset} runs past the end")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// Not BTF at all.
    #[error("not BTF: magic {0:#06x}, expected 0xeb9f")]
    BadMagic(u16),
    /// BTF of the other byte order (this host is little-endian).
    #[error("big-endian BTF is not supported")]
    BigEndian,
    /// A BTF version this parser does not know.
    #[error("unsupported BTF version {0}")]
    Version(u8),
    /// A type kind this parser cannot size, so it cannot go on.
    #[error("type {id}: unknown BTF kind {kind}")]
    UnknownKind {
        /// The type id.
        id: u32,
        /// The kind number.
        kind: u32,
    },
    /// A reference to a type id that does not exist.
    #[error("type id {0} does not exist")]
    BadTypeId(u32),
    /// A name offset outside the string section, or not NUL-terminated UTF-8.
    #[error("bad string at offset {0}")]
    BadString(u32),
    /// A chain of typedefs/modifiers that does not end.
    #[error("type {0}: modifier or typedef chain too deep (a loop?)")]
    TooDeep(u32),
    /// No type of that kind and name.
    #[error("no {kind} named {name:?} in BTF")]
    NoType {
        /// e.g. "STRUCT".
        kind: &'static str,
        /// The name looked for.
        name: String,
    },
    /// The struct exists but lacks the field.
    #[error("struct {ty} has no field {field:?} in this kernel's BTF")]
    NoField {
        /// The struct.
        ty: String,
        /// The missing field.
        field: String,
    },
    /// The field is a bitfield or not byte-aligned, so it has no byte offset.
    #[error("{ty}.{field} is at bit {bits}, not at a byte boundary")]
    NotByteAligned {
        /// The struct.
        ty: String,
        /// The field.
        field: String,
        /// Its bit offset.
        bits: u32,
    },
    /// A type was not the kind the question needs.
    #[error("{what}: expected {expected}, found {found}")]
    WrongKind {
        /// What was looked at.
        what: String,
        /// The kind wanted.
        expected: &'static str,
        /// The kind found.
        found: &'static str,
    },
    /// A tracepoint with no `struct kvm_vcpu *` argument.
    #[error("{0} has no struct kvm_vcpu * argument")]
    NoVcpuArg(String),
}

#[cfg(test)]
mod tests;
