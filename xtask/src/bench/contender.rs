//! The contenders: how each balancer is configured, started in the LB namespace, checked
//! and stopped. All of them get the same three backends and listen on the same VIP:80.
use std::{
    ffi::OsString,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    measure::BpfStats,
    sys::{self, Proc},
    xdp_pass::{self, XdpPass},
    topo::{self, BACKEND_PORT, TLS_PORT, Topo, VIP, VIP_PORT},
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
}

impl Kind {
    pub const ALL: [Kind; 14] = [
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
        matches!(self, Kind::XlbHttps | Kind::NginxHttps)
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
        }
    }

    pub fn from_id(id: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.id() == id)
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
}

impl Running {
    fn procs(procs: Vec<Proc>) -> Running {
        Running { procs, xlb_pid: None, _stats: None, _xdp: None }
    }

    pub fn stop(mut self) -> Result<()> {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Everything the contender's processes logged (for error messages).
    pub fn log(&self) -> String {
        self.procs.iter().map(Proc::log).collect::<Vec<_>>().join("\n")
    }
}

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
            topo.wait_serving(&format!("http://{}:{BACKEND_PORT}/", topo.backends[0].addr), Duration::from_secs(5))?;
            return Ok(Running { _xdp: Some(xdp), ..Running::procs(Vec::new()) });
        }
        Kind::XlbL4 => {
            let spec = format!("{VIP}:{VIP_PORT}:{}:{BACKEND_PORT}", backend_list(topo, ","));
            start_xlb(ctx, &dir, vec!["--iface".into(), topo.lb_iface.clone().into(), spec.into()])?
        }
        Kind::XlbHttp | Kind::XlbHttpLeastTime | Kind::XlbHttpCookie | Kind::XlbHttpRoutes | Kind::XlbHttpAccessLog | Kind::XlbHttps => {
            let config = xlb_http_config(ctx, &dir, kind)?;
            start_xlb(ctx, &dir, vec!["--config".into(), config.into()])?
        }
        Kind::NginxHttp | Kind::NginxStream | Kind::NginxHttps => start_nginx(kind, ctx, &dir)?,
        Kind::HaproxyHttp | Kind::HaproxyTcp => start_haproxy(kind, ctx, &dir)?,
    };
    let url = topo.vip_url(kind.is_tls());
    let check = topo.wait_serving(&url, Duration::from_secs(10)).and_then(|_| {
        let n = topo.spread(&url, 9)?;
        if n < 2 {
            bail!("9 new connections to {url} all reached the same backend");
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

/// `xlb run ARGS` in the LB namespace, with BPF run-time statistics on while it runs.
pub fn start_xlb(ctx: &Ctx, dir: &Path, args: Vec<OsString>) -> Result<Running> {
    start_xlb_logging(ctx, dir, args, "info")
}

/// [`start_xlb`] with `RUST_LOG=filter`.
pub fn start_xlb_logging(ctx: &Ctx, dir: &Path, args: Vec<OsString>, filter: &str) -> Result<Running> {
    let stats = if ctx.bpf_stats {
        Some(BpfStats::enable().context("turning on BPF run-time statistics")?)
    } else {
        None
    };
    let mut cmd = ctx.topo.lb.cmd(&ctx.xlb);
    // Socket-level balancing would attach to the whole host's cgroup and take wrk's connects.
    cmd.arg("run").arg("--socket-lb=false").args(args).env("RUST_LOG", filter).env("NO_COLOR", "1");
    let mut xlb = Proc::spawn("xlb", cmd, &dir.join("xlb.log"))?;
    xlb.wait_log(" ready", Duration::from_secs(30))?;
    Ok(Running { xlb_pid: Some(xlb.pid()), _stats: stats, ..Running::procs(vec![xlb]) })
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
        Kind::XlbHttps => "    http: { tls: { port: 443 } }\n".to_owned(),
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
    let listen = if kind.is_tls() {
        let (cert, key) = ctx.topo.certificate()?;
        format!(
            "listen {VIP}:{TLS_PORT} ssl reuseport backlog=4096;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;",
            cert.display(),
            key.display()
        )
    } else {
        format!("listen {VIP}:{VIP_PORT} reuseport backlog=4096;")
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
