//! Least privilege: once the data plane is loaded and attached, xlb keeps only the
//! capabilities its running work needs, in every thread, and removes the others from
//! the bounding set too, so no later `execve` (of anything) gets them back.
//!
//! What needs which (README, "Privileges", has the whole model):
//! - start only: loading programs and creating maps (CAP_BPF and CAP_PERFMON, or
//!   CAP_SYS_ADMIN for both), RLIMIT_MEMLOCK before Linux 5.11 (CAP_SYS_RESOURCE);
//! - while running: attaching the reply program where new backends' replies arrive, and
//!   their forwarding switches (CAP_NET_ADMIN); HTTP listeners a reload adds below port 1024
//!   (CAP_NET_BIND_SERVICE); map writes, pins and link creation on the descriptors xlb
//!   holds need no capability from Linux 6.5 on, but before it every `bpf()` call needs
//!   CAP_BPF while unprivileged BPF is disabled (the usual setting), so it is kept there.
//!
//! Capabilities are per thread and `capset` changes only the caller's: every other thread
//! of the process (tokio's, the proxy workers) is sent a signal whose handler makes the same
//! two calls, until `/proc/self/task/*/status` shows all of them lowered.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::util::KernelVersion;
use tracing::info;

const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_BPF: u32 = 39;
const NAMES: [(u32, &str); 3] = [(CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"), (CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_BPF, "CAP_BPF")];
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_V3: u32 = 0x2008_0522;
/// How many times the threads not yet lowered are signalled, 10 ms apart.
const ROUNDS: usize = 100;

/// What the signal handler applies: capset's header (version, pid 0 = the calling thread),
/// its data (effective, permitted, inheritable, low words then high words), and the
/// capabilities to remove from the bounding set.
static HEADER: [AtomicU32; 2] = [AtomicU32::new(CAP_V3), AtomicU32::new(0)];
static DATA: [AtomicU32; 6] = [const { AtomicU32::new(0) }; 6];
static UNBOUND: AtomicU64 = AtomicU64::new(0);

/// The capabilities `xlb run` keeps once ready, on this kernel.
fn kept() -> anyhow::Result<u64> {
    let kernel = KernelVersion::current().map_err(|e| anyhow::anyhow!("reading the kernel version: {e}"))?;
    let mut keep = 1 << CAP_NET_ADMIN | 1 << CAP_NET_BIND_SERVICE;
    if kernel < KernelVersion::new(6, 5, 0) {
        keep |= 1 << CAP_BPF;
    }
    Ok(keep)
}

/// Lowers every thread's capabilities to those of [`kept`] it has; logs what is left.
pub(super) fn drop_unneeded() -> anyhow::Result<()> {
    let (effective, permitted, bounding) = caps("/proc/thread-self/status")?;
    let keep = effective & kept()?;
    // Without CAP_SETPCAP the bounding set stays as it is (xlb then has little to drop).
    let bound = if effective & 1 << CAP_SETPCAP != 0 { bounding & keep } else { bounding };
    let names: Vec<&str> = NAMES.iter().filter(|(c, _)| keep & 1 << c != 0).map(|(_, n)| *n).collect();
    if (effective | permitted, bounding) == (keep, bound) {
        info!(kept = %names.join(","), "capabilities: nothing to drop");
        return Ok(());
    }
    for (i, word) in [keep as u32, keep as u32, 0, (keep >> 32) as u32, (keep >> 32) as u32, 0].into_iter().enumerate() {
        DATA[i].store(word, SeqCst);
    }
    UNBOUND.store(bounding & !bound, SeqCst);
    // SAFETY: `lower` makes only async-signal-safe system calls on statics.
    let installed = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_signal as *const () as usize;
        act.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGRTMIN(), &act, std::ptr::null_mut())
    };
    if installed != 0 {
        return Err(std::io::Error::last_os_error()).context("installing the handler that drops capabilities");
    }
    if lower() != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    for _ in 0..ROUNDS {
        let pending = higher_threads(keep, bound)?;
        if pending.is_empty() {
            info!(kept = %names.join(","), "capabilities dropped in every thread, the others also from the bounding set");
            return Ok(());
        }
        for tid in pending {
            // SAFETY: a signal to a thread of this process, whose handler is installed.
            unsafe { libc::tgkill(libc::getpid(), tid, libc::SIGRTMIN()) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("threads of xlb kept capabilities after {ROUNDS} signals: {:?}", higher_threads(keep, bound)?)
}

extern "C" fn on_signal(_: libc::c_int) {
    lower();
}

/// The calling thread: the bounding set first (that needs CAP_SETPCAP, which capset then
/// removes), then effective, permitted and inheritable. Returns capset's result.
fn lower() -> libc::c_long {
    let unbound = UNBOUND.load(SeqCst);
    for cap in (0..64).filter(|c| unbound & 1 << c != 0) {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
    // SAFETY: the header and data are statics laid out as capset reads them (u32 words).
    unsafe { libc::syscall(libc::SYS_capset, HEADER.as_ptr(), DATA.as_ptr()) }
}

/// Threads of this process whose effective or permitted set holds more than `keep`, or
/// whose bounding set more than `bound`.
fn higher_threads(keep: u64, bound: u64) -> anyhow::Result<Vec<libc::pid_t>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        // A thread that ended meanwhile has no status any more.
        if let Ok((eff, prm, bnd)) = caps(&format!("/proc/self/task/{tid}/status"))
            && ((eff | prm) & !keep != 0 || bnd & !bound != 0)
        {
            out.push(tid);
        }
    }
    Ok(out)
}

/// A thread's effective, permitted and bounding sets, from its `status` file.
fn caps(path: &str) -> anyhow::Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        let hex = status.lines().find_map(|l| l.strip_prefix(name))?.trim();
        u64::from_str_radix(hex, 16).ok()
    };
    match (field("CapEff:"), field("CapPrm:"), field("CapBnd:")) {
        (Some(e), Some(p), Some(b)) => Ok((e, p, b)),
        _ => bail!("{path}: no CapEff, CapPrm or CapBnd line"),
    }
}
