//! The `Proxy` its owner creates and updates: the listeners, and the services and
//! per-backend counters requests read.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use hyper::http::uri::Authority;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use super::{
    drain::Drain,
    failure::FailureSink,
    listen::accept::Listener,
    metrics::HttpMetrics,
    select::{
        balance::{Balancer, Peer},
        ewma::Stats,
        hash::cookie_value,
        route::{BackendHosts, Router},
    },
    site::{ClientLimits, ServiceRt, Site},
    tls::{self, CertStatus, CertStore},
    upstream::Upstream,
};
use crate::{
    access_log::AccessLog,
    acme::Challenges,
    config::{http::Method, tls::CertFiles},
    plan::ServiceView,
};

/// Requests in flight and requests sent, per backend name, of one service.
pub type BackendCounters = HashMap<String, (u32, u64)>;

/// The HTTP proxy. Create it inside a tokio runtime.
pub struct Proxy {
    sink: Arc<dyn FailureSink>,
    metrics: Arc<HttpMetrics>,
    challenges: Challenges,
    state: Mutex<State>,
    /// Every TLS listener's certificates, and the acceptor that reads them.
    certs: Arc<CertStore>,
    acceptor: TlsAcceptor,
    access_log: Option<Arc<AccessLog>>,
}

#[derive(Default)]
struct State {
    listeners: HashMap<SocketAddr, Listener>,
    /// Counters by (service, backend name), kept across updates.
    stats: HashMap<(String, String), Arc<Stats>>,
    /// Connections to backends (and their pools) by service.
    clients: HashMap<String, Arc<Upstream>>,
    services: HashMap<String, Arc<ServiceRt>>,
}

impl Proxy {
    pub fn new(sink: Arc<dyn FailureSink>) -> Self {
        let provider = tls::provider();
        let challenges = Challenges::default();
        let certs = Arc::new(CertStore::with_challenges(provider.clone(), challenges.clone()));
        let acceptor = TlsAcceptor::from(tls::server_config(provider, certs.clone()));
        Self { sink, metrics: Arc::default(), challenges, state: Mutex::default(), certs, acceptor, access_log: None }
    }

