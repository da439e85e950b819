//! The selection tables as memory: `TABLES` is mmapable, so a table is written with
//! stores, not one syscall per slot. Only the pages of the table at hand are mapped, and
//! only while it is read or written: a mapping kept for the whole array would keep all of
//! it (32 MiB with 1,000 services of 4,099 slots) resident in xlb's RSS.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use anyhow::{Context as _, bail};
use aya::Ebpf;
use lb_common::names;

/// The `TABLES` array, for mapping parts of it. The kernel lays array elements out 8 bytes
/// apart: each `u32` id starts an 8-byte slot.
pub(super) struct Tables {
    fd: OwnedFd,
    len: usize,
}

/// Pages of `TABLES` mapped for one access; unmapped in Drop.
struct Window {
    base: std::ptr::NonNull<u8>,
    bytes: usize,
    /// Where the element asked for starts in the mapping.
    first: usize,
}

impl Tables {
    pub(super) fn map(ebpf: &Ebpf, len: u32) -> anyhow::Result<Self> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(names::TABLES) else { bail!("map {} missing or not an array", names::TABLES) };
        let fd = data.fd().as_fd().try_clone_to_owned().context("duplicating the selection tables' descriptor")?;
        Ok(Self { fd, len: len as usize })
    }

    /// Maps the pages holding elements `start..start + len` (`len` > 0: mmap refuses an
    /// empty mapping).
    fn window(&self, start: usize, len: usize) -> anyhow::Result<Window> {
        assert!(start + len <= self.len, "table access past the TABLES array");
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let offset = start * 8 / page * page;
        let bytes = ((start + len) * 8 - offset).next_multiple_of(page);
        // SAFETY: a shared mapping of pages inside the BPF array (the kernel rounds
        // mmapable arrays up to whole pages, and the range is in bounds); unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, self.fd.as_raw_fd(), offset as libc::off_t)
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping a selection table");
        }
        let base = std::ptr::NonNull::new(ptr.cast()).context("mmap returned null")?;
        Ok(Window { base, bytes, first: start * 8 - offset })
    }

    /// Reads `len` ids from `start`.
    pub(super) fn read(&self, start: usize, len: usize) -> anyhow::Result<Vec<u32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut w = self.window(start, len)?;
        Ok(w.elements(len).chunks_exact(2).map(|element| element[0]).collect())
    }

    /// Writes `ids` from `start`. The caller makes the table live afterwards with a map
    /// update (a syscall, which orders these stores before it).
    pub(super) fn write(&mut self, start: usize, ids: &[u32]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut w = self.window(start, ids.len())?;
        for (element, id) in w.elements(ids.len()).chunks_exact_mut(2).zip(ids) {
            element[0] = *id;
        }
        Ok(())
    }
}

impl Window {
    /// The `len` elements asked for, two words each.
    fn elements(&mut self, len: usize) -> &mut [u32] {
        // SAFETY: `window` mapped these `len` elements, 8-byte aligned (page offset plus a
        // multiple of 8), for as long as `self` lives.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(self.first).cast(), len * 2) }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `window`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
