//! The guest program, as hand-assembled x86-64 machine code.
//!
//! Inputs in registers, set by the host before each run:
//! `RCX` = how many readings, `RBX` = [`REPORT_GPA`](super::memory::REPORT_GPA).
//! Each reading is stored to `[RBX]` (a `KVM_EXIT_MMIO` write of 8 bytes);
//! when done, RCX (now 0) is stored to `[RBX + 8]`
//! ([`DONE_GPA`](super::memory::DONE_GPA)) over and over, so the host stops
//! running the vCPU at the first "done" and a later run starts afresh from the
//! registers it sets. The program never halts: `hlt` at CPL3 would fault.

/// The program. Offsets are in the comments; jump displacements are relative
/// to the end of the jump instruction.
pub const RDTSC_LOOP: [u8; 28] = [
    0x48, 0x85, 0xC9, //       0: test rcx, rcx        ; n == 0?
    0x74, 0x11, //             3: jz   done (+0x11 -> 22)
    // loop:
    0x0F, 0x31, //             5: rdtsc                ; EDX:EAX = TSC
    0x48, 0xC1, 0xE2, 0x20, // 7: shl  rdx, 32
    0x48, 0x09, 0xD0, //      11: or   rax, rdx        ; RAX = 64-bit TSC
    0x48, 0x89, 0x03, //      14: mov  [rbx], rax      ; report -> MMIO exit
    0x48, 0xFF, 0xC9, //      17: dec  rcx
    0x75, 0xEF, //            20: jnz  loop (-0x11 -> 5)
    // done:
    0x48, 0x89, 0x4B, 0x08, //22: mov  [rbx+8], rcx    ; done -> MMIO exit
    0xEB, 0xFA, //            26: jmp  done (-6 -> 22)
];

/// Offset of `loop:` in [`RDTSC_LOOP`].
pub const LOOP_OFFSET: usize = 5;
/// Offset of `done:` in [`RDTSC_LOOP`].
pub const DONE_OFFSET: usize = 22;

#[cfg(test)]
mod tests {
    use super::*;

    /// Instruction start offsets, from the listing above.
    const STARTS: [usize; 10] = [0, 3, 5, 7, 11, 14, 17, 20, 22, 26];

    fn target(at: usize) -> usize {
        let disp = RDTSC_LOOP[at + 1] as i8;
        (at as isize + 2 + disp as isize) as usize
    }

    #[test]
    fn jumps_land_on_their_labels() {
        assert_eq!(target(3), DONE_OFFSET, "jz done");
        assert_eq!(target(20), LOOP_OFFSET, "jnz loop");
        assert_eq!(target(26), DONE_OFFSET, "jmp done");
        for at in [3, 20, 26] {
            assert!(STARTS.contains(&target(at)));
        }
    }

    #[test]
    fn listing_covers_every_byte() {
        assert_eq!(STARTS.last().map(|s| s + 2), Some(RDTSC_LOOP.len()));
        assert_eq!(&RDTSC_LOOP[LOOP_OFFSET..LOOP_OFFSET + 2], &[0x0F, 0x31]);
    }
}
