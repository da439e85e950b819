//! Socket-level balancing for local callers: the cgroup sock_addr programs (`lb-ebpf`'s
//! `sock.rs`) attached to one cgroup v2 directory, whose processes and their descendants'
//! connect() and sendmsg() to a VIP:port go straight to a backend of the same selection
//! tables the XDP program uses.
//!
//! cgroup v2 only: a hybrid host (Docker with cgroup v1) usually has the unified hierarchy
//! at /sys/fs/cgroup/unified; when no cgroup2 is mounted, xlb mounts one (there, else at
//! /run/xlb/cgroup2) and leaves it mounted. Every process is in some cgroup of that
//! hierarchy, so its root (the default) takes in the whole host, containers included.
//!
//! The links are pinned like the others (`Dataplane::keep`, as `PROGRAM@cgroup`): a local
//! caller keeps reaching its services while no xlb runs, as external clients do through
//! the kept XDP program. An adopting run attaches its own programs beside the kept ones
//! (several programs per hook) before the kept links are unpinned: at no moment is a
//! connect() left unbalanced; while both are there the second sees a backend address, not
//! a VIP, and leaves it.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use lb_common::names::SOCK_PROGS;
use tracing::{info, warn};

use super::{Attachment, Dataplane, LinkId, features, program};
use crate::config::{SocketLb, Switch};

/// The "interface" of the cgroup links in `Attachment` and in pin names.
pub const CGROUP: &str = "cgroup";
/// `statfs` type of a cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Where xlb mounts the unified hierarchy when the host has none: the hybrid layout's
/// place, else one of its own (the first that can be made and mounted).
const MOUNT_AT: [&str; 2] = ["/sys/fs/cgroup/unified", "/run/xlb/cgroup2"];

impl Dataplane {
    /// Turns socket-level balancing on as `cfg` says: for `auto`, only when the kernel has
    /// what it needs (else one line saying what is missing, and local callers keep the
    /// packet path). A configured cgroup that is not a cgroup v2 directory fails the start
    /// either way: that is a mistake in the config, not a kernel that cannot.
    pub fn start_socket_lb(&mut self, cfg: &SocketLb) -> anyhow::Result<()> {
        self.socket_lb = cfg.clone();
        if cfg.enabled == Switch::Off {
            info!("socket-level balancing off (dataplane.socket_lb.enabled: false)");
            return Ok(());
        }
        if let Some(dir) = &cfg.cgroup {
            check_cgroup2(dir)?;
        }
        let started = features::socket_lb().and_then(|()| {
            let cgroup = match &cfg.cgroup {
                Some(dir) => dir.clone(),
                None => unified_root()?,
            };
            self.attach_sockets(&cgroup).map(|()| cgroup)
        });
        match started {
            Ok(cgroup) => {
                info!(cgroup = %cgroup.display(), "socket-level balancing on: local callers in this cgroup connect straight to backends");
                Ok(())
            }
            Err(e) if cfg.enabled == Switch::Auto => {
                self.detach_sockets()?;
                warn!("socket-level balancing unavailable, local callers take the packet path: {e:#}");
                Ok(())
            }
            Err(e) => Err(e.context("dataplane.socket_lb.enabled is true")),
        }
    }

    /// `dataplane.socket_lb` as the start applied it.
    pub fn socket_lb_config(&self) -> &SocketLb {
        &self.socket_lb
    }

    /// Loads (verifies) the socket programs, those not loaded yet.
    pub fn load_socket_programs(&mut self) -> anyhow::Result<()> {
        for (name, _) in SOCK_PROGS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            if prog.fd().is_err() {
                prog.load().with_context(|| format!("verifying {name}"))?;
            }
        }
        Ok(())
    }

    /// Loads the socket programs and attaches each to `cgroup`, beside any program there.
    fn attach_sockets(&mut self, cgroup: &Path) -> anyhow::Result<()> {
        self.load_socket_programs()?;
        for (name, hook) in SOCK_PROGS {
            let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
            let kept = self.kept_link(name, CGROUP);
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            // As a BPF link (5.7+; xlb needs 5.10): links always sit beside other programs,
            // and the kernel takes no attach flags for them.
            let id = prog.attach(dir, CgroupAttachMode::Single).with_context(|| format!("attaching {name} to the {hook} hook of {}", cgroup.display()))?;
            // The kept link goes with its pin, once ours is in place (`finish_adoption`).
            drop(kept);
            self.attachments.push(Attachment { program: name, iface: CGROUP.to_owned(), link: LinkId::Sock(id) });
        }
        self.pin_new()
    }
}

impl Dataplane {
    /// Detaches what `attach_sockets` attached before it failed.
    fn detach_sockets(&mut self) -> anyhow::Result<()> {
        let (sockets, others) = std::mem::take(&mut self.attachments).into_iter().partition(|a| a.iface == CGROUP);
        self.attachments = others;
        for a in sockets {
            if let LinkId::Sock(id) = a.link {
                program::<CgroupSockAddr>(&mut self.ebpf, a.program)?.detach(id).with_context(|| format!("detaching {}", a.program))?;
            }
        }
        Ok(())
    }
}

fn check_cgroup2(dir: &Path) -> anyhow::Result<()> {
    if !is_cgroup2(dir) {
        bail!("{} is not a cgroup v2 directory (dataplane.socket_lb.cgroup)", dir.display());
    }
    Ok(())
}

/// The root of the unified hierarchy, mounted if there is none.
fn unified_root() -> anyhow::Result<PathBuf> {
    if let Some(root) = cgroup2_mount()? {
        return Ok(root);
    }
    let mut tried = Vec::new();
    for at in MOUNT_AT {
        match mount_cgroup2(Path::new(at)) {
            Ok(()) => {
                info!(at, "no cgroup v2 hierarchy was mounted: mounted one");
                return Ok(at.into());
            }
            Err(e) => tried.push(format!("{at}: {e:#}")),
        }
    }
    bail!("no cgroup v2 hierarchy is mounted and none could be: {}", tried.join("; "))
}

/// The first cgroup2 mount point in this mount namespace.
fn cgroup2_mount() -> anyhow::Result<Option<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(text.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(unescape(point)))
    }))
}

/// mountinfo writes space, tab, newline and backslash in octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn mount_cgroup2(at: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    let target = std::ffi::CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe { libc::mount(c"cgroup2".as_ptr(), target.as_ptr(), c"cgroup2".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mount -t cgroup2");
    }
    Ok(())
}

fn is_cgroup2(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: a valid path and out pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/sys/fs/cgroup/unified"), "/sys/fs/cgroup/unified");
        assert_eq!(unescape(r"/run/my\040cgroup\134x"), r"/run/my cgroup\x");
        assert_eq!(unescape(r"/odd\4"), r"/odd\4");
    }

    #[test]
    fn a_configured_directory_must_be_cgroup2() {
        let e = check_cgroup2(Path::new("/proc")).unwrap_err().to_string();
        assert_eq!(e, "/proc is not a cgroup v2 directory (dataplane.socket_lb.cgroup)");
    }
}
