//! Choosing a backend for a request.
//!
//! A backend is *usable* when its state is `Active`, it was not tried yet for this
//! request, it is below its `max_conns`, and the proxy has not taken it out after
//! failures (`eject.rs`: `max_fails` in a row, at most `max_ejection_percent`, none when
//! all would be). Backups are considered only when no primary is usable. `w_i` is a
//! backend's weight, `a_i` its requests in flight.
//!
//! | method | choice |
//! |---|---|
//! | `round_robin` | smooth weighted round robin (nginx): every pick adds `w_i` to each usable backend's current weight `c_i`, takes the largest `c_i` and subtracts `Σw` from it. Over `Σw` picks each backend gets exactly `w_i`, interleaved (5,1,1 gives a a b a c a a). |
//! | `least_conn` | least `a_i / w_i`; ties by smooth weighted round robin. |
//! | `ip_hash` | nginx's: `h ← 89`, then for each byte `b` of the key `h ← (h·113 + b) mod 6271`; the key is the first three octets of an IPv4 client (so a /24 sticks together), the whole IPv6 address. `h mod Σw` walks the primaries' weights; an unusable pick rehashes (the key fed again) up to 20 times, then round robin. |
//! | `hash KEY` | `h = H(key)`, `h mod Σw` walks the weights; an unusable pick rehashes `h ← H(h ‖ try)` up to 20 times, then round robin. An empty or missing key: round robin. |
//! | `hash KEY consistent` | ketama: each primary puts `160·w_i/g` points (`g` the weights' gcd, at most 16000 a backend) on a 32-bit ring at `H(name "-" j) >> 32`; a key goes to the first point at or after `H(key) >> 32` whose backend is usable, walking on. Points come from the backend's stable name, so removing one of N backends moves only the keys it had (about 1/N), and an address change moves none. |
//! | `random` | weighted random: `P(i) = w_i / Σw`. |
//! | `random two [least_conn]` | two distinct backends drawn weighted at random, the one with the lower `a_i / w_i` (nginx's `random two least_conn`). |
//! | `random two least_time=M` | same draw, the lower `t_i·(a_i + 1) / w_i`. |
//! | `least_time M [inflight]` | least `t_i·(a_i + 1) / w_i`, `t_i` the moving average (α = 1/4) of the time to the response head (`header`) or to its last byte (`last_byte`) as the choosing worker measured it (`ewma::Stats`), 0 before a first sample (so new backends get tried). With `inflight`, `t_i ← max(t_i, mean age of i's requests in flight)`, so a backend that stopped answering looks slow before any of its requests ends. Ties by smooth weighted round robin. |
//! | `peak_ewma [decay=τ]` | power of two choices (Finagle, Linkerd): two distinct backends drawn weighted at random, the lower `cost_i = e_i·(a_i + 1) / w_i`, `e_i` the peak-EWMA of the time to the response head (see `ewma::PeakEwma`, τ 10 s by default, 30 ms before a sample). |
//!
//! `H` and the ring are in `hash.rs`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use super::{
    ewma::Stats,
    hash::{Ring, hash64, ip_hash, ip_hash_key},
};
use crate::{
    config::http::{Method, TimeMeasure, TwoBy},
    plan::PeerState,
};

/// A backend as the balancer sees it.
#[derive(Debug)]
pub struct Peer {
    /// Stable name (container name, else `addr`).
    pub name: String,
    /// Names a pin header or cookie may use, lowercased (`name` included).
    pub aliases: Vec<String>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    pub state: PeerState,
    /// 0: no limit.
    pub max_conns: u32,
    pub stats: Arc<Stats>,
    /// The sticky cookie value naming it.
    pub cookie: String,
}

/// One request's side of a pick.
pub struct Pick<'a> {
    /// The client (after trusted proxies).
    pub client: IpAddr,
    /// The `hash` key; `None` or empty: round robin.
    pub key: Option<&'a [u8]>,
    /// Backends already tried for this request.
    pub exclude: &'a [usize],
    pub now: Instant,
}

