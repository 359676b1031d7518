//! Exact guest <-> host TSC conversion (see issue 3).
