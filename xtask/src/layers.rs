//! `cargo xtask layers`: the import graph of the workspace's crates, one node per source file.
//! Fails on a cycle between files and on an import of lb-userspace going against its rooms.
//! A plain text scan: comments, strings and `#[cfg(test)] mod x { .. }` blocks are blanked first.
//! The task also reports long files and functions (`sizes.rs`).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    sizes,
    source::{self, ident},
};

const CRATES: &[&str] = &["lb-userspace/src", "lb-common/src", "lb-ebpf/src", "xtask/src", "tests/src"];
/// lb-userspace's top-level modules and the rooms each may import; `run` and the roots import anything.
const ROOMS: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("netdev", &[]),
    ("x509", &[]),
    ("access_log", &["config"]),
    ("discovery", &["config", "netdev"]),
    ("health", &["config"]),
    ("acme", &["config", "plan", "x509"]),
    ("plan", &["config", "discovery", "netdev"]),
    ("dataplane", &["config", "netdev", "plan"]),
    ("announce", &["config", "netdev", "plan"]),
    ("proxy", &["config", "plan", "health", "acme", "x509", "access_log"]),
    ("observe", &["config", "discovery", "health", "plan", "dataplane", "proxy", "acme", "access_log"]),
    ("import", &["config"]),
];

struct File {
    path: PathBuf,
    text: Vec<u8>,
    mods: Vec<String>,
    root: usize,
    module: Vec<String>,
}

/// The crates `cargo xtask test` holds to these rules: all of them.
pub const GATED: &[&str] = CRATES;

