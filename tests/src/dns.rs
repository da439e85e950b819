//! A DNS server the tests control: it answers A queries for one name with a set of IPv4
//! addresses the test switches at will, so that xlb's DNS discovery (`dns: { server }`) can be
//! watched moving real traffic. UDP only, one question per query, no compression in the
//! question (what resolvers send); every other name is NXDOMAIN, every other type of the name
//! an empty answer. Answers carry Docker's 600 s TTL, so a caching client would miss changes.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// Most A answers remembered (a bound on memory whatever the interval).
const MAX_ANSWERS: usize = 100_000;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    records: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    addrs: Vec<Ipv4Addr>,
    /// When each A query of the name was answered (the first [`MAX_ANSWERS`]).
    answered: Vec<Instant>,
    /// How many were.
    count: usize,
}

/// The running server; dropping it stops it.
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `name` (a fully qualified name, trailing dot optional, any case) with `addrs`
    /// on 127.0.0.1 (a free port) inside `ns`.
    pub fn start(ns: &NetNs, name: &str, addrs: &[Ipv4Addr]) -> DnsServer {
        let sock = ns
            .enter(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)))
            .unwrap_or_else(|e| panic!("DNS server: bind in {}: {e}", ns.name()));
        let addr = sock.local_addr().expect("local_addr");
        // Short, so that a stop is seen quickly.
        sock.set_read_timeout(Some(Duration::from_millis(100))).expect("set_read_timeout");
        let shared = Arc::new(Shared::default());
        shared.records.lock().unwrap().addrs = addrs.to_vec();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let s = shared.clone();
        let thread = thread::spawn(move || serve(&sock, &name, &s));
        DnsServer { addr, shared, thread: Some(thread) }
    }

    /// Where it listens (in its namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `addrs` from now on; returns when the switch happened.
    pub fn set(&self, addrs: &[Ipv4Addr]) -> Instant {
        let mut r = self.records();
        r.addrs = addrs.to_vec();
        Instant::now()
    }

    /// Waits (at most `timeout`) for the next A query of the name, then answers `addrs` from
    /// then on: a client that asks at intervals sees the change only at its next query, one
    /// interval later (its worst case). Returns when the switch happened; `None` when no query
    /// came in time.
    pub fn set_after_next_answer(&self, addrs: &[Ipv4Addr], timeout: Duration) -> Option<Instant> {
        let n = self.answers();
        crate::util::wait_for(timeout, Duration::from_millis(2), || (self.answers() > n).then_some(()))?;
        Some(self.set(addrs))
    }

    /// When the first A query of the name answered at or after `since` was answered.
    pub fn first_answer_since(&self, since: Instant) -> Option<Instant> {
        self.records().answered.iter().copied().find(|t| *t >= since)
    }

    /// How many A queries of the name were answered.
    pub fn answers(&self) -> usize {
        self.records().count
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.shared.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(sock: &UdpSocket, name: &str, shared: &Shared) {
    let mut buf = [0u8; 512];
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
        let mut records = shared.records.lock().unwrap_or_else(|e| e.into_inner());
        let Some((reply, a_of_name)) = answer(&buf[..n], name, &records.addrs) else { continue };
        if a_of_name {
            records.count += 1;
            if records.answered.len() < MAX_ANSWERS {
                records.answered.push(Instant::now());
            }
        }
        drop(records);
        let _ = sock.send_to(&reply, peer);
    }
}

/// The reply to query `q` (`None`: not a query we can parse, dropped), and whether it was an
/// A query of `name`.
fn answer(q: &[u8], name: &str, addrs: &[Ipv4Addr]) -> Option<(Vec<u8>, bool)> {
    // Header: id, flags (QR clear: a query), QDCOUNT = 1.
    if q.len() < 12 || q[2] & 0x80 != 0 || q[4..6] != [0, 1] {
        return None;
    }
    let mut labels = Vec::new();
    let mut end = 12;
    loop {
        let len = usize::from(*q.get(end)?);
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(end + 1..end + 1 + len)?).to_ascii_lowercase());
        end += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(end + 1)?, *q.get(end + 2)?]);
    let question = q.get(12..end + 5)?;
    let ours = labels.join(".") == name;
    let a = ours && qtype == 1;
    let rcode = if ours { 0 } else { 3 };
    let records: &[Ipv4Addr] = if a { addrs } else { &[] };
    // QR, AA, the query's RD; RA; one question, the answers, no other records.
    let mut r = vec![q[0], q[1], 0x84 | (q[2] & 0x01), 0x80 | rcode, 0, 1];
    r.extend((records.len() as u16).to_be_bytes());
    r.extend([0, 0, 0, 0]);
    r.extend(question);
    for ip in records {
        r.extend([0xc0, 12]); // the name: a pointer to the question's
        r.extend([0, 1, 0, 1]); // A, IN
        r.extend(600u32.to_be_bytes());
        r.extend(4u16.to_be_bytes());
        r.extend(ip.octets());
    }
    Some((r, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` of type `qtype` with id 0x1234 and RD set.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.').filter(|l| !l.is_empty()) {
            q.push(l.len() as u8);
            q.extend(l.as_bytes());
        }
        q.extend([0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
        q
    }

    #[test]
    fn answers() {
        let addrs = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        let q = query("Web.Test.", 1);
        let (r, a) = answer(&q, "web.test", &addrs).unwrap();
        assert!(a);
        assert_eq!(&r[..12], &[0x12, 0x34, 0x85, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]);
        assert_eq!(&r[12..q.len()], &q[12..]);
        let first = &r[q.len()..q.len() + 16];
        assert_eq!(first, &[0xc0, 12, 0, 1, 0, 1, 0, 0, 2, 0x58, 0, 4, 10, 0, 0, 1]);
        assert_eq!(r.len(), q.len() + 32);
        // AAAA of the name: no records; another name: NXDOMAIN; an answer: ignored.
        let (r, a) = answer(&query("web.test", 28), "web.test", &addrs).unwrap();
        assert_eq!((a, r[3], &r[6..8]), (false, 0x80, &[0u8, 0][..]));
        let (r, _) = answer(&query("other.test", 1), "web.test", &addrs).unwrap();
        assert_eq!((r[3], &r[6..8]), (0x83, &[0u8, 0][..]));
        assert!(answer(&r, "web.test", &addrs).is_none());
        assert!(answer(&q[..20], "web.test", &addrs).is_none());
    }
}
