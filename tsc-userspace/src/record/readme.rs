//! The README a recording directory gets.

use std::fmt::Write;

use super::{assemble::HOST_FILE, meta::RecordingMeta, recorder::OFFSETS_FILE};

/// The Perfetto trace `tsc-tracer host --record` writes beside the
/// trace.dat files, from the same merged events as the live output.
pub const PERFETTO_FILE: &str = "trace.perfetto-trace";

/// The README text for a recording.
pub fn text(meta: &RecordingMeta) -> String {
    let mut t = String::from(
        "A tsc-tracer recording (see docs/RECORDING.md in tsc-tracer).\n\n\
         Files:\n",
    );
    if meta.host.is_some() {
        let _ = writeln!(t, "  {HOST_FILE}  the host's events (trace.dat version 7)");
    }
    for g in &meta.guests {
        let _ = writeln!(
            t,
            "  {}  guest {}: its events, with every vCPU's offset history",
            g.file, g.name
        );
    }
    let _ = writeln!(
        t,
        "  {OFFSETS_FILE}  every offset event of the bound VMs (tsc-tracer offsets --json keys)\n  \
         {PERFETTO_FILE}  the merged timeline as a Perfetto trace (ui.perfetto.dev, \"Open trace file\"), written live\n  \
         spill/  the pages as recorded; `tsc-tracer record-finish DIR` rebuilds the .dat files from it\n"
    );
    let guests: String = meta
        .guests
        .iter()
        .map(|g| format!(" -i {}", g.file))
        .collect();
    let ks: String = meta
        .guests
        .iter()
        .map(|g| format!(" -a {}", g.file))
        .collect();
    let _ = writeln!(
        t,
        "Open:\n  trace-cmd report -i {HOST_FILE}{guests}\n  kernelshark {HOST_FILE}{ks}"
    );
    if let Some(why) = &meta.stopped {
        let _ = writeln!(t, "\nThe recording stopped early: {why}");
    }
    t
}

/// Logs what an assembled recording holds and how to open it.
pub fn log_summary(summary: &super::assemble::Summary) {
    let dir = summary.dir.display();
    for g in &summary.guests {
        if !g.rewritten_cpus.is_empty() {
            tracing::info!(
                "{}: guest CPUs {:?} written in host TSC (their offset history is not a TIME_SHIFT)",
                g.file,
                g.rewritten_cpus
            );
        }
        if g.skipped_pages + g.skipped_events > 0 {
            tracing::warn!(
                "{}: {} pages and {} events left out (unreadable)",
                g.file,
                g.skipped_pages,
                g.skipped_events
            );
        }
    }
    if let Some(why) = &summary.stopped {
        tracing::warn!("the recording ends early: {why}");
    }
    let guests: String = summary
        .guests
        .iter()
        .map(|g| format!(" -i {dir}/{}", g.file))
        .collect();
    let ks: String = summary
        .guests
        .iter()
        .map(|g| format!(" -a {dir}/{}", g.file))
        .collect();
    tracing::info!(
        "recording in {dir} ({} bytes): trace-cmd report -i {dir}/{HOST_FILE}{guests}; kernelshark {dir}/{HOST_FILE}{ks}",
        summary.bytes
    );
}
