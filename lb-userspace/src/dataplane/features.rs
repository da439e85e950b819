//! The kernel features xlb's programs need, probed before anything is loaded: a kernel that
//! lacks one makes `xlb run` fail with one line naming what is missing and since when Linux
//! has it, instead of a verifier log.
//!
//! Each feature is probed for itself (aya's feature probes: a trivial program or map of the
//! kind, a program calling the helper), not inferred from the version number, so kernels
//! with backports (RHEL's, for one) pass on their merits; the version only goes into the
//! message. Not probed, because xlb copes without them: native XDP on the interface (xlb
//! falls back to generic XDP and says so) and TCX links (6.6; a clsact qdisc before).
use std::{fmt::Write as _, io};

use anyhow::{Context as _, bail};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

/// The oldest kernel that has everything in [`FEATURES`].
pub const MINIMUM: &str = "5.10";

/// A kernel feature xlb needs.
pub struct Feature {
    /// What it is and what xlb uses it for.
    pub what: &'static str,
    /// The Linux release that introduced it.
    pub since: &'static str,
    probe: Probe,
}

enum Probe {
    Program(ProgramType),
    Map(MapType),
    Helper(ProgramType, BpfHelper),
    MmapableArray,
}

/// Everything `lb-ebpf` relies on, oldest first.
pub const FEATURES: &[Feature] = &[
    Feature { what: "TC BPF programs (xlb_fwd, xlb_reply)", since: "4.1", probe: Probe::Program(ProgramType::SchedClassifier) },
    Feature { what: "XDP programs (xlb_xdp)", since: "4.8", probe: Probe::Program(ProgramType::Xdp) },
    Feature { what: "LRU hash maps (the connection table)", since: "4.10", probe: Probe::Map(MapType::LruHash) },
    Feature {
        what: "bpf_redirect_map from XDP (XDP_REDIRECT to TX_PORTS)",
        since: "4.14",
        probe: Probe::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_redirect_map),
    },
    Feature {
        what: "bpf_fib_lookup from XDP (next hop of a rewritten packet)",
        since: "4.18",
        probe: Probe::Helper(ProgramType::Xdp, BpfHelper::BPF_FUNC_fib_lookup),
    },
    Feature {
        what: "bpf_fib_lookup from TC (next hop of a reply)",
        since: "4.18",
        probe: Probe::Helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_fib_lookup),
    },
    Feature { what: "DEVMAP_HASH maps (TX_PORTS)", since: "5.4", probe: Probe::Map(MapType::DevMapHash) },
    Feature { what: "mmapable arrays (BPF_F_MMAPABLE: the selection tables)", since: "5.5", probe: Probe::MmapableArray },
    Feature { what: "ring buffer maps (the kernel programs' log)", since: "5.8", probe: Probe::Map(MapType::RingBuf) },
    Feature {
        what: "bpf_redirect_neigh from TC (forwarding to backends past netfilter)",
        since: "5.10",
        probe: Probe::Helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_redirect_neigh),
    },
];

/// XDP metadata (`bpf_xdp_adjust_meta`, 4.15), how XDP hands a packet to TC. Optional:
/// some kernels refuse XDP programs the helper (a build's choice, not the release's), and
/// the programs then hand over through the `HANDOFF` map instead (see `lb_common::Handoff`).
pub fn xdp_metadata() -> anyhow::Result<bool> {
    is_helper_supported(ProgramType::Xdp, BpfHelper::BPF_FUNC_xdp_adjust_meta)
        .context("probing the kernel for XDP metadata (is xlb running as root?)")
}

/// What socket-level balancing needs beyond [`FEATURES`]; without it, local callers take
/// the packet path. The hooks themselves are not probed (loading a program says nothing of
/// its attach point): a kernel without one fails the attach, which says so.
pub const SOCKET_FEATURES: &[Feature] = &[
    Feature { what: "cgroup sock_addr programs (connect, sendmsg hooks)", since: "4.17", probe: Probe::Program(ProgramType::CgroupSockAddr) },
    Feature {
        what: "bpf_get_socket_cookie from cgroup sock_addr programs (a socket's backend)",
        since: "4.19",
        probe: Probe::Helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_get_socket_cookie),
    },
    Feature {
        what: "bpf_get_netns_cookie from cgroup sock_addr programs (source_hash's client)",
        since: "5.7",
        probe: Probe::Helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_get_netns_cookie),
    },
];

/// Probes [`SOCKET_FEATURES`]; the error names each missing one (recvmsg hooks need 5.2 and
/// getpeername hooks 5.8, which the attach finds out).
pub fn socket_lb() -> anyhow::Result<()> {
    let missing = missing(SOCKET_FEATURES)?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|f| format!("{} (Linux {})", f.what, f.since)).collect();
        bail!("this kernel ({}) lacks {}", release(), list.join("; "));
    }
    Ok(())
}