/// `cargo xtask layers`: imports and sizes of every crate; reports both before failing.
pub fn layers() -> Result<()> {
    let failed: Vec<String> = [check(CRATES), sizes::check(sizes::ALL)].into_iter().filter_map(Result::err).map(|e| format!("{e:#}")).collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

pub fn check(crates: &[&str]) -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("no workspace")?;
    let (mut files, mut problems, mut imports) = (Vec::new(), Vec::new(), 0);
    for dir in crates {
        let start = files.len();
        for (path, text) in source::rs_files(&workspace.join(dir))? {
            let text = source::clean(&text);
            let mods = declared_mods(&text);
            files.push(File { path, text, mods, root: usize::MAX, module: Vec::new() });
        }
        let crate_files = &mut files[start..];
        crate_files.iter_mut().for_each(|f| f.path = f.path.strip_prefix(workspace).unwrap_or(&f.path).to_path_buf());
        tree(crate_files);
        let index: HashMap<(usize, &[String]), usize> = crate_files.iter().enumerate().map(|(i, f)| ((f.root, &f.module[..]), i)).collect();
        let mut edges = vec![Vec::new(); crate_files.len()];
        for (i, f) in crate_files.iter().enumerate() {
            for (at, path) in paths(&f.text, &f.mods) {
                let Some(abs) = absolute(&f.module, &f.mods, &path) else { continue };
                let target = (0..=abs.len()).rev().find_map(|n| index.get(&(f.root, &abs[..n])));
                let Some(&j) = target.filter(|&&j| j != i) else { continue };
                imports += 1;
                let line = f.text[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                if !edges[i].contains(&(j, line)) {
                    edges[i].push((j, line))
                }
                let (from, to) = (f.module.first(), crate_files[j].module.first());
                if let (true, Some(from), Some(to)) = (dir.starts_with("lb-userspace") && f.root != i, from, to)
                    && let Some((_, allowed)) = ROOMS.iter().find(|(room, _)| room == from)
                    && from != to
                    && !allowed.contains(&to.as_str())
                {
                    let allowed = if allowed.is_empty() { "none".into() } else { allowed.join(", ") };
                    let file = f.path.display();
                    problems.push(format!("{file}:{line}: room {from} imports room {to} (allowed: {allowed})"));
                }
            }
        }
        for scc in cycles(&edges.iter().map(|e| e.iter().map(|&(j, _)| j).collect()).collect::<Vec<_>>()) {
            let mut report = String::from("cycle between:");
            for &i in &scc {
                for &(j, line) in edges[i].iter().filter(|(j, _)| scc.contains(j)) {
                    let (a, b) = (crate_files[i].path.display(), crate_files[j].path.display());
                    report += &format!("\n  {a}:{line} -> {b}");
                }
            }
            problems.push(report);
        }
    }
    for problem in &problems {
        println!("{problem}");
    }
    if !problems.is_empty() {
        bail!("layers: {} problem(s) in {} files", problems.len(), files.len());
    }
    println!("layers: {} files, {imports} imports, no cycle, rooms one way", files.len());
    Ok(())
}

/// Gives each file its crate root and module path, walking `mod x;` from lib.rs, main.rs, then
/// from any file nobody declares (bin targets); children of a.rs live in a/, of mod.rs beside it.
fn tree(files: &mut [File]) {
    let is_root = |p: &Path| p.ends_with("lib.rs") || p.ends_with("main.rs");
    let mut order: Vec<usize> = (0..files.len()).filter(|&i| is_root(&files[i].path)).collect();
    order.extend(0..files.len());
    for r in order {
        if files[r].root != usize::MAX {
            continue;
        }
        files[r].root = r;
        let mut stack = vec![(r, files[r].path.parent().unwrap().to_path_buf())];
        while let Some((i, dir)) = stack.pop() {
            for name in files[i].mods.clone() {
                let found =
                    files.iter().position(|f| f.root == usize::MAX && (f.path == dir.join(format!("{name}.rs")) || f.path == dir.join(&name).join("mod.rs")));
                if let Some(c) = found {
                    files[c].root = r;
                    files[c].module = [files[i].module.clone(), vec![name.clone()]].concat();
                    stack.push((c, dir.join(&name)));
                }
            }
        }
    }
}

fn declared_mods(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    text.split(';')
        .filter_map(|item| {
            let words: Vec<&str> = item.split_whitespace().collect();
            match words[..] {
                [.., "mod", name] if name.bytes().all(ident) => Some(name.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// Every path starting with `crate`, `super`, `self` or a declared child module, with its offset:
/// the brace-expanded trees of `use` items, then the paths written in code.
fn paths(text: &[u8], mods: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut text = text.to_vec();
    let (mut found, mut i) = (Vec::new(), 0);
    let starts = |w: &str| matches!(w, "crate" | "super" | "self") || mods.iter().any(|m| m == w);
    while i < text.len() {
        let at_word = (i == 0 || !ident(text[i - 1]) && text[i - 1] != b'$' && text[i - 1] != b':') && ident(text[i]);
        let len = text[i..].iter().take_while(|&&c| ident(c)).count();
        if !at_word {
            i += 1;
            continue;
        }
        let word = String::from_utf8_lossy(&text[i..i + len]).into_owned();
        if word == "use"
            && let Some(n) = text[i..].iter().position(|&c| c == b';')
        {
            let tree: String = String::from_utf8_lossy(&text[i + 3..i + n]).split_whitespace().collect::<Vec<_>>().join(" ");
            found.extend(expand(&tree).into_iter().filter(|p| starts(&p[0])).map(|p| (i, p)));
            text[i..i + n].fill(b' ');
        } else if starts(&word) && text[i + len..].starts_with(b"::") {
            let mut j = i + len;
            while text[j..].starts_with(b"::") && text.get(j + 2).is_some_and(|&c| ident(c)) {
                j += 2 + text[j + 2..].iter().take_while(|&&c| ident(c)).count();
            }
            let path = String::from_utf8_lossy(&text[i..j]).split("::").map(String::from).collect();
            found.push((i, path));
            i = j;
            continue;
        }
        i += len;
    }
    found
}

/// `a::{b::{c, d as e}, self, f::*}` -> `a::b::c`, `a::b::d`, `a`, `a::f`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim().trim_start_matches("::");
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("");
        return vec![path.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "*").map(String::from).collect()];
    };
    let prefix: Vec<String> = tree[..open].split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut last) = (Vec::new(), 0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[last..k]);
                last = k + 1
            }
            _ => {}
        }
    }
    parts.push(&inner[last..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| {
            let rest = if p.first().is_some_and(|s| s == "self") { &p[1..] } else { &p[..] };
            [&prefix[..], rest].concat()
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// The absolute module path of `path` written in module `module`; None for external crates.
fn absolute(module: &[String], mods: &[String], path: &[String]) -> Option<Vec<String>> {
    let (mut base, mut rest) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (module.to_vec(), &path[1..]),
        "super" => (module.to_vec(), path),
        first if mods.iter().any(|m| m == first) => (module.to_vec(), path),
        _ => return None,
    };
    while rest.first().is_some_and(|s| s == "super") {
        base.pop()?;
        rest = &rest[1..];
    }
    Some([&base[..], rest].concat())
}

/// Strongly connected components of more than one node (Tarjan).
fn cycles(graph: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct S<'a> {
        g: &'a [Vec<usize>],
        idx: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut S, v: usize) {
        (s.idx[v], s.low[v], s.on[v]) = (Some(s.next), s.next, true);
        s.next += 1;
        s.stack.push(v);
        for &w in &s.g[v] {
            match s.idx[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w])
                }
                Some(iw) if s.on[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.idx[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc)
            }
        }
    }
    let n = graph.len();
    let mut s = S { g: graph, idx: vec![None; n], low: vec![0; n], on: vec![false; n], stack: Vec::new(), next: 0, out: Vec::new() };
    for v in 0..n {
        if s.idx[v].is_none() {
            visit(&mut s, v)
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(p: &[Vec<String>]) -> Vec<String> {
        p.iter().map(|p| p.join("::")).collect()
    }

    #[test]
    fn expands_braces() {
        let got = expand("crate::{a::{b, c as d}, e, f::{self, g::*}}");
        assert_eq!(strs(&got), ["crate::a::b", "crate::a::c", "crate::e", "crate::f", "crate::f::g"]);
        assert_eq!(strs(&expand("super::{x, y::Z}")), ["super::x", "super::y::Z"]);
    }

    #[test]
    fn resolves_super_and_children() {
        let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
        assert_eq!(absolute(&m("a::b"), &[], &m("super::c::D")), Some(m("a::c::D")));
        assert_eq!(absolute(&m("a::b"), &[], &m("super::super::x")), Some(m("x")));
        assert_eq!(absolute(&m("a"), &["kid".into()], &m("kid::f")), Some(m("a::kid::f")));
        assert_eq!(absolute(&m("a"), &[], &m("std::fs")), None);
    }

    #[test]
    fn scans_uses_and_code_but_not_comments_strings_or_tests() {
        let src =
            b"mod kid;\nuse crate::{a, b::C}; // crate::no\nfn f() { super::x::y(); \"crate::no\"; kid::g(); }\n#[cfg(test)]\nmod tests { use crate::no; }\n";
        let text = source::clean(src);
        let got: Vec<_> = paths(&text, &declared_mods(&text)).into_iter().map(|(_, p)| p.join("::")).collect();
        assert_eq!(got, ["crate::a", "crate::b::C", "super::x::y", "kid::g"]);
    }

    #[test]
    fn finds_cycles() {
        let graph = vec![vec![1], vec![2], vec![0], vec![0, 4], vec![3], vec![]];
        assert_eq!(cycles(&graph), [vec![0, 1, 2], vec![3, 4]]);
    }
}
