//! When a piece is full: by size, by age, or both; and how many are kept.

use std::{fmt, str::FromStr, time::Duration};

/// Pieces kept when `--rotate-keep` is not given.
pub const DEFAULT_KEEP: usize = 10;

/// When to start a new piece and how many to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotatePolicy {
    /// A piece is full once this many bytes reached its file(s).
    pub max_bytes: Option<u64>,
    /// A piece is full once it is this old.
    pub every: Option<Duration>,
    /// Pieces kept on disk, the one being written included (0: all).
    pub keep: usize,
}

impl Default for RotatePolicy {
    fn default() -> Self {
        Self {
            max_bytes: None,
            every: None,
            keep: DEFAULT_KEEP,
        }
    }
}

impl RotatePolicy {
    /// A policy that rotates at all (by size or age); `None` otherwise.
    pub fn new(
        max_bytes: Option<u64>,
        every: Option<Duration>,
        keep: Option<usize>,
    ) -> Option<Self> {
        (max_bytes.is_some() || every.is_some()).then(|| Self {
            max_bytes,
            every,
            keep: keep.unwrap_or(DEFAULT_KEEP),
        })
    }

    /// Whether a piece holding `events` events and `bytes` bytes, opened
    /// `age` ago, is done. An empty piece never is: no piece is left
    /// without an event in it.
    pub fn due(&self, events: u64, bytes: u64, age: Duration) -> bool {
        events > 0
            && (self.max_bytes.is_some_and(|max| bytes >= max)
                || self.every.is_some_and(|every| age >= every))
    }

    /// Of the pieces numbered `existing` (any order), the ones to delete so
    /// that at most `keep` remain: the lowest numbers.
    pub fn to_delete(&self, existing: &[u64]) -> Vec<u64> {
        if self.keep == 0 || existing.len() <= self.keep {
            return Vec::new();
        }
        let mut sorted = existing.to_vec();
        sorted.sort_unstable();
        sorted.truncate(existing.len() - self.keep);
        sorted
    }
}

/// A size such as `512M`: a number of bytes, or one with the suffix `K`,
/// `M`, `G` or `T` (powers of 1024, as `head -c` and `dd` read them;
/// `KiB`, `KB` and lower case are the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A size that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a size (a number of bytes, or with K, M, G or T: 512M)")]
pub struct ByteSizeError(String);

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ByteSizeError(s.to_string());
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits);
        let n: u64 = num.parse().map_err(|_| err())?;
        let unit = unit.trim().to_ascii_lowercase();
        let unit = unit
            .strip_suffix("ib")
            .or_else(|| unit.strip_suffix('b'))
            .unwrap_or(&unit);
        let shift = match unit {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(err()),
        };
        n.checked_mul(1 << shift).map(Self).ok_or_else(err)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in units {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        let ok = [
            ("0", 0),
            ("4096", 4096),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("64KiB", 64 << 10),
            ("64kb", 64 << 10),
            ("512M", 512 << 20),
            (" 2 G ", 2 << 30),
            ("1T", 1 << 40),
            ("7B", 7),
        ];
        for (text, bytes) in ok {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "M", "1.5M", "-1", "12X", "1MM", "99999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(512 << 20).to_string(), "512M");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn a_piece_is_due_by_size_or_age_and_never_empty() {
        let p = RotatePolicy::new(Some(1000), Some(Duration::from_secs(60)), None).unwrap();
        assert!(!p.due(1, 999, Duration::from_secs(59)));
        assert!(p.due(1, 1000, Duration::ZERO));
        assert!(p.due(1, 0, Duration::from_secs(60)));
        assert!(!p.due(0, 5000, Duration::from_secs(600)), "empty");
        let size_only = RotatePolicy::new(Some(10), None, None).unwrap();
        assert!(!size_only.due(1, 9, Duration::from_secs(86_400)));
        let age_only = RotatePolicy::new(None, Some(Duration::from_secs(1)), None).unwrap();
        assert!(!age_only.due(1, u64::MAX, Duration::from_millis(999)));
        assert_eq!(RotatePolicy::new(None, None, Some(3)), None);
    }

    #[test]
    fn the_oldest_pieces_go_beyond_keep() {
        let p = RotatePolicy::new(Some(1), None, Some(3)).unwrap();
        assert_eq!(p.to_delete(&[4, 1, 3, 2, 5]), vec![1, 2]);
        assert_eq!(p.to_delete(&[7, 8, 9]), Vec::<u64>::new());
        let all = RotatePolicy::new(Some(1), None, Some(0)).unwrap();
        assert_eq!(all.to_delete(&[1, 2, 3, 4]), Vec::<u64>::new());
    }
}
