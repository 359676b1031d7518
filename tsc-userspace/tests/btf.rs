//! The BTF resolver against this machine's kernel, checked with bpftool.
mod common;

use std::{collections::HashMap, path::Path, process::Command, sync::OnceLock};

use tsc_userspace::btf::{Btf, KvmLayout, TracepointArg};

/// One type of `bpftool btf dump ... format raw`.
#[derive(Debug, Default)]
struct RawType {
    kind: String,
    name: String,
    attrs: HashMap<String, String>,
    /// Members or parameters: name and attributes.
    members: Vec<(String, HashMap<String, String>)>,
}

/// `key=value` words after the name.
fn attrs<'a>(words: impl Iterator<Item = &'a str>) -> HashMap<String, String> {
    words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parses `[ID] KIND 'NAME' k=v...` lines and their tab-indented members.
fn parse_bpftool_raw(text: &str) -> HashMap<u32, RawType> {
    let mut types = HashMap::new();
    let mut current: Option<u32> = None;
    for line in text.lines() {
        if let Some(member) = line.strip_prefix('\t') {
            // DATASEC entries (`type_id=N offset=M size=S (VAR 'x')`) have no name first.
            let (name, rest) = quoted(member).unwrap_or((String::new(), member));
            let id = current.expect("member before any type");
            let ty: &mut RawType = types.get_mut(&id).unwrap();
            ty.members.push((name, attrs(rest.split_whitespace())));
            continue;
        }
        let Some((id, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let id: u32 = id.parse().unwrap();
        let (kind, rest) = rest.split_once(' ').unwrap();
        let (name, rest) = quoted(rest).unwrap();
        types.insert(
            id,
            RawType {
                kind: kind.to_string(),
                name,
                attrs: attrs(rest.split_whitespace()),
                members: Vec::new(),
            },
        );
        current = Some(id);
    }
    types
}

fn quoted(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start().strip_prefix('\'')?;
    let (name, rest) = s.split_once('\'')?;
    Some((name.to_string(), rest))
}

/// What bpftool's dump says, computed independently of the library.
struct Expected<'a> {
    types: &'a HashMap<u32, RawType>,
}

impl Expected<'_> {
    fn named(&self, kind: &str, name: &str) -> u32 {
        let mut ids: Vec<u32> = self
            .types
            .iter()
            .filter(|(_, t)| t.kind == kind && t.name == name)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        *ids.first()
            .unwrap_or_else(|| panic!("bpftool shows no {kind} '{name}'"))
    }

    fn type_id(&self, attrs: &HashMap<String, String>) -> u32 {
        attrs["type_id"].parse().unwrap()
    }

    /// Through TYPEDEF and modifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        while matches!(
            self.types[&id].kind.as_str(),
            "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG"
        ) {
            id = self.type_id(&self.types[&id].attrs);
        }
        id
    }

    /// Bit offset and type of a direct member.
    fn member(&self, id: u32, name: &str) -> (u32, u32) {
        let (_, attrs) = self.types[&id]
            .members
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("bpftool: {} has no member {name}", self.types[&id].name));
        let bits: u32 = attrs["bits_offset"].parse().unwrap();
        assert!(!attrs.contains_key("bitfield_size"));
        (bits, self.type_id(attrs))
    }

    fn vcpu_arg(&self, tracepoint: &str, vcpu: u32) -> TracepointArg {
        let typedef = self.named("TYPEDEF", &format!("btf_trace_{tracepoint}"));
        let ptr = self.resolve(self.type_id(&self.types[&typedef].attrs));
        let proto = self.resolve(self.type_id(&self.types[&ptr].attrs));
        assert_eq!(self.types[&proto].kind, "FUNC_PROTO");
        let params = &self.types[&proto].members[1..];
        let index = params
            .iter()
            .position(|(_, a)| {
                let p = self.resolve(self.type_id(a));
                self.types.get(&p).is_some_and(|t| t.kind == "PTR")
                    && self.resolve(self.type_id(&self.types[&p].attrs)) == vcpu
            })
            .unwrap_or_else(|| panic!("bpftool: no kvm_vcpu * in {tracepoint}"));
        TracepointArg {
            index,
            count: params.len(),
        }
    }

    fn layout(&self) -> KvmLayout {
        let vcpu = self.named("STRUCT", "kvm_vcpu");
        let (vcpu_id, _) = self.member(vcpu, "vcpu_id");
        let (arch_bits, arch_type) = self.member(vcpu, "arch");
        let arch_struct = self.resolve(arch_type);
        assert_eq!(self.types[&arch_struct].name, "kvm_vcpu_arch");
        let arch = arch_bits / 8;
        let field = |name| arch + self.member(arch_struct, name).0 / 8;
        KvmLayout {
            vcpu_id: vcpu_id / 8,
            arch,
            l1_tsc_offset: field("l1_tsc_offset"),
            tsc_offset: field("tsc_offset"),
            l1_tsc_scaling_ratio: field("l1_tsc_scaling_ratio"),
            tsc_scaling_ratio: field("tsc_scaling_ratio"),
            kvm_entry: self.vcpu_arg("kvm_entry", vcpu),
            kvm_exit: self.vcpu_arg("kvm_exit", vcpu),
        }
    }
}

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// bpftool's raw dump of vmlinux BTF, parsed once for all tests. bpftool
/// is required (`cargo xtask setup` installs it).
fn bpftool_types() -> &'static HashMap<u32, RawType> {
    static TYPES: OnceLock<HashMap<u32, RawType>> = OnceLock::new();
    TYPES.get_or_init(|| {
        assert!(
            Path::new(VMLINUX).exists(),
            "{VMLINUX} is missing: no kernel BTF"
        );
        let output = Command::new(common::require_tool("bpftool"))
            .args(["btf", "dump", "file", VMLINUX, "format", "raw"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        parse_bpftool_raw(&String::from_utf8(output.stdout).unwrap())
    })
}

#[test]
fn resolver_agrees_with_bpftool_on_this_kernel() {
    let types = bpftool_types();
    let vmlinux = Path::new(VMLINUX);
    let expected = Expected { types }.layout();

    let btf = Btf::from_file(vmlinux).unwrap();
    assert_eq!(btf.len(), types.len() + 1, "type count (plus void)");
    assert_eq!(KvmLayout::resolve(&btf).unwrap(), expected);
    // On this machine KVM is built in, so the running-kernel path is the same.
    if !Path::new("/sys/kernel/btf/kvm").exists() {
        assert_eq!(KvmLayout::running_kernel().unwrap(), expected);
    }
    eprintln!("resolved on this kernel: {expected:?}");
}

#[test]
fn every_named_struct_member_offset_matches_bpftool_for_kvm_structs() {
    let types = bpftool_types();
    let btf = Btf::from_file(VMLINUX).unwrap();
    let mut checked = 0;
    for name in ["kvm_vcpu", "kvm_vcpu_arch", "kvm", "kvm_arch"] {
        let id = Expected { types }.named("STRUCT", name);
        for (member, attrs) in &types[&id].members {
            if member == "(anon)" {
                continue;
            }
            let (bits, found) = btf.member(id, member).unwrap().unwrap();
            assert_eq!(bits.to_string(), attrs["bits_offset"], "{name}.{member}");
            assert_eq!(
                found.type_id.to_string(),
                attrs["type_id"],
                "{name}.{member}"
            );
            let size = attrs.get("bitfield_size").map_or("0", String::as_str);
            assert_eq!(found.bitfield_size.to_string(), size, "{name}.{member}");
            checked += 1;
        }
    }
    assert!(checked > 200, "only {checked} members compared");
}
