//! `cargo test` runs counted: one summary line per test binary (tests, failures) and any
//! line a suite prints after `summary: ` (its own count of cases tried).
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Runs `cargo test`, echoing its output, and adds to `summary` one line per test binary
/// from its `Running` and `test result:` lines, and the lines a suite prints after
/// `summary: ` (its own count of cases tried, as the differential data plane test does).
pub fn run_counted(cargo: &mut Command, summary: &mut Vec<String>) -> Result<()> {
    // One pipe for both streams: cargo says `Running` on stderr, the binaries report on stdout.
    let (out, writer) = std::io::pipe().context("pipe")?;
    let mut child = cmd::spawn(cargo.stdout(writer.try_clone().context("pipe")?).stderr(writer))?;
    // Drop the command's copies of the write end, so the read end sees end of file.
    cargo.stdout(Stdio::null()).stderr(Stdio::null());
    // The binary running, and whether it reported its result yet.
    let mut binary: Option<(String, bool)> = None;
    for line in BufReader::new(out).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(name) = line.trim().strip_prefix("Running ").or_else(|| line.trim().strip_prefix("Doc-tests ")) {
            summary.extend(unreported(binary.take()));
            binary = Some((binary_name(name), false));
        } else if let Some(result) = line.strip_prefix("test result: ") {
            let (passed, failed) = counts(result);
            let name = binary.as_ref().map_or("?", |b| &b.0);
            summary.push(format!("{name}: {} tests, {failed} failures", passed + failed));
            if let Some(b) = &mut binary {
                b.1 = true;
            }
        } else if let Some(own) = own_summary(&line) {
            summary.push(own.to_owned());
        }
    }
    summary.extend(unreported(binary));
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// A line for a binary that ended without its `test result:` (it crashed, or was
/// killed), so that the summary does not leave it out.
fn unreported(binary: Option<(String, bool)>) -> Option<String> {
    binary.filter(|b| !b.1).map(|(name, _)| format!("{name}: no result (crashed or killed), 1 failure"))
}

/// A suite's own summary, printed as `summary: ...` past the harness's capture, so maybe
/// after another test's `test x ... ` on the same line.
fn own_summary(line: &str) -> Option<&str> {
    line.split_once("summary: ").map(|(_, own)| own)
}

/// `unittests src/lib.rs (target/debug/deps/lb_userspace-0123abcd)` as
/// `lb_userspace unittests src/lib.rs`: the crate, then what cargo calls the binary.
fn binary_name(running: &str) -> String {
    match running.split_once(" (") {
        Some((what, path)) => {
            let file = path.trim_end_matches(')').rsplit('/').next().unwrap_or(path);
            let krate = file.rsplit_once('-').map_or(file, |(k, _)| k);
            format!("{krate} {what}")
        }
        None => format!("{running} doc-tests"),
    }
}

/// Passed and failed tests from a `test result:` line's rest
/// (`ok. 3 passed; 1 failed; 0 ignored; ...`).
fn counts(result: &str) -> (u64, u64) {
    let count =
        |word: &str| result.split("; ").find_map(|p| p.rsplit(". ").next().and_then(|p| p.strip_suffix(word))).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    (count(" passed"), count(" failed"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_lines() {
        assert_eq!(super::counts("ok. 35 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.2s"), (35, 0));
        assert_eq!(super::counts("FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"), (3, 2));
        assert_eq!(super::binary_name("unittests src/lib.rs (target/debug/deps/lb_userspace-0123abcd)"), "lb_userspace unittests src/lib.rs");
        assert_eq!(super::binary_name("lb_common"), "lb_common doc-tests");
        assert_eq!(
            super::own_summary("summary: dataplane differential: 9 frames tried, 0 failures"),
            Some("dataplane differential: 9 frames tried, 0 failures")
        );
        assert_eq!(super::own_summary("test parsing::frames ... summary: x: 1 frames tried, 0 failures"), Some("x: 1 frames tried, 0 failures"));
        assert_eq!(super::own_summary("test parsing::frames ... ok"), None);
        assert_eq!(super::unreported(Some(("proxy".into(), false))).as_deref(), Some("proxy: no result (crashed or killed), 1 failure"));
        assert_eq!(super::unreported(Some(("proxy".into(), true))), None);
    }

    #[test]
    fn a_binary_that_crashes_still_has_its_line() {
        let out = "echo '     Running tests/a.rs (target/debug/deps/a-1)'; echo 'test result: ok. 2 passed; 0 failed; 0 ignored'; \
                   echo '     Running tests/b.rs (target/debug/deps/b-2)' >&2; kill -SEGV $$";
        let mut summary = Vec::new();
        assert!(super::run_counted(std::process::Command::new("sh").args(["-c", out]), &mut summary).is_err());
        assert_eq!(summary, ["a tests/a.rs: 2 tests, 0 failures", "b tests/b.rs: no result (crashed or killed), 1 failure"]);
    }
}
