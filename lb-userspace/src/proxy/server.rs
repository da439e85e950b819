//! Listeners, client connections, and the state requests read (`Site`).

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hyper::{Request, Response, body::Incoming, service::Service};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::AbortHandle,
};
use tracing::{debug, info, warn};

use super::{
    failure::FailureSink,
    forward::{self, ProxyBody},
    guard::{ClientTimeouts, ConnShared, GuardedIo, HeadLimits},
    h2c,
    metrics::HttpMetrics,
    select::{
        balance::{Balancer, Peer},
        ewma::Stats,
        hash::cookie_value,
        route::{BackendHosts, Router},
    },
    site::{ClientLimits, ServiceRt, Site, UpstreamClient},
};
use crate::{
    config::http::{HttpOptions, Method},
    plan::ServiceView,
};

/// HTTP/2 client connections: streams at once, and how often an idle one is pinged.
const H2_MAX_STREAMS: u32 = 128;
const H2_KEEPALIVE: Duration = Duration::from_secs(30);
/// How long idle pooled connections to a backend are kept.
const POOL_IDLE: Duration = Duration::from_secs(15);
const POOL_MAX_IDLE_PER_BACKEND: usize = 64;
/// After answering a violation: how long to read what the client still sends, so the
/// close does not turn into a reset that destroys the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Requests in flight and requests sent, per backend name, of one service.
pub type BackendCounters = HashMap<String, (u32, u64)>;

type Slot = Arc<RwLock<Arc<Site>>>;