/// Probes every feature in [`FEATURES`]; the error names each missing one (and the kernel).
/// Needs the privileges `xlb run` needs anyway (root, or CAP_BPF and CAP_NET_ADMIN).
pub fn check() -> anyhow::Result<()> {
    let missing = missing(FEATURES)?;
    if !missing.is_empty() {
        bail!("{}", report(&release(), &missing));
    }
    Ok(())
}

/// The features of `list` this kernel lacks.
fn missing(list: &'static [Feature]) -> anyhow::Result<Vec<&'static Feature>> {
    let mut missing = Vec::new();
    for feature in list {
        let present = feature.probe().with_context(|| format!("probing the kernel for {} (is xlb running as root?)", feature.what))?;
        if !present {
            missing.push(feature);
        }
    }
    Ok(missing)
}

/// The one-line error for a kernel that lacks `missing`.
fn report(release: &str, missing: &[&Feature]) -> String {
    let mut s = format!("this kernel ({release}) lacks what xlb needs: ");
    for (i, f) in missing.iter().enumerate() {
        let _ = write!(s, "{}{} (Linux {})", if i == 0 { "" } else { "; " }, f.what, f.since);
    }
    let _ = write!(s, ". xlb needs Linux {MINIMUM} or later (or a kernel with these backported)");
    s
}

impl Feature {
    fn probe(&self) -> anyhow::Result<bool> {
        Ok(match &self.probe {
            Probe::Program(t) => is_program_supported(*t)?,
            Probe::Map(t) => is_map_supported(*t)?,
            Probe::Helper(t, h) => is_helper_supported(*t, *h)?,
            Probe::MmapableArray => mmapable_array()?,
        })
    }
}

/// Creates a one-entry array map with `BPF_F_MMAPABLE`: kernels before 5.5 reject the flag
/// with EINVAL.
fn mmapable_array() -> io::Result<bool> {
    /// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`; the rest stays zero.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        rest: [u32; 11],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    let attr = MapCreate { map_type: BPF_MAP_TYPE_ARRAY, key_size: 4, value_size: 4, max_entries: 1, map_flags: BPF_F_MMAPABLE, rest: [0; 11] };
    // SAFETY: bpf(2) with a valid, fully initialised attribute of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &raw const attr, std::mem::size_of::<MapCreate>() as libc::c_uint) };
    if fd >= 0 {
        // SAFETY: the descriptor was just returned to us and is not used elsewhere.
        unsafe { libc::close(fd as libc::c_int) };
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) => Ok(false),
        // Before 5.11 map memory is charged to RLIMIT_MEMLOCK: a small limit must not pass
        // for a missing feature. aya raises the limit when it meets this EPERM; do the same.
        Some(libc::EPERM) if raise_memlock() => mmapable_array(),
        _ => Err(err),
    }
}

/// Lifts RLIMIT_MEMLOCK (as aya does on kernels before 5.11); false if it already was
/// unlimited or could not be raised.
fn raise_memlock() -> bool {
    let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) } != 0 || cur.rlim_cur == libc::RLIM_INFINITY {
        return false;
    }
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to an initialised rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 }
}

/// `uname -r`.
fn release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown release".into();
    }
    // SAFETY: uname NUL-terminates the field.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_each_missing_feature_and_its_release() {
        let missing: Vec<&Feature> = FEATURES.iter().filter(|f| f.since == "5.8" || f.since == "5.10").collect();
        let msg = report("5.4.0-150-generic", &missing);
        assert_eq!(
            msg,
            "this kernel (5.4.0-150-generic) lacks what xlb needs: ring buffer maps (the kernel programs' log) \
             (Linux 5.8); bpf_redirect_neigh from TC (forwarding to backends past netfilter) (Linux 5.10). \
             xlb needs Linux 5.10 or later (or a kernel with these backported)"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn features_are_listed_oldest_first_and_minimum_is_the_newest() {
        let v = |s: &str| s.split('.').map(|p| p.parse::<u32>().unwrap()).collect::<Vec<_>>();
        assert!(FEATURES.windows(2).all(|w| v(w[0].since) <= v(w[1].since)));
        assert_eq!(FEATURES.last().unwrap().since, MINIMUM);
    }

    /// The kernel under test has everything (the data plane tests load the programs on it).
    #[test]
    fn this_kernel_passes() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: probes skipped");
            return;
        }
        check().unwrap();
        socket_lb().unwrap();
    }
}
