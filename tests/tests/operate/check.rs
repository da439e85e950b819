//! `xlb check` (section 4).

use std::{fs, path::Path};

use xlb_tests::{
    util::{TempDir, cmd},
    xlb::xlb_bin,
};

use crate::common::{Broken, broken, figure};

/// `$XLB_BIN check FILE`: (exit success, stdout, stderr).
fn xlb_check(path: &Path) -> (bool, String, String) {
    let out = cmd(xlb_bin(), ["check".as_ref(), path.as_os_str()]).output().expect("run xlb check");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The broken files of [`check_reports_file_line_column`]: name, text, the needle at the
/// error (and a column offset from it), and what the message must say.
fn check_cases() -> Vec<Broken> {
    let svc = "services:\n  - name: a\n    vip: 10.0.0.100\n    port: 80\n";
    let with = |extra: &str| format!("{svc}{extra}");
    vec![
        broken("unknown top-level key", "servces:\n  - name: a\n    port: 80\n".into(), "servces", 0, "unknown field `servces`"),
        broken("unknown service key", with("    colour: red\n"), "colour", 0, "services[0]: unknown field `colour`"),
        broken(
            "unknown key in the second service",
            with("  - name: b\n    port: 81\n    backends:\n      - address: 10.0.0.1\n        prot: 8080\n"),
            "prot:",
            0,
            "services[1].backends[0]: unknown field `prot`",
        ),
        broken("unknown key in a flow mapping", with("    docker: { name: api, colour: red }\n"), "colour", 0, "services[0].docker: unknown field `colour`"),
        broken("weight 0", with("    backends:\n      - address: 10.0.0.1\n        weight: 0\n"), "weight: 0", 8, "weight 0 out of range"),
        broken("weight 1001", with("    backends:\n      - { address: 10.0.0.1, weight: 1001 }\n"), "1001", 0, "weight 1001 out of range"),
        broken("table_size not prime", "dataplane:\n  table_size: 65536\n".into(), "65536", 0, "dataplane.table_size: 65536: expected a prime"),
        broken("max_services 0", "dataplane:\n  max_services: 0\n".into(), "0\n", 0, "dataplane.max_services: expected a number above 0"),
        broken("bad VIP", "services:\n  - name: a\n    vip: 10.0.0.256\n    port: 80\n".into(), "10.0.0.256", 0, "services[0].vip: invalid IP address syntax"),
        broken("bad duration", "dataplane:\n  udp_idle_timeout: 5 minutes\n".into(), "5 minutes", 0, "dataplane.udp_idle_timeout: bad duration"),
        broken("bad health duration", with("    health:\n      http: /health\n      interval: 2 s\n"), "2 s", 0, "services[0].health.interval: bad duration"),
        broken("health rise 0", with("    health: { rise: 0 }\n"), "0 }", 0, "services[0].health.rise: expected a number above 0"),
        broken("unknown method", with("    method: fastest\n"), "fastest", 0, "services[0].method: unknown variant `fastest`"),
        broken("unknown protocol", with("    protocol: sctp\n"), "sctp", 0, "services[0].protocol: unknown variant `sctp`"),
        broken("port out of range", "services:\n  - name: a\n    port: 70000\n".into(), "70000", 0, "services[0].port"),
        broken("port not a number", "services:\n  - name: a\n    port: eighty\n".into(), "eighty", 0, "services[0].port: invalid type"),
        broken("backend state", with("    backends:\n      - address: 10.0.0.1\n        state: paused\n"), "paused", 0, "unknown variant `paused`"),
        broken("admin address", "admin:\n  address: localhost:9100\n".into(), "localhost", 0, "admin.address"),
        broken("missing port", "services:\n  - name: a\n    vip: 10.0.0.100\n".into(), "name: a", 0, "services[0]: missing field `port`"),
    ]
}

/// `xlb check` on each broken file: exit non-zero, `xlb: FILE:LINE:COLUMN: MESSAGE` on stderr
/// with the position of the offending key or value, nothing on stdout.
#[test]
fn check_reports_file_line_column() {
    let dir = TempDir::new();
    let mut bad = Vec::new();
    let cases = check_cases();
    for (i, c) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.yaml"));
        fs::write(&path, &c.text).unwrap();
        let (ok, stdout, stderr) = xlb_check(&path);
        let want = format!("{}:{}:{}: ", path.display(), c.line, c.col);
        let first = stderr.lines().find(|l| l.contains("xlb: ")).unwrap_or_default().to_string();
        figure("check", &format!("{}: {}", c.what, first.replace(&dir.path().display().to_string(), "DIR")));
        if ok || !stdout.trim().is_empty() || !first.starts_with(&format!("xlb: {want}")) || !first.contains(c.says) {
            bad.push(format!(
                "{}: exit {}, want a failure with `xlb: {want}...{}...` on stderr\n  stdout: {stdout:?}\n  stderr: {stderr:?}\n  file:\n{}",
                c.what,
                if ok { "0" } else { "non-zero" },
                c.says,
                c.text
            ));
        }
    }
    // A YAML syntax error: the line of the bad indentation.
    let path = dir.path().join("syntax.yaml");
    fs::write(&path, "services:\n  - name: a\n     port: 80\n").unwrap();
    let (ok, _, stderr) = xlb_check(&path);
    figure("check", &format!("syntax error: {}", stderr.trim().replace(&dir.path().display().to_string(), "DIR")));
    if ok || !stderr.contains(&format!("xlb: {}:3:", path.display())) {
        bad.push(format!("bad indentation on line 3: exit ok={ok}, stderr {stderr:?}"));
    }
    // A file that is not there.
    let path = dir.path().join("missing.yaml");
    let (ok, _, stderr) = xlb_check(&path);
    if ok || !stderr.contains(&path.display().to_string()) {
        bad.push(format!("missing file: exit ok={ok}, stderr {stderr:?}"));
    }
    assert!(bad.is_empty(), "{} of {} broken files not reported as expected:\n{}", bad.len(), cases.len() + 2, bad.join("\n"));
}

