//! The size half of `cargo xtask layers`: source files over [`MAX_FILE`] lines and functions
//! over [`MAX_FN`] lines, which are hard to read in one go.
//!
//! Convention: a file or function that is long on purpose says why in a comment line starting
//! `// long:`. For a file, that line sits in its head (before the first line of code); for a
//! function, among the comment and attribute lines directly above its `fn` line. Unit tests
//! count: they live beside the code they test. A function's lines run from `fn` to its
//! closing brace.
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::source::{self, ident};

pub const MAX_FILE: usize = 500;
pub const MAX_FN: usize = 80;
const NOTE: &str = "// long:";

/// Every crate's sources and test binaries: what `cargo xtask layers` reports and `cargo
/// xtask test` holds to.
pub const ALL: &[&str] = &["lb-userspace/src", "lb-userspace/tests", "lb-common/src", "lb-ebpf/src", "xtask/src", "tests/src", "tests/tests", "fuzz/fuzz_targets"];

/// Prints each file and function over its limit without a `// long:` note; fails if any.
pub fn check(dirs: &[&str]) -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("no workspace")?;
    let (mut problems, mut count) = (Vec::new(), 0);
    for dir in dirs {
        for (path, text) in source::rs_files(&workspace.join(dir))? {
            count += 1;
            let path = path.strip_prefix(workspace).unwrap_or(&path).display().to_string();
            problems.extend(oversized(&text).into_iter().map(|p| format!("{path}:{p}")));
        }
    }
    for problem in &problems {
        println!("{problem}");
    }
    if !problems.is_empty() {
        bail!("sizes: {} file(s) or function(s) too long without a `{NOTE}` note, in {count} files", problems.len());
    }
    println!("sizes: {count} files, none over {MAX_FILE} lines, no function over {MAX_FN} without a note");
    Ok(())
}

/// `LINE: what is too long` for one file's text.
fn oversized(text: &[u8]) -> Vec<String> {
    let src = String::from_utf8_lossy(text);
    let lines: Vec<&str> = src.lines().collect();
    let mut found = Vec::new();
    let head = lines.iter().take_while(|l| l.trim().is_empty() || l.trim_start().starts_with("//") || l.trim_start().starts_with("#!["));
    if lines.len() > MAX_FILE && !head.clone().any(|l| l.trim_start().starts_with(NOTE)) {
        found.push(format!("1: file has {} lines (over {MAX_FILE})", lines.len()));
    }
    for (name, first, last) in functions(&source::code(text)) {
        let above = lines[..first].iter().rev().take_while(|l| l.trim_start().starts_with("//") || l.trim_start().starts_with("#["));
        let len = last - first + 1;
        if len > MAX_FN && !above.clone().any(|l| l.trim_start().starts_with(NOTE)) {
            found.push(format!("{}: fn {name} has {len} lines (over {MAX_FN})", first + 1));
        }
    }
    found
}

/// Each `fn` with a body in `code` (comments and literals blanked): its name and its first and
/// last line, counted from 0.
fn functions(code: &[u8]) -> Vec<(String, usize, usize)> {
    let line = |at: usize| code[..at].iter().filter(|&&b| b == b'\n').count();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(n) = code[i..].windows(3).position(|w| w == b"fn ") {
        let at = i + n;
        i = at + 3;
        if at > 0 && ident(code[at - 1]) {
            continue;
        }
        let name_at = i + code[i..].iter().take_while(|&&c| c == b' ').count();
        let name: String = code[name_at..].iter().take_while(|&&c| ident(c)).map(|&c| c as char).collect();
        if name.is_empty() {
            continue;
        }
        // The body starts at the first `{` outside the signature's parentheses and brackets;
        // a `;` there means no body (a trait's declaration).
        let (mut depth, mut j) = (0i32, name_at);
        let open = loop {
            match code.get(j) {
                None => break None,
                Some(b';') if depth == 0 => break None,
                Some(b'(' | b'[') => depth += 1,
                Some(b')' | b']') => depth -= 1,
                Some(b'{') if depth == 0 => break Some(j),
                _ => {}
            }
            j += 1;
        };
        let Some(open) = open else { continue };
        let mut depth = 0;
        let close = code[open..]
            .iter()
            .position(|&c| {
                depth += match c {
                    b'{' => 1,
                    b'}' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(code.len() - 1, |n| open + n);
        found.push((name, line(at), line(close)));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_and_their_lines() {
        let src = b"trait T { fn decl(&self); }\nfn a(x: [u8; 2]) -> u8 {\n    let f: fn(u8) = g;\n    { 1 }\n}\n// fn not_code() {}\nfn b() {}\n";
        let got = functions(&source::code(src));
        assert_eq!(got, [("a".to_string(), 1, 4), ("b".to_string(), 6, 6)]);
    }

    #[test]
    fn long_function_needs_a_note() {
        let body = "    x();\n".repeat(MAX_FN);
        let bare = format!("/// Does x.\nfn f() {{\n{body}}}\n");
        assert_eq!(oversized(bare.as_bytes()), [format!("2: fn f has {} lines (over {MAX_FN})", MAX_FN + 2)]);
        let noted = format!("/// Does x.\n// long: one step per line of the protocol\n#[inline]\nfn f() {{\n{body}}}\n");
        assert!(oversized(noted.as_bytes()).is_empty());
    }

    #[test]
    fn long_file_needs_a_note_in_its_head() {
        let items = "fn f() {}\n".repeat(MAX_FILE);
        assert_eq!(oversized(format!("//! Doc.\n{items}").as_bytes()), [format!("1: file has {} lines (over {MAX_FILE})", MAX_FILE + 1)]);
        assert!(oversized(format!("//! Doc.\n// long: generated table\n{items}").as_bytes()).is_empty());
    }
}
