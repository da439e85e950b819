//! The contenders: how each balancer is configured, started in the LB namespace, checked
//! and stopped. All of them get the same three backends and listen on the same VIP:80.
// long: each contender has one line in each of `Kind`'s tables and an arm in `start`; nginx's
// and HAProxy's configs sit beside xlb's so that a reader compares them in one place.
use std::{
    ffi::OsString,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use xlb_tests::cgroup::Cgroup;

use super::{
    measure::BpfStats,
    sys::{self, Proc},
    xdp_pass::{self, XdpPass},
    topo::{self, Ask, BACKEND_PORT, SOCKET_VIP, SPREAD, TLS_PORT, Topo, VIP, VIP_PORT},
    wrk::Mode,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Direct,
    DirectXdp,
    XlbL4,
    XlbHttp,
    XlbHttpLeastTime,
    XlbHttpCookie,
    XlbHttpRoutes,
    /// The plain proxy with `access_log` on (nginx's `combined`, to a file).
    XlbHttpAccessLog,
    NginxHttp,
    NginxStream,
    HaproxyHttp,
    HaproxyTcp,
    /// The HTTP proxies again, terminating TLS on VIP:443 with the same certificate.
    XlbHttps,
    NginxHttps,
    /// HTTP/2 from h2load: h2c with prior knowledge on VIP:80, h2 over TLS on VIP:443.
    XlbH2c,
    NginxH2c,
    XlbH2,
    NginxH2,
    /// xlb's socket-level balancing (issue 16): wrk runs in a cgroup v2 child that xlb's
    /// connect() hook is attached to, as a container on the host would, so its connects to
    /// the socket VIP go straight to a backend and no packet is translated.
    XlbSocket,
    /// The same xlb and cgroup, but wrk's thread I asks socket VIP I, whose one backend is
    /// backend I: every connect() goes through the hook, and the connections are spread as
    /// in the direct run (see `start_xlb_socket`).
    XlbSocketPinned,
    /// Direct to an address all three backends have, which the LB namespace routes by ECMP
    /// on each connection's ports ([`topo::SPREAD`]): each wrk thread's connections land on
    /// all three backends, as through one socket VIP, with no balancer. `XlbSocket`'s
    /// like-for-like reference: on two cores that spread costs wake-ups of its own, which
    /// the per-thread direct run does not pay. It pays one the socket rows do not: the
    /// router hashes every forwarded packet's ports to pick the link.
    DirectSpread,
    /// nginx HTTP's config, loaded by the same caller as `XlbSocket` (wrk in a cgroup v2
    /// child, no hook attached): a local caller through a proxy on the host.
    NginxLocal,
}

impl Kind {
    pub const ALL: [Kind; 22] = [
        Kind::Direct,
        Kind::DirectXdp,
        Kind::XlbL4,
        Kind::XlbHttp,
        Kind::XlbHttpLeastTime,
        Kind::XlbHttpCookie,
        Kind::XlbHttpRoutes,
        Kind::XlbHttpAccessLog,
        Kind::NginxHttp,
        Kind::NginxStream,
        Kind::HaproxyHttp,
        Kind::HaproxyTcp,
        Kind::XlbHttps,
        Kind::NginxHttps,
        Kind::XlbH2c,
        Kind::NginxH2c,
        Kind::XlbH2,
        Kind::NginxH2,
        Kind::XlbSocket,
        Kind::XlbSocketPinned,
        Kind::DirectSpread,
        Kind::NginxLocal,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::DirectXdp => "direct-xdp",
            Kind::XlbL4 => "xlb-l4",
            Kind::XlbHttp => "xlb-http",
            Kind::XlbHttpLeastTime => "xlb-http-least-time",
            Kind::XlbHttpCookie => "xlb-http-cookie",
            Kind::XlbHttpRoutes => "xlb-http-routes",
            Kind::XlbHttpAccessLog => "xlb-http-access-log",
            Kind::NginxHttp => "nginx-http",
            Kind::NginxStream => "nginx-stream",
            Kind::HaproxyHttp => "haproxy-http",
            Kind::HaproxyTcp => "haproxy-tcp",
            Kind::XlbHttps => "xlb-https",
            Kind::NginxHttps => "nginx-https",
            Kind::XlbH2c => "xlb-h2c",
            Kind::NginxH2c => "nginx-h2c",
            Kind::XlbH2 => "xlb-h2",
            Kind::NginxH2 => "nginx-h2",
            Kind::XlbSocket => "xlb-socket",
            Kind::XlbSocketPinned => "xlb-socket-pinned",
            Kind::DirectSpread => "direct-spread",
            Kind::NginxLocal => "nginx-local",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct (no balancer)",
            Kind::DirectXdp => "direct + empty XDP program",
            Kind::XlbL4 => "xlb L4 (XDP)",
            Kind::XlbHttp => "xlb HTTP proxy",
            Kind::XlbHttpLeastTime => "xlb HTTP proxy, least_time",
            Kind::XlbHttpCookie => "xlb HTTP proxy, cookie pinning",
            Kind::XlbHttpRoutes => "xlb HTTP proxy, 1,000 Host routes",
            Kind::XlbHttpAccessLog => "xlb HTTP proxy, access log on",
            Kind::NginxHttp => "nginx HTTP proxy",
            Kind::NginxStream => "nginx stream (L4)",
            Kind::HaproxyHttp => "HAProxy http mode",
            Kind::HaproxyTcp => "HAProxy tcp mode",
            Kind::XlbHttps => "xlb HTTP proxy, TLS",
            Kind::NginxHttps => "nginx HTTP proxy, TLS",
            Kind::XlbH2c => "xlb HTTP proxy, h2c (h2load)",
            Kind::NginxH2c => "nginx HTTP proxy, h2c (h2load)",
            Kind::XlbH2 => "xlb HTTP proxy, h2 over TLS (h2load)",
            Kind::NginxH2 => "nginx HTTP proxy, h2 over TLS (h2load)",
            Kind::XlbSocket => "xlb socket LB (caller in its cgroup)",
            Kind::XlbSocketPinned => "xlb socket LB, a VIP per wrk thread",
            Kind::DirectSpread => "direct, each connection to any backend (ECMP)",
            Kind::NginxLocal => "nginx HTTP proxy on the host (caller in a cgroup)",
        }
    }

    /// xlb's HTTP proxy, in any of its configurations.
    pub fn is_xlb_http(self) -> bool {
        matches!(self, Kind::XlbHttp | Kind::XlbHttpLeastTime | Kind::XlbHttpCookie | Kind::XlbHttpRoutes | Kind::XlbHttpAccessLog)
    }

    /// Whether wrk talks to the backends themselves rather than to the VIP.
    pub fn is_direct(self) -> bool {
        matches!(self, Kind::Direct | Kind::DirectXdp)
    }

    /// Whether clients reach it over TLS (`https://VIP:443/`).
    pub fn is_tls(self) -> bool {
        matches!(self, Kind::XlbHttps | Kind::NginxHttps | Kind::XlbH2 | Kind::NginxH2)
    }

    /// Whether h2load loads it over HTTP/2 (h2c or h2), rather than wrk over HTTP/1.1.
    pub fn is_h2(self) -> bool {
        matches!(self, Kind::XlbH2c | Kind::NginxH2c | Kind::XlbH2 | Kind::NginxH2)
    }

    /// The connection modes it is measured in: HTTP/2 connections are long-lived (a
    /// new connection per request would measure handshakes, which the HTTP/1.1 TLS rows do).
    pub fn modes(self) -> &'static [Mode] {
        if self.is_h2() { &[Mode::KeepAlive] } else { &Mode::ALL }
    }

    /// The chart's label.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::DirectXdp => "direct + XDP",
            Kind::XlbL4 => "xlb L4",
            Kind::XlbHttp => "xlb HTTP",
            Kind::XlbHttpLeastTime => "xlb HTTP least_time",
            Kind::XlbHttpCookie => "xlb HTTP cookie",
            Kind::XlbHttpRoutes => "xlb HTTP 1k routes",
            Kind::XlbHttpAccessLog => "xlb HTTP access log",
            Kind::NginxHttp => "nginx HTTP",
            Kind::NginxStream => "nginx stream",
            Kind::HaproxyHttp => "HAProxy http",
            Kind::HaproxyTcp => "HAProxy tcp",
            Kind::XlbHttps => "xlb HTTPS",
            Kind::NginxHttps => "nginx HTTPS",
            Kind::XlbH2c => "xlb h2c",
            Kind::NginxH2c => "nginx h2c",
            Kind::XlbH2 => "xlb h2",
            Kind::NginxH2 => "nginx h2",
            Kind::XlbSocket => "xlb socket",
            Kind::XlbSocketPinned => "xlb socket, VIP per thread",
            Kind::DirectSpread => "direct, ECMP spread",
            Kind::NginxLocal => "nginx, local caller",
        }
    }

    pub fn from_id(id: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.id() == id)
    }

    /// What wrk asks for. Direct: the script sets each thread's address; the URL gives the
    /// Host header and path.
    pub fn url(self, topo: &Topo) -> String {
        match self {
            Kind::Direct | Kind::DirectXdp => format!("http://{}:{BACKEND_PORT}/", topo.backends[0].addr),
            Kind::XlbSocket => format!("http://{SOCKET_VIP}:{VIP_PORT}/"),
            Kind::XlbSocketPinned => format!("http://{}:{VIP_PORT}/", topo::socket_vip_of(0)),
            Kind::DirectSpread => format!("http://{SPREAD}:{BACKEND_PORT}/"),
            _ => topo.vip_url(self.is_tls()),
        }
    }
}