    /// Every request gets a line in `log` (the access log is fixed at start).
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = log;
        self
    }

    /// The ACME HTTP-01 answers every listener serves; the certificate keeper writes them.
    pub fn challenges(&self) -> &Challenges {
        &self.challenges
    }

    /// (Re)loads the certificates TLS listeners serve; a source that fails keeps its
    /// previous certificate. Returns one line per failed source.
    pub fn load_certificates(&self, files: &[CertFiles]) -> Vec<String> {
        self.certs.load(files)
    }

    /// The certificate store, for sources other than files (ACME) to feed.
    pub fn certificate_store(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// Each certificate source's state, for the status.
    pub fn certificates(&self) -> Vec<CertStatus> {
        self.certs.status()
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
            let tls = views[0].tls;
            if let Some(other) = views.iter().find(|v| v.tls != tls) {
                errors.push(format!("{listen}: services {:?} and {:?} share it, one with TLS and one without", views[0].name, other.name));
                continue;
            }
            let rts: Vec<Arc<ServiceRt>> = views.iter().map(|v| self.runtime(&mut st, v, &mut stats, &mut clients)).collect();
            let (router, conflicts) = Router::new(&rts.iter().map(|rt| &rt.options).collect::<Vec<_>>());
            for c in conflicts {
                warn!(%listen, "http routes: {c}");
            }
            for rt in &rts {
                runtimes.insert(rt.name.clone(), rt.clone());
            }
            let client = ClientLimits::of(views.iter().map(|v| &v.options));
            let drain = views.iter().map(|v| v.options.timeouts.drain).max().unwrap_or_default();
            let (metrics, challenges, access_log) = (self.metrics.clone(), self.challenges.clone(), self.access_log.clone());
            sites.insert(listen, Arc::new(Site { passthrough: tls && rts.iter().any(|rt| rt.options.tls.as_ref().is_some_and(|t| t.passthrough)), router, services: rts, client, metrics, drain, tls, challenges, access_log }));
        }
        st.stats = stats;
        st.clients = clients;
        st.services = runtimes;
        // A listener turning TLS on or off cannot be replaced in place: closed first (its
        // connections drain), then opened anew below.
        st.listeners.retain(|addr, l| {
            let keep = sites.get(addr).is_none_or(|s| s.tls == l.tls);
            if !keep {
                info!(listen = %addr, local = %l.local, "http listener closed to switch TLS, its connections draining");
            }
            keep
        });
        // New listeners open before old ones close: a listener that moves serves throughout.
        for (&listen, site) in &sites {
            if let Some(l) = st.listeners.get_mut(&listen) {
                l.replace(site.clone());
                continue;
            }
            let tls = site.tls.then(|| self.acceptor.clone());
            match Listener::open(listen, site.clone(), tls) {
                Ok(l) => {
                    info!(%listen, local = %l.local, "http listener open");
                    st.listeners.insert(listen, l);
                }
                Err(e) => errors.push(format!("{listen}: {e:#}")),
            }
        }
        st.listeners.retain(|addr, l| {
            let keep = sites.contains_key(addr);
            if !keep {
                // Dropping it closes it: its connections drain on their own.
                info!(listen = %addr, local = %l.local, "http listener closed, its connections draining");
            }
            keep
        });
        if errors.is_empty() { Ok(()) } else { anyhow::bail!("http listeners not bound: {}", errors.join("; ")) }
    }

    fn runtime(
        &self,
        st: &mut State,
        v: &ServiceView,
        stats: &mut HashMap<(String, String), Arc<Stats>>,
        clients: &mut HashMap<String, Arc<Upstream>>,
    ) -> Arc<ServiceRt> {
        let peers = v
            .backends
            .iter()
            .map(|b| {
                let key = (v.name.clone(), b.name.clone());
                // A service with a plain and a TLS listener shares its counters.
                let s = stats.get(&key).or_else(|| st.stats.get(&key)).cloned().unwrap_or_default();
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
        let upstream = match clients.get(&v.name).or_else(|| st.clients.get(&v.name)) {
            Some(u) if u.made_with(connect, &v.options.upstream) => u.clone(),
            _ => Arc::new(Upstream::new(&v.name, connect, &v.options.upstream)),
        };
        clients.insert(v.name.clone(), upstream.clone());
        let authorities = v.backends.iter().map(|b| Authority::try_from(b.addr.to_string()).expect("a socket address is an authority")).collect();
        Arc::new(ServiceRt {
            name: v.name.clone(),
            authorities,
            balancer: Balancer::new(v.options.method.clone(), peers),
            backend_hosts: BackendHosts::new(v.backends.iter().map(|b| b.hosts.as_slice())),
            options,
            upstream,
            sink: self.sink.clone(),
            redirect: v.redirect,
            hsts: v.options.tls.as_ref().filter(|_| v.tls).and_then(|t| t.hsts_header()).and_then(|h| h.parse().ok()),
        })
    }

    /// Closes every listener (new connections are refused) and waits until their
    /// connections are gone: in-flight requests finish, and whatever is left at a
    /// listener's drain deadline is cut.
    pub async fn shutdown(&self) {
        let listeners: Vec<Listener> = self.lock().listeners.drain().map(|(_, l)| l).collect();
        let drains: Vec<Drain> = listeners.iter().map(Listener::close).collect();
        drop(listeners);
        for d in drains {
            d.finished().await;
        }
    }

    /// The address a listener is bound to (differs from `listen` for port 0).
    pub fn local_addr(&self, listen: SocketAddr) -> Option<SocketAddr> {
        self.lock().listeners.get(&listen).map(|l| l.local)
    }

    /// Requests in flight and sent so far, per backend, by service.
    pub fn counters(&self) -> HashMap<String, BackendCounters> {
        let mut out: HashMap<String, BackendCounters> = HashMap::new();
        for ((service, backend), s) in &self.lock().stats {
            out.entry(service.clone()).or_default().insert(backend.clone(), (s.active(), s.requests()));
        }
        out
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
