//! A cgroup v2 child of the tests' own, for socket-level balancing: xlb's socket programs
//! are attached to it, and only processes the test starts (or a test container's) are
//! moved into it, so nothing else on the machine is balanced at the socket.
//!
//! The unified hierarchy is mounted (again) at [`MOUNT`], under /run: `ip netns exec`, which
//! runs xlb in its namespace, hides the host's /sys and with it /sys/fs/cgroup/unified,
//! while a mount under /run made before it stays visible. The child is named
//! `xt<pid hex>x<n>cg` like the tests' other objects, so leftovers of a killed test are
//! removed by [`crate::cleanup_stale`].

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::util::{self, unique_id};

/// Where the tests mount the cgroup v2 hierarchy.
pub const MOUNT: &str = "/run/xlb-tests/cgroup2";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Mounts the hierarchy at [`MOUNT`] if it is not, and makes an empty child.
    pub fn new() -> Cgroup {
        mount();
        let dir = Path::new(MOUNT).join(format!("xt{}cg", unique_id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        Cgroup { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves process `pid` (all its threads) into the child.
    pub fn add(&self, pid: u32) {
        let procs = self.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }

    /// The processes in the child.
    pub fn procs(&self) -> Vec<u32> {
        let text = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// `prog args...` started inside the child: a shell moves itself in, then execs it, so
    /// the program's first connect() is already the child's. `prog` goes by its path: a
    /// busybox shell (the VM guests') would exec its own applet of that name instead.
    pub fn command(&self, prog: &str, args: &[&str]) -> Command {
        let procs = self.dir.join("cgroup.procs");
        let mut c = util::cmd("sh", ["-c", r#"echo $$ > "$0" && exec "$@""#]);
        c.arg(procs).arg(util::which(prog).unwrap_or_else(|| prog.into())).args(args);
        c
    }
}

impl Drop for Cgroup {
    /// Moves what is left (a test container's processes) back to the root, then removes
    /// the child.
    fn drop(&mut self) {
        remove(&self.dir);
    }
}

fn remove(dir: &Path) {
    let root = Path::new(MOUNT).join("cgroup.procs");
    for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
        let _ = std::fs::write(&root, pid.trim());
    }
    // A process that just exited may hold the cgroup for a moment.
    let gone = util::wait_for(Duration::from_secs(5), Duration::from_millis(50), || std::fs::remove_dir(dir).ok());
    if gone.is_none() && dir.exists() {
        eprintln!("warning: cgroup {} could not be removed", dir.display());
    }
}

/// Removes children of dead test processes.
pub fn cleanup_stale() {
    let Ok(list) = std::fs::read_dir(MOUNT) else { return };
    for entry in list.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with("cg") && util::owner_pid(&name).is_some_and(|p| !util::pid_alive(p)) {
            remove(&entry.path());
        }
    }
}

fn is_cgroup2(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: a valid path and out pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

fn mount() {
    let at = Path::new(MOUNT);
    if is_cgroup2(at) {
        return;
    }
    std::fs::create_dir_all(at).unwrap_or_else(|e| panic!("creating {MOUNT}: {e}"));
    if let Err(e) = util::try_run(&mut util::cmd("mount", ["-t", "cgroup2", "cgroup2", MOUNT])) {
        panic!("the socket-level tests need cgroup v2, and mounting it at {MOUNT} failed: {e}");
    }
}
