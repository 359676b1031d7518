//! The guest's physical memory: one anonymous mapping, laid out once per VM.
//!
//! Layout (guest-physical, identity-mapped 0-4 MiB):
//! - `0x1000` PML4, `0x2000` PDPT, `0x3000` PD, `0x4000`/`0x5000` page tables
//!   (4 KiB pages, so nothing depends on large-page support in the backend);
//! - [`CODE_GPA`] the guest program ([`super::guest_code`]);
//! - [`STACK_TOP`] the initial stack pointer (the program uses no stack, but a
//!   sane RSP costs nothing);
//! - [`REPORT_GPA`] and [`DONE_GPA`] lie above the 3 MiB slot: the page tables
//!   map them, no memslot backs them, so a guest store there exits to us as
//!   `KVM_EXIT_MMIO` carrying the stored value.

use std::{io, ptr::NonNull};

/// Size of the one memslot, at guest-physical 0.
pub const MEM_SIZE: usize = 3 << 20;
/// Guest-physical (and virtual) address of the PML4: the value of CR3.
pub const PML4_GPA: u64 = 0x1000;
/// Where the guest program is copied.
pub const CODE_GPA: u64 = 0x8000;
/// Initial RSP: top of the slot, 16-byte aligned.
pub const STACK_TOP: u64 = MEM_SIZE as u64 - 0x10;
/// A guest store here reports one value (an `rdtsc` reading).
pub const REPORT_GPA: u64 = 0x30_0000;
/// A guest store here says the program is done.
pub const DONE_GPA: u64 = REPORT_GPA + 8;

/// How much the page tables map: 4 MiB, two page tables of 512 x 4 KiB.
const MAPPED: u64 = 4 << 20;
const PDPT_GPA: u64 = 0x2000;
const PD_GPA: u64 = 0x3000;
const PT_GPA: u64 = 0x4000;
const PAGE: u64 = 0x1000;
/// Present | Read/Write | User: CPL3 code must reach every page.
const PRESENT_RW_USER: u64 = 0b111;

/// Anonymous, page-aligned host memory backing the guest's memslot.
#[derive(Debug)]
pub struct GuestMemory {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; nothing aliases it
// on the host side except through `&self`/`&mut self`.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// Maps [`MEM_SIZE`] bytes of zeroed memory and lays out page tables and
    /// the guest program.
    pub fn new(code: &[u8]) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let mut mem = Self {
            base,
            len: MEM_SIZE,
        };
        mem.write_page_tables();
        mem.write(CODE_GPA, code);
        Ok(mem)
    }

    /// Host address of guest-physical 0, for `KVM_SET_USER_MEMORY_REGION`.
    pub fn host_addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: the mapping has a fixed, non-zero size.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The guest's memory as bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `base` points to `len` mapped, initialised bytes we own.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }

    /// Reads the little-endian u64 at a guest-physical address inside the slot.
    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        let start = usize::try_from(gpa).ok()?;
        let bytes = self.as_slice().get(start..start.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let start = gpa as usize;
        self.as_mut_slice()[start..start + bytes.len()].copy_from_slice(bytes);
    }

    fn write_u64(&mut self, gpa: u64, value: u64) {
        self.write(gpa, &value.to_le_bytes());
    }

    /// Identity map of 0..[`MAPPED`] with 4 KiB pages, all User|RW.
    fn write_page_tables(&mut self) {
        self.write_u64(PML4_GPA, PDPT_GPA | PRESENT_RW_USER);
        self.write_u64(PDPT_GPA, PD_GPA | PRESENT_RW_USER);
        let tables = MAPPED / (512 * PAGE);
        for t in 0..tables {
            let pt = PT_GPA + t * PAGE;
            self.write_u64(PD_GPA + t * 8, pt | PRESENT_RW_USER);
            for i in 0..512 {
                let frame = (t * 512 + i) * PAGE;
                self.write_u64(pt + i * 8, frame | PRESENT_RW_USER);
            }
        }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, once.
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if rc != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "munmap of guest memory failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the 4-level tables the way the MMU does.
    fn translate(mem: &GuestMemory, va: u64) -> Option<u64> {
        let mut table = PML4_GPA;
        for shift in [39u32, 30, 21, 12] {
            let entry = mem.read_u64(table + ((va >> shift) & 0x1ff) * 8)?;
            if entry & PRESENT_RW_USER != PRESENT_RW_USER {
                return None;
            }
            table = entry & 0x000f_ffff_ffff_f000;
        }
        Some(table | (va & 0xfff))
    }

    #[test]
    fn identity_maps_the_first_4_mib_user_rw() {
        let mem = GuestMemory::new(&[0x90]).unwrap();
        for va in [0, CODE_GPA, STACK_TOP, REPORT_GPA, DONE_GPA, MAPPED - 1] {
            assert_eq!(translate(&mem, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, MAPPED), None);
    }

    #[test]
    fn report_addresses_are_outside_the_slot_and_code_inside() {
        assert!(REPORT_GPA >= MEM_SIZE as u64 && DONE_GPA < MAPPED);
        let mem = GuestMemory::new(&[0xaa, 0xbb]).unwrap();
        assert_eq!(&mem.as_slice()[CODE_GPA as usize..][..2], &[0xaa, 0xbb]);
        assert_eq!(mem.read_u64(MEM_SIZE as u64), None);
    }
}
