//! Steady client load through a VIP, running while a test changes the backends.
//!
//! [`Load::start`] runs `workers` threads in a namespace; each one loops: a NEW connection,
//! `GET /` with `Connection: close`, read the answer (every step bounded by `timeout`), record
//! it, pause, again. The loop is bounded in count (`max_requests`, all workers together) and in
//! time (`max_duration`) and stops when [`Load::stop`] is called. Every request is kept as a
//! [`Record`]: when it started and ended, from which local port, and either the backend that
//! answered (xlb-testd's name) or why it failed ([`Stage`] and the error).
//!
//! The [`Report`] answers the scenarios' questions (failures, who answered what when, first and
//! last request served by a backend) and prints itself with a timeline for failure messages.

use std::{
    collections::BTreeMap,
    fmt,
    io::{BufReader, Write},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use crate::{http::read_response, netns::NetNs, socket::connect};

#[derive(Debug, Clone, Copy)]
pub struct LoadOpts {
    /// Concurrent client loops (so one slow or hung request does not stop the load).
    pub workers: usize,
    /// Pause of each worker after each request.
    pub pause: Duration,
    /// Bound of the connect, and of each write and read.
    pub timeout: Duration,
    /// At most this many requests, all workers together.
    pub max_requests: usize,
    /// The load stops by itself after this long.
    pub max_duration: Duration,
}

impl Default for LoadOpts {
    /// 4 workers pausing 10 ms: a few hundred requests a second on a small VM. Note that
    /// Linux's connect() moves its next source port on by only a few ports per connection,
    /// so the client wraps its ~28k ephemeral ports after a few thousand connections and
    /// reuses 4-tuples (as real clients do); [`Report::reused_ports`] counts them.
    fn default() -> Self {
        LoadOpts {
            workers: 4,
            pause: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
            max_requests: 20_000,
            max_duration: Duration::from_secs(120),
        }
    }
}

/// Where a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The TCP connection was not established (refused, timed out, unreachable).
    Connect,
    /// Writing the request failed.
    Send,
    /// No complete answer (reset, closed early, timed out).
    Receive,
    /// An answer other than 200.
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200, and the name of the backend that answered.
    Served(String),
    Failed { stage: Stage, error: String },
}

#[derive(Debug, Clone)]
pub struct Record {
    pub worker: usize,
    pub start: Instant,
    pub end: Instant,
    /// The client's source port (when the connection was made).
    pub local_port: Option<u16>,
    pub outcome: Outcome,
}

impl Record {
    /// The backend that answered.
    pub fn backend(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Served(n) => Some(n),
            Outcome::Failed { .. } => None,
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed { .. })
    }
}

/// Why the load ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// [`Load::stop`] was called (what a scenario expects).
    Stopped,
    MaxRequests,
    MaxDuration,
}

/// What a backend served so far, for waiting on it while the load runs.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub count: usize,
    /// End of the first request it answered.
    pub first_end: Instant,
    /// Start of the last request it answered.
    pub last_start: Instant,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    issued: AtomicUsize,
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// Per backend: (start of each request it answered, its end), in completion order.
    served: Mutex<BTreeMap<String, Vec<(Instant, Instant)>>>,
}

/// A running load; [`Load::stop`] ends it and returns the [`Report`]. Dropping it stops it too.
pub struct Load {
    addr: SocketAddr,
    opts: LoadOpts,
    t0: Instant,
    sys0: SystemTime,
    shared: Arc<Shared>,
    workers: Vec<thread::JoinHandle<(Vec<Record>, Ended)>>,
}

impl Load {
    /// Starts the workers in `ns` against `addr`.
    pub fn start(ns: &NetNs, addr: SocketAddr, opts: LoadOpts) -> Load {
        assert!(opts.workers >= 1 && opts.max_requests >= 1, "{opts:?}");
        let shared = Arc::new(Shared::default());
        let (t0, sys0) = (Instant::now(), SystemTime::now());
        let workers = (0..opts.workers)
            .map(|w| {
                let shared = shared.clone();
                ns.spawn_thread(move || worker(w, addr, opts, t0, &shared))
            })
            .collect();
        Load { addr, opts, t0, sys0, shared, workers }
    }

