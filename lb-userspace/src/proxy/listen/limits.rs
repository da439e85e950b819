//! A listener's limits: its connections (`Limit`), each client address's (`PerIp`), and
//! the memory its buffered request bodies take (a `Limit` in KiB); a connection holds a
//! [`Permit`] of the first two and the way to the third.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst},
    },
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection's slots in its listener's limits, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    _conn: OwnedSemaphorePermit,
    _ip: IpPermit,
    /// The listener's buffered body memory, in KiB.
    pub bodies: Arc<Limit>,
}

impl Permit {
    pub fn new(conn: OwnedSemaphorePermit, ip: IpPermit, bodies: Arc<Limit>) -> Self {
        Self { _conn: conn, _ip: ip, bodies }
    }
}

/// Connections per client address of a listener (nginx's `limit_conn` keyed by
/// address). An IPv6 client counts by its /64: one host commonly holds a whole /64.
#[derive(Debug)]
pub struct PerIp {
    open: Mutex<HashMap<IpAddr, u32>>,
    pub limit: AtomicU32,
}

impl PerIp {
    pub fn new(limit: u32) -> Self {
        Self { open: Mutex::new(HashMap::new()), limit: AtomicU32::new(limit) }
    }

    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & (!0u128 << 64))),
            },
            v4 => v4,
        }
    }

    /// A slot for one more connection from `ip`, if it holds fewer than the limit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let key = Self::key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.limit.load(SeqCst) {
            if *n == 0 {
                open.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(IpPermit { of: self.clone(), key })
    }
}

#[derive(Debug)]
pub struct IpPermit {
    of: Arc<PerIp>,
    key: IpAddr,
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A listener's connection limit: a permit per connection, resizable while connections
/// hold them. Lowering it takes back the free permits at once and owes the rest (they are
/// in use); each owed permit is forgotten as soon as it is free again, before a new
/// connection may take it, so the limit never drifts above what is configured.
#[derive(Debug)]
pub struct Limit {
    permits: Arc<Semaphore>,
    owed: AtomicUsize,
}

impl Limit {
    pub fn new(limit: u32) -> Self {
        Self { permits: Arc::new(Semaphore::new(limit as usize)), owed: AtomicUsize::new(0) }
    }

    pub fn resize(&self, from: u32, to: u32) {
        if to > from {
            // What is still owed was never taken back: cancel that first.
            let more = (to - from) as usize;
            let owed = self.owed.fetch_update(SeqCst, SeqCst, |o| Some(o.saturating_sub(more))).unwrap_or(0);
            self.permits.add_permits(more - owed.min(more));
        } else if to < from {
            let less = (from - to) as usize;
            let taken = self.permits.forget_permits(less);
            self.owed.fetch_add(less - taken, SeqCst);
        }
    }

    /// A permit for a new connection, if the limit leaves one once the debt is paid.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.try_acquire_many(1)
    }

    /// `n` permits at once, if the limit leaves them once the debt is paid.
    pub fn try_acquire_many(&self, n: u32) -> Option<OwnedSemaphorePermit> {
        while self.owed.fetch_update(SeqCst, SeqCst, |o| o.checked_sub(1)).is_ok() {
            match self.permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => {
                    self.owed.fetch_add(1, SeqCst);
                    break;
                }
            }
        }
        self.permits.clone().try_acquire_many_owned(n).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, sync::Arc};

    use super::{Limit, PerIp};

    #[test]
    fn per_ip_limit_counts_each_address_and_an_ipv6_64_as_one() {
        let per = Arc::new(PerIp::new(2));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a: Vec<_> = (0..5).filter_map(|_| per.try_acquire(ip("127.0.0.2"))).collect();
        assert_eq!(a.len(), 2);
        assert!(per.try_acquire(ip("127.0.0.3")).is_some(), "another address has its own");
        let b: Vec<_> = ["2001:db8::1", "2001:db8::2:3", "2001:db8:0:1::1"].iter().filter_map(|s| per.try_acquire(ip(s))).collect();
        assert_eq!(b.len(), 3, "two in one /64, one in the next");
        assert!(per.try_acquire(ip("2001:db8::ffff")).is_none(), "the /64 is full");
        assert!(per.try_acquire(ip("::ffff:127.0.0.2")).is_none(), "a mapped IPv4 address is that address");
        drop(a);
        assert!(per.try_acquire(ip("127.0.0.2")).is_some(), "closed connections give their slots back");
        drop(b);
        assert_eq!(per.open.lock().unwrap().len(), 0, "no entry left for addresses without connections");
    }

    /// How many connections the limit lets in now, holding them.
    fn fill(l: &Limit) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        std::iter::from_fn(|| l.try_acquire()).take(100).collect()
    }

    #[test]
    fn a_lowered_limit_holds_once_busy_connections_end() {
        let l = Limit::new(4);
        let busy = fill(&l);
        assert_eq!(busy.len(), 4);
        l.resize(4, 2);
        drop(busy);
        assert_eq!(fill(&l).len(), 2, "4 lowered to 2 while 4 were open, then all closed");
    }

    #[test]
    fn raising_a_limit_cancels_what_is_owed() {
        let l = Limit::new(4);
        let busy = fill(&l);
        l.resize(4, 1);
        l.resize(1, 3);
        drop(busy);
        assert_eq!(fill(&l).len(), 3, "4 -> 1 -> 3 while 4 were open");
        let l = Limit::new(2);
        l.resize(2, 5);
        assert_eq!(fill(&l).len(), 5, "raised while idle");
        let half = Limit::new(4);
        let two = [half.try_acquire(), half.try_acquire()];
        half.resize(4, 1);
        drop(two);
        assert_eq!(fill(&half).len(), 1, "4 -> 1 with 2 open");
    }
}
