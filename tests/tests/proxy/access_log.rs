//! The access log (`access_log:`), written by the real binary in namespaces (client → LB →
//! backends b1..b3): a JSON line per HTTP request with its upstream, status, bytes, route,
//! tries and durations (a retry after a backend died counted), a line per L4 connection
//! from the expiry pass, the file reopened on SIGUSR1 after a rename (logrotate's way);
//! then nginx's `combined` on standard output.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use serde_json::Value;
use xlb_tests::{
    Topology,
    topology::{CLIENT_V4, LB_CLIENT_V4, TESTD_PORT},
    util::{TempDir, wait_for},
    xlb::Xlb,
};

use crate::client::get;

const HTTP_PORT: u16 = 80;
const L4_PORT: u16 = 81;

/// A config with an HTTP service (`web`, round robin) and a kernel one (`l4`) over `backends`,
/// and `access_log` as given.
fn config(dir: &Path, backends: &[IpAddr], access_log: &str) -> std::path::PathBuf {
    let list = backends.iter().map(|ip| format!("{{ address: {ip}, port: {TESTD_PORT} }}")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "dataplane: {{ tcp_closed_timeout: 1s }}\n\
         access_log: {access_log}\n\
         services:\n\
         \x20 - {{ name: web, vip: {LB_CLIENT_V4}, port: {HTTP_PORT}, protocol: http, backends: [{list}], http: {{ retries: {{ attempts: 2 }} }} }}\n\
         \x20 - {{ name: l4, vip: {LB_CLIENT_V4}, port: {L4_PORT}, backends: [{list}] }}\n"
    );
    let path = dir.join("xlb.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The JSON lines of `path` (none if it does not exist).
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// Waits (bounded) until `path` has at least `n` lines of `kind`; returns them.
fn wait_lines(path: &Path, kind: &str, n: usize, within: Duration, xlb: &Xlb) -> Vec<Value> {
    let found = wait_for(within, Duration::from_millis(100), || {
        let l: Vec<Value> = lines(path).into_iter().filter(|v| v["kind"] == kind).collect();
        (l.len() >= n).then_some(l)
    });
    found.unwrap_or_else(|| panic!("fewer than {n} {kind} lines in {} within {within:?}:\n{:?}\nxlb:\n{}", path.display(), lines(path), xlb.log()))
}

#[test]
fn access_log_json_lines_for_requests_and_connections_reopened_on_sigusr1() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let mut topo = Topology::builder().backends(3).build();
    let backends: Vec<IpAddr> = topo.names().iter().map(|n| topo.ip(n, false)).collect();
    let dir = TempDir::new();
    let log = dir.path().join("access.log");
    let cfg = config(dir.path(), &backends, &format!("{{ path: {}, format: json }}", log.display()));
    let mut xlb = topo.start_xlb(Some(&cfg), &[]);
    let vip = SocketAddr::from((LB_CLIENT_V4, HTTP_PORT));
    let ua = ("User-Agent", "xlb-test/1");

    // Three requests, one per backend (round robin): each a line with its answer's fields.
    let answers: Vec<(String, usize)> = topo.client.enter(|| {
        (0..3)
            .map(|_| {
                let r = get(vip, "app.dev", "/", &[ua]);
                assert_eq!(r.status, 200, "{r:?}");
                (r.name(), r.body.len())
            })
            .collect()
    });
    let http = wait_lines(&log, "http", 3, Duration::from_secs(10), &xlb);
    let wanted: BTreeSet<String> = backends.iter().map(|ip| format!("{ip}:{TESTD_PORT}")).collect();
    for (line, (name, len)) in http.iter().zip(&answers) {
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["target"], "/", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["bytes"].as_u64(), Some(*len as u64), "{line}");
        assert_eq!(line["route"], "web", "{line}");
        assert_eq!(line["upstream"], format!("{}:{TESTD_PORT}", topo.ip(name, false)), "{line}: {name} answered");
        assert!(line["upstream_name"].as_str().is_some_and(|n| !n.is_empty()), "{line}");
        assert_eq!(line["client"].as_str().and_then(|c| c.parse::<SocketAddr>().ok()).map(|c| c.ip()), Some(IpAddr::from(CLIENT_V4)), "{line}");
        assert_eq!((line["tries"].as_u64(), line["retries"].as_u64()), (Some(1), Some(0)), "{line}");
        assert_eq!(line["user_agent"], "xlb-test/1", "{line}");
        assert_eq!(line["host"], "app.dev", "{line}");
        // A first request to each backend opens its connection: connect ≤ header ≤ total.
        let (c, h, t) = (line["connect_time"].as_f64(), line["header_time"].as_f64(), line["request_time"].as_f64());
        assert!(c.is_some() && h.is_some() && t.is_some() && c <= h && h <= t, "durations of {line}");
    }
    let served: BTreeSet<&str> = http.iter().filter_map(|l| l["upstream"].as_str()).collect();
    assert_eq!(served.len(), 3, "round robin spread the three requests: {served:?}");

    // L4: three connections through the kernel, each a line once the expiry pass removes it.
    let l4 = SocketAddr::from((LB_CLIENT_V4, L4_PORT));
    let spread = topo.spread(l4, 3);
    assert!(spread.errors.is_empty(), "{:?}", spread.errors);
    let conns = wait_lines(&log, "tcp", 3, Duration::from_secs(20), &xlb);
    for c in &conns {
        assert_eq!(c["service"], l4.to_string(), "{c}");
        assert_eq!(c["end"], "closed", "{c}");
        assert!(wanted.contains(c["upstream"].as_str().unwrap_or_default()), "{c}");
        assert_eq!(c["client"].as_str().and_then(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip()), Some(IpAddr::from(CLIENT_V4)), "{c}");
    }

    // A backend gone: the request that picks it first is retried on another, and says so.
    drop(topo.backends[1].testd.take());
    topo.client.enter(|| {
        for _ in 0..9 {
            assert_eq!(get(vip, "app.dev", "/", &[ua]).status, 200);
        }
    });
    let http = wait_lines(&log, "http", 12, Duration::from_secs(10), &xlb);
    let retried: Vec<&Value> = http[3..].iter().filter(|l| l["tries"] == 2).collect();
    assert!(!retried.is_empty(), "no line with tries 2 after b2 died:\n{:#?}", &http[3..]);
    let b2 = format!("{}:{TESTD_PORT}", backends[1]);
    assert!(retried.iter().all(|l| l["retries"] == 1 && l["status"] == 200 && l["upstream"] != b2.as_str()), "{retried:#?}");

    reopens_after_rename(&topo, &xlb, &log, vip);
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// logrotate's way: rename, SIGUSR1, and the next lines go to a new file of the old name.
fn reopens_after_rename(topo: &Topology, xlb: &Xlb, log: &Path, vip: SocketAddr) {
    let ua = ("User-Agent", "xlb-test/1");
    let rotated = log.with_extension("log.1");
    std::fs::rename(log, &rotated).unwrap();
    let before = lines(&rotated).len();
    xlb_tests::util::try_run(&mut xlb_tests::util::cmd("kill", ["-USR1", &xlb.pid().to_string()])).unwrap();
    let reopened = wait_for(Duration::from_secs(10), Duration::from_millis(100), || xlb.log().contains("access log reopened").then_some(()));
    assert!(reopened.is_some(), "no reopen after SIGUSR1:\n{}", xlb.log());
    topo.client.enter(|| {
        for path in ["/echo", "/health"] {
            assert_eq!(get(vip, "app.dev", path, &[ua]).status, 200);
        }
    });
    let new = wait_lines(log, "http", 2, Duration::from_secs(10), xlb);
    assert_eq!(new.iter().map(|l| l["target"].as_str().unwrap_or_default()).collect::<Vec<_>>(), ["/echo", "/health"]);
    assert_eq!(lines(&rotated).len(), before, "the renamed file grew after the reopen");
}

/// `access_log: {}`: nginx's `combined`, on standard output.
#[test]
fn access_log_combined_on_stdout() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    let topo = Topology::builder().backends(3).build();
    let backends: Vec<IpAddr> = topo.names().iter().map(|n| topo.ip(n, false)).collect();
    let dir = TempDir::new();
    let cfg = config(dir.path(), &backends, "{}");
    let mut xlb = topo.start_xlb(Some(&cfg), &[]);
    let vip = SocketAddr::from((LB_CLIENT_V4, HTTP_PORT));
    let ua = ("User-Agent", "xlb-test \"quoted\"");
    let r = topo.client.enter(|| get(vip, "app.dev", "/combined?a=%22b%22", &[ua, ("Referer", "http://app.dev/")]));
    // The backend knows no such path: its 404 is logged as it is.
    assert_eq!(r.status, 404);
    let want = format!("\"GET /combined?a=%22b%22 HTTP/1.1\" 404 {} \"http://app.dev/\" \"xlb-test \\x22quoted\\x22\"", r.body.len());
    let line = wait_for(Duration::from_secs(10), Duration::from_millis(100), || xlb.log().lines().find(|l| l.contains(&want)).map(str::to_owned));
    let line = line.unwrap_or_else(|| panic!("no combined line ending {want}:\n{}", xlb.log()));
    let start = line.find(&format!("{CLIENT_V4} - - [")).unwrap_or_else(|| panic!("{line}"));
    let time = &line[start + format!("{CLIENT_V4} - - [").len()..];
    // [05/Dec/2026:21:11:19 +0000]
    assert!(time.len() > 28 && &time[2..3] == "/" && &time[6..7] == "/" && &time[11..12] == ":" && time[20..].starts_with(" +0000] "), "{line}");
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
