//! The k-way merge of ordered streams with watermarks and a reorder window.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque, binary_heap::PeekMut},
};

use super::{MergeItem, SourceId};
use crate::Flags;

/// How long the merge waits for a slow stream, and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeConfig {
    /// Reorder window in host TSC ticks: an item is written at the latest
    /// once `now` is this far past it, whatever the watermarks say.
    pub window: u64,
    /// Most items held at once; past it the oldest is written at once.
    pub max_held: usize,
}

impl MergeConfig {
    /// Default bound on held items: about 100 MiB of items (each ~90 bytes
    /// plus the pages they keep alive).
    pub const DEFAULT_MAX_HELD: usize = 1 << 20;

    /// A window of `window` host TSC ticks and the default bound.
    pub fn new(window: u64) -> Self {
        Self {
            window,
            max_held: Self::DEFAULT_MAX_HELD,
        }
    }
}

impl Default for MergeConfig {
    /// A window of 2^31 ticks (0.7 s at 3 GHz). A session should rather use
    /// [`MergeConfig::new`] with a window computed from the TSC frequency.
    fn default() -> Self {
        Self::new(1 << 31)
    }
}

/// What happened to one source's items so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCounts {
    /// Items pushed. Always `held + emitted`.
    pub pushed: u64,
    /// Items held now.
    pub held: u64,
    /// Items handed out (by `push`, `pop_ready` or `flush_all`).
    pub emitted: u64,
    /// Emitted out of order, flagged [`Flags::LATE`]: they arrived after
    /// later items had been emitted.
    pub late: u64,
    /// Emitted by window expiry, before every stream's watermark passed them.
    pub forced: u64,
    /// Emitted early because more than `max_held` items were held.
    pub overflowed: u64,
    /// Arrived out of order within their own stream and were put in place.
    pub reordered: u64,
}

impl SourceCounts {
    fn add(&mut self, other: &Self) {
        self.pushed += other.pushed;
        self.held += other.held;
        self.emitted += other.emitted;
        self.late += other.late;
        self.forced += other.forced;
        self.overflowed += other.overflowed;
        self.reordered += other.reordered;
    }
}

/// A snapshot of the merge, for status lines and the summary at exit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Totals over all sources.
    pub total: SourceCounts,
    /// Per source, for every source that ever pushed an item.
    pub sources: Vec<(SourceId, SourceCounts)>,
    /// Streams known (open, or closed with items still held).
    pub streams: usize,
    /// Streams still open.
    pub open_streams: usize,
    /// The minimum watermark of the open streams (`None` when none is open).
    pub watermark: Option<u64>,
    /// Host TSC of the oldest held item.
    pub oldest_held: Option<u64>,
    /// Host TSC of the newest item emitted in order.
    pub last_emitted: Option<u64>,
}

/// Why an item left before its turn.
#[derive(Clone, Copy)]
enum Early {
    No,
    Window,
    Overflow,
}

/// One (source, cpu) stream: its held items in host-TSC order.
#[derive(Debug)]
struct Stream {
    key: (SourceId, u32),
    queue: VecDeque<MergeItem>,
    /// Nothing earlier than this will come: the highest of the watermarks
    /// given and the items pushed.
    frontier: u64,
    open: bool,
}

/// Merges many streams, each ordered by host TSC, into one timeline.
/// See the [module documentation](super) for the semantics.
#[derive(Debug)]
pub struct Merger {
    config: MergeConfig,
    /// Slots; a stream is removed when closed and empty.
    streams: Vec<Option<Stream>>,
    free: Vec<usize>,
    index: HashMap<(SourceId, u32), usize>,
    /// The last stream looked up: a page's events all go to one stream.
    cached: Option<((SourceId, u32), usize)>,
    /// `(head host_tsc, slot)` of every stream holding items: exactly one
    /// entry each, keyed by its current head.
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    held: usize,
    last_emitted: Option<u64>,
    /// Indexed by source id.
    counts: Vec<SourceCounts>,
}