/// What every contender needs.
pub struct Ctx {
    pub topo: Topo,
    pub xlb: PathBuf,
    pub cores: usize,
    /// Whether to time xlb's BPF programs (`--no-bpf-stats` turns it off).
    pub bpf_stats: bool,
}

/// A started contender. Its processes are stopped by [`Running::stop`] or, failing that,
/// killed on drop.
pub struct Running {
    procs: Vec<Proc>,
    /// The xlb process, whose BPF programs are timed.
    pub xlb_pid: Option<u32>,
    _stats: Option<BpfStats>,
    _xdp: Option<XdpPass>,
    /// The cgroup wrk runs in (socket-level balancing); removed after the processes stop.
    caller: Option<Cgroup>,
}

impl Running {
    fn procs(procs: Vec<Proc>) -> Running {
        Running { procs, xlb_pid: None, _stats: None, _xdp: None, caller: None }
    }

    pub fn stop(mut self) -> Result<()> {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// The cgroup directory wrk must run in, if any.
    pub fn caller(&self) -> Option<&Path> {
        self.caller.as_ref().map(Cgroup::path)
    }

    /// Everything the contender's processes logged (for error messages).
    pub fn log(&self) -> String {
        self.procs.iter().map(Proc::log).collect::<Vec<_>>().join("\n")
    }
}

/// xlb's limits for the idle-connection rows (`bench/idle.rs`).
const IDLE_LIMITS: &str = "limits: { max_connections: 20000, max_connections_per_ip: 20000 }, timeouts: { keepalive: 600s }";

/// Starts `kind` and waits until the VIP answers and spreads over more than one backend.
pub fn start(kind: Kind, ctx: &Ctx) -> Result<Running> {
    let topo = &ctx.topo;
    let dir = topo.dir.join(kind.id());
    fs::create_dir_all(&dir)?;
    let running = match kind {
        Kind::Direct => return Ok(Running::procs(Vec::new())),
        Kind::DirectXdp => {
            let xdp = xdp_pass::attach(&topo.lb, &topo.lb_iface)?;
            // Direct traffic still flows: the program passes everything.
            topo.wait_serving(&Kind::Direct.url(topo), Duration::from_secs(5), Ask::default())?;
            return Ok(Running { _xdp: Some(xdp), ..Running::procs(Vec::new()) });
        }
        Kind::XlbL4 => {
            let spec = format!("{VIP}:{VIP_PORT}:{}:{BACKEND_PORT}", backend_list(topo, ","));
            start_xlb(ctx, &dir, vec!["--iface".into(), topo.lb_iface.clone().into(), spec.into()])?
        }
        Kind::XlbHttp | Kind::XlbHttpLeastTime | Kind::XlbHttpCookie | Kind::XlbHttpRoutes | Kind::XlbHttpAccessLog | Kind::XlbHttps | Kind::XlbH2c | Kind::XlbH2 => {
            let config = xlb_http_config(ctx, &dir, kind)?;
            start_xlb(ctx, &dir, vec!["--config".into(), config.into()])?
        }
        Kind::NginxHttp | Kind::NginxStream | Kind::NginxHttps | Kind::NginxH2c | Kind::NginxH2 => start_nginx(kind, ctx, &dir)?,
        Kind::HaproxyHttp | Kind::HaproxyTcp => start_haproxy(kind, ctx, &dir)?,
        Kind::XlbSocket | Kind::XlbSocketPinned => start_xlb_socket(ctx, &dir)?,
        Kind::DirectSpread => Running::procs(Vec::new()),
        Kind::NginxLocal => Running { caller: Some(caller_cgroup()?), ..start_nginx(kind, ctx, &dir)? },
    };
    let url = kind.url(topo);
    let ask = Ask { h2c: matches!(kind, Kind::XlbH2c | Kind::NginxH2c), caller: running.caller() };
    let check = topo.wait_serving(&url, Duration::from_secs(10), ask).and_then(|_| {
        let n = topo.spread(&url, 9, ask)?;
        // A per-thread VIP has one backend by design.
        if n < 2 && kind != Kind::XlbSocketPinned {
            bail!("9 new connections to {url} all reached the same backend");
        }
        // Only the connect() hook makes the socket VIP answer: from outside the cgroup it must not.
        if ask.caller.is_some() && kind != Kind::NginxLocal && topo.get(&url, Ask::default()).is_ok() {
            bail!("{url} answered a caller outside xlb's cgroup: the row would not measure socket-level balancing");
        }
        Ok(())
    });
    if let Err(err) = check {
        let log = running.log();
        drop(running);
        return Err(err.context(format!("{} does not serve:\n{}", kind.label(), sys::tail(&log))));
    }
    Ok(running)
}

fn backend_list(topo: &Topo, sep: &str) -> String {
    topo.backends.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>().join(sep)
}

/// `xlb run --socket-lb=false ARGS` in the LB namespace, with BPF run-time statistics on
/// while it runs: socket-level balancing would attach to the whole host's cgroup and take
/// wrk's connects.
pub fn start_xlb(ctx: &Ctx, dir: &Path, mut args: Vec<OsString>) -> Result<Running> {
    args.insert(0, "--socket-lb=false".into());
    start_xlb_logging(ctx, dir, args, "info")
}

/// `xlb run ARGS` with `RUST_LOG=filter`.
pub fn start_xlb_logging(ctx: &Ctx, dir: &Path, args: Vec<OsString>, filter: &str) -> Result<Running> {
    let stats = if ctx.bpf_stats {
        Some(BpfStats::enable().context("turning on BPF run-time statistics")?)
    } else {
        None
    };
    let mut cmd = ctx.topo.lb.cmd(&ctx.xlb);
    cmd.arg("run").args(args).env("RUST_LOG", filter).env("NO_COLOR", "1");
    let mut xlb = Proc::spawn("xlb", cmd, &dir.join("xlb.log"))?;
    xlb.wait_log(" ready", Duration::from_secs(30))?;
    Ok(Running { xlb_pid: Some(xlb.pid()), _stats: stats, ..Running::procs(vec![xlb]) })
}

/// xlb with socket-level balancing for a cgroup v2 child made for wrk, the bench's backends
/// behind [`SOCKET_VIP`]:80. Its XDP program goes on an interface no traffic crosses, so
/// that nothing but the connect() hook can serve the client (its reply program still goes
/// on the backends' links, as on a Docker host).
///
/// Also a service per backend on VIP I ([`topo::socket_vip_of`]) for `XlbSocketPinned`: in
/// the direct run wrk's thread I keeps all its connections on backend I; through the bench
/// VIP each thread's connections land on all three, which on two cores costs wake-ups of
/// its own. Asking VIP I from thread I keeps direct's pattern with every connect() through
/// the hook, so the two rows tell xlb's cost from the spread's.
fn start_xlb_socket(ctx: &Ctx, dir: &Path) -> Result<Running> {
    let caller = caller_cgroup()?;
    let backends: Vec<String> =
        ctx.topo.backends.iter().map(|b| format!("{{ address: {}, port: {BACKEND_PORT} }}", b.addr)).collect();
    let mut yaml = format!(
        "dataplane:\n  interface: {}\n  socket_lb: {{ enabled: true, cgroup: {} }}\nservices:\n  - name: bench\n    vip: {SOCKET_VIP}\n    port: {VIP_PORT}\n    backends: [{}]\n",
        ctx.topo.idle_iface,
        caller.path().display(),
        backends.join(", ")
    );
    for (i, b) in backends.iter().enumerate() {
        writeln!(yaml, "  - {{ name: thread{i}, vip: {}, port: {VIP_PORT}, backends: [{b}] }}", topo::socket_vip_of(i)).unwrap();
    }
    let config = dir.join("xlb-socket.yaml");
    fs::write(&config, yaml)?;
    let running = start_xlb_logging(ctx, dir, vec!["--config".into(), config.into()], "info")?;
    Ok(Running { caller: Some(caller), ..running })
}

/// A cgroup v2 child for wrk, the local caller.
fn caller_cgroup() -> Result<Cgroup> {
    std::panic::catch_unwind(Cgroup::new).map_err(|_| anyhow::anyhow!("no cgroup v2 child for the caller (the reason is printed above)"))
}

/// Services that share the bench's VIP:port under Host names of their own, for the
/// 1,000-routes row: 999 of them plus the bench service.
const OTHER_ROUTES: usize = 999;

/// The config that makes the bench service an HTTP service of xlb's proxy
/// (`protocol: http`, the proxy's default options), as `kind` varies it: over TLS on
/// VIP:443 only, with the bench certificate as the default one (wrk sends no SNI to an
/// address); `least_time` balancing; a pin cookie and a sticky cookie (wrk sends no
/// cookie, so every request looks for both and every response sets one); the service
/// behind one of 1,000 exact Host routes (wrk's Host is the VIP); or with the access log
/// on (a `combined` line per request to `DIR/access.log`).
fn xlb_http_config(ctx: &Ctx, dir: &Path, kind: Kind) -> Result<PathBuf> {
    let mut backends = String::from("    backends:\n");
    for b in &ctx.topo.backends {
        writeln!(backends, "      - {{ address: {}, port: {BACKEND_PORT} }}", b.addr).unwrap();
    }
    let (port, tls_block) = if kind.is_tls() {
        let (cert, key) = ctx.topo.certificate()?;
        (TLS_PORT, format!("tls:\n  certificates: [{{ cert: {}, key: {}, default: true }}]\n", cert.display(), key.display()))
    } else {
        (VIP_PORT, String::new())
    };
    let access_log = match kind {
        Kind::XlbHttpAccessLog => format!("access_log: {{ path: {} }}\n", dir.join("access.log").display()),
        _ => String::new(),
    };
    let http = match kind {
        // The idle-connection rows open 10,000 from one client address: the per-address and
        // listener caps are lifted as nginx's worker_connections are, and the keep-alive
        // timeout as nginx's (opening them all can take minutes on a busy host).
        Kind::XlbHttps | Kind::XlbH2 => format!("    http: {{ tls: {{ port: 443 }}, {IDLE_LIMITS} }}\n"),
        Kind::XlbHttp => format!("    http: {{ {IDLE_LIMITS} }}\n"),
        Kind::XlbHttpLeastTime => "    http: { method: least_time header }\n".to_owned(),
        Kind::XlbHttpCookie => "    http: { pin_cookie: srv, sticky_cookie: { name: route } }\n".to_owned(),
        Kind::XlbHttpRoutes => format!("    http: {{ hosts: [\"{VIP}\"] }}\n"),
        _ => String::new(),
    };
    let mut yaml = format!(
        "dataplane:\n  interface: {}\n{tls_block}{access_log}services:\n  - name: bench\n    vip: {VIP}\n    port: {port}\n    protocol: http\n{http}{backends}",
        ctx.topo.lb_iface
    );
    if kind == Kind::XlbHttpRoutes {
        for i in 1..=OTHER_ROUTES {
            write!(yaml, "  - name: route{i}\n    vip: {VIP}\n    port: {VIP_PORT}\n    protocol: http\n    http: {{ hosts: [\"app{i}.bench\"] }}\n{backends}").unwrap();
        }
    }
    let path = dir.join("xlb-http.yaml");
    fs::write(&path, yaml)?;
    Ok(path)
}

/// Whether this xlb has an HTTP proxy: `xlb check` must accept a service with
/// `protocol: http`.
/// `Err` says why not, in xlb's words.
pub fn xlb_http_available(ctx: &Ctx) -> Result<(), String> {
    let dir = ctx.topo.dir.join("xlb-http");
    let config = fs::create_dir_all(&dir).and_then(|()| xlb_http_config(ctx, &dir, Kind::XlbHttp).map_err(std::io::Error::other));
    let config = config.map_err(|e| format!("writing its config: {e}"))?;
    let mut check = std::process::Command::new(&ctx.xlb);
    check.arg("check").arg(&config);
    sys::sh(&mut check).map(drop).map_err(|e| short_check_error(&format!("{e:#}")))
}

/// xlb's own words from a failed `xlb check`, without our command line, the file's path
/// or serde's list of the keys it expected.
fn short_check_error(msg: &str) -> String {
    let msg = msg.rsplit_once("): ").map_or(msg, |(_, m)| m);
    let msg = msg.strip_prefix("xlb: ").unwrap_or(msg);
    // FILE:LINE:COLUMN: what
    let msg = match msg.find(".yaml:") {
        Some(i) => msg[i..].splitn(4, ':').nth(3).map_or(msg, str::trim),
        None => msg,
    };
    msg.split(", expected").next().unwrap_or(msg).to_owned()
}

/// The open-file hard limit, which nginx and HAProxy may raise their soft limit to.
fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_max.min(65536)
}

