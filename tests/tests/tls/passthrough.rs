//! TLS passthrough by SNI: on xlb's TLS port, a ClientHello naming a passthrough
//! service's host goes to its backend unread (the backend's own certificate answers),
//! while other names are terminated by xlb; malformed ClientHellos harm neither.

use std::{fs, time::Duration};

use xlb_tests::{topology::TESTD_PORT, util::wait_for};

use crate::{LB, Setup};

/// The port `openssl s_server` listens on in b1.
const TLS_BACKEND_PORT: u16 = 8443;

#[test]
fn passthrough_by_server_name() {
    let s = Setup::new();
    let d = s.dir.path().display();
    s.ca.leaf(s.dir.path(), "app", "app one", &["app.test"], false);
    s.ca.leaf(s.dir.path(), "backend", "backend one", &["pass.test"], false);
    let b1 = s.topo.backend("b1");
    let mut server = b1.ns.spawn(
        "openssl s_server",
        "openssl",
        &["s_server", "-accept", &TLS_BACKEND_PORT.to_string(), "-cert", &format!("{d}/backend.crt"), "-key", &format!("{d}/backend.key"), "-www", "-quiet"],
    );
    let listening = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        b1.ns.try_run("bash", &["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{TLS_BACKEND_PORT}")]).ok()
    });
    assert!(listening.is_some(), "openssl s_server does not listen on {TLS_BACKEND_PORT}");
    let yaml = format!(
        "tls:\n  certificates: [{{ cert: {d}/app.crt, key: {d}/app.key }}]\nservices:\n\
         \x20 - name: web\n    port: 80\n    protocol: http\n    backends: [{{ address: {ip}, port: {TESTD_PORT} }}]\n    http: {{ hosts: [app.test], tls: {{}} }}\n\
         \x20 - name: pass\n    port: 443\n    protocol: http\n    backends: [{{ address: {ip}, port: {TLS_BACKEND_PORT} }}]\n    http: {{ hosts: [pass.test], tls: {{ port: 443, passthrough: true }} }}\n",
        ip = b1.v4
    );
    let cfg = s.path("xlb.yaml");
    fs::write(&cfg, yaml).expect("write config");
    let mut xlb = s.start(&cfg);

    let passed = s.subject("pass.test").unwrap_or_else(|e| panic!("SNI pass.test: {e}\n{}", xlb.log()));
    assert!(passed.ends_with("CN = backend one"), "pass.test must meet the backend's own certificate: {passed}");
    let page = s.curl("https://pass.test/", "").unwrap_or_else(|e| panic!("curl https://pass.test/: {e}\n{}", xlb.log()));
    assert!(page.contains("s_server") && page.ends_with(" 200"), "answered by openssl s_server behind xlb: {page}");
    let terminated = s.subject("app.test").unwrap_or_else(|e| panic!("SNI app.test: {e}\n{}", xlb.log()));
    assert!(terminated.ends_with("CN = app one"), "app.test is xlb's to terminate: {terminated}");
    let app = s.curl("https://app.test/", "").unwrap_or_else(|e| panic!("curl https://app.test/: {e}"));
    assert!(app.starts_with("b1\n") && app.ends_with(" 200"), "app.test through xlb to xlb-testd: {app}");

    // A record header promising more than ever comes, a truncated ClientHello, plain
    // HTTP on the TLS port: each connection fails alone.
    for junk in [r"\x16\x03\x01\x40\x00\x01\x00", r"\x16\x03\x01\x00\x05\x01\x00\x00\xff\xff", "GET / HTTP/1.1\r\nHost: pass.test\r\n\r\n"] {
        let _ = s.sh(&format!("exec 3<>/dev/tcp/{LB}/443; printf '{junk}' >&3; timeout 3 cat <&3 >/dev/null; true"));
    }
    let again = s.subject("pass.test").unwrap_or_else(|e| panic!("SNI pass.test after junk: {e}\n{}", xlb.log()));
    assert!(again.ends_with("CN = backend one"), "after junk: {again}");
    assert!(s.subject("app.test").is_ok_and(|t| t.ends_with("CN = app one")), "app.test after junk");
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
    server.kill();
}