fn load(slot: &Slot) -> Arc<Site> {
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

struct Listener {
    local: SocketAddr,
    slot: Slot,
    conns: Arc<Semaphore>,
    limit: u32,
    task: AbortHandle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The HTTP proxy. Create it inside a tokio runtime.
pub struct Proxy {
    sink: Arc<dyn FailureSink>,
    metrics: Arc<HttpMetrics>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    listeners: HashMap<SocketAddr, Listener>,
    /// Counters by (service, backend name), kept across updates.
    stats: HashMap<(String, String), Arc<Stats>>,
    /// Upstream clients (and their pools) by service, with the connect timeout they
    /// were built for.
    clients: HashMap<String, (Duration, UpstreamClient)>,
    services: HashMap<String, Arc<ServiceRt>>,
}

impl Proxy {
    pub fn new(sink: Arc<dyn FailureSink>) -> Self {
        Self { sink, metrics: Arc::default(), state: Mutex::default() }
    }

    /// The requests answered, for `/metrics` and the status.
    pub fn metrics(&self) -> &Arc<HttpMetrics> {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the proxy serve exactly `services`: binds listeners for new addresses,
    /// closes those no service uses any more (connections in progress finish), and
    /// swaps routes and backends for new requests. A listener that cannot be bound is
    /// reported in the error; everything else is still applied.
    pub fn update(&self, services: Vec<ServiceView>) -> anyhow::Result<()> {
        let mut st = self.lock();
        self.metrics.retain(services.iter().flat_map(|v| v.backends.iter().map(move |b| (v.name.as_str(), b.addr, b.name.as_str()))));
        let mut by_listen: HashMap<SocketAddr, Vec<ServiceView>> = HashMap::new();
        for s in services {
            by_listen.entry(s.listen).or_default().push(s);
        }
        let mut stats = HashMap::new();
        let mut clients = HashMap::new();
        let mut runtimes = HashMap::new();
        let mut errors = Vec::new();
        let mut sites = HashMap::new();
        for (listen, mut views) in by_listen {
            views.sort_by(|a, b| a.name.cmp(&b.name));
            let rts: Vec<Arc<ServiceRt>> = views.iter().map(|v| self.runtime(&mut st, v, &mut stats, &mut clients)).collect();
            let (router, conflicts) = Router::new(&rts.iter().map(|rt| &rt.options).collect::<Vec<_>>());
            for c in conflicts {
                warn!(%listen, "http routes: {c}");
            }
            for rt in &rts {
                runtimes.insert(rt.name.clone(), rt.clone());
            }
            let client = client_limits(views.iter().map(|v| &v.options));
            sites.insert(listen, Arc::new(Site { router, services: rts, client, metrics: self.metrics.clone() }));
        }
        st.stats = stats;
        st.clients = clients;
        st.services = runtimes;
        st.listeners.retain(|addr, l| {
            let keep = sites.contains_key(addr);
            if !keep {
                info!(listen = %addr, local = %l.local, "http listener closed");
            }
            keep
        });
        for (listen, site) in sites {
            if let Some(l) = st.listeners.get_mut(&listen) {
                let limit = site.client.max_connections;
                if limit > l.limit {
                    l.conns.add_permits((limit - l.limit) as usize);
                } else if limit < l.limit {
                    l.conns.forget_permits((l.limit - limit) as usize);
                }
                l.limit = limit;
                *l.slot.write().unwrap_or_else(|e| e.into_inner()) = site;
                continue;
            }
            match bind(listen) {
                Ok(listener) => {
                    let local = listener.local_addr().unwrap_or(listen);
                    let limit = site.client.max_connections;
                    let slot: Slot = Arc::new(RwLock::new(site));
                    let conns = Arc::new(Semaphore::new(limit as usize));
                    let task = tokio::spawn(accept_loop(listener, slot.clone(), conns.clone())).abort_handle();
                    info!(%listen, %local, "http listener open");
                    st.listeners.insert(listen, Listener { local, slot, conns, limit, task });
                }
                Err(e) => errors.push(format!("{listen}: {e:#}")),
            }
        }
        if errors.is_empty() { Ok(()) } else { anyhow::bail!("http listeners not bound: {}", errors.join("; ")) }
    }

    fn runtime(
        &self,
        st: &mut State,
        v: &ServiceView,
        stats: &mut HashMap<(String, String), Arc<Stats>>,
        clients: &mut HashMap<String, (Duration, UpstreamClient)>,
    ) -> Arc<ServiceRt> {
        let peers = v
            .backends
            .iter()
            .map(|b| {
                let key = (v.name.clone(), b.name.clone());
                let s = st.stats.get(&key).cloned().unwrap_or_default();
                stats.insert(key, s.clone());
                let mut aliases: Vec<String> = std::iter::once(&b.name).chain(&b.aliases).map(|a| a.to_ascii_lowercase()).collect();
                aliases.dedup();
                Arc::new(Peer {
                    name: b.name.clone(),
                    aliases,
                    addr: b.addr,
                    weight: b.weight.max(1),
                    backup: b.backup,
                    state: b.state,
                    max_conns: b.max_conns.unwrap_or(v.options.max_conns),
                    stats: s,
                    cookie: cookie_value(&v.name, &b.name),
                })
            })
            .collect();
        // The backends' own host names route to the service too.
        let mut options = v.options.clone();
        for h in v.backends.iter().flat_map(|b| &b.hosts) {
            if !options.hosts.contains(h) {
                options.hosts.push(h.clone());
            }
        }
        let connect = v.options.timeouts.connect;
        let client = match st.clients.get(&v.name) {
            Some((c, client)) if *c == connect => client.clone(),
            _ => upstream_client(connect),
        };
        clients.insert(v.name.clone(), (connect, client.clone()));
        Arc::new(ServiceRt {
            name: v.name.clone(),
            balancer: Balancer::new(v.options.method.clone(), peers),
            backend_hosts: BackendHosts::new(v.backends.iter().map(|b| b.hosts.as_slice())),
            options,
            client,
            sink: self.sink.clone(),
        })
    }

    /// The address a listener is bound to (differs from `listen` for port 0).
    pub fn local_addr(&self, listen: SocketAddr) -> Option<SocketAddr> {
        self.lock().listeners.get(&listen).map(|l| l.local)
    }

    /// Requests in flight and sent so far, per backend of a service.
    pub fn counters(&self, service: &str) -> BackendCounters {
        let st = self.lock();
        st.stats
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|((_, b), s)| (b.clone(), (s.active(), s.requests.load(std::sync::atomic::Ordering::Relaxed))))
            .collect()
    }

    /// The balancing method a service runs (for status output).
    pub fn method(&self, service: &str) -> Option<Method> {
        self.lock().services.get(service).map(|s| s.balancer.method().clone())
    }

    /// Addresses listened on.
    pub fn listening(&self) -> HashSet<SocketAddr> {
        self.lock().listeners.values().map(|l| l.local).collect()
    }
}

fn client_limits<'a>(options: impl Iterator<Item = &'a HttpOptions>) -> ClientLimits {
    let mut out: Option<ClientLimits> = None;
    for o in options {
        let l = &o.limits;
        let t = &o.timeouts;
        let this = ClientLimits {
            head: HeadLimits { max_request_line: l.max_request_line as usize, max_head: l.max_header_bytes as usize, max_headers: l.max_headers as usize },
            timeouts: ClientTimeouts { header: t.client_header, keepalive: t.keepalive, body_idle: t.idle },
            max_connections: l.max_connections,
            max_headers: l.max_headers as usize,
        };
        out = Some(match out {
            None => this,
            Some(o) => ClientLimits {
                head: HeadLimits {
                    max_request_line: o.head.max_request_line.min(this.head.max_request_line),
                    max_head: o.head.max_head.min(this.head.max_head),
                    max_headers: o.head.max_headers.min(this.head.max_headers),
                },
                timeouts: ClientTimeouts {
                    header: o.timeouts.header.min(this.timeouts.header),
                    keepalive: o.timeouts.keepalive.min(this.timeouts.keepalive),
                    body_idle: o.timeouts.body_idle.min(this.timeouts.body_idle),
                },
                max_connections: o.max_connections.min(this.max_connections),
                max_headers: o.max_headers.min(this.max_headers),
            },
        });
    }
    out.unwrap_or_else(|| client_limits(std::iter::once(&HttpOptions::default())))
}

fn upstream_client(connect: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect));
    http.set_nodelay(true);
    http.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_BACKEND)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(http)
}

