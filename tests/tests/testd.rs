//! The test backend itself, on loopback (no root, no xlb needed).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use xlb_tests::{
    docker, http,
    util::{Proc, STDOUT, try_run},
};

struct Testd {
    proc: Proc,
    tcp: u16,
    udp: u16,
}

impl Testd {
    fn start(bin: &Path, name: &str) -> Testd {
        let mut c = Command::new(bin);
        c.args(["--name", name, "--port", "0"]);
        let mut proc = Proc::spawn(name, c);
        let line = proc.wait_line(STDOUT, "listening", Duration::from_secs(10)).unwrap();
        // "xlb-testd NAME listening on tcp/P udp/Q"
        let port = |proto: &str| -> u16 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(proto))
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no {proto} port in {line:?}"))
        };
        Testd { tcp: port("tcp/"), udp: port("udp/"), proc }
    }

    fn v4(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.tcp).into()
    }
}

fn testd() -> Testd {
    Testd::start(Path::new(env!("CARGO_BIN_EXE_xlb-testd")), "alpha")
}

#[test]
fn get_name_v4_and_v6() {
    let t = testd();
    assert_eq!(http::get_name(t.v4()).unwrap(), "alpha");
    let r = http::request(t.v4(), "GET", "/").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "alpha\n"), "body is NAME plus a newline");
    assert_eq!(http::get_name((Ipv6Addr::LOCALHOST, t.tcp).into()).unwrap(), "alpha");
}

#[test]
fn keep_alive() {
    let t = testd();
    let mut c = http::Conn::connect(t.v4(), Duration::from_secs(2)).unwrap();
    for _ in 0..5 {
        let r = c.request("GET", "/", false).unwrap();
        assert_eq!((r.status, r.body.trim()), (200, "alpha"));
    }
    let r = c.request("GET", "/health", true).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn curl_reuses_the_connection() {
    let t = testd();
    let url = format!("http://127.0.0.1:{}/", t.tcp);
    let out = Command::new("curl").args(["-sv", "--max-time", "5", &url, &url]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alpha\nalpha\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing connection"),
        "curl did not reuse the connection:\n{err}"
    );
}

#[test]
fn health_switch() {
    let t = testd();
    let status = |m: &str, p: &str| http::request(t.v4(), m, p).unwrap().status;
    assert_eq!(status("GET", "/health"), 200);
    assert_eq!(status("POST", "/health/fail"), 200);
    assert_eq!(status("GET", "/health"), 503);
    assert_eq!(status("GET", "/"), 200, "/ keeps answering while unhealthy");
    assert_eq!(status("POST", "/health/ok"), 200);
    assert_eq!(status("GET", "/health"), 200);
    assert_eq!(status("GET", "/nope"), 404);
    assert_eq!(status("POST", "/"), 405);
    assert_eq!(status("POST", "/delay/xyz"), 400);
}

/// `xlb-testd check`, the image's HEALTHCHECK: exit 0 while `/health` answers 200, 1 when it
/// fails or nothing listens, with the reason on stdout (Docker keeps it in the health log).
#[test]
fn check_mode() {
    let t = testd();
    let check = |port: u16| {
        let out = Command::new(env!("CARGO_BIN_EXE_xlb-testd")).args(["check", "--port", &port.to_string()]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(check(t.tcp), (Some(0), "HTTP/1.1 200 OK".to_string()));
    assert_eq!(http::request(t.v4(), "POST", "/health/fail").unwrap().status, 200);
    let (code, out) = check(t.tcp);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("503"), "{out}");
    assert_eq!(http::request(t.v4(), "POST", "/health/ok").unwrap().status, 200);
    assert_eq!(check(t.tcp).0, Some(0));
    // Nothing listens on the port any more.
    let port = t.tcp;
    drop(t);
    let (code, out) = check(port);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("unhealthy:"), "{out}");
}

#[test]
fn delay() {
    let t = testd();
    assert_eq!(http::request(t.v4(), "POST", "/delay/300").unwrap().status, 200);
    let start = Instant::now();
    assert_eq!(http::get_name(t.v4()).unwrap(), "alpha");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "delay not applied: {took:?}");
    // The delay applies to `/` only.
    let start = Instant::now();
    assert_eq!(http::request(t.v4(), "GET", "/health").unwrap().status, 200);
    assert!(start.elapsed() < Duration::from_millis(250));
    assert_eq!(http::request(t.v4(), "POST", "/delay/0").unwrap().status, 200);
    let start = Instant::now();
    http::get_name(t.v4()).unwrap();
    assert!(start.elapsed() < Duration::from_millis(250));
}

#[test]
fn stream() {
    let t = testd();
    let s = http::Stream::start(None, t.v4(), 2);
    assert_eq!(s.backend(Duration::from_secs(2)).unwrap(), "alpha");
    let r = s.join();
    r.assert_ok(2, Duration::from_millis(500));
    assert!(r.elapsed >= Duration::from_millis(1900), "{r:?}");
}

#[test]
fn stream_with_curl() {
    let t = testd();
    let url = format!("http://127.0.0.1:{}/stream?secs=1", t.tcp);
    let out = Command::new("curl").args(["-sSN", "--max-time", "5", &url]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let body = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 11, "{body}");
    assert_eq!(lines[0], "alpha 0");
    assert_eq!(lines[10], "alpha done");
}

#[test]
fn udp() {
    let t = testd();
    for addr in [SocketAddr::from((Ipv4Addr::LOCALHOST, t.udp)), SocketAddr::from((Ipv6Addr::LOCALHOST, t.udp))] {
        assert_eq!(http::udp_query(addr, 1, Duration::from_secs(1)).unwrap(), "alpha");
    }
    let s = http::udp_spread((Ipv4Addr::LOCALHOST, t.udp).into(), 20, Duration::from_secs(10));
    assert_eq!(s.count("alpha"), 20, "{s}");
}

#[test]
fn bad_requests_do_not_kill_it() {
    use std::io::{Read, Write};
    let t = testd();
    for garbage in [&b"\r\n\r\n"[..], b"HELLO\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"] {
        let mut s = std::net::TcpStream::connect(t.v4()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(garbage).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    assert_eq!(http::get_name(t.v4()).unwrap(), "alpha");
}

#[test]
fn env_config_and_sigterm() {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xlb-testd"));
    c.env("XLB_TESTD_NAME", "from-env").env("XLB_TESTD_PORT", "0");
    let mut p = Proc::spawn("env", c);
    let line = p.wait_line(STDOUT, "listening", Duration::from_secs(10)).unwrap();
    assert!(line.starts_with("xlb-testd from-env listening"), "{line}");
    let st = p.signal_and_wait(libc::SIGTERM, Duration::from_secs(5)).expect("exits on SIGTERM");
    assert!(st.success(), "{st}");
}

/// The static build used for the `FROM scratch` image: statically linked, and it works.
#[test]
fn static_build() {
    let bin = docker::static_testd();
    assert!(docker::is_static_elf(&bin).unwrap());
    assert!(!docker::is_static_elf(Path::new(env!("CARGO_BIN_EXE_xlb-testd"))).unwrap());
    if let Ok(out) = try_run(Command::new("file").arg(&bin)) {
        assert!(out.contains("static"), "{out}");
    }
    let t = Testd::start(&bin, "static");
    assert_eq!(http::get_name(t.v4()).unwrap(), "static");
    drop(t.proc);
}