/// `xlb check xlb.example.yaml` (the repository's example with every key) exits 0 and counts
/// its services.
#[test]
fn check_accepts_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("xlb.example.yaml");
    let text = fs::read_to_string(&example).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let services = text.lines().filter(|l| l.starts_with("  - name: ")).count();
    let (ok, stdout, stderr) = xlb_check(&example);
    figure("check", &format!("xlb.example.yaml: {}", stdout.trim()));
    assert!(ok, "xlb check {}: failed\nstdout: {stdout}\nstderr: {stderr}", example.display());
    assert!(stdout.contains(&format!(": ok, {services} services")), "xlb check {}: {stdout:?}, want `ok, {services} services`", example.display());
}

/// The fields of the structs a config is deserialized into (`#[derive(..Deserialize..)]` in
/// lb-userspace/src/config/), read from the source so a key added
/// there is a key the example must show.
fn config_keys() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("lb-userspace/src/config");
    let mut keys = Vec::new();
    for file in rust_files(&root) {
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut lines = text.lines();
        while let Some(l) = lines.next() {
            if !(l.starts_with("#[derive(") && l.contains("Deserialize")) {
                continue;
            }
            let Some(head) = lines.by_ref().find(|l| !l.starts_with("#[")) else { break };
            let Some(name) = head.strip_prefix("pub struct ").or_else(|| head.strip_prefix("struct ")).filter(|h| h.ends_with(" {")) else { continue };
            let name = name.trim_end_matches(" {").to_string();
            for field in lines.by_ref().take_while(|l| *l != "}") {
                let f = field.trim_start().trim_start_matches("pub ");
                if let Some((key, _)) = f.split_once(": ")
                    && !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    keys.push((name.clone(), key.to_string()));
                }
            }
        }
    }
    keys
}

