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
    sync::{Mutex, MutexGuard},
};

use super::workers::PerWorker;

/// Upper bounds of the duration histogram's buckets, in seconds (`+Inf` is implied).
pub const BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The counts, a shard per proxy worker (`workers.rs`): a request is counted in its
/// worker's shard, a lock no other thread takes on the request path, on cache lines no
/// other core writes. Readers (`/metrics`, the status) sum the shards.
pub struct HttpMetrics {
    shards: PerWorker<Mutex<Shard>>,
}

/// Series by service name, then backend (`None` for answers xlb made itself). A
/// service has a handful of backends: they are looked up in a list.
type Shard = HashMap<String, Vec<(Option<Backend>, Counts)>>;

impl Default for HttpMetrics {
    fn default() -> Self {
        Self { shards: PerWorker::new(Mutex::default) }
    }
}

/// A backend as the labels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
}

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

impl Counts {
    fn add(&mut self, o: &Counts) {
        for (code, n) in &o.codes {
            *self.codes.entry(*code).or_default() += n;
        }
        for (b, n) in self.buckets.iter_mut().zip(o.buckets) {
            *b += n;
        }
        self.count += o.count;
        self.sum_secs += o.sum_secs;
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is(b: &Option<Backend>, backend: Option<(SocketAddr, &str)>) -> bool {
    match (b, backend) {
        (None, None) => true,
        (Some(b), Some((addr, name))) => b.addr == addr && b.name == name,
        _ => false,
    }
}

/// Counts one response in a service's series.
fn count(series: &mut Vec<(Option<Backend>, Counts)>, backend: Option<(SocketAddr, &str)>, status: u16, secs: f64) {
    let i = match series.iter().position(|(b, _)| is(b, backend)) {
        Some(i) => i,
        None => {
            series.push((backend.map(|(addr, name)| Backend { addr, name: name.to_owned() }), Counts::default()));
            series.len() - 1
        }
    };
    let c = &mut series[i].1;
    *c.codes.entry(status).or_default() += 1;
    let bucket = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(BUCKETS.len());
    c.buckets[bucket] += 1;
    c.count += 1;
    c.sum_secs += secs;
}

impl HttpMetrics {
    /// Counts one response: of `service` ("" when none was routed to), from `backend`
    /// (address and name; `None` when xlb answered itself).
    pub fn record(&self, service: &str, backend: Option<(SocketAddr, &str)>, status: u16, secs: f64) {
        let mut shard = lock(self.shards.get());
        // The service's entry exists after its first request: no key is allocated again.
        if let Some(series) = shard.get_mut(service) {
            return count(series, backend, status, secs);
        }
        count(shard.entry(service.to_owned()).or_default(), backend, status, secs);
    }

    /// Keeps the series of these services and their (address, name) backends, and of
    /// xlb's own answers (for a kept service, and with no service); drops the rest.
    pub fn retain<'a>(&self, live: impl IntoIterator<Item = (&'a str, SocketAddr, &'a str)>) {
        let mut keep: HashMap<&str, Vec<(SocketAddr, &str)>> = HashMap::new();
        for (service, addr, name) in live {
            keep.entry(service).or_default().push((addr, name));
        }
        for shard in self.shards.all() {
            lock(shard).retain(|service, backends| {
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
    }

    /// Every series, the workers' counts summed, sorted by service then backend, for
    /// rendering.
    pub fn counts(&self) -> Vec<(String, Option<Backend>, Counts)> {
        let mut sum: HashMap<String, Vec<(Option<Backend>, Counts)>> = HashMap::new();
        for shard in self.shards.all() {
            for (service, backends) in lock(shard).iter() {
                let into = sum.entry(service.clone()).or_default();
                for (b, c) in backends {
                    match into.iter_mut().find(|(x, _)| x == b) {
                        Some((_, total)) => total.add(c),
                        None => into.push((b.clone(), c.clone())),
                    }
                }
            }
        }
        let mut out: Vec<_> = sum.into_iter().flat_map(|(s, backends)| backends.into_iter().map(move |(b, c)| (s.clone(), b, c))).collect();
        out.sort_by(|a, b| (&a.0, a.1.as_ref().map(|b| (b.addr, &b.name))).cmp(&(&b.0, b.1.as_ref().map(|b| (b.addr, &b.name)))));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, mpsc};

    use super::*;
    use crate::proxy::workers;

    #[test]
    fn each_worker_counts_in_its_shard_and_readers_sum_them() {
        let m = Arc::new(HttpMetrics::default());
        let b1 = Some((SocketAddr::from(([10, 0, 0, 1], 8080)), "b1"));
        let (tx, rx) = mpsc::channel();
        for h in workers::handles() {
            let (m, tx) = (m.clone(), tx.clone());
            h.spawn(async move {
                m.record("web", b1, 200, 0.002);
                m.record("web", None, 502, 0.2);
                tx.send(()).unwrap();
            });
        }
        for _ in workers::handles() {
            rx.recv().unwrap();
        }
        let n = workers::count() as u64;
        let used = m.shards.all().filter(|s| !lock(s).is_empty()).count();
        assert_eq!(used, workers::count(), "a shard per worker");
        let counts = m.counts();
        assert_eq!(counts.len(), 2, "one series per service and backend, whichever workers counted it");
        let (_, b, c) = &counts[1];
        assert_eq!((b.as_ref().map(|b| b.name.as_str()), c.count, c.codes[&200], c.buckets[1]), (Some("b1"), n, n, n), "0.002 s is in the 2.5 ms bucket");
        assert!((c.sum_secs - 0.002 * n as f64).abs() < 1e-9);
        m.retain([]);
        assert_eq!(m.counts().len(), 0, "retain applies to every shard");
    }
}
