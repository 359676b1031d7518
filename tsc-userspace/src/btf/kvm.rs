//! What the `kvm_entry`/`kvm_exit` programs need to know about this kernel.

use super::{Btf, BtfError, Kind};

/// Where the programs find things in a `struct kvm_vcpu`, and which
/// tracepoint argument is the vCPU. Offsets are bytes from the start of
/// `struct kvm_vcpu` (for `arch` fields: `arch`'s offset plus the field's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KvmLayout {
    /// `kvm_vcpu.vcpu_id` (4 bytes).
    pub vcpu_id: u32,
    /// `kvm_vcpu.arch`, the start of `struct kvm_vcpu_arch`.
    pub arch: u32,
    /// `kvm_vcpu.arch.l1_tsc_offset` (8 bytes): the offset L1 (this host's
    /// guest) sees.
    pub l1_tsc_offset: u32,
    /// `kvm_vcpu.arch.tsc_offset` (8 bytes): the offset in use, L2's when
    /// running a nested guest.
    pub tsc_offset: u32,
    /// `kvm_vcpu.arch.l1_tsc_scaling_ratio` (8 bytes).
    pub l1_tsc_scaling_ratio: u32,
    /// `kvm_vcpu.arch.tsc_scaling_ratio` (8 bytes).
    pub tsc_scaling_ratio: u32,
    /// The vCPU argument of `kvm_entry`.
    pub kvm_entry: TracepointArg,
    /// The vCPU argument of `kvm_exit`.
    pub kvm_exit: TracepointArg,
}

/// Which argument of a BTF tracepoint is the `struct kvm_vcpu *`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TracepointArg {
    /// Index among the tracepoint's own arguments, the leading `void *`
    /// context of the `btf_trace_*` prototype excluded: the `n` a BTF
    /// tracepoint program passes to `ctx.arg(n)`.
    pub index: usize,
    /// How many arguments the tracepoint has (context excluded).
    pub count: usize,
}

/// The `kvm_vcpu_arch` fields resolved, with the size each must have.
const ARCH_FIELDS: [&str; 4] = [
    "l1_tsc_offset",
    "tsc_offset",
    "l1_tsc_scaling_ratio",
    "tsc_scaling_ratio",
];

impl KvmLayout {
    /// Resolves everything from `btf`; a missing field is an error naming it.
    pub fn resolve(btf: &Btf) -> Result<Self, BtfError> {
        let vcpu = btf.find(Kind::Struct, "kvm_vcpu")?;
        let vcpu_id = field(btf, vcpu, "kvm_vcpu", "vcpu_id", 4)?;
        let (arch, arch_type) = field_with_type(btf, vcpu, "kvm_vcpu", "arch")?;
        let arch_struct = btf.skip(arch_type, true)?;
        expect_kind(btf, arch_struct, "kvm_vcpu.arch", Kind::Struct)?;
        let mut offsets = [0u32; 4];
        for (slot, name) in offsets.iter_mut().zip(ARCH_FIELDS) {
            let within = field(btf, arch_struct, "kvm_vcpu_arch", name, 8)?;
            *slot = arch
                .checked_add(within)
                .ok_or(BtfError::TooDeep(arch_struct))?;
        }
        let [
            l1_tsc_offset,
            tsc_offset,
            l1_tsc_scaling_ratio,
            tsc_scaling_ratio,
        ] = offsets;
        Ok(Self {
            vcpu_id,
            arch,
            l1_tsc_offset,
            tsc_offset,
            l1_tsc_scaling_ratio,
            tsc_scaling_ratio,
            kvm_entry: vcpu_arg(btf, "kvm_entry", vcpu)?,
            kvm_exit: vcpu_arg(btf, "kvm_exit", vcpu)?,
        })
    }

    /// Resolves from the running kernel's BTF ([`Btf::running_kernel`]).
    pub fn running_kernel() -> Result<Self, BtfError> {
        Self::resolve(&Btf::running_kernel()?)
    }
}

