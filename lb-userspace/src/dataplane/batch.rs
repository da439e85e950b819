//! Reading a whole hash map in a few system calls (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6):
//! aya walks a map one `get_next_key` and one lookup per entry, which for a connection
//! table of 262,144 entries is half a million system calls on every expiry pass.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries a call asks for: a hash bucket larger than this makes the kernel answer
/// `ENOSPC`, and the call is retried with room for twice as many.
const CHUNK: u32 = 4096;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of the hash map `data`, as one pass of the kernel's own walk: an
/// entry added or removed meanwhile may or may not be in it, as with any walk.
pub fn dump<K: Pod, V: Pod>(data: &MapData) -> io::Result<Vec<(K, V)>> {
    let fd = data.fd().as_fd().as_raw_fd() as u32;
    let mut out = Vec::new();
    // The kernel's opaque position: the bucket to go on from (a u32 for hash maps).
    let (mut pos, mut next) = (0u64, 0u64);
    let mut first = true;
    let mut chunk = CHUNK;
    loop {
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk as usize);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk as usize);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut pos as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: attr points at buffers of `chunk` keys and values and at the two
        // position words, all alive across the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>()) };
        let err = (rc < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            Some(libc::ENOSPC) if chunk < 1 << 20 => {
                chunk *= 2;
                continue;
            }
            Some(e) if e != libc::ENOENT => return Err(io::Error::from_raw_os_error(e)),
            _ => {}
        }
        let n = attr.count as usize;
        // SAFETY: the kernel wrote `count` keys and values.
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.into_iter().zip(values).map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }));
        // ENOENT: the walk reached the end (with what it found last).
        if err.is_some() {
            return Ok(out);
        }
        pos = next;
        first = false;
    }
}
