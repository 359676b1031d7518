//! A guest CPU's clock in its trace.dat: `TIME_SHIFT` samples built from
//! its vCPU's epochs, or, where those samples would place some event other
//! than [`crate::timeline`] does, its pages rewritten in host TSC.
//!
//! The reader (trace-cmd 3.1.6, lib/trace-cmd/trace-input.c):
//! - `tsync_cpu_offsets_load()` sorts each CPU's samples by `time` as
//!   signed 64-bit numbers and drops samples whose time equals the
//!   previous one;
//! - `timestamp_host_sync()`: one sample: `ts + offset`; two: always the
//!   first; more: the first for `ts <= time[0]`, sample n-2 for
//!   `ts >= time[n-1]` (unsigned compares), else the sample at or before
//!   `ts` (binary search);
//! - `timestamp_correction_calc()`, step mode (flags 0):
//!   `((ts * scaling) >> fraction) + offset` in 64-bit arithmetic.
//!
//! So the samples here are: per epoch, from the guest TSC its host range
//! starts at, `offset = -(effective offset)` (host = guest + offset), then a
//! closing repeat of the last at `i64::MAX` so the last epoch is used up to
//! the end. The reader's multiply overflows for any real TSC once scaled
//! (`ts * scaling` with a 48- or 32-bit fraction), so a scaled epoch cannot
//! be a sample: such a CPU, like one whose epochs overlap in guest time (a
//! guest TSC written backwards) or one with events no epoch explains, is
//! written with host TSC timestamps and an identity sample. Whether a CPU
//! needs that is not guessed from the history: [`plan_cpu`] replays every
//! event through a [`VcpuTimeline`] and through [`reader_host`] (this
//! module's copy of the reader) and rewrites unless all agree.

use std::io;

use bytes::Bytes;

use super::options::{TimeShiftCpu, TimeShiftSample};
use crate::{
    timeline::{Epoch, OffsetChange, StreamCursor, TimelineError, VcpuTimeline},
    tracefs::{Page, PageBuildError, PageBuilder, PageLayout},
};

/// The host time trace-cmd gives guest timestamp `ts` under `samples`
/// (already sorted and deduplicated, as [`samples_for`] makes them).
pub fn reader_host(samples: &[TimeShiftSample], ts: u64) -> u64 {
    let calc = |s: &TimeShiftSample| {
        let scaled = ts.wrapping_mul(s.scaling as u64) >> s.fraction;
        scaled.wrapping_add(s.offset as u64)
    };
    let n = samples.len();
    match n {
        0 => ts,
        1 => ts.wrapping_add(samples[0].offset as u64),
        2 => calc(&samples[0]),
        _ if ts <= samples[0].time as u64 => calc(&samples[0]),
        _ if ts >= samples[n - 1].time as u64 => calc(&samples[n - 2]),
        _ => {
            // The last sample at or before ts.
            let k = samples.partition_point(|s| s.time as u64 <= ts);
            calc(&samples[k - 1])
        }
    }
}

/// The identity: for a CPU written in host TSC, or with no known vCPU.
pub fn identity() -> TimeShiftCpu {
    TimeShiftCpu {
        samples: close(vec![TimeShiftSample::unscaled(0, 0)]),
    }
}

/// Appends the repeat of the last sample the reader needs (see the module
/// doc); a list already ending at `i64::MAX` is left as is.
fn close(mut samples: Vec<TimeShiftSample>) -> Vec<TimeShiftSample> {
    if let Some(&last) = samples.last()
        && last.time != i64::MAX
    {
        samples.push(TimeShiftSample {
            time: i64::MAX,
            ..last
        });
    }
    samples
}

/// The step samples for `epochs` (oldest first), or `None` when they cannot
/// be samples: a scaled epoch, or start times that do not increase within
/// `0..i64::MAX` (where the reader's signed sort and unsigned search agree).
pub fn samples_for(epochs: &[Epoch]) -> Option<TimeShiftCpu> {
    let mut samples: Vec<TimeShiftSample> = Vec::with_capacity(epochs.len() + 1);
    for (i, e) in epochs.iter().enumerate() {
        if !e.params.is_unscaled() {
            return None;
        }
        // The first epoch covers everything before it too.
        let time = match (i, e.host_start) {
            (0, _) | (_, None) => 0,
            (_, Some(h)) => e.params.guest_from_host(h),
        };
        let time = i64::try_from(time).ok().filter(|&t| t < i64::MAX)?;
        if samples.last().is_some_and(|s| s.time >= time) {
            return None;
        }
        samples.push(TimeShiftSample::unscaled(
            time,
            e.params.offset().wrapping_neg() as i64,
        ));
    }
    if samples.is_empty() {
        return None;
    }
    Some(TimeShiftCpu {
        samples: close(samples),
    })
}

/// Rebuilds a timeline from kept epochs: each epoch after the first starts
/// with an offset change at its start whose last exit is the previous end,
/// which gives every epoch the host range it had.
pub fn timeline_of(epochs: &[Epoch]) -> Result<VcpuTimeline, TimelineError> {
    let cap = std::num::NonZeroUsize::new(epochs.len().max(1)).unwrap_or(VcpuTimeline::DEFAULT_CAP);
    let mut timeline = VcpuTimeline::new(cap.max(VcpuTimeline::DEFAULT_CAP));
    for (i, e) in epochs.iter().enumerate() {
        match (i, e.host_start) {
            (0, None) => {
                timeline.bootstrap(e.params)?;
            }
            (_, start) => {
                let last_exit = i.checked_sub(1).and_then(|p| epochs[p].host_end);
                timeline.offset_change(OffsetChange {
                    new_start: start.or(last_exit).unwrap_or(0),
                    params: e.params,
                    old_end: last_exit,
                })?;
            }
        }
    }
    Ok(timeline)
}

