//! An empty XDP program (`return XDP_PASS`) on the LB namespace's client-facing veth: the
//! "direct + XDP" reference row, which shows what running any XDP program on this veth
//! costs before a balancer does anything. On a veth, native XDP makes the receiving side
//! run a NAPI poll of its own and copy every packet that arrives as a cloned or
//! non-linear skb (as the local stack's TCP segments do) into a page of its own before
//! the program sees it; a physical NIC runs XDP on its receive buffers instead.
//!
//! Two instructions, loaded and attached with raw bpf(2) calls (the xtask links no BPF
//! library): `BPF_PROG_LOAD`, then `BPF_LINK_CREATE` from a thread inside the namespace.
//! The link detaches the program when its descriptor is closed, also if the bench dies.
use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Result, bail};

use super::sys::{self, Ns};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The attachment; dropping it detaches the program.
pub struct XdpPass {
    _link: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> Result<OwnedFd> {
    // SAFETY: bpf(2) with an attr buffer of the size we pass, zero past the fields set.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the program and attaches it, in native mode, to `iface` in `ns`.
pub fn attach(ns: &Ns, iface: &str) -> Result<XdpPass> {
    use std::os::fd::AsRawFd as _;
    // r0 = XDP_PASS (2); exit.
    let insns: [u64; 2] = [u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    // prog_type, insn_cnt | insns | license | ... | expected_attach_type at byte 68.
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | (insns.len() as u64) << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[8] = u64::from(BPF_XDP) << 32;
    let prog = bpf(BPF_PROG_LOAD, &mut attr)?;
    let iface = std::ffi::CString::new(iface)?;
    let link = sys::enter(ns, move || {
        // SAFETY: a valid C string; the index is looked up in this thread's namespace.
        let ifindex = unsafe { libc::if_nametoindex(iface.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {iface:?} in the LB namespace");
        }
        // prog_fd, target_ifindex | attach_type, flags.
        let mut attr = [0u64; 16];
        attr[0] = prog.as_raw_fd() as u64 | u64::from(ifindex) << 32;
        attr[1] = u64::from(BPF_XDP) | u64::from(XDP_FLAGS_DRV_MODE) << 32;
        bpf(BPF_LINK_CREATE, &mut attr)
    })?;
    Ok(XdpPass { _link: link })
}
