//! Regression tests of defects found in review (issue 15), with the real binary in the
//! namespace topology (see `xlb_tests::topology`):
//!
//! - `an_unroutable_backend_is_left_out_and_the_others_serve` (#3): a static backend no
//!   route reaches, next to good ones: xlb starts, says so, shows it `unroutable`, and the
//!   good ones serve;
//! - `a_reload_that_cannot_be_applied_keeps_the_old_config` (#3): a reload whose new HTTP
//!   listener's address is taken is rolled back (the TCP service keeps its old backends);
//!   once the address is free the same file applies;
//! - `forwarding_keeps_router_advertisements_and_is_put_back` (#5): with IPv6 forwarding off
//!   and `accept_ra` 1 on `--iface`, the default route learnt from a router advertisement
//!   survives xlb switching forwarding on, a new advertisement is still accepted, and at exit
//!   both switches are back;
//! - `admin_token_and_what_a_reload_cannot_change` (#10): a non-loopback admin address
//!   without a token is warned about; a reload that sets `admin.token` makes requests without
//!   it 401 and with it 200 (`xlb status` with `$XLB_ADMIN_TOKEN`); a reload that moves
//!   `admin.address` says a restart is needed and the old address keeps serving;
//! - `accept_loops_back_off_when_descriptors_run_out` (#2): with its descriptor limit
//!   lowered to what it holds plus a few, connections held open exhaust xlb's descriptors;
//!   the HTTP and admin accept loops hit EMFILE without spinning (CPU time over 3 s stays
//!   small), and serve again once the connections close.
//!
//! Needs root and `XLB_BIN`; run with
//! `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test defects -- --test-threads=1`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    Topology, Xlb,
    config::{self, BackendCfg, ServiceCfg},
    http,
    status::{self, ServiceLookup as _},
    topology::{LB_CLIENT_IF, LB_CLIENT_V4, TESTD_PORT, VIP4},
    util::{self, TempFile, wait_for},
    xlb::{XlbArgs, xlb_bin},
};

/// An address no route in the LB namespace reaches (it has no default route).
const UNROUTABLE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

fn setup(backends: usize) -> (xlb_tests::Serial, Topology) {
    let g = xlb_tests::serial();
    xlb_tests::preflight();
    (g, Topology::builder().backends(backends).build())
}

/// xlb in the LB namespace on `lc` with `--config cfg`.
fn start_xlb(topo: &Topology, cfg: &Path) -> Xlb {
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,xlb=debug".into());
    Xlb::start_with_env(
        XlbArgs { ns: Some(&topo.lb), iface: LB_CLIENT_IF, config: Some(cfg), specs: vec![], other_ifaces: topo.lb_backend_ifaces() },
        &[("RUST_LOG", &log)],
    )
}

/// Service `web` on VIP4:80/tcp over these backends (port 8080).
fn web(backends: &[IpAddr]) -> ServiceCfg {
    ServiceCfg::tcp("web", VIP4.into(), 80, backends.iter().map(|a| BackendCfg::new(*a, TESTD_PORT)).collect())
}

/// Waits (at most `timeout`) for a log line after the first `from` lines containing every
/// one of `needles`; returns it.
fn wait_log(xlb: &Xlb, from: usize, timeout: Duration, needles: &[&str]) -> Option<String> {
    wait_for(timeout, Duration::from_millis(20), || {
        xlb.log().lines().skip(from).find(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string)
    })
}

fn log_len(xlb: &Xlb) -> usize {
    xlb.log().lines().count()
}

#[test]
fn an_unroutable_backend_is_left_out_and_the_others_serve() {
    let (_g, topo) = setup(2);
    let cfg = TempFile::new(".yaml", &config::render(&[web(&[topo.ip("b1", false), topo.ip("b2", false), UNROUTABLE.into()])]));
    // Before the fix, xlb exited at start: "no route to backend 10.250.0.2".
    let xlb = start_xlb(&topo, cfg.path());
    let warned = wait_log(&xlb, 0, Duration::from_secs(2), &["left out", &UNROUTABLE.to_string()]);
    assert!(warned.is_some(), "no warning naming the unroutable backend; log:\n{}", xlb.log());

    let spread = topo.spread(Topology::vip4(80), 40);
    assert!(spread.errors.is_empty() && spread.total_ok() == 40, "the routable backends must serve: {spread}");
    assert!(spread.count("b1") > 0 && spread.count("b2") > 0, "both routable backends serve: {spread}");

    let unroutable = format!("{UNROUTABLE}:{TESTD_PORT}");
    let state = wait_for(Duration::from_secs(5), Duration::from_millis(200), || {
        let st = status::xlb_status(&topo.lb).ok()?;
        let state = st.service("web")?.backend(&unroutable)?.state.clone();
        (state == "unroutable").then_some(state)
    });
    assert!(state.is_some(), "xlb status does not show {unroutable} as unroutable: {:?}", status::xlb_status(&topo.lb));
    println!("DEFECTS-FIGURE unroutable: {spread}; {unroutable} shown as unroutable");
}