/// Every `.rs` file under `dir`, wherever the config's modules put their structs.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `xlb.example.yaml` sets every key of the config model (README: it "lists every key with
/// its default").
#[test]
fn the_example_sets_every_key() {
    let example = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("xlb.example.yaml")).unwrap();
    let set: Vec<&str> = example.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>();
    let keys = config_keys();
    assert!(keys.len() > 40 && keys.iter().any(|(s, k)| s == "RawService" && k == "slow_start"), "reading the config structs found only {keys:?}");
    let missing: Vec<String> = keys
        .iter()
        .filter(|(_, k)| {
            !set.iter().any(|l| {
                l.contains(&format!(" {k}: "))
                    || l.contains(&format!("{{ {k}: "))
                    || l.trim_start().starts_with(&format!("{k}:"))
                    || l.trim_start().starts_with(&format!("- {k}:"))
            })
        })
        .map(|(s, k)| format!("{s}.{k}"))
        .collect();
    figure("check", &format!("xlb.example.yaml sets all {} keys of the config structs", keys.len() - missing.len()));
    assert!(missing.is_empty(), "keys of the config model that xlb.example.yaml does not set: {missing:?}");
}

/// Errors found after a service's keys were read (its port, its backends' families,
/// duplicates) and across services (a name or VIP:port used twice) point at the offending
/// service: `FILE:LINE:COLUMN` with LINE within that service's lines (README: errors read
/// `FILE:LINE:COLUMN: key: what was expected`).
#[test]
fn check_positions_of_errors_found_after_parsing() {
    let dir = TempDir::new();
    let a = "services:\n  - name: a\n    vip: 10.0.0.100\n    port: 80\n";
    // (what, text, first and last line of the offending service, what the message says)
    let cases: Vec<(&str, String, usize, usize, &str)> = vec![
        ("port 0 in the second service", format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 0\n"), 5, 7, "services[1].port: port 0: expected 1 to 65535"),
        (
            "backend listed twice in the second service",
            format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 81\n    backends: [{{ address: 10.0.0.1 }}, {{ address: 10.0.0.1 }}]\n"),
            5,
            8,
            "listed twice",
        ),
        (
            "backend of the wrong family in the second service",
            format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 81\n    backends: [{{ address: \"fd00::1\" }}]\n"),
            5,
            8,
            "not of the VIP's family",
        ),
        ("service name used twice", format!("{a}  - name: a\n    vip: 10.0.0.100\n    port: 81\n"), 5, 7, "service name \"a\" is used twice"),
        (
            "VIP and port used twice",
            format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 80\n"),
            5,
            7,
            "service \"a\" (tcp) already has this VIP, port and protocol",
        ),
        (
            "HTTP on a TCP service's VIP and port",
            format!("{a}  - name: b\n    vip: 10.0.0.100\n    port: 80\n    protocol: http\n"),
            5,
            8,
            "service \"a\" (tcp) already has this VIP, port and protocol",
        ),
    ];
    let mut bad = Vec::new();
    for (i, (what, text, first, last, says)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("sem{i}.yaml"));
        fs::write(&path, text).unwrap();
        let (ok, _, stderr) = xlb_check(&path);
        let first_line = stderr.lines().next().unwrap_or_default().to_string();
        figure("check", &format!("{what}: {}", first_line.replace(&dir.path().display().to_string(), "DIR")));
        let prefix = format!("xlb: {}:", path.display());
        let at = first_line.strip_prefix(&prefix).and_then(|rest| {
            let mut it = rest.splitn(3, ':');
            let l = it.next()?.parse::<usize>().ok()?;
            let c = it.next()?.parse::<usize>().ok()?;
            Some((l, c))
        });
        let placed = at.is_some_and(|(l, _)| (*first..=*last).contains(&l));
        if ok || !first_line.contains(says) || !placed {
            bad.push(format!(
                "{what}: want a failure at {}:{first}..{last}:COLUMN saying {says:?}; got exit ok={ok}, position {at:?}: {first_line:?}\n  file:\n{text}",
                path.display()
            ));
        }
    }
    assert!(bad.is_empty(), "{} of {} errors not placed at the offending service:\n{}", bad.len(), cases.len(), bad.join("\n"));
}