/// How one guest CPU is written.
#[derive(Debug)]
pub enum CpuPlan {
    /// Pages as received, converted by these samples.
    Shift(TimeShiftCpu),
    /// Pages rewritten in host TSC (identity samples).
    Rewritten {
        /// The new pages.
        pages: Vec<Bytes>,
        /// Events no epoch could convert or no page could hold (left out).
        skipped: u64,
    },
}

/// Decides how to write one guest CPU whose pages `pages()` yields (each
/// call starts over), converted by `timeline` (`None`: no known vCPU, the
/// guest timestamps are written as they are).
pub fn plan_cpu<I>(
    layout: &PageLayout,
    mut pages: impl FnMut() -> I,
    timeline: Option<&VcpuTimeline>,
) -> io::Result<CpuPlan>
where
    I: Iterator<Item = io::Result<Vec<u8>>>,
{
    let Some(timeline) = timeline else {
        return Ok(CpuPlan::Shift(identity()));
    };
    let epochs: Vec<Epoch> = timeline.epochs().copied().collect();
    if let Some(shift) = samples_for(&epochs)
        && agrees(layout, pages(), timeline, &shift.samples)?
    {
        return Ok(CpuPlan::Shift(shift));
    }
    rewrite(layout, pages(), timeline)
}

/// Whether the reader places every event where the timeline does.
fn agrees(
    layout: &PageLayout,
    pages: impl Iterator<Item = io::Result<Vec<u8>>>,
    timeline: &VcpuTimeline,
    samples: &[TimeShiftSample],
) -> io::Result<bool> {
    let mut cursor = StreamCursor::default();
    for page in pages {
        let page = page?;
        let Ok(parsed) = Page::parse(layout, &page) else {
            continue;
        };
        for event in parsed.events() {
            let Ok(event) = event else { break };
            match timeline.assign(&mut cursor, event.ts) {
                Ok(a) if a.host == reader_host(samples, event.ts) => {}
                _ => return Ok(false),
            }
        }
    }
    Ok(true)
}

fn rewrite(
    layout: &PageLayout,
    pages: impl Iterator<Item = io::Result<Vec<u8>>>,
    timeline: &VcpuTimeline,
) -> io::Result<CpuPlan> {
    let mut cursor = StreamCursor::default();
    let mut builder = PageBuilder::new(*layout);
    let (mut out, mut skipped) = (Vec::new(), 0u64);
    for page in pages {
        let page = page?;
        let Ok(parsed) = Page::parse(layout, &page) else {
            continue;
        };
        for event in parsed.events() {
            let Ok(event) = event else { break };
            let Ok(a) = timeline.assign(&mut cursor, event.ts) else {
                skipped += 1;
                continue;
            };
            if !push(&mut builder, &mut out, a.host, event.data) {
                skipped += 1;
            }
        }
    }
    if !builder.is_empty() {
        out.push(builder.finish());
    }
    Ok(CpuPlan::Rewritten {
        pages: out,
        skipped,
    })
}

/// Pushes one event, starting a new page when the current one is full.
fn push(builder: &mut PageBuilder, out: &mut Vec<Bytes>, ts: u64, data: &[u8]) -> bool {
    match builder.push(ts, data) {
        Ok(true) => true,
        Ok(false) => {
            out.push(builder.finish());
            matches!(builder.push(ts, data), Ok(true))
        }
        // A jump back a page cannot say: start a page at it.
        Err(PageBuildError::Unrepresentable { .. }) if !builder.is_empty() => {
            out.push(builder.finish());
            matches!(builder.push(ts, data), Ok(true))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use tsc_common::tsc::TscParams;

    use super::*;

    fn epoch(seq: u64, offset: u64, start: Option<u64>, end: Option<u64>) -> Epoch {
        Epoch {
            seq,
            params: TscParams::unscaled(offset),
            host_start: start,
            host_end: end,
        }
    }

    #[test]
    fn samples_step_at_each_epoch_and_close_with_a_repeat() {
        let epochs = [
            epoch(0, 100, Some(1000), Some(2000)),
            epoch(1, 5000, Some(2000), None),
        ];
        let shift = samples_for(&epochs).unwrap();
        assert_eq!(shift.samples.len(), 3);
        assert_eq!(shift.samples[1].time, 7000);
        assert_eq!(shift.samples[2].time, i64::MAX);
        assert_eq!(reader_host(&shift.samples, 1500), 1400);
        assert_eq!(reader_host(&shift.samples, 6999), 6899);
        assert_eq!(reader_host(&shift.samples, 7000), 2000);
        assert_eq!(reader_host(&shift.samples, 1 << 50), (1 << 50) - 5000);
    }

    #[test]
    fn a_backwards_write_cannot_be_samples() {
        // Forward by 2^40, then back to 0: the third epoch starts in guest
        // time before the second.
        let epochs = [
            epoch(0, 0, None, Some(1000)),
            epoch(1, 1 << 40, Some(1000), Some(2000)),
            epoch(2, 0, Some(2000), None),
        ];
        assert_eq!(samples_for(&epochs), None);
    }

    #[test]
    fn rebuilt_timeline_keeps_the_epochs() {
        let epochs = [
            epoch(0, 100, None, Some(2000)),
            epoch(1, 5000, Some(2100), Some(3000)),
            epoch(2, 9000, Some(3000), None),
        ];
        let t = timeline_of(&epochs).unwrap();
        let got: Vec<_> = t.epochs().map(|e| (e.host_start, e.host_end)).collect();
        assert_eq!(
            got,
            vec![
                (None, Some(2000)),
                (Some(2100), Some(3000)),
                (Some(3000), None)
            ]
        );
    }
}