#[test]
fn a_reload_that_cannot_be_applied_keeps_the_old_config() {
    let (_g, topo) = setup(3);
    let (b1, b2, b3) = (topo.ip("b1", false), topo.ip("b2", false), topo.ip("b3", false));
    let cfg = TempFile::new(".yaml", &config::render(&[web(&[b1, b2])]));
    let mut xlb = start_xlb(&topo, cfg.path());
    let spread = topo.spread(Topology::vip4(80), 20);
    assert!(spread.errors.is_empty() && spread.count("b3") == 0, "before the reload: {spread}");

    // The new file moves `web` to b3 and adds an HTTP service on an address that is taken.
    let http_port = 8081;
    let taken = topo.lb.enter(|| TcpListener::bind((LB_CLIENT_V4, http_port)).expect("binding the address the reload wants"));
    let api = ServiceCfg { name: "api".into(), vip: None, port: http_port, protocol: "http", method: None, backends: vec![BackendCfg::new(b1, TESTD_PORT)] };
    let from = log_len(&xlb);
    cfg.write(&config::render(&[web(&[b3]), api]));
    // Rolled back, or (before the fix) applied but for the listener.
    let reacted = wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        xlb.log().lines().skip(from).find(|l| l.contains("could not be applied") || l.contains("config reloaded")).map(str::to_string)
    });
    assert!(reacted.is_some(), "xlb did not react to the new file; log:\n{}", xlb.log());
    let spread = topo.spread(Topology::vip4(80), 30);
    assert!(
        spread.errors.is_empty() && spread.count("b3") == 0 && spread.count("b1") + spread.count("b2") == 30,
        "after a reload that could not be applied, the old config (b1, b2) must serve: {spread}"
    );
    let rolled_back = wait_log(&xlb, from, Duration::from_secs(1), &["could not be applied", "previous config keeps serving"]);
    assert!(rolled_back.is_some(), "no rollback logged for a reload whose listener cannot be bound; log:\n{}", xlb.log());

    // Once the address is free, the same file applies.
    drop(taken);
    let from = log_len(&xlb);
    xlb.reload();
    assert!(wait_log(&xlb, from, Duration::from_secs(5), &["config reloaded"]).is_some(), "the reload after freeing the address was not applied; log:\n{}", xlb.log());
    let moved = wait_for(Duration::from_secs(5), Duration::from_millis(100), || (topo.get(Topology::vip4(80)).ok()? == "b3").then_some(()));
    assert!(moved.is_some(), "web did not move to b3");
    let api_answer = topo.client.enter(|| http::get_name((LB_CLIENT_V4, http_port).into()));
    assert_eq!(api_answer.as_deref(), Ok("b1"), "the HTTP service of the applied reload");
}

/// Sends one router advertisement (router lifetime 1800 s, nothing else) to all nodes on
/// `iface`, from the calling thread's namespace.
fn send_router_advertisement(iface: &str) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    // Neighbour discovery accepts only packets that no router forwarded.
    sock.set_multicast_hops_v6(255)?;
    sock.set_multicast_if_v6(index)?;
    // Type 134 (RA), code 0, checksum (the kernel fills it in), hop limit 64, flags 0,
    // router lifetime 1800 s, reachable time 0, retransmission timer 0.
    let lifetime = 1800u16.to_be_bytes();
    let ra = [134, 0, 0, 0, 64, 0, lifetime[0], lifetime[1], 0, 0, 0, 0, 0, 0, 0, 0];
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
    sock.send_to(&ra, &SockAddr::from(all_nodes))?;
    Ok(())
}

/// The LB namespace's IPv6 default route learnt from an advertisement, if any.
fn ra_default_route(topo: &Topology) -> Option<String> {
    let out = topo.lb.ip("-6 route show default");
    out.lines().find(|l| l.contains("proto ra")).map(str::to_string)
}

