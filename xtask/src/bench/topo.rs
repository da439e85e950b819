//! The benchmark's namespaces, the same shape as the end-to-end tests' topology:
//!
//! ```text
//!  client ns (wrk)          LB ns (router; the balancer)           backend ns bI (nginx)
//!  eth0 10.200.1.2/24 ----- xb<pid>l 10.200.1.1/24
//!       10.200.1.3 (to the VIP)  lo  10.200.100.1/32 (the VIP)
//!       10.200.1.10-12
//!                               lbI 10.200.(10+I).1/24 ---------- eth0 10.200.(10+I).2/24
//! ```
//!
//! The client routes everything through the LB namespace, so a direct request to a backend
//! takes the same hops as one through a balancer, minus the balancer. Every backend also has
//! [`SPREAD`] on its loopback, which the LB namespace routes over all backend links (ECMP).
//! The VIP is an address
//! of the LB namespace, as a Docker host's own address is: user-space proxies listen on it,
//! and xlb's XDP program takes its packets before the stack sees them.
//!
//! The interface xlb attaches to is named `xb<pid hex>l`, unique on the host, because xlb's
//! one-per-interface lock lives in `/run/xlb/<iface>.lock`, shared by all namespaces.
use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::sys::{self, Ns, Proc};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 1);
pub const VIP_PORT: u16 = 80;
/// Where the TLS contenders listen, on the same VIP.
pub const TLS_PORT: u16 = 443;
pub const BACKEND_PORT: u16 = 8080;
/// The socket-level contender's VIP: an address no interface has, so that only xlb's
/// connect() hook, for the callers in its cgroup, makes it answer.
pub const SOCKET_VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 2);

/// The socket VIP that wrk's thread `i` asks in the per-thread row, whose one backend is
/// backend `i` (as direct's thread `i` talks to backend `i`).
pub fn socket_vip_of(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 100, 10 + i as u8)
}
/// An address every backend has, routed from the LB namespace over all three backend links
/// at once (ECMP, hashing each connection's ports): direct requests to it land on any
/// backend, connection by connection, as through one balanced VIP, with no balancer.
pub const SPREAD: Ipv4Addr = Ipv4Addr::new(10, 200, 99, 1);
/// A UDP port of the VIP that the scale test uses to fill xlb's connection table.
pub const FILL_PORT: u16 = 9;
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
/// The client's source address towards the VIP. A backend sees a flow through xlb L4 as
/// coming from the client itself, but the client chose that connection's TCP timestamp
/// offset and initial sequence number for the VIP; had direct requests (direct, socket-level
/// xlb) come from the same address, a client port reused within the backend's TIME_WAIT
/// would meet a 4-tuple with other timestamps, which PAWS rejects: the client resets and
/// retries its SYN, thousands of times a second, and the row after a direct one measures
/// that. From its own address, every 4-tuple keeps one offset.
pub const VIP_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 3);
/// More client addresses, for more distinct flows than one address has ports.
pub const EXTRA_CLIENTS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 200, 1, 10), Ipv4Addr::new(10, 200, 1, 11), Ipv4Addr::new(10, 200, 1, 12)];
/// Routed from the LB namespace to backend 1, which drops what it receives for it (a
/// blackhole route): the addresses of the scale test's backends that are never used.
pub const UNUSED_NET: &str = "10.210.0.0/16";

/// Per-namespace settings for the load: the client and the proxies open tens of thousands
/// of short connections a second; with Linux's defaults (28k ports, TIME_WAIT sockets not
/// reused) they run out of ports within seconds and measure that instead of the balancer.
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_local_port_range", "1024 65535"),
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.core.somaxconn", "4096"),
    ("net.ipv4.tcp_max_syn_backlog", "4096"),
];

/// How a check asks the client to fetch: over h2c with prior knowledge, and from within a
/// cgroup (see [`Topo::client_cmd`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    pub h2c: bool,
    pub caller: Option<&'a Path>,
}

pub struct Backend {
    pub name: String,
    pub addr: Ipv4Addr,
    // Held for their drop, in this order: the server goes before its namespace.
    _nginx: Proc,
    ns: Ns,
}

