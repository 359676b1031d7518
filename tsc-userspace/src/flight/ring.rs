//! A queue bounded by the bytes of what it holds: the oldest go first.

use std::collections::VecDeque;

/// Items with a size, at most `limit` bytes of them.
#[derive(Debug)]
pub struct Ring<T> {
    items: VecDeque<(T, u64)>,
    bytes: u64,
    limit: u64,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// Adds `item` of `size` bytes, evicting the oldest until it fits;
    /// `evicted` gets each one evicted. An item larger than the whole limit
    /// is not kept (it is handed to `evicted` at once).
    pub fn push(&mut self, item: T, size: u64, mut evicted: impl FnMut(T)) {
        if size > self.limit {
            evicted(item);
            return;
        }
        while self.bytes + size > self.limit {
            let Some((old, old_size)) = self.items.pop_front() else {
                break;
            };
            self.bytes -= old_size;
            evicted(old);
        }
        self.bytes += size;
        self.items.push_back((item, size));
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_are_evicted_to_stay_within_the_limit() {
        let mut ring = Ring::new(10);
        let mut gone = Vec::new();
        for (i, size) in [(1, 4), (2, 4), (3, 2)] {
            ring.push(i, size, |x| gone.push(x));
        }
        assert_eq!((ring.bytes(), gone.len()), (10, 0), "exactly full");
        ring.push(4, 5, |x| gone.push(x));
        assert_eq!(gone, vec![1, 2], "until 5 more fit");
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(ring.bytes(), 7);
        ring.push(5, 11, |x| gone.push(x));
        assert_eq!(gone, vec![1, 2, 5], "larger than the limit: not kept");
        assert_eq!(ring.len(), 2);
        ring.push(6, 10, |x| gone.push(x));
        assert_eq!(gone, vec![1, 2, 5, 3, 4]);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), vec![6]);
        assert!(ring.bytes() <= 10);
    }

    #[test]
    fn a_long_run_never_exceeds_the_limit_and_keeps_the_newest() {
        let mut ring = Ring::new(1000);
        let mut evicted = 0u64;
        for i in 0..10_000u64 {
            ring.push(i, 1 + i % 97, |_| evicted += 1);
            assert!(ring.bytes() <= 1000);
        }
        assert_eq!(ring.iter().last(), Some(&9999));
        let held: Vec<u64> = ring.iter().copied().collect();
        assert!(
            held.windows(2).all(|w| w[1] == w[0] + 1),
            "a contiguous suffix"
        );
        assert_eq!(evicted + ring.len() as u64, 10_000);
        // The next older one would not have fitted.
        let first = held[0];
        assert!(ring.bytes() + 1 + (first - 1) % 97 > 1000);
    }
}