pub struct Balancer {
    method: Method,
    pub peers: Vec<Arc<Peer>>,
    /// Current weights of smooth round robin.
    rr: Mutex<Vec<i64>>,
    /// Ketama ring over the primaries.
    ring: Ring,
    /// Held while a failure may eject (`eject.rs`), so two at once cannot pass the cap.
    pub(super) eject: Mutex<()>,
}

const REHASH_TRIES: u32 = 20;

impl Balancer {
    pub fn new(method: Method, peers: Vec<Arc<Peer>>) -> Self {
        let ring = match method {
            Method::Hash { consistent: true, .. } => {
                Ring::new(peers.iter().enumerate().filter(|(_, p)| !p.backup).map(|(i, p)| (i, p.name.as_str(), p.weight)))
            }
            _ => Ring::default(),
        };
        Self { rr: Mutex::new(vec![0; peers.len()]), method, peers, ring, eject: Mutex::new(()) }
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// `panic`: out after failures does not matter.
    fn usable(&self, i: usize, p: &Pick, draining_ok: bool, panic: bool) -> bool {
        let peer = &self.peers[i];
        let state_ok = match peer.state {
            PeerState::Active => true,
            PeerState::Draining => draining_ok,
            PeerState::Down => false,
        };
        state_ok && !p.exclude.contains(&i) && (peer.max_conns == 0 || peer.stats.active() < peer.max_conns) && (panic || !peer.stats.is_failed(p.now))
    }

    /// A backend named by a pin header or cookie, if it is usable (draining ones are).
    pub fn by_name(&self, name: &str, p: &Pick) -> Option<usize> {
        let name = name.trim();
        (0..self.peers.len()).find(|&i| self.peers[i].aliases.iter().any(|a| a.eq_ignore_ascii_case(name)) && self.usable(i, p, true, false))
    }

    /// The backend a sticky cookie value names, if it is usable (draining ones are).
    pub fn by_cookie(&self, value: &str, p: &Pick) -> Option<usize> {
        (0..self.peers.len()).find(|&i| self.peers[i].cookie == value && self.usable(i, p, true, false))
    }

    /// Chooses a backend, or `None` when none is usable.
    pub fn choose(&self, p: &Pick) -> Option<usize> {
        let panic = self.panicking(p.now);
        let usable = |i: usize| self.usable(i, p, false, panic);
        let usable_primaries: Vec<usize> = (0..self.peers.len()).filter(|&i| !self.peers[i].backup && usable(i)).collect();
        if usable_primaries.is_empty() {
            // Backups: whatever the method, spread them by round robin.
            let backups: Vec<usize> = (0..self.peers.len()).filter(|&i| self.peers[i].backup && usable(i)).collect();
            return (!backups.is_empty()).then(|| self.smooth_rr(&backups));
        }
        let cands = &usable_primaries;
        Some(match &self.method {
            Method::RoundRobin => self.smooth_rr(cands),
            Method::LeastConn => self.least(cands, |i| self.conn_score(i)),
            Method::LeastTime { measure, inflight } => self.least(cands, |i| self.time_score(i, *measure, *inflight, p.now)),
            Method::Random => self.weighted_random(cands, None),
            Method::RandomTwo { by } => self.two_choices(cands, |i| match by {
                TwoBy::LeastConn => self.conn_score(i),
                TwoBy::LeastTime(m) => self.time_score(i, *m, false, p.now),
            }),
            Method::PeakEwma { .. } => self.two_choices(cands, |i| {
                let peer = &self.peers[i];
                peer.stats.peak_ewma() * f64::from(peer.stats.active() + 1) / f64::from(peer.weight.max(1))
            }),
            Method::IpHash => {
                let key = ip_hash_key(p.client);
                self.rehash(&usable, |tries, prev| ip_hash(&key, tries, prev)).unwrap_or_else(|| self.smooth_rr(cands))
            }
            Method::Hash { consistent, .. } => match p.key.filter(|k| !k.is_empty()) {
                None => self.smooth_rr(cands),
                Some(key) if *consistent => self.ring.lookup(key, usable).unwrap_or_else(|| self.smooth_rr(cands)),
                Some(key) => self
                    .rehash(&usable, |tries, prev| if tries == 0 { hash64(key) } else { hash64(&[&prev.to_le_bytes()[..], &tries.to_le_bytes()].concat()) })
                    .unwrap_or_else(|| self.smooth_rr(cands)),
            },
        })
    }

    /// `a_i / w_i`.
    fn conn_score(&self, i: usize) -> f64 {
        let p = &self.peers[i];
        f64::from(p.stats.active()) / f64::from(p.weight.max(1))
    }

    /// `t_i·(a_i + 1) / w_i`.
    fn time_score(&self, i: usize, m: TimeMeasure, inflight: bool, now: Instant) -> f64 {
        let p = &self.peers[i];
        let mut t = match m {
            TimeMeasure::Header => p.stats.avg_header(),
            TimeMeasure::LastByte => p.stats.avg_last_byte(),
        }
        .unwrap_or(0.0);
        if inflight {
            t = t.max(p.stats.inflight_age(now));
        }
        t * f64::from(p.stats.active() + 1) / f64::from(p.weight.max(1))
    }

    /// The lowest score; ties by smooth round robin.
    fn least(&self, cands: &[usize], score: impl Fn(usize) -> f64) -> usize {
        let scores: Vec<f64> = cands.iter().map(|&i| score(i)).collect();
        let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let ties: Vec<usize> = cands.iter().zip(&scores).filter(|(_, s)| **s <= min).map(|(&i, _)| i).collect();
        if ties.len() == 1 { ties[0] } else { self.smooth_rr(&ties) }
    }

    /// nginx's smooth weighted round robin over `cands`.
    fn smooth_rr(&self, cands: &[usize]) -> usize {
        let mut cur = self.rr.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best = cands[0];
        for &i in cands {
            let w = i64::from(self.peers[i].weight.max(1));
            cur[i] += w;
            total += w;
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= total;
        best
    }

    fn weighted_random(&self, cands: &[usize], not: Option<usize>) -> usize {
        let w = |i: usize| {
            if Some(i) == not { 0 } else { u64::from(self.peers[i].weight.max(1)) }
        };
        let total: u64 = cands.iter().map(|&i| w(i)).sum();
        let mut r = rand::random_range(0..total.max(1));
        for &i in cands {
            if r < w(i) {
                return i;
            }
            r -= w(i);
        }
        cands[0]
    }

    /// Two distinct weighted-random candidates; the lower score wins.
    fn two_choices(&self, cands: &[usize], score: impl Fn(usize) -> f64) -> usize {
        let a = self.weighted_random(cands, None);
        if cands.len() == 1 {
            return a;
        }
        let b = self.weighted_random(cands, Some(a));
        if score(b) < score(a) { b } else { a }
    }

    /// Weight-walk of the primaries (usable or not, so the mapping is stable) by a hash;
    /// an unusable pick rehashes.
    fn rehash(&self, usable: &impl Fn(usize) -> bool, mut next: impl FnMut(u32, u64) -> u64) -> Option<usize> {
        let primaries: Vec<usize> = (0..self.peers.len()).filter(|&i| !self.peers[i].backup).collect();
        let total: u64 = primaries.iter().map(|&i| u64::from(self.peers[i].weight.max(1))).sum();
        if total == 0 {
            return None;
        }
        let mut h = 0;
        for tries in 0..REHASH_TRIES {
            h = next(tries, h);
            let mut w = h % total;
            for &i in &primaries {
                let wi = u64::from(self.peers[i].weight.max(1));
                if w < wi {
                    if usable(i) {
                        return Some(i);
                    }
                    break;
                }
                w -= wi;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::{super::hash::cookie_value, *};
    use crate::config::http::HashKey;

    fn peer(name: &str, weight: u32, backup: bool) -> Arc<Peer> {
        Arc::new(Peer {
            name: name.into(),
            aliases: vec![name.to_ascii_lowercase()],
            addr: "127.0.0.1:1".parse().unwrap(),
            weight,
            backup,
            state: PeerState::Active,
            max_conns: 0,
            stats: Arc::default(),
            cookie: cookie_value("s", name),
        })
    }

    fn pick<'a>(client: &str, key: Option<&'a [u8]>, exclude: &'a [usize]) -> Pick<'a> {
        Pick { client: client.parse().unwrap(), key, exclude, now: Instant::now() }
    }

    fn names(b: &Balancer, n: usize) -> String {
        (0..n).map(|_| b.peers[b.choose(&pick("10.0.0.1", None, &[])).unwrap()].name.clone()).collect()
    }

    fn counts(b: &Balancer, n: usize, mut f: impl FnMut(usize) -> Pick<'static>) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for k in 0..n {
            *c.entry(b.peers[b.choose(&f(k)).unwrap()].name.clone()).or_default() += 1;
        }
        c
    }

    #[test]
    fn smooth_round_robin_is_nginx_s() {
        let b = Balancer::new(Method::RoundRobin, vec![peer("a", 5, false), peer("b", 1, false), peer("c", 1, false)]);
        assert_eq!(names(&b, 7), "aabacaa");
        assert_eq!(names(&b, 7), "aabacaa");
    }

    #[test]
    fn backups_only_when_no_primary_is_usable() {
        let mut peers = vec![peer("a", 1, false), peer("b", 1, true)];
        assert_eq!(names(&Balancer::new(Method::RoundRobin, peers.clone()), 4), "aaaa");
        Arc::get_mut(&mut peers[0]).unwrap().state = PeerState::Down;
        assert_eq!(names(&Balancer::new(Method::RoundRobin, peers.clone()), 2), "bb");
        // Excluding the only primary (already tried) also falls to the backup.
        let b = Balancer::new(Method::LeastConn, vec![peer("a", 1, false), peer("b", 1, true)]);
        assert_eq!(b.choose(&pick("10.0.0.1", None, &[0])), Some(1));
        assert_eq!(b.choose(&pick("10.0.0.1", None, &[0, 1])), None);
    }

    #[test]
    fn draining_only_for_pins_and_max_conns() {
        let mut peers = vec![peer("a", 1, false), peer("b", 1, false)];
        Arc::get_mut(&mut peers[1]).unwrap().state = PeerState::Draining;
        Arc::get_mut(&mut peers[0]).unwrap().max_conns = 1;
        let b = Balancer::new(Method::RoundRobin, peers);
        assert_eq!(b.by_name("B", &pick("10.0.0.1", None, &[])), Some(1));
        assert_eq!(names(&b, 3), "aaa");
        let _busy = b.peers[0].stats.start();
        assert_eq!(b.choose(&pick("10.0.0.1", None, &[])), None, "a at max_conns, b draining");
    }

    #[test]
    fn least_conn_prefers_idle_then_rotates() {
        let b = Balancer::new(Method::LeastConn, vec![peer("a", 1, false), peer("b", 1, false), peer("c", 2, false)]);
        let _x = b.peers[0].stats.start();
        let _y = b.peers[2].stats.start();
        // a: 1/1, b: 0/1, c: 1/2 → b.
        assert_eq!(names(&b, 3), "bbb");
        let _z = b.peers[1].stats.start();
        // a 1, b 1, c 0.5 → c.
        assert_eq!(names(&b, 1), "c");
    }

    #[test]
    fn ip_hash_sticks_per_24_and_spreads() {
        let peers: Vec<_> = ["a", "b", "c"].iter().map(|n| peer(n, 1, false)).collect();
        let b = Balancer::new(Method::IpHash, peers);
        let who = |ip: String| b.choose(&Pick { client: ip.parse().unwrap(), key: None, exclude: &[], now: Instant::now() }).unwrap();
        let mut used = std::collections::HashSet::new();
        for net in 0..60 {
            let first = who(format!("10.{net}.7.1"));
            used.insert(first);
            for host in [2, 99, 254] {
                assert_eq!(who(format!("10.{net}.7.{host}")), first);
            }
        }
        assert_eq!(used.len(), 3);
        // The value is nginx's: key 10.0.7 → ((89·113+10)·113+0)·113+7 mod 6271 steps.
        let mut h = 89u64;
        for x in [10u64, 0, 7] {
            h = (h * 113 + x) % 6271;
        }
        assert_eq!(who("10.0.7.1".into()), (h % 3) as usize);
        // IPv6: the whole address is the key; an IPv4-mapped one counts as IPv4.
        assert_eq!(ip_hash_key("fd00::1".parse().unwrap()).len(), 16);
        assert_ne!(ip_hash_key("fd00::1".parse().unwrap()), ip_hash_key("fd00::2".parse().unwrap()));
        assert_eq!(ip_hash_key("::ffff:10.0.7.9".parse().unwrap()), [10, 0, 7]);
        let v6: std::collections::HashSet<usize> = (1..=60).map(|i| who(format!("fd00::{i:x}"))).collect();
        assert_eq!(v6.len(), 3, "IPv6 clients of one /64 are spread, not grouped");
    }

    #[test]
    fn consistent_hash_moves_about_one_nth() {
        let method = Method::Hash { key: HashKey::Uri, consistent: true };
        let all: Vec<_> = (0..5).map(|i| peer(&format!("web-{i}"), 1, false)).collect();
        let full = Balancer::new(method.clone(), all.clone());
        let less = Balancer::new(method.clone(), all[..4].to_vec());
        let keys: Vec<String> = (0..10_000).map(|k| format!("/item/{k}")).collect();
        let on = |b: &Balancer, k: &str| b.peers[b.choose(&pick("10.0.0.1", Some(k.as_bytes()), &[])).unwrap()].name.clone();
        let mut moved = 0;
        let mut per = HashMap::<String, usize>::new();
        for k in &keys {
            let (x, y) = (on(&full, k), on(&less, k));
            *per.entry(x.clone()).or_default() += 1;
            if x != y {
                assert_eq!(x, "web-4", "only keys of the removed backend move");
                moved += 1;
            }
        }
        let frac = moved as f64 / keys.len() as f64;
        assert!((0.12..=0.28).contains(&frac), "moved {frac}");
        for (n, c) in per {
            assert!((1300..=2700).contains(&c), "{n}: {c} of 10000");
        }
        // A down backend's keys go to the next point; the others stay.
        let mut peers = all.clone();
        peers[4] = Arc::new(Peer { state: PeerState::Down, ..Peer::clone_of(&all[4]) });
        let down = Balancer::new(method, peers);
        for k in keys.iter().take(2000) {
            assert_eq!(on(&down, k), on(&less, k));
        }
    }

    #[test]
    fn plain_hash_is_deterministic_and_weighted() {
        let b = Balancer::new(Method::Hash { key: HashKey::Uri, consistent: false }, vec![peer("a", 3, false), peer("b", 1, false)]);
        let c = counts(&b, 8000, |k| Pick {
            client: "10.0.0.1".parse().unwrap(),
            key: Some(Box::leak(format!("/{k}").into_bytes().into_boxed_slice())),
            exclude: &[],
            now: Instant::now(),
        });
        assert!((5600..=6400).contains(&c["a"]), "{c:?}");
        let k: &[u8] = b"/same";
        let first = b.choose(&pick("1.1.1.1", Some(k), &[]));
        assert!((0..50).all(|_| b.choose(&pick("1.1.1.1", Some(k), &[])) == first));
        // Excluded: rehash lands on the other one.
        assert_eq!(b.choose(&pick("1.1.1.1", Some(k), &[first.unwrap()])), Some(1 - first.unwrap()));
    }

    #[test]
    fn random_is_weighted() {
        let b = Balancer::new(Method::Random, vec![peer("a", 1, false), peer("b", 3, false)]);
        let c = counts(&b, 8000, |_| pick("10.0.0.1", None, &[]));
        assert!((1600..=2400).contains(&c["a"]), "{c:?}");
    }

    #[test]
    fn random_two_avoids_the_busy_one() {
        let b = Balancer::new(Method::RandomTwo { by: TwoBy::LeastConn }, vec![peer("a", 1, false), peer("b", 1, false), peer("c", 1, false)]);
        let _busy: Vec<_> = (0..5).map(|_| b.peers[0].stats.start()).collect();
        let c = counts(&b, 3000, |_| pick("10.0.0.1", None, &[]));
        // a wins only when drawn twice, which two distinct draws never do.
        assert_eq!(c.get("a"), None, "{c:?}");
    }

    #[test]
    fn least_time_prefers_the_fast_and_inflight_sees_hangs() {
        let m = Method::LeastTime { measure: TimeMeasure::Header, inflight: false };
        let b = Balancer::new(m, vec![peer("fast", 1, false), peer("slow", 1, false)]);
        let now = Instant::now();
        let tau = Duration::from_secs(10);
        b.peers[0].stats.record_header(Duration::from_millis(5), now, tau);
        b.peers[1].stats.record_header(Duration::from_millis(50), now, tau);
        assert_eq!(names(&b, 5), "fastfastfastfastfast");
        // Under load: fast with 10 in flight scores 5·11 = 55 against slow's 50·1.
        let load: Vec<_> = (0..10).map(|_| b.peers[0].stats.start()).collect();
        assert_eq!(names(&b, 1), "slow");
        drop(load);

        let m = Method::LeastTime { measure: TimeMeasure::Header, inflight: true };
        let b = Balancer::new(m, vec![peer("hung", 1, false), peer("ok", 1, false)]);
        b.peers[0].stats.record_header(Duration::from_millis(1), now, tau);
        b.peers[1].stats.record_header(Duration::from_millis(20), now, tau);
        let _stuck = b.peers[0].stats.start();
        std::thread::sleep(Duration::from_millis(60));
        // Without inflight hung scores 1ms·2; with it max(1ms, 60ms)·2 > 20ms.
        assert_eq!(names(&b, 1), "ok");
    }

    #[test]
    fn peak_ewma_prefers_low_latency() {
        let b = Balancer::new(Method::PeakEwma { decay: Duration::from_secs(10) }, vec![peer("fast", 1, false), peer("slow", 1, false), peer("mid", 1, false)]);
        let now = Instant::now();
        let tau = Duration::from_secs(10);
        for (i, ms) in [(0, 5), (1, 80), (2, 20)] {
            b.peers[i].stats.record_header(Duration::from_millis(ms), now, tau);
        }
        let c = counts(&b, 3000, |_| pick("10.0.0.1", None, &[]));
        // P2C over 3: fast wins whenever drawn (2/3 of pairs), slow never.
        assert!(c["fast"] > 1800 && !c.contains_key("slow"), "{c:?}");
    }

    #[test]
    fn ejections_are_capped_and_all_out_is_panic() {
        let w = Duration::from_secs(10);
        let b = Balancer::new(Method::RoundRobin, ["a", "b", "c", "d"].iter().map(|n| peer(n, 1, false)).collect());
        let now = Instant::now();
        // 50% of four: two out, the third stays in however often it fails.
        assert!(b.fail(&b.peers[0], 1, w, 50, now) && b.fail(&b.peers[1], 1, w, 50, now));
        assert!(!b.fail(&b.peers[2], 1, w, 50, now) && !b.fail(&b.peers[2], 1, w, 50, now));
        assert_eq!(names(&b, 4), "cdcd");
        // A cap of 100 lets all go: then all are used.
        assert!(b.fail(&b.peers[2], 1, w, 100, now) && b.fail(&b.peers[3], 1, w, 100, now));
        let c = counts(&b, 8, |_| pick("10.0.0.1", None, &[]));
        assert_eq!(c.len(), 4, "panic mode uses every backend: {c:?}");
        // A backend down by its probes is not used, even in panic mode.
        let mut peers = vec![peer("a", 1, false), peer("b", 1, false)];
        Arc::get_mut(&mut peers[1]).unwrap().state = PeerState::Down;
        let b = Balancer::new(Method::RoundRobin, peers);
        assert!(!b.fail(&b.peers[0], 1, w, 50, now), "50% of one active backend is none");
        assert!(b.fail(&b.peers[0], 1, w, 100, now));
        assert_eq!(names(&b, 2), "aa");
    }

    impl Peer {
        fn clone_of(p: &Peer) -> Peer {
            Peer {
                name: p.name.clone(),
                aliases: p.aliases.clone(),
                addr: p.addr,
                weight: p.weight,
                backup: p.backup,
                state: p.state,
                max_conns: p.max_conns,
                stats: p.stats.clone(),
                cookie: p.cookie.clone(),
            }
        }
    }
}
