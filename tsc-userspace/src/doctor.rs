//! `tsc-tracer doctor`: what this host allows, measured, with a fix for each
//! problem.
//!
//! [`system`] checks what the host offers (privileges, mounts, BTF, the KVM
//! tracepoints, TSC stability); [`probe`] makes a throw-away VM to see what
//! KVM does rather than what it claims (TSC frequency, scaling, whether
//! offsets are applied, whether `kvm_entry` fires). A failure that stops
//! tracing is `blocking`; the quirks of a hypervisor (PVM applies no offsets
//! and fires no `kvm_entry`) are warnings: tracing works, differently.

pub mod probe;
pub mod system;

use serde::Serialize;

use crate::btf::KvmLayout;

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As it should be.
    Ok,
    /// Tracing works, with a limitation worth knowing.
    Warn,
    /// Something is missing or broken.
    Fail,
}

/// One check: its outcome, one line of explanation, and how to fix a failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short identifier, e.g. `tracefs`.
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// One line: what was found.
    pub detail: String,
    /// What to do about it (for failures, and warnings that have a remedy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// True when this failure stops `tsc-tracer` from tracing at all.
    pub blocking: bool,
}

impl Check {
    /// A passed check.
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
            blocking: false,
        }
    }

    /// A limitation; `fix` when there is something to do.
    pub fn warn(name: &'static str, detail: impl Into<String>, fix: Option<String>) -> Self {
        Self {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix,
            blocking: false,
        }
    }

    /// A failure; `blocking` when tracing cannot work without the fix.
    pub fn fail(
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
        blocking: bool,
    ) -> Self {
        Self {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
            blocking,
        }
    }
}

/// Everything `doctor` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// False when a blocking check failed.
    pub ok: bool,
    /// Every check, in the order they ran.
    pub checks: Vec<Check>,
    /// Whether KVM applies the TSC offset it is given (None: not measured).
    pub offsets_applied: Option<bool>,
    /// Whether `kvm_entry` fires when a guest runs (None: not measured).
    pub kvm_entry_fires: Option<bool>,
    /// Byte offsets in `struct kvm_vcpu` from BTF (None: not resolved).
    pub offsets: Option<KvmLayout>,
    /// Guest TSC frequency KVM reports (`KVM_GET_TSC_KHZ`).
    pub tsc_khz: Option<u32>,
    /// Whether KVM can scale guest TSCs (`KVM_CAP_TSC_CONTROL`).
    pub tsc_scaling: Option<bool>,
    /// The kernel's current clocksource.
    pub clocksource: Option<String>,
}

impl Report {
    /// True when a blocking check failed.
    pub fn blocked(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.status == Status::Fail && c.blocking)
    }
}

/// Runs every check: the host's, then the throw-away VM's.
pub fn run() -> Report {
    let host = system::Host::read();
    let mut checks = host.checks();
    let offsets = match KvmLayout::running_kernel() {
        Ok(layout) => {
            checks.push(Check::ok("btf-offsets", describe(&layout)));
            Some(layout)
        }
        Err(err) => {
            checks.push(Check::fail(
                "btf-offsets",
                format!("cannot place the kvm_entry/kvm_exit reads: {err}"),
                "use a kernel built with CONFIG_DEBUG_INFO_BTF (and BTF for the kvm module); \
                 offset changes are still followed without it",
                false,
            ));
            None
        }
    };
    let probe = probe::run(&host);
    checks.extend(probe.checks);
    let mut report = Report {
        ok: true,
        checks,
        offsets_applied: probe.offsets_applied,
        kvm_entry_fires: probe.kvm_entry_fires,
        offsets,
        tsc_khz: probe.tsc_khz,
        tsc_scaling: probe.tsc_scaling,
        clocksource: host.clocksource.clone(),
    };
    report.ok = !report.blocked();
    report
}

fn describe(layout: &KvmLayout) -> String {
    format!(
        "struct kvm_vcpu: vcpu_id at {}, arch.l1_tsc_offset at {}, arch.tsc_offset at {}, \
         arch.l1_tsc_scaling_ratio at {}, arch.tsc_scaling_ratio at {}; vCPU is argument {} of \
         kvm_entry and {} of kvm_exit",
        layout.vcpu_id,
        layout.l1_tsc_offset,
        layout.tsc_offset,
        layout.l1_tsc_scaling_ratio,
        layout.tsc_scaling_ratio,
        layout.kvm_entry.index,
        layout.kvm_exit.index
    )
}
