//! Rust source read as plain text, for the checks of `cargo xtask layers`: what is code once
//! comments and literals are blanked, and which `.rs` files a crate holds.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Every `.rs` file under `dir`, sorted, with its contents.
pub fn rs_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut entries: Vec<_> =
        fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    let mut files = Vec::new();
    for path in entries {
        if path.is_dir() {
            files.extend(rs_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.push((path, text));
        }
    }
    Ok(files)
}

/// Blanks comments, string and char literals, and `#[cfg(test)] mod x { .. }`, keeping newlines.
pub fn clean(src: &[u8]) -> Vec<u8> {
    let mut out = code(src);
    skip_tests(&mut out);
    out
}

/// Blanks comments, string and char literals, keeping newlines (so offsets and lines stay).
pub fn code(src: &[u8]) -> Vec<u8> {
    let mut out = src.to_vec();
    let blank = |out: &mut Vec<u8>, a: usize, b: usize| {
        out[a..b.min(src.len())].iter_mut().for_each(|c| {
            if *c != b'\n' {
                *c = b' '
            }
        })
    };
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').map_or(src.len(), |n| i + n)
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (0, i);
            while j < src.len() {
                if src[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2
                } else if src[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1
                }
            }
            j
        } else if let Some(h) = rest.strip_prefix(b"br").or(rest.strip_prefix(b"r")).filter(|_| i == 0 || !ident(src[i - 1])) {
            let hashes = h.iter().take_while(|&&c| c == b'#').count();
            if h.get(hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let close = [&b"\""[..], &vec![b'#'; hashes]].concat();
            let body = i + rest.len() - h.len() + hashes + 1;
            src[body..].windows(close.len()).position(|w| w == close).map_or(src.len(), |n| body + n + close.len())
        } else if rest[0] == b'"' {
            let mut j = i + 1;
            while j < src.len() && src[j] != b'"' {
                j += if src[j] == b'\\' { 2 } else { 1 }
            }
            j + 1
        } else if rest[0] == b'\'' && (rest.get(1) == Some(&b'\\') || rest.get(2) == Some(&b'\'')) {
            let mut j = i + if rest[1] == b'\\' { 3 } else { 2 };
            while j < src.len() && src[j] != b'\'' {
                j += 1
            }
            j + 1
        } else {
            i += 1;
            continue;
        };
        blank(&mut out, i, end);
        i = end.max(i + 1);
    }
    out
}

/// Blanks `#[cfg(test)] mod x { .. }` once comments and strings are gone.
fn skip_tests(out: &mut [u8]) {
    let mut i = 0;
    while let Some(n) = out[i..].windows(12).position(|w| w == b"#[cfg(test)]") {
        let at = i + n;
        let head = String::from_utf8_lossy(&out[at + 12..]).chars().take_while(|&c| c != '{' && c != ';').collect::<String>();
        let words: Vec<&str> = head.split_whitespace().collect();
        let open = at + 12 + head.len();
        i = at + 12;
        if !matches!(words[..], ["mod", _] | ["pub", "mod", _]) || out.get(open) != Some(&b'{') {
            continue;
        }
        let (mut depth, mut j) = (0, open);
        while j < out.len() {
            depth += match out[j] {
                b'{' => 1,
                b'}' => -1,
                _ => 0,
            };
            j += 1;
            if depth == 0 {
                break;
            }
        }
        out[at..j].iter_mut().for_each(|c| {
            if *c != b'\n' {
                *c = b' '
            }
        });
        i = j;
    }
}

pub fn ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}
