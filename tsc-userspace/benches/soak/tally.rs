//! Which marker sequence numbers came out, in memory that grows with the
//! gaps, not with the events: ranges of seen numbers, merged as they fill.

use std::collections::BTreeMap;

/// Seen sequence numbers as `start -> end` (exclusive) ranges.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    ranges: BTreeMap<u64, u64>,
    /// Numbers seen more than once (each extra sighting counts).
    pub duplicates: u64,
    /// Numbers seen, duplicates not counted.
    pub seen: u64,
}

/// What is missing from a sent range.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    /// Numbers sent but never seen.
    pub events: u64,
    /// Runs of consecutive missing numbers.
    pub gaps: u64,
    /// Of `events`, those inside one of the given windows.
    pub in_windows: u64,
}

impl Tally {
    /// Notes `seq` as seen.
    pub fn insert(&mut self, seq: u64) {
        if let Some((&start, &end)) = self.ranges.range(..=seq).next_back() {
            if seq < end {
                self.duplicates += 1;
                return;
            }
            if seq == end {
                let mut new_end = end + 1;
                // Joins the next range when `seq` filled the hole between.
                if let Some(next_end) = self.ranges.remove(&new_end) {
                    new_end = next_end;
                }
                self.ranges.insert(start, new_end);
                self.seen += 1;
                return;
            }
        }
        let end = self.ranges.remove(&(seq + 1)).unwrap_or(seq + 1);
        self.ranges.insert(seq, end);
        self.seen += 1;
    }

    /// Seen numbers in `[from, to)`.
    pub fn seen_in(&self, from: u64, to: u64) -> u64 {
        self.ranges
            .iter()
            .map(|(&s, &e)| e.min(to).saturating_sub(s.max(from)))
            .sum()
    }

    /// The first `limit` runs of `[from, to)` never seen, `(start, end)`.
    pub fn gaps(&self, from: u64, to: u64, limit: usize) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = from;
        for (&s, &e) in self.ranges.range(..to) {
            if e <= from {
                continue;
            }
            if at < s.min(to) {
                gaps.push((at, s.min(to)));
            }
            at = at.max(e);
        }
        if at < to {
            gaps.push((at, to));
        }
        gaps.truncate(limit);
        gaps
    }

    /// What of `[from, to)` was never seen; `windows` are ranges (inclusive
    /// start, exclusive end) whose missing numbers are also counted apart.
    pub fn missing(&self, from: u64, to: u64, windows: &[(u64, u64)]) -> Missing {
        let mut missing = Missing::default();
        let mut hole = |a: u64, b: u64| {
            if a < b {
                missing.events += b - a;
                missing.gaps += 1;
                missing.in_windows += windows
                    .iter()
                    .map(|&(ws, we)| we.min(b).saturating_sub(ws.max(a)))
                    .sum::<u64>();
            }
        };
        let mut at = from;
        for (&s, &e) in self.ranges.range(..to) {
            if e <= from {
                continue;
            }
            hole(at, s.min(to));
            at = at.max(e);
        }
        hole(at, to);
        missing
    }
}
