//! An order end to end, what is kept on disk, a restart, a renewal.

use std::{fs, time::Duration};

use xlb_tests::{
    status::xlb_status_raw,
    util::{TempFile, cmd, run},
};

use super::common::{Ca, ISSUE_TIMEOUT, NAME, log_lines, mode, now_unix, wait_status};

/// xlb orders a certificate for `app.xlb.test`: pebble validates HTTP-01 on xlb's own
/// listener; the chain and key land 0600 in 0700 directories; openssl verifies the chain
/// against pebble's issuing root. A restart then loads it from disk: no second order, at
/// pebble or in xlb, and the files are left as they were.
#[test]
fn an_order_is_verified_and_a_restart_orders_nothing() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let ca = Ca::start();
    let (mut xlb, _cfg) = ca.start_xlb(&[NAME]);
    let issued = wait_status(&ca.topo.lb, &xlb, ca.pebble.as_ref(), NAME, ISSUE_TIMEOUT, |s| s.state == "issued");
    eprintln!("ACME-FIGURE issued: {issued:?}");
    assert_eq!(issued.orders, 1, "{issued:?}");
    assert!(issued.expires.is_some_and(|e| e > now_unix() + 30 * 86400), "{issued:?}");
    assert_eq!(ca.pebble().orders(), 1, "one order at the CA:\n{}", ca.pebble().log());
    let (cert, key) = (ca.cert_path(NAME), ca.key_path(NAME));
    for f in [&cert, &key] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let account = fs::read_dir(ca.state.path().join("accounts")).unwrap().next().expect("an account file").unwrap().path();
    assert_eq!(mode(&account), 0o600, "{}", account.display());
    for d in ["", "certs", "accounts", "locks", "challenges"] {
        assert_eq!(mode(&ca.state.path().join(d)), 0o700, "{d}/");
    }
    let root = TempFile::new(".pem", &ca.pebble().issuing_root(&ca.topo.client));
    let c = cert.to_str().unwrap();
    let verified = run(&mut cmd("openssl", ["verify", "-CAfile", root.path().to_str().unwrap(), "-untrusted", c, c]));
    assert!(verified.trim_end().ends_with(": OK"), "openssl verify: {verified}");
    let subject = run(&mut cmd("openssl", ["x509", "-in", c, "-noout", "-ext", "subjectAltName"]));
    assert!(subject.contains(&format!("DNS:{NAME}")), "{subject}");
    assert_eq!(log_lines(&xlb, NAME, "ordering a certificate").len(), 1, "{}", xlb.log());
    let table = xlb_status_raw(&ca.topo.lb, &[]).unwrap_or_else(|e| panic!("{e}"));
    // The name's row in the ACME table (the TLS lines above it name the file too).
    let acme = table.split_once("certificates (ACME):").map_or("", |(_, t)| t);
    let row = acme.lines().find(|l| l.contains(NAME)).unwrap_or_else(|| panic!("no {NAME} in `xlb status`'s ACME table:\n{table}"));
    assert!(row.contains("issued") && row.contains("d "), "{row}");
    let metrics = xlb.admin_get("/metrics").unwrap_or_else(|e| panic!("{e}"));
    let expiry = format!("xlb_acme_certificate_expiry_timestamp_seconds{{name=\"{NAME}\"}} {}", issued.expires.unwrap());
    assert!(metrics.lines().any(|l| l == expiry), "{expiry} in /metrics:\n{metrics}");
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));

    let before = (fs::read(&cert).unwrap(), fs::metadata(&cert).unwrap().modified().unwrap());
    let (mut xlb, _cfg) = ca.start_xlb(&[NAME]);
    let again = wait_status(&ca.topo.lb, &xlb, ca.pebble.as_ref(), NAME, Duration::from_secs(10), |s| s.state == "issued");
    assert_eq!((again.orders, again.expires), (0, issued.expires), "the held certificate, not a new one: {again:?}");
    assert_eq!(ca.pebble().orders(), 1, "no order at the CA after the restart:\n{}", ca.pebble().log());
    assert!(log_lines(&xlb, NAME, "ordering a certificate").is_empty(), "{}", xlb.log());
    assert_eq!((fs::read(&cert).unwrap(), fs::metadata(&cert).unwrap().modified().unwrap()), before, "files untouched");
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// A certificate on disk that expires within `renew_before` (30 days by default: here a
/// self-signed one valid for 2 days) is renewed at start: status `renewing` then `issued`
/// with pebble's certificate, one order at pebble.
#[test]
fn an_expiring_certificate_is_renewed() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let ca = Ca::start();
    let certs = ca.state.path().join("certs");
    fs::create_dir_all(&certs).unwrap();
    let (cert, key) = (ca.cert_path(NAME), ca.key_path(NAME));
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let san = format!("subjectAltName=DNS:{NAME}");
    run(&mut cmd(
        "openssl",
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=expiring",
            "-addext",
            &san,
            "-keyout",
            k,
            "-out",
            c,
        ],
    ));
    let (mut xlb, _cfg) = ca.start_xlb(&[NAME]);
    let renewed = wait_status(&ca.topo.lb, &xlb, ca.pebble.as_ref(), NAME, ISSUE_TIMEOUT, |s| s.state == "issued");
    assert!(renewed.expires.is_some_and(|e| e > now_unix() + 30 * 86400) && renewed.orders == 1, "{renewed:?}");
    assert_eq!(ca.pebble().orders(), 1, "{}", ca.pebble().log());
    assert_eq!(log_lines(&xlb, NAME, "renewing=true").len(), 1, "the order was a renewal:\n{}", xlb.log());
    let issuer = run(&mut cmd("openssl", ["x509", "-in", c, "-noout", "-issuer"]));
    assert!(issuer.contains("Pebble"), "pebble's certificate replaced the expiring one: {issuer}");
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// With TLS termination: the host of a service served over TLS is ordered without being
/// listed in `acme.names`, the TLS listener picks the certificate up from the state
/// directory, and curl, trusting pebble's root alone, gets the backend over HTTPS.
#[test]
fn a_tls_host_is_ordered_and_served_over_https() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let xlb = ordered_and_served_over_https("");
    assert!(xlb.log().contains("challenge=Http01"), "{}", xlb.log());
}

