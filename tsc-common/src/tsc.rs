//! Exact guest <-> host TSC conversion.
//!
//! KVM gives each vCPU a TSC offset and, on hosts with TSC scaling, a
//! fixed-point ratio with `frac_bits` fraction bits (48 on VMX, 32 on SVM).
//! The guest reads
//!
//! ```text
//! guest = ((host * ratio) >> frac_bits) + offset        (mod 2^64)
//! ```
//!
//! with a 128-bit product truncated to 64 bits after the shift: that is
//! `kvm_read_l1_tsc()` = `kvm_scale_tsc()` (`mul_u64_u64_shr`) plus the
//! offset, and `kvm_scale_tsc()` skips the multiply when the ratio is the
//! default `1 << frac_bits`. [`TscParams::guest_from_host`] computes exactly
//! that.
//!
//! # The inverse and its rounding
//!
//! Write `d = (guest - offset) mod 2^64` and `s(h) = (h * ratio) >> frac_bits`
//! (not truncated). [`TscParams::host_from_guest`] returns the *smallest*
//! host TSC `h` with `s(h) >= d`, which is `ceil((d << frac_bits) / ratio)`
//! computed in 128 bits, or [`ConvertError::Overflow`] when that exceeds
//! `u64::MAX` (never a wrapped value). The inverse is defined on the host
//! TSCs whose scaled value fits 64 bits (`s(h) < 2^64`), which is every host
//! TSC when the ratio is at most `1 << frac_bits` and centuries of uptime
//! otherwise; beyond that the kernel's forward value itself wraps.
//!
//! Bounds, with `r = ratio` and `u = 1 << frac_bits`, both proven by the
//! property tests:
//! - `r >= u` (guest TSC runs at least as fast as the host's): every host
//!   TSC maps to a distinct guest TSC, so `host_from_guest(guest_from_host(h))
//!   == h` exactly. A guest TSC in a gap between two consecutive images is
//!   rounded up to the next host TSC, so `guest_from_host(host_from_guest(g))
//!   - g` lies in `0 ..= ceil(r / u) - 1`, and is 0 whenever `g` is reachable.
//! - `r <= u` (guest slower): every guest TSC in range is reachable, so
//!   `guest_from_host(host_from_guest(g)) == g` exactly; several host TSCs
//!   share one guest TSC and the smallest is returned, so
//!   `h - host_from_guest(guest_from_host(h))` lies in `0 ..= ceil(u / r) - 1`.
//! - `r == u` (no scaling): both are exact, and the inverse is a single
//!   `wrapping_sub`.

/// Why a guest TSC cannot be converted to a host TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvertError {
    /// The host TSC that reaches this guest TSC would exceed `u64::MAX`.
    Overflow,
}

impl core::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Overflow => f.write_str("the host TSC for this guest TSC exceeds 2^64 - 1"),
        }
    }
}

impl core::error::Error for ConvertError {}

/// Why a set of TSC parameters is not one KVM could use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamsError {
    /// `frac_bits` must be at most 63 (`1 << frac_bits` must fit a `u64`).
    FracBits(u32),
    /// A ratio of 0 would stop the guest TSC.
    ZeroRatio,
}

impl core::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::FracBits(bits) => write!(f, "TSC scaling frac bits {bits} > 63"),
            Self::ZeroRatio => f.write_str("TSC scaling ratio is 0"),
        }
    }
}

impl core::error::Error for ParamsError {}

/// The TSC parameters of one vCPU during one epoch: offset and scaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TscParams {
    offset: u64,
    ratio: u64,
    frac_bits: u32,
}

impl TscParams {
    /// Frac bits used by [`TscParams::unscaled`]: any value works, this is VMX's.
    pub const DEFAULT_FRAC_BITS: u32 = 48;

    /// Parameters with scaling; `offset` is two's complement.
    pub const fn new(offset: u64, ratio: u64, frac_bits: u32) -> Result<Self, ParamsError> {
        if frac_bits > 63 {
            return Err(ParamsError::FracBits(frac_bits));
        }
        if ratio == 0 {
            return Err(ParamsError::ZeroRatio);
        }
        Ok(Self {
            offset,
            ratio,
            frac_bits,
        })
    }

    /// Parameters without scaling (the guest TSC runs at the host's rate).
    pub const fn unscaled(offset: u64) -> Self {
        Self {
            offset,
            ratio: 1 << Self::DEFAULT_FRAC_BITS,
            frac_bits: Self::DEFAULT_FRAC_BITS,
        }
    }

    /// The offset, two's complement.
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// The fixed-point scaling ratio.
    pub const fn ratio(&self) -> u64 {
        self.ratio
    }

    /// Fraction bits of [`TscParams::ratio`].
    pub const fn frac_bits(&self) -> u32 {
        self.frac_bits
    }

    /// True when the ratio is exactly 1 (`1 << frac_bits`).
    pub const fn is_unscaled(&self) -> bool {
        self.ratio == 1 << self.frac_bits
    }

    /// Whether two parameter sets convert every TSC the same way: same offset
    /// and the same ratio as a fraction (`3 << 31` over 32 bits equals
    /// `3 << 47` over 48).
    pub const fn same_conversion(&self, other: &Self) -> bool {
        self.offset == other.offset
            && (self.ratio as u128) << other.frac_bits == (other.ratio as u128) << self.frac_bits
    }

    /// The host TSC scaled by the ratio, before the offset and without
    /// truncation: `(host * ratio) >> frac_bits`.
    #[inline]
    pub const fn scaled(&self, host: u64) -> u128 {
        (host as u128 * self.ratio as u128) >> self.frac_bits
    }

    /// The guest TSC a host TSC reads as, exactly as KVM computes it.
    #[inline]
    pub const fn guest_from_host(&self, host: u64) -> u64 {
        let scaled = if self.is_unscaled() {
            host
        } else {
            // Truncation to 64 bits is the kernel's (mul_u64_u64_shr).
            self.scaled(host) as u64
        };
        scaled.wrapping_add(self.offset)
    }

    /// The smallest host TSC whose guest TSC reaches `guest` (see the module
    /// documentation for the rounding and its bounds).
    #[inline]
    pub const fn host_from_guest(&self, guest: u64) -> Result<u64, ConvertError> {
        let delta = guest.wrapping_sub(self.offset);
        if self.is_unscaled() {
            return Ok(delta);
        }
        // frac_bits <= 63 and delta < 2^64, so the shift fits in 127 bits.
        let num = (delta as u128) << self.frac_bits;
        let ratio = self.ratio as u128;
        let host = num.div_ceil(ratio);
        if host > u64::MAX as u128 {
            Err(ConvertError::Overflow)
        } else {
            Ok(host as u64)
        }
    }
}

#[cfg(test)]
mod tests;
