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

/// The state directory on a full file system (a 256 KiB tmpfs filled up) while a bounded
/// wrk load goes through xlb's HTTP listener: the order fails with the write error (the
/// status says it), serving goes on without a failed request, and once space is freed
/// the retry issues the certificate. Prints `ACME-FIGURE disk full: ...`.
#[test]
fn a_full_state_directory_fails_the_order_not_the_traffic() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let ca = Ca::start();
    let state = ca.state.path().to_path_buf();
    let _mount = Tmpfs::mount(&state, "256k");
    let filler = state.join("filler");
    fill(&filler);
    let (xlb, _cfg) = ca.start_xlb(&[NAME]);
    let url = format!("http://{}/", xlb_tests::topology::LB_CLIENT_V4);
    let secs = 8;
    let wrk = ca.topo.client.exec("wrk", xlb_tests::wrk::args(&url, 4, secs));
    let load = std::thread::spawn(move || xlb_tests::wrk::run(wrk));
    let lb = &ca.topo.lb;
    let full = wait_status(lb, &xlb, ca.pebble.as_ref(), NAME, Duration::from_secs(20), |s| s.state == "failed");
    let w = load.join().unwrap();
    eprintln!("ACME-FIGURE disk full: status {full:?}; wrk -c 4 for {secs}s meanwhile: {w:?}");
    assert!(full.error.as_deref().is_some_and(|e| e.to_lowercase().contains("no space")), "{full:?}");
    assert_eq!(w.failed(), 0, "{w:?}\n{}", xlb.log());
    std::fs::remove_file(&filler).unwrap();
    let back = wait_status(lb, &xlb, ca.pebble.as_ref(), NAME, ISSUE_TIMEOUT, |s| s.state == "issued");
    eprintln!("ACME-FIGURE disk freed: {back:?}");
    drop(xlb);
}

/// Writes `path` until the file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let block = [0u8; 4096];
    let err = loop {
        if let Err(e) = f.write_all(&block) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
}

/// A tmpfs of a fixed size mounted over a directory; unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        xlb_tests::util::run(&mut xlb_tests::util::cmd("mount", ["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs", dir.to_str().unwrap()]));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = xlb_tests::util::try_run(&mut xlb_tests::util::cmd("umount", ["-l", self.0.to_str().unwrap()]));
    }
}