/// Binds with SO_REUSEADDR, and IP_FREEBIND so a VIP not yet on an interface binds.
fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).context("socket")?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
        let _ = sock.set_freebind_v6(true);
    } else {
        let _ = sock.set_freebind_v4(true);
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    sock.listen(1024).context("listen")?;
    Ok(TcpListener::from_std(sock.into())?)
}

async fn accept_loop(listener: TcpListener, slot: Slot, conns: Arc<Semaphore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match conns.clone().try_acquire_owned() {
            Ok(permit) => {
                let conn = ConnShared::new(peer, Some(permit));
                tokio::spawn(serve(stream, conn, slot.clone()));
            }
            Err(_) => {
                debug!(%peer, "http: connection limit reached");
                tokio::spawn(refuse(stream));
            }
        }
    }
}

/// Serves one client connection.
async fn serve(stream: TcpStream, conn: Arc<ConnShared>, slot: Slot) {
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let limits = load(&slot).client;
    let io = GuardedIo::new(stream.clone(), limits.head, limits.timeouts, conn.clone());
    let svc = Handler { slot, conn: conn.clone() };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().half_close(true).max_headers(limits.max_headers.max(1)).header_read_timeout(None).timer(TokioTimer::new());
    builder
        .http2()
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(limits.head.max_head as u32)
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .timer(TokioTimer::new());
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), svc).await {
        debug!(peer = %conn.peer, "http connection: {e}");
    }
    if conn.upgraded() {
        return;
    }
    if let Some(r) = conn.violation()
        && !conn.answered()
    {
        debug!(peer = %conn.peer, "http: refused a request: {r:?}");
        let _ = tokio::time::timeout(LINGER, write_all(&stream, &raw_page(r.status()))).await;
    }
    linger_close(&stream).await;
}

/// Requests of one client connection: HTTP/1, HTTP/2, and HTTP/2 after `Upgrade: h2c`.
#[derive(Clone)]
struct Handler {
    slot: Slot,
    conn: Arc<ConnShared>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for Handler {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, mut req: Request<Incoming>) -> Answer {
        let site = load(&self.slot);
        let this = self.clone();
        Box::pin(async move {
            if h2c::wanted(&req)
                && let Some(frame) = h2c::stream_one(&req)
            {
                let upgrade = hyper::upgrade::on(&mut req);
                let head_limit = site.client.head.max_head as u32;
                let h2 = this.clone();
                tokio::spawn(async move {
                    let io = match upgrade.await {
                        Ok(io) => h2c::WithStreamOne::new(TokioIo::new(io), frame),
                        Err(e) => return debug!(peer = %h2.conn.peer, "h2c upgrade: {e}"),
                    };
                    let peer = h2.conn.peer;
                    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(H2_MAX_STREAMS)
                        .max_header_list_size(head_limit)
                        .keep_alive_interval(Some(H2_KEEPALIVE))
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(io), h2)
                        .await;
                    if let Err(e) = served {
                        debug!(%peer, "http connection (h2c): {e}");
                    }
                });
                return Ok(forward::switching_to_h2c(&this.conn));
            }
            Ok(forward::handle(req, site, this.conn).await)
        })
    }
}

/// Over the connection limit: 503 and close.
async fn refuse(stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_millis(200), write_all(&stream, &raw_page(503))).await;
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
}

/// Shuts the write side, then reads (bounded) until the client closes.
async fn linger_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        let Ok(Ok(())) = tokio::time::timeout_at(until.into(), stream.readable()).await else {
            return;
        };
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An error answer written straight to the socket, HTTP/1.1, closing.
pub fn raw_page(status: u16) -> Vec<u8> {
    let reason = hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    let body = format!("{status} {reason}\n");
    format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .into_bytes()
}