    /// (requests answered, requests failed) so far.
    pub fn counts(&self) -> (usize, usize) {
        (self.shared.ok.load(Ordering::Relaxed), self.shared.failed.load(Ordering::Relaxed))
    }

    /// What `name` served among the requests that started at or after `since`.
    pub fn served_since(&self, name: &str, since: Instant) -> Option<Served> {
        let served = self.shared.served.lock().unwrap_or_else(|e| e.into_inner());
        let v: Vec<&(Instant, Instant)> = served.get(name)?.iter().filter(|(s, _)| *s >= since).collect();
        Some(Served {
            count: v.len(),
            first_end: v.iter().map(|(_, e)| *e).min()?,
            last_start: v.iter().map(|(s, _)| *s).max()?,
        })
    }

    /// Waits until each of `names` answered a request that started at or after `since`.
    /// `Err` names the ones that did not within `timeout`.
    pub fn wait_served_since(&self, names: &[String], since: Instant, timeout: Duration) -> Result<(), String> {
        let missing = || -> Vec<String> {
            names.iter().filter(|n| self.served_since(n, since).is_none()).cloned().collect()
        };
        match crate::util::wait_for(timeout, Duration::from_millis(20), || missing().is_empty().then_some(())) {
            Some(()) => Ok(()),
            None => Err(format!("not served within {timeout:?} (requests started since +{:.3}s): {:?}", secs(since - self.t0), missing())),
        }
    }

    /// Stops the workers and collects every request.
    pub fn stop(mut self) -> Report {
        self.finish()
    }