/// The same with `challenge: tls-alpn-01`: pebble checks on port 443, where xlb's TLS
/// listener presents the challenge certificate to a ClientHello offering `acme-tls/1`.
#[test]
fn tls_alpn_01_is_answered_by_the_tls_listener() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let xlb = ordered_and_served_over_https("  challenge: tls-alpn-01\n");
    assert!(xlb.log().contains("challenge=TlsAlpn01"), "{}", xlb.log());
}

/// Orders `NAME` as the host of a TLS service (with `acme_extra` in the `acme:` block) and
/// checks curl gets the backend over HTTPS with it; returns xlb, stopped.
fn ordered_and_served_over_https(acme_extra: &str) -> xlb_tests::Xlb {
    let ca = Ca::start();
    let b = &ca.topo.backends[0];
    let yaml = format!(
        "services:\n  - name: web\n    port: 80\n    protocol: http\n    backends: [{{ address: \"{}\", port: {} }}]\n    http: {{ hosts: [{NAME}], tls: {{ port: 443 }} }}\n{}",
        b.v4,
        xlb_tests::topology::TESTD_PORT,
        ca.acme_yaml(&[]) + acme_extra
    );
    let cfg = TempFile::new(".yaml", &yaml);
    let mut xlb = ca.topo.start_xlb(Some(cfg.path()), &[]);
    let issued = wait_status(&ca.topo.lb, &xlb, ca.pebble.as_ref(), NAME, ISSUE_TIMEOUT, |s| s.state == "issued");
    assert_eq!(issued.orders, 1, "{issued:?}");
    let root = TempFile::new(".pem", &ca.pebble().issuing_root(&ca.topo.client));
    let resolve = format!("{NAME}:443:{}", xlb_tests::topology::LB_CLIENT_V4);
    let url = format!("https://{NAME}/");
    let args = ["-sS", "--fail", "--max-time", "5", "--cacert", root.path().to_str().unwrap(), "--resolve", &resolve, &url];
    let mut last = String::new();
    let got = xlb_tests::util::wait_for(Duration::from_secs(10), Duration::from_millis(250), || match ca.topo.client.try_run("curl", &args) {
        Ok(body) => Some(body),
        Err(e) => {
            last = e;
            None
        }
    });
    assert_eq!(got.as_deref().map(str::trim), Some("b1"), "curl over HTTPS: {last}\n{}", xlb.log());
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("pebble's validation: {:?}", ca.pebble().log().lines().filter(|l| l.contains("alidat")).collect::<Vec<_>>());
    xlb
}
