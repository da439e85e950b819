//! An uncompressed `newc` cpio archive, the format of an initramfs.
use std::{
    collections::BTreeMap,
    fs::File,
    io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

pub enum Node {
    Dir,
    File { from: PathBuf, mode: u32 },
    Bytes { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// An archive being put together: paths (absolute, as in the guest) to what they are.
/// Parents are added as directories; the first entry for a path wins.
#[derive(Default)]
pub struct Cpio {
    nodes: BTreeMap<String, Node>,
}

impl Cpio {
    pub fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.nodes
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Node::Dir);
            parent = p.parent();
        }
        self.nodes.entry(path).or_insert(node);
    }

    pub fn dir(&mut self, path: &str) {
        self.add(path, Node::Dir);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.add(path, Node::Symlink(target.to_string()));
    }

    pub fn bytes(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.add(path, Node::Bytes { data, mode });
    }

    /// An executable at `path`, and the shared libraries `ldd` says it loads, at their own
    /// paths (`ldd` follows the host's library path; the guest finds them at the same place).
    pub fn elf(&mut self, path: &str, from: &Path) -> Result<()> {
        self.add(
            path,
            Node::File {
                from: from.to_path_buf(),
                mode: 0o755,
            },
        );
        for lib in shared_libraries(from)? {
            let guest = lib.to_string_lossy().into_owned();
            self.add(
                &guest,
                Node::File {
                    from: lib,
                    mode: 0o755,
                },
            );
        }
        Ok(())
    }

    pub fn write(&self, w: &mut impl io::Write) -> Result<()> {
        for (ino, (path, node)) in self.nodes.iter().enumerate() {
            let ino = ino as u32 + 1;
            match node {
                Node::Dir => header(w, ino, 0o040755, 2, 0, path)?,
                Node::Symlink(target) => {
                    header(w, ino, 0o120777, 1, target.len(), path)?;
                    w.write_all(target.as_bytes())?;
                    pad(w, target.len())?;
                }
                Node::Bytes { data, mode } => {
                    header(w, ino, 0o100000 | mode, 1, data.len(), path)?;
                    w.write_all(data)?;
                    pad(w, data.len())?;
                }
                Node::File { from, mode } => {
                    let mut f =
                        File::open(from).with_context(|| format!("opening {}", from.display()))?;
                    let len = f.metadata()?.len() as usize;
                    header(w, ino, 0o100000 | mode, 1, len, path)?;
                    let copied = io::copy(&mut f, w)? as usize;
                    ensure!(
                        copied == len,
                        "{} changed while being copied",
                        from.display()
                    );
                    pad(w, len)?;
                }
            }
        }
        header(w, 0, 0, 1, 0, "TRAILER!!!")?;
        Ok(())
    }
}

/// A `newc` header and the NUL-terminated name, padded to 4 bytes.
fn header(
    w: &mut impl io::Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    name: &str,
) -> Result<()> {
    let size = u32::try_from(size).map_err(|_| anyhow!("{name}: over 4 GiB"))?;
    let namesize = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        0,
        0,
        namesize as u32,
        0,
    ];
    let mut h = String::from("070701");
    for f in fields {
        h += &format!("{f:08x}");
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, h.len() + namesize)
}

fn pad(w: &mut impl io::Write, len: usize) -> Result<()> {
    w.write_all(&[0; 3][..(4 - len % 4) % 4])?;
    Ok(())
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `exe`; none for a static one.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to copy.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let path = rest.trim().split(' ').next().unwrap_or("");
                if path.is_empty() || path == "not" {
                    bail!("{}: ldd cannot find {}", exe.display(), name.trim());
                }
                path
            }
            None => line.trim().split(' ').next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_has_parents_and_alignment() {
        let mut c = Cpio::default();
        c.bytes("/a/b/c", b"xyz".to_vec(), 0o644);
        c.symlink("/bin/sh", "busybox");
        let mut out = Vec::new();
        c.write(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        for name in [
            "a\0",
            "a/b\0",
            "a/b/c\0",
            "bin\0",
            "bin/sh\0",
            "TRAILER!!!\0",
        ] {
            assert!(text.contains(name), "{name:?} missing");
        }
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
    }
}
