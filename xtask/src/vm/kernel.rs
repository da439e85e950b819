//! Kernels to boot: the running one from /boot, or Debian kernel packages fetched with apt
//! into a cache.
//!
//! apt runs with a private configuration: its own sources list (deb.debian.org, or
//! `XLB_VM_DEBIAN_MIRROR`), lists, status file and downloads under `APT_ROOT/SUITE`, so this
//! works the same on any host with apt and the Debian archive keyring, and never changes the
//! host's apt state. A kernel once unpacked is reused as it is; delete its directory under
//! `target/vm-cache/kernels` to fetch the line's newest build again.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd;

/// A bootable kernel.
pub struct Kernel {
    /// What was asked for (`6.1`, `host`, ...).
    pub spec: String,
    /// Its `uname -r`.
    pub release: String,
    /// The bzImage.
    pub image: PathBuf,
    /// Its module tree (`lib/modules/RELEASE`); may not exist.
    pub modules: PathBuf,
    /// Where it came from: `PACKAGE=VERSION`, or `/boot`.
    pub source: String,
}

impl Kernel {
    /// Major and minor version, from the release (`5.10.0-46-amd64` → (5, 10)).
    pub fn version(&self) -> Option<(u32, u32)> {
        let mut parts = self.release.split(['.', '-', '+']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }
}

pub enum Resolved {
    Found(Kernel),
    /// It cannot be booted here, and why (only `host` may be unavailable without an error).
    Unavailable(String),
}

/// Debian kernel lines: version, suite, package (a metapackage that depends on the newest
/// image of the line).
const LINES: &[(&str, &str, &str)] = &[
    ("5.10", "bullseye", "linux-image-amd64"),
    ("6.1", "bookworm", "linux-image-amd64"),
    ("6.12", "bookworm", "linux-image-6.12-amd64"),
];

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Finds or fetches the kernel `spec` names (see `cargo xtask vm --help`).
pub fn resolve(spec: &str, cache: &Path, apt_root: &Path) -> Result<Resolved> {
    if spec == "host" {
        return Ok(host());
    }
    let (suite, package) = if let Some((_, suite, package)) = LINES.iter().find(|l| l.0 == spec) {
        (*suite, *package)
    } else if let Some((suite, package)) = spec.split_once(':')
        && package.starts_with("linux-image-")
        && !suite.is_empty()
    {
        (suite, package)
    } else {
        bail!(
            "unknown kernel `{spec}`: use host, {}, or SUITE:PACKAGE (e.g. bookworm:linux-image-6.1.0-50-amd64)",
            LINES.iter().map(|l| l.0).collect::<Vec<_>>().join(", ")
        );
    };
    let dir = cache.join(spec.replace([':', '/'], "_"));
    if let Some(k) = cached(spec, &dir)? {
        return Ok(Resolved::Found(k));
    }
    fetch(suite, package, &apt_root.join(suite), &dir)?;
    cached(spec, &dir)?.map(Resolved::Found).ok_or_else(|| {
        anyhow!(
            "{} holds no kernel after unpacking {package}",
            dir.display()
        )
    })
}

/// The running kernel, when its image is in /boot (a distribution kernel; a cloud VM's or a
/// container's kernel usually is not).
fn host() -> Resolved {
    let release = match cmd::output(Command::new("uname").arg("-r")) {
        Ok(r) => r.trim().to_string(),
        Err(e) => return Resolved::Unavailable(format!("{e:#}")),
    };
    let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    if !image.is_file() {
        return Resolved::Unavailable(format!(
            "no {} to boot (`cargo xtask test` runs the same tests on it directly)",
            image.display()
        ));
    }
    if fs::File::open(&image).is_err() {
        return Resolved::Unavailable(format!("{} is not readable (not root?)", image.display()));
    }
    Resolved::Found(Kernel {
        spec: "host".into(),
        modules: PathBuf::from(format!("/lib/modules/{release}")),
        release,
        image,
        source: "/boot".into(),
    })
}

/// The kernel unpacked in `dir` by an earlier run.
fn cached(spec: &str, dir: &Path) -> Result<Option<Kernel>> {
    let read = |name: &str| fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string());
    let (Ok(release), Ok(source)) = (read("release"), read("source")) else {
        return Ok(None);
    };
    let image = dir.join("vmlinuz");
    if !image.is_file() {
        return Ok(None);
    }
    Ok(Some(Kernel {
        spec: spec.into(),
        modules: dir.join("modules"),
        release,
        image,
        source,
    }))
}

