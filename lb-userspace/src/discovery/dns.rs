//! DNS discovery: a service's backends are the A and AAAA records of a name, asked
//! again every interval. This is how nginx-style DNS proxies follow Docker's embedded
//! DNS (127.0.0.11), which answers with the containers behind a compose service.
//!
//! Every lookup goes to the server: the resolver's cache is off, because Docker answers
//! with a 600 s TTL yet changes the records as soon as containers come and go.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use anyhow::Context as _;
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RData,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use tracing::{info, warn};

use super::update::{Discovered, DnsWatch, SourceKind, Update};

/// Keeps one task per watch running until `watches` closes (or this future is
/// dropped). A watch that goes away without a replacement for its service leaves an
/// empty set behind, so its records do not outlive it.
pub async fn run(mut watches: watch::Receiver<Vec<DnsWatch>>, tx: mpsc::Sender<Update>) {
    let mut running: Vec<(DnsWatch, Task)> = Vec::new();
    loop {
        let wanted = watches.borrow_and_update().clone();
        let (keep, stop): (Vec<_>, Vec<_>) = running.into_iter().partition(|(w, _)| wanted.contains(w));
        running = keep;
        for (w, task) in stop {
            // Awaited, so that its last update cannot land after the ones below.
            task.stop().await;
            if !wanted.iter().any(|n| n.service == w.service) {
                let _ = tx.send(Update { service: w.service, source: SourceKind::Dns, backends: Vec::new() }).await;
            }
        }
        for w in wanted {
            if !running.iter().any(|(r, _)| *r == w) {
                let task = Task(tokio::spawn(follow(w.clone(), tx.clone())));
                running.push((w, task));
            }
        }
        if watches.changed().await.is_err() {
            return;
        }
    }
}

/// A per-watch task, aborted when dropped.
struct Task(JoinHandle<()>);