/// Byte offset of `owner.name`, checking the field is `size` bytes.
fn field(btf: &Btf, owner: u32, owner_name: &str, name: &str, size: u32) -> Result<u32, BtfError> {
    let (offset, type_id) = field_with_type(btf, owner, owner_name, name)?;
    match btf.size_of(type_id)? {
        Some(found) if found == size => Ok(offset),
        found => Err(BtfError::WrongKind {
            what: format!("{owner_name}.{name}"),
            expected: if size == 8 {
                "an 8-byte field"
            } else {
                "a 4-byte field"
            },
            found: match found {
                Some(_) => "another size",
                None => "a type without a size",
            },
        }),
    }
}

/// Byte offset and type of `owner.name`.
fn field_with_type(
    btf: &Btf,
    owner: u32,
    owner_name: &str,
    name: &str,
) -> Result<(u32, u32), BtfError> {
    let (bits, member) = btf.member(owner, name)?.ok_or_else(|| BtfError::NoField {
        ty: owner_name.to_string(),
        field: name.to_string(),
    })?;
    if bits % 8 != 0 || member.bitfield_size != 0 {
        return Err(BtfError::NotByteAligned {
            ty: owner_name.to_string(),
            field: name.to_string(),
            bits,
        });
    }
    Ok((bits / 8, member.type_id))
}

fn expect_kind(btf: &Btf, id: u32, what: &str, kind: Kind) -> Result<(), BtfError> {
    let found = btf.get(id)?.kind;
    if found == kind {
        return Ok(());
    }
    Err(BtfError::WrongKind {
        what: what.to_string(),
        expected: kind.name(),
        found: found.name(),
    })
}

/// Which argument of tracepoint `name` (typedef `btf_trace_NAME`: a pointer
/// to a FUNC_PROTO whose first parameter is the `void *` context) points to
/// the struct `vcpu`.
pub fn vcpu_arg(btf: &Btf, name: &str, vcpu: u32) -> Result<TracepointArg, BtfError> {
    let typedef_name = format!("btf_trace_{name}");
    let typedef = btf.find(Kind::Typedef, &typedef_name)?;
    let ptr = btf.skip(btf.get(typedef)?.size_or_type, true)?;
    expect_kind(btf, ptr, &typedef_name, Kind::Ptr)?;
    let proto = btf.skip(btf.get(ptr)?.size_or_type, true)?;
    expect_kind(btf, proto, &typedef_name, Kind::FuncProto)?;
    let params = btf.members(btf.get(proto)?);
    let Some((ctx, args)) = params.split_first() else {
        return Err(BtfError::NoVcpuArg(typedef_name));
    };
    if !is_pointer_to(btf, ctx.type_id, |kind, _| kind == Kind::Void)? {
        return Err(BtfError::WrongKind {
            what: format!("{typedef_name} first parameter"),
            expected: "void * (the context)",
            found: btf.get(btf.skip(ctx.type_id, true)?)?.kind.name(),
        });
    }
    let vcpu_name = btf.name(btf.get(vcpu)?)?.to_string();
    for (index, arg) in args.iter().enumerate() {
        let matches = is_pointer_to(btf, arg.type_id, |kind, id| {
            id == vcpu
                || kind == Kind::Fwd
                    && btf.get(id).and_then(|t| btf.name(t)).ok() == Some(&vcpu_name)
        })?;
        if matches {
            return Ok(TracepointArg {
                index,
                count: args.len(),
            });
        }
    }
    Err(BtfError::NoVcpuArg(typedef_name))
}

/// True when `id` is (through typedefs and modifiers) a pointer whose
/// pointee (likewise resolved) satisfies `pointee(kind, id)`.
fn is_pointer_to(
    btf: &Btf,
    id: u32,
    pointee: impl Fn(Kind, u32) -> bool,
) -> Result<bool, BtfError> {
    let ptr = btf.get(btf.skip(id, true)?)?;
    if ptr.kind != Kind::Ptr {
        return Ok(false);
    }
    let target = btf.skip(ptr.size_or_type, true)?;
    Ok(pointee(btf.get(target)?.kind, target))
}