pub struct Topo {
    /// Configs, scripts and logs of this run.
    pub dir: PathBuf,
    /// The LB namespace's client-facing interface (xlb's `--iface`).
    pub lb_iface: String,
    /// One end of a veth pair within the LB namespace, which no traffic crosses: where the
    /// socket-level contender's XDP program goes, out of every packet's way (a dummy
    /// device would do, but not every kernel here has the module).
    pub idle_iface: String,
    pub backends: Vec<Backend>,
    pub client: Ns,
    pub lb: Ns,
}

impl Topo {
    pub fn build(dir: &Path, backends: usize) -> Result<Topo> {
        let lb_iface = format!("{}l", sys::tag());
        let client = Ns::new("c")?;
        let lb = Ns::new("l")?;
        let idle_iface = format!("{}d", sys::tag());
        let mut topo = Topo {
            dir: dir.to_owned(),
            lb_iface: lb_iface.clone(),
            idle_iface: idle_iface.clone(),
            backends: Vec::new(),
            client,
            lb,
        };
        let (client, lb) = (&topo.client, &topo.lb);
        sys::veth(client, "eth0", lb, &lb_iface)?;
        client.ip(&format!("addr add {CLIENT}/24 dev eth0"))?;
        for extra in EXTRA_CLIENTS.into_iter().chain([VIP_CLIENT]) {
            client.ip(&format!("addr add {extra}/24 dev eth0"))?;
        }
        client.ip("route add default via 10.200.1.1")?;
        client.ip(&format!("route add {VIP}/32 via 10.200.1.1 src {VIP_CLIENT}"))?;
        client.sysctls(SYSCTLS)?;
        // New namespaces copy the host's IPv4 forwarding switch; the client and backends
        // are hosts, not routers.
        client.sysctls(&[("net.ipv4.ip_forward", "0")])?;
        lb.ip(&format!("addr add 10.200.1.1/24 dev {lb_iface}"))?;
        lb.ip(&format!("addr add {VIP}/32 dev lo"))?;
        lb.ip(&format!("link add {idle_iface} type veth peer name {idle_iface}p"))?;
        lb.ip(&format!("link set {idle_iface} up"))?;
        lb.ip(&format!("link set {idle_iface}p up"))?;
        lb.sysctls(SYSCTLS)?;
        lb.sysctls(&[("net.ipv4.ip_forward", "1")])?;
        for i in 1..=backends {
            let x = 10 + i as u8;
            let name = format!("b{i}");
            let ns = Ns::new(&name)?;
            let lb_side = format!("lb{i}");
            sys::veth(&ns, "eth0", lb, &lb_side)?;
            let addr = Ipv4Addr::new(10, 200, x, 2);
            ns.ip(&format!("addr add {addr}/24 dev eth0"))?;
            ns.ip(&format!("addr add {SPREAD}/32 dev lo"))?;
            ns.ip(&format!("route add default via 10.200.{x}.1"))?;
            ns.sysctls(SYSCTLS)?;
            ns.sysctls(&[("net.ipv4.ip_forward", "0")])?;
            lb.ip(&format!("addr add 10.200.{x}.1/24 dev {lb_side}"))?;
            let nginx = start_backend(dir, &ns, &name, addr)?;
            topo.backends.push(Backend { name, addr, _nginx: nginx, ns });
        }
        topo.route_nowhere(UNUSED_NET)?;
        let hops: String = (1..=backends).map(|i| format!(" nexthop via 10.200.{}.2 dev lb{i}", 10 + i)).collect();
        lb.sysctls(&[("net.ipv4.fib_multipath_hash_policy", "1")])?;
        lb.ip(&format!("route add {SPREAD}/32{hops}"))?;
        for b in &topo.backends {
            let url = format!("http://{}:{BACKEND_PORT}/", b.addr);
            let got = topo.wait_serving(&url, Duration::from_secs(10), Ask::default())?;
            if got != b.name {
                bail!("backend {} answered {got:?} at {url}", b.name);
            }
        }
        Ok(topo)
    }

    /// Inodes of the benchmark's namespaces, to tell its processes from others'.
    pub fn namespaces(&self) -> Vec<u64> {
        let mut names = vec![self.client.name(), self.lb.name()];
        names.extend(self.backends.iter().map(|b| b.ns.name()));
        names.into_iter().filter_map(|n| super::measure::netns_inode(&format!("/run/netns/{n}"))).collect()
    }