/// nginx as Debian ships it, tuned as its docs advise for proxying: a worker per core,
/// access log off, enough worker connections, keep-alive to the upstreams (HTTP/1.1, the
/// `Connection` header cleared) without a request limit; round robin (nginx's default).
fn start_nginx(kind: Kind, ctx: &Ctx, dir: &Path) -> Result<Running> {
    const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
    let d = dir.display();
    let mut servers = String::new();
    for b in &ctx.topo.backends {
        writeln!(servers, "        server {}:{BACKEND_PORT};", b.addr).unwrap();
    }
    // nginx 1.22's way to HTTP/2: a `listen` parameter (h2c: prior knowledge only).
    let http2 = if kind.is_h2() { " http2" } else { "" };
    let listen = if kind.is_tls() {
        let (cert, key) = ctx.topo.certificate()?;
        format!(
            "listen {VIP}:{TLS_PORT} ssl{http2} reuseport backlog=4096;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;",
            cert.display(),
            key.display()
        )
    } else {
        format!("listen {VIP}:{VIP_PORT}{http2} reuseport backlog=4096;")
    };
    let body = if kind == Kind::NginxStream {
        if !Path::new(STREAM_MODULE).exists() {
            bail!("{STREAM_MODULE} is missing: install libnginx-mod-stream");
        }
        format!(
            "stream {{
    upstream backends {{
{servers}    }}
    server {{
        {listen}
        proxy_pass backends;
    }}
}}
"
        )
    } else {
        let head = topo::nginx_http_head(dir);
        format!(
            "http {{
{head}    upstream backends {{
{servers}        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        {listen}
        keepalive_timeout 600s;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
        )
    };
    let load = if kind == Kind::NginxStream { format!("load_module {STREAM_MODULE};\n") } else { String::new() };
    let conf = format!(
        "{load}daemon off;
master_process on;
worker_processes {cores};
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
{body}",
        cores = ctx.cores,
        nofile = nofile_limit(),
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, conf)?;
    let mut cmd = ctx.topo.lb.cmd("nginx");
    cmd.arg("-c").arg(&path).arg("-p").arg(dir).arg("-e").arg(dir.join("error.log"));
    let nginx = Proc::spawn(kind.label(), cmd, &dir.join("stderr.log"))?;
    Ok(Running::procs(vec![nginx]))
}

/// HAProxy as Debian ships it: a thread per core, round robin, HAProxy's defaults otherwise
/// (keep-alive on both sides and safe connection reuse in http mode).
fn start_haproxy(kind: Kind, ctx: &Ctx, dir: &Path) -> Result<Running> {
    let mode = if kind == Kind::HaproxyHttp { "http" } else { "tcp" };
    // HAProxy needs about two descriptors per connection and refuses to start otherwise.
    let maxconn = ((nofile_limit().saturating_sub(200)) / 2).clamp(1000, 20000);
    let mut conf = format!(
        "global
    nbthread {cores}
    maxconn {maxconn}

defaults
    mode {mode}
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench
    bind {VIP}:{VIP_PORT}
    default_backend backends

backend backends
    balance roundrobin
",
        cores = ctx.cores
    );
    for b in &ctx.topo.backends {
        writeln!(conf, "    server {} {}:{BACKEND_PORT}", b.name, b.addr).unwrap();
    }
    let path = dir.join("haproxy.cfg");
    fs::write(&path, conf)?;
    let mut cmd = ctx.topo.lb.cmd("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let haproxy = Proc::spawn(kind.label(), cmd, &dir.join("haproxy.log"))?;
    Ok(Running::procs(vec![haproxy]))
}
