//! The command name a cached piece of output (a text line's prefix, a JSON
//! line's task part) was written with, in one buffer that is reused: a
//! task switch, even to a task whose name is unknown and back, allocates
//! nothing (`tests/merge_output_alloc.rs` counts).

/// A command name, or none, as last written.
#[derive(Debug, Default)]
pub(super) struct LastComm {
    bytes: Vec<u8>,
    known: bool,
}

impl LastComm {
    /// Whether `comm` is what was last set.
    pub(super) fn is(&self, comm: Option<&str>) -> bool {
        match comm {
            Some(c) => self.known && self.bytes == c.as_bytes(),
            None => !self.known,
        }
    }

    /// Remembers `comm`, reusing the buffer.
    pub(super) fn set(&mut self, comm: Option<&str>) {
        self.bytes.clear();
        self.known = comm.is_some();
        if let Some(c) = comm {
            self.bytes.extend_from_slice(c.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LastComm;

    #[test]
    fn a_name_none_and_another_name_are_told_apart() {
        let mut last = LastComm::default();
        last.set(Some("bash"));
        assert!(last.is(Some("bash")));
        assert!(!last.is(None) && !last.is(Some("bas")) && !last.is(Some("")));
        last.set(None);
        assert!(last.is(None) && !last.is(Some("bash")) && !last.is(Some("")));
        last.set(Some(""));
        assert!(last.is(Some("")) && !last.is(None));
    }
}
