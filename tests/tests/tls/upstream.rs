//! TLS to backends (`http.upstream.tls`): a real HTTPS backend (Python's ssl, OpenSSL)
//! behind xlb, its certificate checked against a CA file with the configured name as
//! SNI; sessions resumed and connections pooled; an untrusted certificate refused with
//! 502 and a log line, and accepted where verification is turned off.

use std::{fs, time::Duration};

use xlb_tests::{Xlb, tls::Ca, util::wait_for};

use crate::Setup;

/// Where the backends listen in b1: one with a certificate of the test CA, one with a
/// certificate of a CA nobody trusts.
const TRUSTED_PORT: u16 = 8443;
const UNTRUSTED_PORT: u16 = 8444;

/// `peer` (a script beside this file) run with `args` in b1, once `port` accepts.
pub fn spawn_peer(s: &Setup, peer: &str, port: u16, args: &[&str]) -> xlb_tests::util::Proc {
    let script = format!("{}/tests/tls/{peer}", env!("CARGO_MANIFEST_DIR"));
    let b1 = s.topo.backend("b1");
    let port_arg = port.to_string();
    let argv: Vec<&str> = [script.as_str()].into_iter().chain(args.iter().copied().map(|a| if a == "PORT" { port_arg.as_str() } else { a })).collect();
    let proc = b1.ns.spawn(peer, xlb_tests::tls::PYTHON, &argv);
    let listening =
        wait_for(Duration::from_secs(15), Duration::from_millis(100), || b1.ns.try_run("bash", &["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")]).ok());
    assert!(listening.is_some(), "{peer} does not listen on {port}");
    proc
}

/// Starts xlb with, for each `(name, port, upstream)`, a service `name` on b1's `port`
/// with that `http.upstream`, answering `name.test` on 80 and (with a certificate of the
/// test CA) on 443, without retries.
pub fn start_with(s: &Setup, services: &[(&str, u16, &str)]) -> Xlb {
    let d = s.dir.path().display();
    let names: Vec<String> = services.iter().map(|(name, ..)| format!("{name}.test")).collect();
    s.ca.leaf(s.dir.path(), "front", "front", &names.iter().map(String::as_str).collect::<Vec<_>>(), false);
    let b1 = s.topo.backend("b1").v4;
    let mut yaml = format!("tls:\n  certificates: [{{ cert: {d}/front.crt, key: {d}/front.key }}]\nservices:\n");
    for (name, port, upstream) in services {
        yaml.push_str(&format!(
            "  - name: {name}\n    port: 80\n    protocol: http\n    backends: [{{ address: {b1}, port: {port} }}]\n    http: {{ hosts: [{name}.test], tls: {{ port: 443 }}, retries: {{ attempts: 0 }}, upstream: {upstream} }}\n"
        ));
    }
    let cfg = s.path("xlb.yaml");
    fs::write(&cfg, yaml).expect("write config");
    s.start(&cfg)
}

#[test]
fn https_backends_verified_resumed_pooled_and_refused() {
    let s = Setup::new();
    let d = s.dir.path().display();
    s.ca.leaf(s.dir.path(), "backend", "backend", &["backend.internal"], false);
    // Another CA (of the same name: its signature, not its name, is what fails).
    Ca::new().leaf(s.dir.path(), "stranger", "stranger", &["backend.internal"], false);
    let mut trusted = spawn_peer(&s, "https_peer.py", TRUSTED_PORT, &["PORT", &format!("{d}/backend.crt"), &format!("{d}/backend.key")]);
    let mut untrusted = spawn_peer(&s, "https_peer.py", UNTRUSTED_PORT, &["PORT", &format!("{d}/stranger.crt"), &format!("{d}/stranger.key")]);
    let b1 = s.topo.backend("b1").v4;
    let ca = format!("{{ tls: {{ ca: {d}/ca.pem, server_name: backend.internal }} }}");
    let mut xlb = start_with(&s, &[("secure", TRUSTED_PORT, &ca), ("bad", UNTRUSTED_PORT, &ca), ("insecure", UNTRUSTED_PORT, "{ tls: { verify: false } }")]);

    // One client connection (one xlb worker, so one pool): a request whose backend
    // connection closes after it, then two on the next backend connection.
    let url = "https://secure.test";
    // (`curl` takes the extra arguments' URLs first.)
    let out = s.curl(&format!("{url}/keep"), &format!("--http1.1 {url}/close {url}/keep")).unwrap_or_else(|e| panic!("curl secure.test: {e}\n{}", xlb.log()));
    let answers: Vec<&str> = out.lines().filter_map(|l| l.find("port=").map(|i| &l[i..])).collect();
    assert_eq!(answers.len(), 3, "three answers from the HTTPS backend: {out}");
    assert!(answers.iter().all(|a| a.ends_with("sni=backend.internal")), "SNI is the configured server_name: {answers:?}");
    assert!(answers[0].contains("reused=False"), "the first connection makes a full handshake: {answers:?}");
    assert!(answers[1].contains("reused=True"), "the second connection resumes the first's session: {answers:?}");
    let port = |a: &str| a.split_whitespace().next().unwrap_or_default().to_owned();
    assert_ne!(port(answers[0]), port(answers[1]), "the closed connection is not reused: {answers:?}");
    assert_eq!(port(answers[1]), port(answers[2]), "the kept-alive backend connection is pooled: {answers:?}");

    let refused = s.curl("https://bad.test/keep", "").unwrap_or_else(|e| panic!("curl bad.test: {e}"));
    assert!(refused.ends_with(" 502"), "an untrusted backend certificate gives 502: {refused}");
    let logged = wait_for(Duration::from_secs(5), Duration::from_millis(100), || xlb.log().contains("backend certificate refused").then_some(()));
    assert!(logged.is_some(), "the refusal is logged:\n{}", xlb.log());
    let line = xlb.log().lines().find(|l| l.contains("backend certificate refused")).unwrap_or_default().to_owned();
    assert!(line.contains(&format!("{b1}:{UNTRUSTED_PORT}")) && line.contains("BadSignature"), "the log names the backend and why: {line}");

    let accepted = s.curl("https://insecure.test/keep", "").unwrap_or_else(|e| panic!("curl insecure.test: {e}\n{}", xlb.log()));
    assert!(accepted.contains("port=") && accepted.ends_with(" 200"), "verify: false takes the self-signed backend: {accepted}");
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
    trusted.kill();
    untrusted.kill();
}
