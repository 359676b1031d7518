//! What is known to be uncertain or unusual about an event's place on the
//! timeline: one set of flags from the epoch assignment
//! ([`crate::timeline`]) through the correlator and the merge to every
//! output, so no stage can lose or reinterpret another's.

bitflags::bitflags! {
    /// An event's flags. Output shows them by [`Flags::names`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Flags: u8 {
        /// Several epochs could explain the guest timestamp (the guest wrote
        /// its TSC backwards); the stream's order chose one.
        const RESOLVED_BY_ORDER = 1 << 0;
        /// No known epoch explains the guest timestamp: converted with the
        /// nearest epoch, or the VM's current offset when the vCPU has none.
        const OUTSIDE_EPOCH = 1 << 1;
        /// The offset KVM was asked for is not the one the guest sees (PVM);
        /// the effective one was used.
        const OFFSET_NOT_APPLIED = 1 << 2;
        /// Arrived after later events had been written: out of order.
        const LATE = 1 << 3;
        /// Its host time is before the previous event's of the same guest
        /// CPU stream (the stream crossed into an earlier-placed epoch).
        const BACKWARDS = 1 << 4;
    }
}

impl Flags {
    /// No flags.
    pub const NONE: Self = Self::empty();

    /// Every flag with its name, in the order output prints them.
    const NAMED: [(Self, &'static str); 5] = [
        (Self::RESOLVED_BY_ORDER, "resolved-by-order"),
        (Self::OUTSIDE_EPOCH, "outside-epoch"),
        (Self::BACKWARDS, "backwards"),
        (Self::OFFSET_NOT_APPLIED, "offset-not-applied"),
        (Self::LATE, "late"),
    ];

    /// The names of the set flags (`"late"`, ...), in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMED
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, name)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::Flags;

    #[test]
    fn every_flag_has_one_distinct_name_in_print_order() {
        let all: Vec<&str> = Flags::all().names().collect();
        assert_eq!(
            all,
            [
                "resolved-by-order",
                "outside-epoch",
                "backwards",
                "offset-not-applied",
                "late"
            ]
        );
        assert_eq!(
            Flags::all().iter().count(),
            all.len(),
            "a flag without a name"
        );
        let two = Flags::LATE | Flags::OUTSIDE_EPOCH;
        assert_eq!(two.names().collect::<Vec<_>>(), ["outside-epoch", "late"]);
        assert_eq!(Flags::NONE.names().count(), 0);
    }
}
