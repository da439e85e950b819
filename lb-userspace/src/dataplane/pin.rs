//! Where a kept data plane waits between two `xlb run`s: pins on the BPF file system.
//!
//! One directory per lock scope (network namespace + interface, as `xlb run` locks):
//! `<bpffs>/xlb/<netns-inode>-<iface>/` (bpffs: `/sys/fs/bpf` unless `--bpffs`) holding `maps/NAME`, `progs/NAME` and
//! `links/PROGRAM@IFACE`. The pins exist only while no xlb runs on the scope: a run
//! started with `--keep-dataplane` writes them on its way out, the next run adopts
//! what they hold and removes them (it holds the descriptors from then on), and
//! `xlb down` removes them, which detaches the programs and frees the maps.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The directory under the BPF file system that holds every scope.
const DIR: &str = "xlb";
/// Where the BPF file system is mounted by convention (systemd, iproute2, libbpf).
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// `statfs` type of the BPF file system.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The name both the lock file and the pin directory use for `iface` in this network
/// namespace: interface names repeat across namespaces, namespace inodes do not (while
/// the namespace lives).
pub fn scope_name(iface: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let netns = std::fs::metadata("/proc/self/ns/net").context("reading this network namespace")?.ino();
    Ok(format!("{netns}-{iface}"))
}

/// One xlb per interface: a second one would fight over the same hooks, maps and pins.
/// `xlb down` takes the same lock, so it never pulls pins from under a starting run.
pub fn lock(scope: &str, iface: &str) -> anyhow::Result<File> {
    let dir = "/run/xlb";
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    let path = format!("{dir}/{scope}.lock");
    let file = File::create(&path).with_context(|| format!("creating {path}"))?;
    // SAFETY: a valid descriptor; the lock lives as long as `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another xlb is already running on {iface} (lock {path} is held)");
    }
    Ok(file)
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid path and out pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Fails unless a BPF file system is mounted at `bpffs`. xlb does not mount one itself:
/// under `ip netns exec` (or in any private mount namespace) the mount would die with
/// the process, and the pins with it.
pub fn check_bpffs(bpffs: &Path) -> anyhow::Result<()> {
    if !is_bpffs(bpffs) {
        bail!(
            "no BPF file system at {}: mount one (`mount -t bpf bpf {}`), or give --bpffs a \
             directory where one is mounted (`ip netns exec` hides the host's /sys/fs/bpf)",
            bpffs.display(),
            bpffs.display()
        );
    }
    Ok(())
}

/// Every scope directory under `bpffs` (none when no BPF file system is mounted there).
pub fn scopes(bpffs: &Path) -> anyhow::Result<Vec<Scope>> {
    if !is_bpffs(bpffs) {
        return Ok(Vec::new());
    }
    Ok(entries(&bpffs.join(DIR))?.into_iter().map(|dir| Scope { name: file_name(&dir), dir }).collect())
}

/// The paths in `dir`, sorted; none when it does not exist.
fn entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let list = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut paths = list.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>().with_context(|| format!("listing {}", dir.display()))?;
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Removes the empty directory `dir`, if it is there.
fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", dir.display())),
        _ => Ok(()),
    }
}

/// The pin directory of one scope. It may not exist.
#[derive(Clone)]
pub struct Scope {
    dir: PathBuf,
    name: String,
}

impl Scope {
    /// The scope of `name` (from [`scope_name`]) under `bpffs`, if a BPF file system is
    /// mounted there.
    pub fn find(bpffs: &Path, name: &str) -> Option<Self> {
        is_bpffs(bpffs).then(|| Self { dir: bpffs.join(DIR).join(name), name: name.to_owned() })
    }

    /// The scope of `name` with its directories made: for writing pins.
    pub fn create(bpffs: &Path, name: &str) -> anyhow::Result<Self> {
        check_bpffs(bpffs)?;
        let scope = Self { dir: bpffs.join(DIR).join(name), name: name.to_owned() };
        for sub in ["maps", "progs", "links"] {
            let d = scope.dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(scope)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a kept data plane waits here (its maps are what matters).
    pub fn is_kept(&self) -> bool {
        std::fs::read_dir(self.dir.join("maps")).is_ok_and(|mut d| d.next().is_some())
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join("progs").join(name)
    }

    pub fn link(&self, program: &str, iface: &str) -> PathBuf {
        self.dir.join("links").join(format!("{program}@{iface}"))
    }

    /// The pinned links, as (program, interface, path).
    pub fn links(&self) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
        let mut out = Vec::new();
        for path in entries(&self.dir.join("links"))? {
            let name = file_name(&path);
            let Some((program, iface)) = name.split_once('@') else { bail!("unexpected pin {}", path.display()) };
            out.push((program.to_owned(), iface.to_owned(), path));
        }
        out.sort();
        Ok(out)
    }

    /// Unpins everything, links first (which detaches their programs), then programs
    /// and maps (which frees them once nothing else holds them), and removes the
    /// directories. Returns what was unpinned; nothing when the scope does not exist.
    pub fn remove(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for sub in ["links", "progs", "maps"] {
            let dir = self.dir.join(sub);
            for p in entries(&dir)? {
                std::fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
                removed.push(p);
            }
            remove_dir(&dir)?;
        }
        remove_dir(&self.dir)?;
        Ok(removed)
    }
}

/// `xlb down`: removes the data plane kept under `bpffs` for `iface` in this network
/// namespace, or every kept one. A scope whose xlb is running is left alone (stop it first). Returns
/// what it did, one line each.
pub fn down(bpffs: &Path, iface: Option<&str>) -> anyhow::Result<Vec<String>> {
    let scopes = match iface {
        Some(iface) => Scope::find(bpffs, &scope_name(iface)?).into_iter().collect(),
        None => scopes(bpffs)?,
    };
    let mut lines = Vec::new();
    let mut busy = Vec::new();
    for scope in scopes {
        let iface = scope.name().split_once('-').map_or(scope.name(), |(_, i)| i).to_owned();
        let Ok(_lock) = lock(scope.name(), &iface) else {
            busy.push(format!("{} ({iface})", scope.name()));
            continue;
        };
        for path in scope.remove()? {
            let what = match path.parent().and_then(Path::file_name).and_then(|n| n.to_str()) {
                Some("links") => "detached",
                Some("progs") => "unloaded",
                _ => "freed",
            };
            lines.push(format!("removed {} ({what})", path.display()));
        }
    }
    if is_bpffs(bpffs) {
        // The top directory goes once empty; the next keep makes it again.
        let _ = std::fs::remove_dir(bpffs.join(DIR));
    }
    if !busy.is_empty() {
        bail!("an xlb is running on {}: stop it, then run `xlb down` again", busy.join(", "));
    }
    if lines.is_empty() {
        lines.push("nothing kept: no xlb programs, pins or links to remove".to_owned());
    }
    Ok(lines)
}