impl Task {
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Shortest interval: a zero one would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Resolves `w.name` every interval and reports the set when it changes (and the
/// first one). A failed lookup keeps the last set: a resolver hiccup must not empty a
/// service. A name that does not exist, or has no address, is an empty set.
async fn follow(w: DnsWatch, tx: mpsc::Sender<Update>) {
    let interval = w.interval.max(MIN_INTERVAL);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut resolver = None;
    let mut last: Option<Vec<Discovered>> = None;
    let mut failing = false;
    loop {
        tick.tick().await;
        let result = match &resolver {
            Some(r) => resolve(r, &w.name).await,
            None => match build(&w, interval) {
                Ok(r) => resolve(resolver.insert(r), &w.name).await,
                Err(e) => Err(e),
            },
        };
        let addrs = match result {
            Ok(addrs) => addrs,
            Err(e) => {
                // Once per outage: a dead resolver would otherwise log every interval.
                if !failing {
                    warn!(service = %w.service, name = %w.name, "DNS lookup failed, keeping the last backends: {e:#}");
                    failing = true;
                }
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            info!(service = %w.service, name = %w.name, "DNS lookups work again");
        }
        let set: Vec<Discovered> = addrs.into_iter().map(|addr| discovered(&w, addr)).collect();
        if last.as_ref() == Some(&set) {
            continue;
        }
        info!(service = %w.service, name = %w.name, addresses = set.len(), "DNS backends changed");
        last = Some(set.clone());
        if tx.send(Update { service: w.service.clone(), source: SourceKind::Dns, backends: set }).await.is_err() {
            return;
        }
    }
}

fn discovered(w: &DnsWatch, addr: IpAddr) -> Discovered {
    Discovered {
        addr,
        port: w.port,
        weight: 1,
        backup: false,
        name: addr.to_string(),
        aliases: Vec::new(),
        hosts: Vec::new(),
        tls: Default::default(),
        draining: false,
        healthy: None,
        origin: format!("dns:{}", w.name),
        socket_lb: true,
    }
}

/// A resolver for one watch: its own server over UDP (and nothing else, not even
/// /etc/hosts), else /etc/resolv.conf (read once per task, with its search domains
/// and options).
fn build(w: &DnsWatch, interval: Duration) -> anyhow::Result<TokioResolver> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match w.server {
        Some(server) => {
            let mut ns = NameServerConfig::udp(server.ip());
            for c in &mut ns.connections {
                c.port = server.port();
            }
            let mut b = TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), provider);
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
        None => TokioResolver::builder(provider).context("reading the system resolver config")?,
    };
    // TTLs of zero: the cache never answers.
    let opts = builder.options_mut();
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    // A lookup that outlasts the interval only delays the next one.
    opts.timeout = opts.timeout.min(interval);
    builder.build().context("building the DNS resolver")
}

/// The name's addresses, sorted. A and AAAA are asked separately so that a failure of
/// either fails the whole lookup rather than silently dropping one family.
async fn resolve(r: &TokioResolver, name: &str) -> anyhow::Result<BTreeSet<IpAddr>> {
    let (v4, v6) = tokio::join!(r.ipv4_lookup(name), r.ipv6_lookup(name));
    let mut addrs = BTreeSet::new();
    for (kind, result) in [("A", v4), ("AAAA", v6)] {
        match result {
            Ok(lookup) => addrs.extend(lookup.answers().iter().filter_map(|rec| match rec.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) if e.is_no_records_found() => {}
            Err(e) => return Err(e).with_context(|| format!("{kind} {name}")),
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddr},
        sync::{Arc, Mutex},
    };

    use tokio::{net::UdpSocket, time::timeout};

    use super::*;

    /// What the test server answers.
    #[derive(Clone)]
    enum Answer {
        Addrs(Vec<IpAddr>),
        NxDomain,
        ServFail,
    }

    /// A minimal DNS server on loopback: answers every A/AAAA query from `table`, with
    /// Docker's 600 s TTL (so a caching client would miss changes).
    async fn server(table: Arc<Mutex<Answer>>) -> SocketAddr {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let answer = table.lock().unwrap().clone();
                if let Some(reply) = respond(&buf[..n], &answer) {
                    let _ = sock.send_to(&reply, peer).await;
                }
            }
        });
        addr
    }

    fn respond(q: &[u8], answer: &Answer) -> Option<Vec<u8>> {
        // The question: labels up to the root label, then type and class.
        let mut end = 12;
        while *q.get(end)? != 0 {
            end += 1 + usize::from(q[end]);
        }
        let qtype = u16::from_be_bytes([*q.get(end + 1)?, *q.get(end + 2)?]);
        let question = &q[12..end + 5];
        let (rcode, addrs) = match answer {
            Answer::Addrs(a) => (0, a.as_slice()),
            Answer::NxDomain => (3, &[][..]),
            Answer::ServFail => (2, &[][..]),
        };
        let rdatas: Vec<Vec<u8>> = addrs
            .iter()
            .filter_map(|a| match (a, qtype) {
                (IpAddr::V4(a), 1) => Some(a.octets().to_vec()),
                (IpAddr::V6(a), 28) => Some(a.octets().to_vec()),
                _ => None,
            })
            .collect();
        let mut r = vec![q[0], q[1], 0x81, 0x80 | rcode, 0, 1];
        r.extend((rdatas.len() as u16).to_be_bytes());
        r.extend([0, 0, 0, 0]);
        r.extend(question);
        for rdata in rdatas {
            r.extend([0xc0, 12]); // the name: a pointer to the question's
            r.extend(qtype.to_be_bytes());
            r.extend([0, 1, 0, 0, 0x02, 0x58]); // class IN, TTL 600
            r.extend((rdata.len() as u16).to_be_bytes());
            r.extend(rdata);
        }
        Some(r)
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The next update. The time a change takes to show (two intervals) is held by the
    /// end-to-end test (tests/tests/dns.rs, the xlb binary alone on the machine); here,
    /// among the crate's other tests on two cores, only what is sent and in which order
    /// is checked, so the wait is generous.
    async fn next(rx: &mut mpsc::Receiver<Update>, step: &str) -> Update {
        timeout(Duration::from_secs(10), rx.recv()).await.unwrap_or_else(|_| panic!("no update within 10 s: {step}")).expect("channel closed")
    }

    #[tokio::test]
    async fn follows_the_records() {
        let table = Arc::new(Mutex::new(Answer::Addrs(ips(&["192.0.2.1"]))));
        let server = server(table.clone()).await;
        let interval = Duration::from_millis(500);
        let w = DnsWatch { service: "web".into(), name: "web.test.".into(), port: Some(8080), interval, server: Some(server) };
        let (watch_tx, watch_rx) = watch::channel(vec![w.clone()]);
        let (tx, mut rx) = mpsc::channel(8);
        let runner = tokio::spawn(run(watch_rx, tx));
        let addrs = |u: &Update| u.backends.iter().map(|b| b.addr).collect::<Vec<_>>();

        let u = next(&mut rx, "the first set").await;
        assert_eq!((u.service.as_str(), u.source, addrs(&u)), ("web", SourceKind::Dns, ips(&["192.0.2.1"])));
        let b = &u.backends[0];
        assert_eq!((b.port, b.weight, b.name.as_str(), b.origin.as_str()), (Some(8080), 1, "192.0.2.1", "dns:web.test."));

        *table.lock().unwrap() = Answer::Addrs(ips(&["192.0.2.2", "2001:db8::2"]));
        assert_eq!(addrs(&next(&mut rx, "changed records").await), ips(&["192.0.2.2", "2001:db8::2"]));

        // A failing server keeps the set: nothing is sent.
        *table.lock().unwrap() = Answer::ServFail;
        assert!(timeout(3 * interval, rx.recv()).await.is_err(), "SERVFAIL changed the set");

        *table.lock().unwrap() = Answer::NxDomain;
        assert_eq!(addrs(&next(&mut rx, "NXDOMAIN after SERVFAIL").await), ips(&[]));

        // A second watch starts; removing the first empties its service.
        *table.lock().unwrap() = Answer::Addrs(ips(&["192.0.2.3"]));
        let api = DnsWatch { service: "api".into(), ..w.clone() };
        watch_tx.send(vec![w, api]).unwrap();
        let mut got = [next(&mut rx, "a second watch").await, next(&mut rx, "a second watch").await].map(|u| (u.service.clone(), addrs(&u)));
        got.sort();
        assert_eq!(got, [("api".into(), ips(&["192.0.2.3"])), ("web".into(), ips(&["192.0.2.3"]))]);
        watch_tx.send_modify(|ws| ws.retain(|w| w.service == "api"));
        let u = next(&mut rx, "the first watch removed").await;
        assert_eq!((u.service.as_str(), addrs(&u)), ("web", ips(&[])));

        drop(watch_tx);
        timeout(Duration::from_secs(10), runner).await.expect("run did not stop").unwrap();
    }
}