/// Advertises the client namespace as a router on the client link until the LB namespace
/// has learnt the default route (at most 10 s: the link-local source may still be tentative).
fn advertise_until_learnt(topo: &Topology) -> Option<String> {
    wait_for(Duration::from_secs(10), Duration::from_millis(250), || {
        if let Err(e) = topo.client.enter(|| send_router_advertisement("eth0")) {
            eprintln!("sending a router advertisement: {e}");
        }
        thread::sleep(Duration::from_millis(50));
        ra_default_route(topo)
    })
}

fn lb_sysctl(topo: &Topology, key: &str) -> String {
    topo.lb.run("sysctl", &["-n", key]).trim().to_string()
}

#[test]
fn forwarding_keeps_router_advertisements_and_is_put_back() {
    let (_g, topo) = setup(1);
    let (forwarding, accept_ra) = (format!("net.ipv6.conf.{LB_CLIENT_IF}.forwarding"), format!("net.ipv6.conf.{LB_CLIENT_IF}.accept_ra"));
    // A host interface as SLAAC leaves it: not forwarding, taking advertisements.
    topo.lb.sysctl(&forwarding, "0");
    topo.lb.sysctl(&accept_ra, "1");
    let learnt = advertise_until_learnt(&topo);
    assert!(learnt.is_some(), "the LB namespace did not learn a default route from the advertisements (the test's own setup)");

    let spec = config::spec(Some(VIP4.into()), 80, &[(topo.ip("b1", false), None)], Some(TESTD_PORT), None);
    let mut xlb = topo.start_xlb(None, &[spec]);
    // Switching forwarding on purges default routes learnt on interfaces whose accept_ra is not 2.
    assert!(ra_default_route(&topo).is_some(), "xlb switching forwarding on dropped the default route learnt from advertisements");
    assert_eq!((lb_sysctl(&topo, &forwarding), lb_sysctl(&topo, &accept_ra)), ("1".into(), "2".into()), "while xlb runs: forwarding on, accept_ra 2");
    // And advertisements are still taken while forwarding.
    topo.lb.ip("-6 route del default");
    assert!(advertise_until_learnt(&topo).is_some(), "while xlb runs, a router advertisement is ignored");
    assert_eq!(topo.spread(Topology::vip4(80), 5).count("b1"), 5, "the service serves");

    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((lb_sysctl(&topo, &forwarding), lb_sysctl(&topo, &accept_ra)), ("0".into(), "1".into()), "after exit: forwarding and accept_ra as before");
}

/// `GET /metrics` on the admin endpoint `addr` in the LB namespace with these extra header
/// lines; the status code.
fn admin_status(topo: &Topology, addr: SocketAddr, headers: &str) -> Result<u16, String> {
    let headers = headers.to_string();
    topo.lb.enter(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("{addr}: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        conn.write_all(format!("GET /metrics HTTP/1.1\r\nHost: xlb\r\n{headers}Connection: close\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
        let mut text = String::new();
        conn.read_to_string(&mut text).map_err(|e| format!("{addr}: {e}"))?;
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("{addr}: bad answer {text:?}"))
    })
}

#[test]
fn admin_token_and_what_a_reload_cannot_change() {
    let (_g, topo) = setup(1);
    let service = config::render(&[web(&[topo.ip("b1", false)])]);
    let with_admin = |admin: &str| format!("admin:\n{admin}{service}");
    let cfg = TempFile::new(".yaml", &with_admin("  address: 0.0.0.0:9100\n"));
    let xlb = start_xlb(&topo, cfg.path());
    let admin: SocketAddr = (Ipv4Addr::LOCALHOST, 9100).into();
    assert!(
        wait_log(&xlb, 0, Duration::from_secs(2), &["beyond loopback", "admin.token"]).is_some(),
        "no warning about an admin endpoint beyond loopback without a token; log:\n{}",
        xlb.log()
    );
    assert_eq!(admin_status(&topo, admin, ""), Ok(200), "no token configured: open");

    // A reload sets a token: it applies at once.
    let from = log_len(&xlb);
    cfg.write(&with_admin("  address: 0.0.0.0:9100\n  token: s3cret-token\n"));
    assert!(wait_log(&xlb, from, Duration::from_secs(5), &["admin.token changed"]).is_some(), "the reload setting a token; log:\n{}", xlb.log());
    assert_eq!(admin_status(&topo, admin, ""), Ok(401), "no Authorization header");
    assert_eq!(admin_status(&topo, admin, "Authorization: Bearer s3cret-toke\r\n"), Ok(401), "a wrong token");
    assert_eq!(admin_status(&topo, admin, "Authorization: Bearer s3cret-token\r\n"), Ok(200), "the token");
    let bin = xlb_bin();
    let status = |token: Option<&str>| {
        let mut c = topo.lb.exec(bin.to_str().unwrap(), ["status", "--json"]);
        c.env_remove("XLB_ADMIN_TOKEN");
        if let Some(t) = token {
            c.env("XLB_ADMIN_TOKEN", t);
        }
        util::try_run(&mut c)
    };
    let with = status(Some("s3cret-token"));
    assert!(with.as_ref().is_ok_and(|s| s.contains("\"web\"")), "xlb status with $XLB_ADMIN_TOKEN: {with:?}");
    let without = status(None);
    assert!(without.as_ref().is_err_and(|e| e.contains("401")), "xlb status without the token must fail naming 401: {without:?}");

    // A reload that moves the admin endpoint says that takes a restart; the old one serves on.
    let from = log_len(&xlb);
    cfg.write(&with_admin("  address: 127.0.0.1:9101\n  token: s3cret-token\n"));
    let warned = wait_log(&xlb, from, Duration::from_secs(5), &["admin.address changed", "restart"]);
    assert!(warned.is_some(), "a reload changing admin.address was not reported as needing a restart; log:\n{}", xlb.log());
    assert_eq!(admin_status(&topo, admin, "Authorization: Bearer s3cret-token\r\n"), Ok(200), "the endpoint stays where it was");
}