impl Merger {
    /// An empty merge.
    pub fn new(config: MergeConfig) -> Self {
        Self {
            config,
            streams: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            cached: None,
            heap: BinaryHeap::new(),
            held: 0,
            last_emitted: None,
            counts: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> MergeConfig {
        self.config
    }

    /// Takes an item of stream `(item.source, item.cpu)`, opening the stream
    /// if it is new (or reopening it if it was closed).
    ///
    /// Returns an item to write at once: the item itself, flagged
    /// [`Flags::LATE`], when later items were already emitted; or the
    /// oldest held item when holding this one went past `max_held`.
    #[must_use = "a returned item must be written, or it is lost"]
    pub fn push(&mut self, mut item: MergeItem) -> Option<MergeItem> {
        let (source, tsc) = (item.source, item.host_tsc);
        let slot = self.slot(source, item.cpu);
        self.counts_mut(source).pushed += 1;
        let Some(stream) = self.streams.get_mut(slot).and_then(Option::as_mut) else {
            // `slot` just made it; were it gone, write the item rather than lose it.
            self.counts_mut(source).emitted += 1;
            return Some(item);
        };
        stream.open = true;
        stream.frontier = stream.frontier.max(tsc);
        if self.last_emitted.is_some_and(|last| tsc < last) {
            item.flags.insert(Flags::LATE);
            let counts = self.counts_mut(source);
            counts.late += 1;
            counts.emitted += 1;
            return Some(item);
        }
        let reordered = hold(stream, &mut self.heap, slot, item);
        self.held += 1;
        let counts = self.counts_mut(source);
        counts.held += 1;
        counts.reordered += u64::from(reordered);
        if self.held > self.config.max_held {
            return self.pop_head(Early::Overflow);
        }
        None
    }

    /// Stream `(source, cpu)` promises that nothing earlier than `host_tsc`
    /// will come (a keep-alive, or a read that found nothing new). Opens
    /// the stream if it is new. A watermark never goes back.
    pub fn advance(&mut self, source: SourceId, cpu: u32, host_tsc: u64) {
        let slot = self.slot(source, cpu);
        if let Some(stream) = self.stream_mut(slot) {
            stream.open = true;
            stream.frontier = stream.frontier.max(host_tsc);
        }
    }

    /// Ends a stream: it no longer holds the others back. Its held items
    /// are still emitted in order.
    pub fn close_stream(&mut self, source: SourceId, cpu: u32) {
        if let Some(&slot) = self.index.get(&(source, cpu)) {
            self.close_slot(slot);
        }
    }

    /// Ends every stream of `source`.
    pub fn close_source(&mut self, source: SourceId) {
        let slots: Vec<usize> = self
            .index
            .iter()
            .filter(|(key, _)| key.0 == source)
            .map(|(_, &slot)| slot)
            .collect();
        for slot in slots {
            self.close_slot(slot);
        }
    }

    /// Emits, in host-TSC order, every held item at or before the minimum
    /// watermark of the open streams, and every item at or before
    /// `now_host_tsc - window` (counted as forced). Returns how many were
    /// emitted. Stops at the first error of `out`, returning it; the item
    /// it was given is then gone.
    pub fn pop_ready<E>(
        &mut self,
        now_host_tsc: u64,
        mut out: impl FnMut(MergeItem) -> Result<(), E>,
    ) -> Result<usize, E> {
        let ordered = self.watermark().unwrap_or(u64::MAX);
        let expired = now_host_tsc.checked_sub(self.config.window);
        let mut n = 0;
        while let Some(&Reverse((tsc, _))) = self.heap.peek() {
            let early = if tsc <= ordered {
                Early::No
            } else if expired.is_some_and(|limit| tsc <= limit) {
                Early::Window
            } else {
                break;
            };
            let Some(item) = self.pop_head(early) else {
                break;
            };
            out(item)?;
            n += 1;
        }
        Ok(n)
    }

    /// Emits every held item in order, whatever the watermarks (the end of
    /// a session). Streams stay as they are.
    pub fn flush_all<E>(
        &mut self,
        mut out: impl FnMut(MergeItem) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut n = 0;
        while let Some(item) = self.pop_head(Early::No) {
            out(item)?;
            n += 1;
        }
        Ok(n)
    }

    /// The minimum watermark of the open streams: every item at or before
    /// it can be emitted in order. `None` when no stream is open. O(streams).
    pub fn watermark(&self) -> Option<u64> {
        self.streams
            .iter()
            .flatten()
            .filter(|s| s.open)
            .map(|s| s.frontier)
            .min()
    }

    /// Host TSC of the oldest held item: it will be forced out when `now`
    /// reaches it plus the window, so a session should call
    /// [`pop_ready`](Self::pop_ready) by then even if nothing arrives.
    pub fn oldest_held(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((tsc, _))| *tsc)
    }

    /// Items held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Items of `source` held now.
    pub fn held_of(&self, source: SourceId) -> u64 {
        self.counts.get(source.0 as usize).map_or(0, |c| c.held)
    }

    /// Counts and state, for status lines.
    pub fn stats(&self) -> MergeStats {
        let mut total = SourceCounts::default();
        let mut sources = Vec::new();
        for (id, counts) in self.counts.iter().enumerate() {
            if counts.pushed > 0 {
                total.add(counts);
                sources.push((SourceId(id as u32), *counts));
            }
        }
        let known = self.streams.iter().flatten();
        MergeStats {
            total,
            sources,
            streams: known.clone().count(),
            open_streams: known.filter(|s| s.open).count(),
            watermark: self.watermark(),
            oldest_held: self.oldest_held(),
            last_emitted: self.last_emitted,
        }
    }

    /// Takes the oldest held item and accounts for it.
    fn pop_head(&mut self, early: Early) -> Option<MergeItem> {
        let mut top = self.heap.peek_mut()?;
        let slot = top.0.1;
        let stream = self.streams.get_mut(slot).and_then(Option::as_mut)?;
        let item = stream.queue.pop_front()?;
        let drained = match stream.queue.front() {
            Some(next) => {
                top.0.0 = next.host_tsc;
                drop(top);
                false
            }
            None => {
                PeekMut::pop(top);
                !stream.open
            }
        };
        if drained {
            self.remove_slot(slot);
        }
        self.held -= 1;
        self.last_emitted = Some(
            self.last_emitted
                .map_or(item.host_tsc, |l| l.max(item.host_tsc)),
        );
        let counts = self.counts_mut(item.source);
        counts.held -= 1;
        counts.emitted += 1;
        match early {
            Early::No => {}
            Early::Window => counts.forced += 1,
            Early::Overflow => counts.overflowed += 1,
        }
        Some(item)
    }

    /// The slot of stream `(source, cpu)`, created if new.
    fn slot(&mut self, source: SourceId, cpu: u32) -> usize {
        let key = (source, cpu);
        if let Some((k, slot)) = self.cached
            && k == key
        {
            return slot;
        }
        let slot = match self.index.get(&key) {
            Some(&slot) => slot,
            None => self.create(key),
        };
        self.cached = Some((key, slot));
        slot
    }

    fn create(&mut self, key: (SourceId, u32)) -> usize {
        let stream = Stream {
            key,
            queue: VecDeque::new(),
            frontier: 0,
            open: true,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.streams[slot] = Some(stream);
                slot
            }
            None => {
                self.streams.push(Some(stream));
                self.streams.len() - 1
            }
        };
        self.index.insert(key, slot);
        slot
    }

