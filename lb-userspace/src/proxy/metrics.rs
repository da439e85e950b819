//! What the HTTP proxy answered, for `/metrics`: requests by service, backend and status
//! code, and how long they took, as a histogram per service and backend.
//!
//! The labels are those of the kernel's per-backend metrics (`observe/prometheus.rs`): `service`,
//! `backend` (the address) and `name` (the container's name, else the address).
//!
//! The proxy tells an `Exchange` (`request/log.rs`) which service and backend a request went
//! to; the exchange is recorded when the response body is finished (sent whole, or dropped
//! because the client went away), so the duration is the client's whole wait: routing,
//! retries, the backend's answer and the body's transfer. Answers xlb made itself (no
//! route, every try failed, a bad request) carry empty `backend` and `name` labels, and
//! an empty `service` label when no service was routed to. Requests the framing guard
//! refuses before they are parsed (`listen/guard/`) are not counted.
//!
//! The counters belong to the [`Proxy`](super::Proxy), which drops the series of services
//! and backends that leave the config or discovery ([`HttpMetrics::retain`]), so a host
//! whose containers come and go for months does not keep them forever.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
};

/// Upper bounds of the duration histogram's buckets, in seconds (`+Inf` is implied).
pub const BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Series by service name, then backend (`None` for answers xlb made itself). A
/// service has a handful of backends: they are looked up in a list.
#[derive(Default)]
pub struct HttpMetrics {
    services: RwLock<HashMap<String, BackendSeries>>,
}

/// One service's series, by backend.
type BackendSeries = Vec<(Option<Backend>, Arc<Series>)>;

/// A backend as the labels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
}

/// One service and backend's counts.
#[derive(Default)]
struct Series(Mutex<Counts>);

#[derive(Default, Clone)]
pub struct Counts {
    /// Responses by status code.
    pub codes: HashMap<u16, u64>,
    /// Requests per bucket (not cumulative): `buckets[i]` took at most `BUCKETS[i]`
    /// and more than the bound before; the last one is over every bound.
    pub buckets: [u64; BUCKETS.len() + 1],
    pub count: u64,
    pub sum_secs: f64,
}

impl HttpMetrics {
    fn series(&self, service: &str, backend: Option<(SocketAddr, &str)>) -> Arc<Series> {
        let is = |b: &Option<Backend>| match (b, backend) {
            (None, None) => true,
            (Some(b), Some((addr, name))) => b.addr == addr && b.name == name,
            _ => false,
        };
        let found = self.services.read().unwrap_or_else(|e| e.into_inner()).get(service).and_then(|bs| bs.iter().find(|(b, _)| is(b)).map(|(_, s)| s.clone()));
        found.unwrap_or_else(|| {
            let mut all = self.services.write().unwrap_or_else(|e| e.into_inner());
            let bs = all.entry(service.to_owned()).or_default();
            match bs.iter().find(|(b, _)| is(b)) {
                Some((_, s)) => s.clone(),
                None => {
                    let s = Arc::new(Series::default());
                    bs.push((backend.map(|(addr, name)| Backend { addr, name: name.to_owned() }), s.clone()));
                    s
                }
            }
        })
    }

    /// Counts one response: of `service` ("" when none was routed to), from `backend`
    /// (address and name; `None` when xlb answered itself).
    pub fn record(&self, service: &str, backend: Option<(SocketAddr, &str)>, status: u16, secs: f64) {
        let series = self.series(service, backend);
        let mut c = series.0.lock().unwrap_or_else(|e| e.into_inner());
        *c.codes.entry(status).or_default() += 1;
        let bucket = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(BUCKETS.len());
        c.buckets[bucket] += 1;
        c.count += 1;
        c.sum_secs += secs;
    }

    /// Keeps the series of these services and their (address, name) backends, and of
    /// xlb's own answers (for a kept service, and with no service); drops the rest.
    pub fn retain<'a>(&self, live: impl IntoIterator<Item = (&'a str, SocketAddr, &'a str)>) {
        let mut keep: HashMap<&str, Vec<(SocketAddr, &str)>> = HashMap::new();
        for (service, addr, name) in live {
            keep.entry(service).or_default().push((addr, name));
        }
        let mut all = self.services.write().unwrap_or_else(|e| e.into_inner());
        all.retain(|service, backends| {
            if service.is_empty() {
                return true;
            }
            let Some(live) = keep.get(service.as_str()) else {
                return false;
            };
            backends.retain(|(b, _)| b.as_ref().is_none_or(|b| live.contains(&(b.addr, b.name.as_str()))));
            true
        });
    }

    /// Every series, sorted by service then backend, for rendering.
    pub fn counts(&self) -> Vec<(String, Option<Backend>, Counts)> {
        let all = self.services.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = all
            .iter()
            .flat_map(|(s, backends)| {
                backends.iter().map(move |(b, series)| (s.clone(), b.clone(), series.0.lock().unwrap_or_else(|e| e.into_inner()).clone()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.as_ref().map(|b| (b.addr, &b.name))).cmp(&(&b.0, b.1.as_ref().map(|b| (b.addr, &b.name)))));
        out
    }
}
