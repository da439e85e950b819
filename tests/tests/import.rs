//! `xlb import` on nginx configurations shaped like the seeds' (`tests/fixtures/import/*.conf`:
//! the registry trio and nginx's balancing methods, compose with header and cookie pinning,
//! subdomain routing and a host map, DNS names with TCP and UDP streams, a hostname service)
//! and HAProxy's (`*.cfg`: dockercloud-haproxy's subdomain routing, TCP listen sections):
//! its YAML (stdout) and its report of what it could not translate (stderr, FILE:LINE) are
//! exactly the committed `NAME.yaml` and `NAME.report`, and `xlb check` accepts the YAML.
//! Broken files are refused with their line. `XLB_BLESS=1` rewrites the expected files.
//!
//! Needs `XLB_BIN` only: `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test import`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use xlb_tests::{
    util::{TempDir, TempFile},
    xlb::xlb_bin,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/import")
}

/// `xlb ARGS` run in `dir` (so reports name files as the user gave them).
fn xlb(dir: &Path, args: &[&str]) -> Output {
    Command::new(xlb_bin()).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("running xlb {args:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn seed_shaped_configs_translate_to_the_expected_yaml_and_report() {
    let mut confs: Vec<PathBuf> = fs::read_dir(fixtures())
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf" || e == "cfg"))
        .collect();
    confs.sort();
    assert!(confs.len() >= 8, "fixtures missing: {confs:?}");
    let bless = std::env::var_os("XLB_BLESS").is_some();
    let mut total = (0, 0);
    for conf in &confs {
        let name = conf.file_name().and_then(|n| n.to_str()).expect("name");
        let out = xlb(&fixtures(), &["import", name]);
        let (yaml, report) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "xlb import {name}: {}\n{report}", out.status);
        let (want_yaml, want_report) = (conf.with_extension("yaml"), conf.with_extension("report"));
        if bless {
            fs::write(&want_yaml, &yaml).expect("write yaml");
            fs::write(&want_report, &report).expect("write report");
        }
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e} (XLB_BLESS=1 writes it)", p.display()));
        assert_eq!(yaml, read(&want_yaml), "xlb import {name}: the YAML differs from {}", want_yaml.display());
        assert_eq!(report, read(&want_report), "xlb import {name}: the report differs from {}", want_report.display());
        // Every line of the report but the summary names the file and a line of it.
        let lines = conf_lines(conf);
        for l in report.lines().filter(|l| !l.starts_with("xlb import:")) {
            let line: usize = l
                .strip_prefix(&format!("{name}:"))
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name}: report line without FILE:LINE: {l}"));
            let directive = l.split('`').nth(1).expect("a quoted directive");
            let first = directive.split_whitespace().next().expect("a name");
            assert!(lines.get(line - 1).is_some_and(|src| src.contains(first)), "{name}:{line} does not hold `{first}`: {l}");
        }
        let file = TempFile::new(".yaml", &yaml);
        let check = xlb(&fixtures(), &["check", file.path().to_str().expect("utf-8")]);
        let services = yaml.matches("\n  - name: ").count();
        assert!(
            check.status.success() && text(&check.stdout).contains(&format!("ok, {services} services")),
            "xlb check on the import of {name}: {}{}\n{yaml}",
            text(&check.stdout),
            text(&check.stderr)
        );
        total = (total.0 + services, total.1 + report.lines().count() - 1);
    }
    println!("IMPORT-FIGURE {} configs: {} services written, {} directives reported; each passes xlb check", confs.len(), total.0, total.1);
}

fn conf_lines(conf: &Path) -> Vec<String> {
    fs::read_to_string(conf).expect("conf").lines().map(str::to_owned).collect()
}

#[test]
fn broken_or_empty_configs_are_refused_with_their_line() {
    for (conf, says) in [
        ("http {\n  upstream a {\n    server 10.0.0.1\n  }\n}\n", "broken.conf: line 3: `server` needs a `;` before `}`"),
        ("http {\n  server {\n    listen 80;\n", "broken.conf: line 2: the block of `server` is never closed"),
        ("events {}\nhttp { server { location / { root /srv; } } }\n", "broken.conf: no proxied upstream or server found"),
    ] {
        let dir = TempDir::new();
        fs::write(dir.path().join("broken.conf"), conf).expect("write");
        let out = xlb(dir.path(), &["import", "broken.conf"]);
        assert!(!out.status.success() && out.stdout.is_empty(), "{conf:?}: {}\n{}", out.status, text_of(&out));
        assert!(text(&out.stderr).contains(says), "{conf:?}: want {says:?}, got {}", text(&out.stderr));
    }
}

fn text_of(o: &Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}
