//! The kernel modules the tests need, taken from the kernel's package with the modules
//! they depend on, decompressed (busybox's insmod reads plain `.ko` files).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use super::kernel::Kernel;

/// Modules the tests need when the kernel has them as modules (Debian's do): veth pairs,
/// and the clsact qdisc and BPF classifier for kernels without TCX (before 6.6).
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf"];

pub struct Module {
    pub name: String,
    /// Uncompressed: busybox's insmod hands the bytes to init_module as they are.
    pub data: Vec<u8>,
}

/// [`MODULES`] that `kernel` has as modules, with what they depend on, dependencies first.
/// Built-in ones are skipped; one that is neither is reported and left out (the test that
/// needs it fails and says what is missing).
pub fn modules(kernel: &Kernel) -> Result<Vec<Module>> {
    let builtin = fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut files = BTreeMap::new();
    if kernel.modules.is_dir() {
        index(&kernel.modules.join("kernel"), &mut files)?;
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for m in MODULES {
        add_module(&module_name(m), &files, &builtin, &mut seen, &mut out)?;
    }
    Ok(out)
}

fn add_module(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<Module>,
) -> Result<()> {
    if !seen.insert(name.to_string()) || builtin.contains(name) {
        return Ok(());
    }
    let Some(path) = files.get(name) else {
        eprintln!("vm: warning: module {name} is neither built in nor in the module tree");
        return Ok(());
    };
    let data = read_module(path)?;
    for dep in depends(&data).with_context(|| format!("reading {}", path.display()))? {
        add_module(&module_name(&dep), files, builtin, seen, out)?;
    }
    out.push(Module {
        name: name.to_string(),
        data,
    });
    Ok(())
}

/// `kernel/drivers/net/veth.ko.xz` → `veth`; `-` and `_` are the same in module names.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Every module file under `dir`, by name.
fn index(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_dir() {
            index(&path, files)?;
        } else if path.to_string_lossy().contains(".ko") {
            files.insert(module_name(&path.to_string_lossy()), path);
        }
    }
    Ok(())
}

/// A module file's bytes, decompressed (`.ko.xz`, `.ko.zst`, `.ko.gz`).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} -dc (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The `depends=` list of a module's `.modinfo` section (ELF64, little endian).
fn depends(elf: &[u8]) -> Result<Vec<String>> {
    let modinfo = section(elf, ".modinfo")?.ok_or_else(|| anyhow!("no .modinfo section"))?;
    Ok(modinfo
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"depends="))
        .map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

/// The little-endian number of `len` bytes at `at`.
fn le_at(elf: &[u8], at: usize, len: usize) -> Result<usize> {
    let bytes = elf.get(at..at + len).ok_or_else(|| anyhow!("truncated"))?;
    Ok(bytes.iter().rev().fold(0, |n, &b| n << 8 | usize::from(b)))
}

/// The contents of the section called `wanted`.
fn section<'a>(elf: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>> {
    ensure!(
        elf.len() >= 64 && elf.starts_with(b"\x7fELF") && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| le_at(elf, o, 2);
    let u32_at = |o: usize| le_at(elf, o, 4);
    let u64_at = |o: usize| le_at(elf, o, 8);
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    // (name offset, file offset, size) of section `i`.
    let header = |i: usize| -> Result<(usize, usize, usize)> {
        let h = shoff + i * shentsize;
        Ok((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let body = |off: usize, size: usize| {
        elf.get(off..off + size)
            .ok_or_else(|| anyhow!("section out of bounds"))
    };
    let (_, stroff, strsize) = header(shstrndx)?;
    let strtab = body(stroff, strsize)?;
    for i in 0..shnum {
        let (name, off, size) = header(i)?;
        let name = strtab.get(name..).unwrap_or_default();
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name == wanted.as_bytes() {
            return Ok(Some(body(off, size)?));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/drivers/net/veth.ko.xz"), "veth");
        assert_eq!(
            module_name("kernel/net/sched/sch_ingress.ko"),
            "sch_ingress"
        );
        assert_eq!(module_name("nf-conntrack"), "nf_conntrack");
    }

    #[test]
    fn little_endian_numbers() {
        let bytes = [0x34, 0x12, 0x78, 0x56, 0, 0, 0, 0x80];
        assert_eq!(le_at(&bytes, 0, 2).unwrap(), 0x1234);
        assert_eq!(le_at(&bytes, 0, 4).unwrap(), 0x5678_1234);
        assert_eq!(le_at(&bytes, 0, 8).unwrap(), 0x8000_0000_5678_1234);
        assert!(le_at(&bytes, 4, 8).is_err());
    }
}
