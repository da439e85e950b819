//! What a failing CA looks like: status `failed` with the error, retries backing off.

use std::time::Duration;

use super::common::{Ca, ISSUE_TIMEOUT, NAME, log_lines, wait_status};

/// A name the test's DNS server does not know: pebble cannot resolve it and refuses it.
const UNKNOWN: &str = "nowhere.xlb.test";

/// The waits xlb logged after each failed order of `name`, in milliseconds.
fn retry_waits(xlb: &xlb_tests::Xlb, name: &str) -> Vec<u64> {
    log_lines(xlb, name, "certificate order failed")
        .iter()
        .filter_map(|l| l.split("retry_in_ms=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// With pebble down, orders fail with the connection error, `failed` in the status, and are
/// retried after 1 s, 2 s, 4 s (±25 % jitter); once pebble is back the name is issued. A name
/// pebble cannot validate stays `failed` with pebble's own problem text, and is retried.
#[test]
fn a_ca_outage_and_a_refused_name_fail_then_back_off() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let mut ca = Ca::start();
    let (xlb, _cfg) = ca.start_xlb(&[NAME, UNKNOWN]);
    ca.pebble.take().expect("started").stop();
    let lb = &ca.topo.lb;
    let down = wait_status(lb, &xlb, None, NAME, Duration::from_secs(20), |s| s.state == "failed" && s.failures >= 3);
    eprintln!("ACME-FIGURE CA down: {down:?}");
    assert!(down.error.as_deref().is_some_and(|e| e.contains("connect") || e.contains("Connection refused")), "{down:?}");
    assert!(down.retry_at.is_some() && down.expires.is_none(), "{down:?}");
    let waits = retry_waits(&xlb, NAME);
    eprintln!("ACME-FIGURE waits after each failure (ms): {waits:?}");
    for (i, (w, base)) in waits.iter().zip([1000.0, 2000.0, 4000.0]).enumerate() {
        assert!((base * 0.75..=base * 1.25).contains(&(*w as f64)), "wait {i} of {waits:?}: {base} ms ± 25 % wanted");
    }

    ca.restart_pebble();
    let lb = &ca.topo.lb;
    let back = wait_status(lb, &xlb, ca.pebble.as_ref(), NAME, ISSUE_TIMEOUT, |s| s.state == "issued");
    assert_eq!((back.orders, back.failures, back.error.as_deref()), (1, 0, None), "{back:?}");
    let refused = wait_status(lb, &xlb, ca.pebble.as_ref(), UNKNOWN, ISSUE_TIMEOUT, |s| {
        s.state == "failed" && s.error.as_deref().is_some_and(|e| e.contains("urn:ietf:params:acme:error"))
    });
    eprintln!("ACME-FIGURE refused name: {refused:?}");
    let n = refused.failures;
    wait_status(lb, &xlb, ca.pebble.as_ref(), UNKNOWN, Duration::from_secs(20), |s| s.failures > n);
    assert!(std::fs::metadata(ca.cert_path(UNKNOWN)).is_err(), "nothing written for a refused name");
    drop(xlb);
}
