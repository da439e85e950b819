//! The selection tables as memory: `TABLES` is mmapped, so a table is written with
//! stores, not one syscall per slot.

use anyhow::Context as _;
use aya::Ebpf;

use anyhow::bail;
use lb_common::names;

/// The `TABLES` array mapped into our memory (it is created `BPF_F_MMAPABLE`). The
/// kernel lays array elements out 8 bytes apart: each `u32` id starts an 8-byte slot.
pub(super) struct Tables {
    ptr: std::ptr::NonNull<u32>,
    len: usize,
    bytes: usize,
}

impl Tables {
    pub(super) fn map(ebpf: &Ebpf, len: u32) -> anyhow::Result<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let Some(aya::maps::Map::Array(data)) = ebpf.map(names::TABLES) else { bail!("map {} missing or not an array", names::TABLES) };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len as usize * 8).next_multiple_of(page);
        // SAFETY: a shared mapping of a BPF array of at least `bytes` (the kernel rounds
        // mmapable arrays up to whole pages); unmapped in Drop.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, data.fd().as_fd().as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the selection tables");
        }
        let ptr = std::ptr::NonNull::new(ptr.cast()).context("mmap returned null")?;
        Ok(Self { ptr, len: len as usize, bytes })
    }

    /// Reads `len` ids from `start`.
    pub(super) fn read(&self, start: usize, len: usize) -> Vec<u32> {
        assert!(start + len <= self.len, "table read past the TABLES array");
        // SAFETY: in bounds (checked above) of a live mapping we own.
        let words = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start * 2), len * 2) };
        words.chunks_exact(2).map(|element| element[0]).collect()
    }

    /// Writes `ids` from `start`. The caller makes the table live afterwards with a map
    /// update (a syscall, which orders these stores before it).
    pub(super) fn write(&mut self, start: usize, ids: &[u32]) {
        assert!(start + ids.len() <= self.len, "table write past the TABLES array");
        // SAFETY: in bounds (checked above) of a live mapping we own.
        let words = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start * 2), ids.len() * 2) };
        for (element, id) in words.chunks_exact_mut(2).zip(ids) {
            element[0] = *id;
        }
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}