/// xlb's CPU time (user + system) so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/PID/fd").count()
}

#[test]
fn accept_loops_back_off_when_descriptors_run_out() {
    let (_g, topo) = setup(1);
    let http_port = 8081;
    let api = ServiceCfg { name: "api".into(), vip: None, port: http_port, protocol: "http", method: None, backends: vec![BackendCfg::new(topo.ip("b1", false), TESTD_PORT)] };
    let cfg = TempFile::new(".yaml", &config::render(&[api]));
    let xlb = start_xlb(&topo, cfg.path());
    let proxy: SocketAddr = (LB_CLIENT_V4, http_port).into();
    let served = wait_for(Duration::from_secs(5), Duration::from_millis(100), || topo.client.enter(|| http::get_name(proxy)).ok());
    assert_eq!(served.as_deref(), Some("b1"), "the HTTP service before the test");

    // Room for a few more descriptors only; then more connections than that, held open.
    let pid = xlb.pid();
    let limit = open_fds(pid) + 8;
    util::run(&mut util::cmd("prlimit", ["--pid", &pid.to_string(), &format!("--nofile={limit}:{limit}")]));
    let held: Vec<TcpStream> = topo.client.enter(|| (0..40).filter_map(|_| TcpStream::connect_timeout(&proxy, Duration::from_secs(2)).ok()).collect());
    let admin: SocketAddr = (Ipv4Addr::LOCALHOST, 9100).into();
    let held_admin: Vec<TcpStream> = topo.lb.enter(|| (0..3).filter_map(|_| TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()).collect());
    assert_eq!((held.len(), held_admin.len()), (40, 3), "connections completed by the kernel (the listen backlogs)");
    let exhausted = wait_log(&xlb, 0, Duration::from_secs(5), &["http accept", "Too many open files"]);
    assert!(exhausted.is_some(), "xlb's descriptors were not exhausted (the test's premise); log:\n{}", xlb.log());
    let window = Duration::from_secs(3);
    let (t0, c0) = (Instant::now(), cpu_time(pid));
    thread::sleep(window);
    let (spent, elapsed) = (cpu_time(pid) - c0, t0.elapsed());
    println!("DEFECTS-FIGURE emfile: {spent:?} of CPU in {elapsed:?} with descriptors exhausted");
    assert!(spent < Duration::from_millis(600), "xlb spun on accept errors: {spent:?} of CPU in {elapsed:?} (a 50 ms back-off costs next to nothing)");
    let admin_exhausted = wait_log(&xlb, 0, Duration::from_secs(5), &["admin accept", "Too many open files"]);
    assert!(admin_exhausted.is_some(), "the admin accept loop did not meet EMFILE in the window (the test's premise); log tail:\n{}", xlb.log().lines().rev().take(20).collect::<Vec<_>>().join("\n"));

    // The connections go: both endpoints serve again.
    drop(held);
    drop(held_admin);
    let recovered = wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        let api = topo.client.enter(|| http::get_name(proxy)).ok()?;
        let admin = xlb.admin_get("/metrics").ok()?;
        (api == "b1" && admin.contains("xlb_")).then_some(())
    });
    assert!(recovered.is_some(), "xlb did not serve again after the connections closed; log tail:\n{}", xlb.log().lines().rev().take(20).collect::<Vec<_>>().join("\n"));
}