    fn finish(&mut self) -> Report {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut records = Vec::new();
        let mut ended = Ended::Stopped;
        for h in self.workers.drain(..) {
            match h.join() {
                Ok((r, e)) => {
                    records.extend(r);
                    if e != Ended::Stopped {
                        ended = e;
                    }
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        records.sort_by_key(|r| r.start);
        Report { addr: self.addr, opts: self.opts, t0: self.t0, sys0: self.sys0, records, ended }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.shared.stop.store(true, Ordering::SeqCst);
            // Bounded: each worker ends within one request (a few timeouts).
            for h in self.workers.drain(..) {
                let _ = h.join();
            }
        }
    }
}

fn worker(w: usize, addr: SocketAddr, opts: LoadOpts, t0: Instant, shared: &Shared) -> (Vec<Record>, Ended) {
    let mut records = Vec::new();
    let ended = loop {
        if shared.stop.load(Ordering::SeqCst) {
            break Ended::Stopped;
        }
        if t0.elapsed() >= opts.max_duration {
            break Ended::MaxDuration;
        }
        if shared.issued.fetch_add(1, Ordering::SeqCst) >= opts.max_requests {
            break Ended::MaxRequests;
        }
        let start = Instant::now();
        let (local_port, outcome) = one_request(addr, opts.timeout);
        let end = Instant::now();
        match &outcome {
            Outcome::Served(name) => {
                shared.ok.fetch_add(1, Ordering::Relaxed);
                let mut served = shared.served.lock().unwrap_or_else(|e| e.into_inner());
                served.entry(name.clone()).or_default().push((start, end));
            }
            Outcome::Failed { .. } => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        records.push(Record { worker: w, start, end, local_port, outcome });
        thread::sleep(opts.pause);
    };
    (records, ended)
}

/// One `GET /` on a new connection.
fn one_request(addr: SocketAddr, timeout: Duration) -> (Option<u16>, Outcome) {
    let fail = |stage, e: &dyn fmt::Display| Outcome::Failed { stage, error: e.to_string() };
    let (port, s) = connect(addr, timeout);
    let s = match s {
        Ok(s) => s,
        Err(e) => return (port, fail(Stage::Connect, &e)),
    };
    let setup = s
        .set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .and_then(|()| s.set_nodelay(true))
        .and_then(|()| s.try_clone());
    let mut w = match setup {
        Ok(w) => w,
        Err(e) => return (port, fail(Stage::Connect, &e)),
    };
    let req = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xlb-tests-load\r\nConnection: close\r\n\r\n");
    if let Err(e) = w.write_all(req.as_bytes()) {
        return (port, fail(Stage::Send, &e));
    }
    match read_response(&mut BufReader::new(s)) {
        Ok(r) if r.status == 200 => (port, Outcome::Served(r.body.trim().to_string())),
        Ok(r) => (port, fail(Stage::Status, &format!("status {} body {:?}", r.status, r.body.trim()))),
        Err(e) => (port, fail(Stage::Receive, &format!("{e} ({:?})", e.kind()))),
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Every request of a finished load.
pub struct Report {
    pub addr: SocketAddr,
    pub opts: LoadOpts,
    /// When the load started (and the wall clock then, to compare with Docker's timestamps).
    pub t0: Instant,
    pub sys0: SystemTime,
    /// Sorted by start.
    pub records: Vec<Record>,
    pub ended: Ended,
}

impl Report {
    pub fn served(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| !r.failed())
    }

    pub fn failures(&self) -> Vec<&Record> {
        self.records.iter().filter(|r| r.failed()).collect()
    }

    /// Requests answered per backend.
    pub fn by_backend(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.served() {
            *m.entry(r.backend().unwrap_or_default().to_string()).or_default() += 1;
        }
        m
    }

    /// Requests `name` answered that started in `[from, to)`.
    pub fn answered_by(&self, name: &str, from: Instant, to: Instant) -> Vec<&Record> {
        self.served().filter(|r| r.backend() == Some(name) && r.start >= from && r.start < to).collect()
    }

    /// The request `name` answered first (by end time) among those started at or after `since`.
    pub fn first_served(&self, name: &str, since: Instant) -> Option<&Record> {
        self.served().filter(|r| r.backend() == Some(name) && r.start >= since).min_by_key(|r| r.end)
    }

    /// The request `name` answered that started last.
    pub fn last_started(&self, name: &str) -> Option<&Record> {
        self.served().filter(|r| r.backend() == Some(name)).max_by_key(|r| r.start)
    }

    /// The instant matching a wall-clock time (e.g. Docker's `StartedAt`).
    pub fn instant_of(&self, t: SystemTime) -> Instant {
        match t.duration_since(self.sys0) {
            Ok(d) => self.t0 + d,
            Err(e) => self.t0.checked_sub(e.duration()).unwrap_or(self.t0),
        }
    }

    /// The UTC wall-clock time of `t` (`HH:MM:SS.ffffff`, as in xlb's log lines).
    pub fn wall(&self, t: Instant) -> String {
        let sys = match t.checked_duration_since(self.t0) {
            Some(d) => self.sys0 + d,
            None => self.sys0 - (self.t0 - t),
        };
        let d = sys.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let s = d.as_secs() % 86_400;
        format!("{:02}:{:02}:{:02}.{:06}", s / 3600, s / 60 % 60, s % 60, d.subsec_micros())
    }

    /// `+S.mmm s` since the load started (negative before).
    pub fn rel(&self, t: Instant) -> String {
        match t.checked_duration_since(self.t0) {
            Some(d) => format!("+{:.3}s", secs(d)),
            None => format!("-{:.3}s", secs(self.t0 - t)),
        }
    }

    /// The latest earlier request from the same source port (the same 4-tuple: one client
    /// address, one VIP), if any.
    pub fn earlier_use_of_port(&self, r: &Record) -> Option<&Record> {
        let port = r.local_port?;
        self.records.iter().filter(|o| o.local_port == Some(port) && o.start < r.start).max_by_key(|o| o.start)
    }

    /// How many requests reused the source port of an earlier one.
    pub fn reused_ports(&self) -> usize {
        self.reused_ports_after(&[])
    }

    /// How many requests reused the source port of an earlier one or one of `earlier` (the
    /// ports of connections made before the load, e.g. [`crate::http::Spread::ports`]).
    pub fn reused_ports_after(&self, earlier: &[u16]) -> usize {
        let mut seen: std::collections::HashSet<u16> = earlier.iter().copied().collect();
        self.records.iter().filter_map(|r| r.local_port).filter(|p| !seen.insert(*p)).count()
    }

    pub fn describe(&self, r: &Record) -> String {
        let mut what = match &r.outcome {
            Outcome::Served(n) => format!("answered by {n}"),
            Outcome::Failed { stage, error } => format!("FAILED at {stage:?}: {error}"),
        };
        if let Some(e) = self.earlier_use_of_port(r) {
            let by = e.backend().map_or("nobody (failed)".to_string(), |b| format!("answered by {b}"));
            what.push_str(&format!("; its source port was used before by the request of {} ({by})", self.rel(e.start)));
        }
        let port = r.local_port.map_or("-".to_string(), |p| p.to_string());
        format!(
            "[w{} port {port}] {} .. {} ({:.1} ms, started {} UTC) {what}",
            r.worker,
            self.rel(r.start),
            self.rel(r.end),
            secs(r.end - r.start) * 1e3,
            self.wall(r.start)
        )
    }

    /// Failures grouped by stage and error, with counts.
    pub fn failure_reasons(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.failures() {
            if let Outcome::Failed { stage, error } = &r.outcome {
                *m.entry(format!("{stage:?}: {error}")).or_default() += 1;
            }
        }
        m
    }

    /// Requests per backend (and failures) in buckets of `bucket`, one line per bucket.
    pub fn timeline(&self, bucket: Duration) -> String {
        let mut rows: BTreeMap<u64, BTreeMap<String, usize>> = BTreeMap::new();
        let b = bucket.as_millis().max(1) as u64;
        for r in &self.records {
            let k = (r.start.saturating_duration_since(self.t0).as_millis() as u64) / b;
            let name = r.backend().map_or("FAILED".to_string(), str::to_string);
            *rows.entry(k).or_default().entry(name).or_default() += 1;
        }
        let mut s = String::new();
        for (k, m) in rows {
            let cells: Vec<String> = m.iter().map(|(n, c)| format!("{n}={c}")).collect();
            s.push_str(&format!("  +{:>7.3}s {}\n", (k * b) as f64 / 1e3, cells.join(" ")));
        }
        s
    }

    /// Panics unless the load ran until [`Load::stop`] (a bound ending it early would leave
    /// part of the scenario without load).
    #[track_caller]
    pub fn assert_ran_throughout(&self) {
        assert_eq!(self.ended, Ended::Stopped, "the load ended by its own bound ({:?}) before the scenario did:\n{self}", self.opts);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fails = self.failures();
        let span = self.records.last().map_or(Duration::ZERO, |r| r.end.saturating_duration_since(self.t0));
        writeln!(
            f,
            "load on {} from {} UTC: {} requests in {:.1}s ({} answered, {} FAILED), {} workers, pause {:?}, timeout {:?}, ended: {:?}",
            self.addr,
            self.wall(self.t0),
            self.records.len(),
            secs(span),
            self.records.len() - fails.len(),
            fails.len(),
            self.opts.workers,
            self.opts.pause,
            self.opts.timeout,
            self.ended
        )?;
        writeln!(f, "answered per backend: {:?}; {} requests reused the source port of an earlier one", self.by_backend(), self.reused_ports())?;
        if !fails.is_empty() {
            writeln!(f, "failures by reason:")?;
            for (why, n) in self.failure_reasons() {
                writeln!(f, "  {n} x {why}")?;
            }
            writeln!(f, "failed requests (first 30):")?;
            for r in fails.iter().take(30) {
                writeln!(f, "  {}", self.describe(r))?;
            }
        }
        write!(f, "timeline (requests started per 500 ms):\n{}", self.timeline(Duration::from_millis(500)))
    }
}