    fn close_slot(&mut self, slot: usize) {
        let Some(stream) = self.stream_mut(slot) else {
            return;
        };
        stream.open = false;
        if stream.queue.is_empty() {
            self.remove_slot(slot);
        }
    }

    /// Forgets an empty stream (it has no heap entry).
    fn remove_slot(&mut self, slot: usize) {
        if let Some(stream) = self.streams.get_mut(slot).and_then(Option::take) {
            self.index.remove(&stream.key);
            self.free.push(slot);
            if self.cached.is_some_and(|(_, s)| s == slot) {
                self.cached = None;
            }
        }
    }

    fn stream_mut(&mut self, slot: usize) -> Option<&mut Stream> {
        self.streams.get_mut(slot).and_then(Option::as_mut)
    }

    fn counts_mut(&mut self, source: SourceId) -> &mut SourceCounts {
        let at = source.0 as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, SourceCounts::default());
        }
        &mut self.counts[at]
    }
}

/// Queues `item` in `stream` (in slot `slot`) in order, keeping the heap's
/// entry for the stream right. True when it had to be put before items
/// already queued.
fn hold(
    stream: &mut Stream,
    heap: &mut BinaryHeap<Reverse<(u64, usize)>>,
    slot: usize,
    item: MergeItem,
) -> bool {
    let tsc = item.host_tsc;
    match stream.queue.back() {
        None => {
            stream.queue.push_back(item);
            heap.push(Reverse((tsc, slot)));
            false
        }
        Some(back) if back.host_tsc <= tsc => {
            stream.queue.push_back(item);
            false
        }
        Some(_) => {
            // Out of order within its own stream (e.g. a guest stream
            // across an epoch change): put it in place; O(n), rare.
            let at = stream.queue.partition_point(|x| x.host_tsc <= tsc);
            stream.queue.insert(at, item);
            if at == 0 {
                heap.retain(|Reverse((_, s))| *s != slot);
                heap.push(Reverse((tsc, slot)));
            }
            true
        }
    }
}