    /// Routes `net` from the LB namespace to backend 1, which drops what it gets for it: a
    /// route for backends xlb is given but never sends to (the scale test's unused
    /// addresses, the Docker event test's containers).
    pub fn route_nowhere(&self, net: &str) -> Result<()> {
        let b1 = &self.backends[0];
        b1.ns.ip(&format!("route add blackhole {net}"))?;
        self.lb.ip(&format!("route add {net} via {}", b1.addr))
    }

    /// The balancers' URL: plain on VIP:80, or TLS on VIP:443.
    pub fn vip_url(&self, tls: bool) -> String {
        if tls { format!("https://{VIP}:{TLS_PORT}/") } else { format!("http://{VIP}:{VIP_PORT}/") }
    }

    /// The certificate and key every TLS contender serves (ECDSA P-256, self-signed for
    /// `bench.test`, not a CA: the idle-connection client trusts it as its only root),
    /// made by openssl on first use under the bench's directory.
    pub fn certificate(&self) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = (self.dir.join("tls-cert.pem"), self.dir.join("tls-key.pem"));
        if !cert.exists() {
            let mut c = Command::new("openssl");
            c.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=bench.test"])
                .args(["-addext", "subjectAltName=DNS:bench.test", "-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert);
            sys::sh(&mut c).context("making the bench certificate")?;
        }
        Ok((cert, key))
    }

    /// `prog` in the client namespace; with `caller`, inside that cgroup v2 directory: a shell
    /// moves itself in and execs `prog`, so its first connect() is already the cgroup's.
    pub fn client_cmd(&self, prog: &str, caller: Option<&Path>) -> Command {
        let Some(cgroup) = caller else { return self.client.cmd(prog) };
        let mut cmd = self.client.cmd("sh");
        cmd.args(["-c", r#"echo $$ > "$0" && exec "$@""#]).arg(cgroup.join("cgroup.procs")).arg(prog);
        cmd
    }

    /// One `GET url` from the client namespace, asked as `ask` says, on a new connection:
    /// the body, trimmed.
    pub fn get(&self, url: &str, ask: Ask) -> Result<String> {
        let mut curl = self.client_cmd("curl", ask.caller);
        // --insecure: the TLS contenders' certificate is self-signed.
        curl.args(["-sS", "--fail", "--insecure", "--max-time", "2", url]);
        curl.args(if ask.h2c { ["--http2-prior-knowledge", "--no-keepalive"] } else { ["-H", "Connection: close"] });
        Ok(sys::sh(&mut curl)?.trim().to_owned())
    }

    /// Polls `url` from the client until it answers (at most `timeout`).
    pub fn wait_serving(&self, url: &str, timeout: Duration, ask: Ask) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.get(url, ask) {
                Ok(body) => return Ok(body),
                Err(err) if Instant::now() >= deadline => {
                    return Err(err.context(format!("{url} did not answer within {timeout:?}")));
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Asks `url` `n` times on new connections and counts the distinct backends that
    /// answered: a balancer that sends everything to one backend is no balancer.
    pub fn spread(&self, url: &str, n: usize, ask: Ask) -> Result<usize> {
        let mut seen = Vec::new();
        for _ in 0..n {
            let body = self.get(url, ask)?;
            if !seen.contains(&body) {
                seen.push(body);
            }
        }
        Ok(seen.len())
    }
}

/// nginx serving a small body from memory: one worker (three backends share two cores with
/// the client and the balancer), no access log, keep-alive without a request limit.
fn start_backend(dir: &Path, ns: &Ns, name: &str, addr: Ipv4Addr) -> Result<Proc> {
    let dir = dir.join(name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let d = dir.display();
    let head = nginx_http_head(&dir);
    let conf = format!(
        "daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
{head}    server {{
        listen {addr}:{BACKEND_PORT} reuseport backlog=4096;
        listen {SPREAD}:{BACKEND_PORT} reuseport backlog=4096;
        default_type text/plain;
        location / {{ return 200 \"{name}\\n\"; }}
    }}
}}
"
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, conf)?;
    let mut cmd = ns.cmd("nginx");
    cmd.arg("-c").arg(&path).arg("-p").arg(&dir).arg("-e").arg(dir.join("error.log"));
    Proc::spawn(&format!("nginx {name}"), cmd, &dir.join("stderr.log"))
}

/// The first lines of an `http {` block every nginx of the bench shares: no access log,
/// keep-alive without a request limit, temporary files under `dir`.
pub fn nginx_http_head(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
"
    )
}