/// Downloads `package` (following metapackages to the image) from `suite` and unpacks the
/// image and its modules into `dir`: `vmlinuz`, `modules/`, `release`, `source`.
fn fetch(suite: &str, package: &str, root: &Path, dir: &Path) -> Result<()> {
    if !Path::new(KEYRING).is_file() {
        bail!("{KEYRING} is missing: `apt-get install debian-archive-keyring`");
    }
    prepare_apt_root(suite, root)?;
    cmd::run(apt(root).arg("update"))
        .with_context(|| format!("fetching Debian {suite}'s package lists"))?;
    let (image, version) = image_package(root, package)?;
    let debs = root.join("debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    cmd::run(apt(root).arg("download").arg(&image).current_dir(&debs))?;
    let deb = only_file(&debs, ".deb")?;

    let tmp = PathBuf::from(format!("{}.tmp", dir.display()));
    let _ = fs::remove_dir_all(&tmp);
    let unpacked = tmp.join("pkg");
    fs::create_dir_all(&unpacked).with_context(|| format!("creating {}", unpacked.display()))?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let boot = unpacked.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("{image} has no boot/"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| anyhow!("{image} has no boot/vmlinuz-*"))?;
    let release = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(&release))
        .find(|d| d.is_dir())
        .ok_or_else(|| anyhow!("{image} has no lib/modules/{release}"))?;
    rename(&vmlinuz, &tmp.join("vmlinuz"))?;
    rename(&modules, &tmp.join("modules"))?;
    fs::remove_dir_all(&unpacked).with_context(|| format!("removing {}", unpacked.display()))?;
    fs::write(tmp.join("release"), format!("{release}\n"))?;
    fs::write(tmp.join("source"), format!("{image}={version}\n"))?;
    let _ = fs::remove_dir_all(dir);
    rename(&tmp, dir)?;
    fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    eprintln!(
        "vm: {image} {version} ({release}) unpacked in {}",
        dir.display()
    );
    Ok(())
}

/// Sources, empty status file and directories of the private apt configuration.
fn prepare_apt_root(suite: &str, root: &Path) -> Result<()> {
    for d in [
        "sources.list.d",
        "preferences.d",
        "state/lists/partial",
        "cache/archives/partial",
    ] {
        let d = root.join(d);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mirror =
        env::var("XLB_VM_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let security = env::var("XLB_VM_DEBIAN_SECURITY_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian-security".into());
    let opts = format!("[signed-by={KEYRING}]");
    let sources = format!(
        "deb {opts} {mirror} {suite} main\n\
         deb {opts} {mirror} {suite}-updates main\n\
         deb {opts} {security} {suite}-security main\n"
    );
    fs::write(root.join("sources.list"), sources)?;
    let status = root.join("state/status");
    if !status.exists() {
        fs::write(&status, "")?;
    }
    Ok(())
}

/// apt-get (or apt-cache) with the private configuration under `root`.
fn apt_with(program: &str, root: &Path) -> Command {
    let mut c = Command::new(program);
    let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
    for o in [
        opt("Dir::Etc::SourceList", &root.join("sources.list")),
        opt("Dir::Etc::SourceParts", &root.join("sources.list.d")),
        opt("Dir::Etc::Preferences", &root.join("preferences")),
        opt("Dir::Etc::PreferencesParts", &root.join("preferences.d")),
        opt("Dir::State", &root.join("state")),
        opt("Dir::State::status", &root.join("state/status")),
        opt("Dir::Cache", &root.join("cache")),
        "Acquire::Languages=none".into(),
    ] {
        c.arg("-o").arg(o);
    }
    if cmd::is_root() {
        // The target directory is not readable by apt's sandbox user.
        c.args(["-o", "APT::Sandbox::User=root"]);
    }
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn apt(root: &Path) -> Command {
    apt_with("apt-get", root)
}

/// The image package `package` stands for, and its version: a metapackage
/// (`linux-image-amd64`) is followed through its `linux-image-*` dependency.
fn image_package(root: &Path, package: &str) -> Result<(String, String)> {
    let mut name = package.to_string();
    for _ in 0..4 {
        let show = cmd::output(
            apt_with("apt-cache", root)
                .args(["show", "--no-all-versions"])
                .arg(&name),
        )?;
        let field = |key: &str| {
            show.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let version =
            field("Version:").ok_or_else(|| anyhow!("apt-cache show {name}: no Version"))?;
        let next = field("Depends:").and_then(|deps| {
            deps.split(',')
                .map(|d| d.trim().split([' ', '|']).next().unwrap_or("").to_string())
                .find(|d| d.starts_with("linux-image-"))
        });
        match next {
            Some(n) => name = n,
            None => return Ok((name, version)),
        }
    }
    bail!("{package}: more than 4 levels of linux-image-* metapackages")
}

/// The one file in `dir` whose name ends with `suffix`.
fn only_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!("{n} files *{suffix} in {}, want one", dir.display()),
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
}
