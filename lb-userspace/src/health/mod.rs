//! Backend health: active probes (TCP connect or HTTP GET) plus passive failures
//! reported by the HTTP proxy, folded into one verdict per backend.
//!
//! Design: the verdicts live inside `Health` (behind a mutex the probe tasks share),
//! so callers just ask `healthy()`. The channel only notifies: it carries each change
//! of the effective verdict, in the order the changes happened, so the owner knows
//! when to rebuild its tables. Must be created inside a tokio runtime.

mod window;

pub use window::FailureWindow;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::AbortHandle,
};
use tracing::{debug, info, warn};

use crate::config::HealthCheck;

/// One backend of one service: the same address may back two services with
/// different checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub service: String,
    pub addr: SocketAddr,
}

/// A target's first verdict, or a change of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub target: Target,
    pub healthy: bool,
}

/// The verdicts of all targets, and the probe tasks that feed them.
pub struct Health {
    shared: Arc<Shared>,
    probes: HashMap<Target, Probe>,
}

/// A running probe, stopped when dropped.
struct Probe {
    check: HealthCheck,
    task: AbortHandle,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    states: Mutex<HashMap<Target, State>>,
    /// Unbounded and fed under the lock, so events keep the order of the changes; a
    /// forwarder task moves them to the owner's channel.
    events: mpsc::UnboundedSender<Event>,
}

#[derive(Debug, Default)]
struct State {
    /// The active probes' verdict; `None` until the first probe ends.
    probe: Option<bool>,
    /// Passive failures, and whether they marked it down.
    fails: FailureWindow,
    /// The effective verdict last announced; `None` before the first.
    announced: Option<bool>,
    /// When it last recovered.
    since: Option<Instant>,
}

impl State {
    fn healthy(&self, now: Instant) -> Option<bool> {
        if self.fails.is_down(now) { Some(false) } else { self.probe }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Target, State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the target's state (if it is still tracked) and announces a
    /// change of its effective verdict.
    fn update(&self, t: &Target, f: impl FnOnce(&mut State)) {
        let mut states = self.lock();
        let Some(s) = states.get_mut(t) else { return };
        f(s);
        let now = Instant::now();
        let verdict = s.healthy(now);
        if verdict == s.announced {
            return;
        }
        let was_down = s.announced == Some(false);
        s.announced = verdict;
        // The first verdict is news too: a new backend waits for it before serving. A
        // passive mark-down ending on a target without probes (back to unknown) is a
        // recovery.
        let healthy = match verdict {
            Some(h) => h,
            None if was_down => true,
            None => return,
        };
        if was_down && healthy {
            s.since = Some(now);
        }
        let _ = self.events.send(Event { target: t.clone(), healthy });
    }
}

impl Health {
    pub fn new(tx: mpsc::Sender<Event>) -> Self {
        let (events, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        });
        Self { shared: Arc::new(Shared { states: Mutex::default(), events }), probes: HashMap::new() }
    }

    /// Makes the running probes match `targets`: starts new ones, stops gone ones
    /// (forgetting their state), restarts ones whose check changed (keeping their
    /// verdict, so a new interval does not reset rise/fall). Announces nothing: the
    /// caller rebuilds its tables after a `set` anyway.
    pub fn set(&mut self, targets: Vec<(Target, HealthCheck)>) {
        let wanted: HashMap<Target, HealthCheck> = targets.into_iter().collect();
        let mut states = self.shared.lock();
        self.probes.retain(|t, p| {
            let keep = wanted.get(t) == Some(&p.check);
            if !wanted.contains_key(t) {
                states.remove(t);
            }
            keep
        });
        for (t, check) in wanted {
            if self.probes.contains_key(&t) {
                continue;
            }
            states.entry(t.clone()).or_default();
            let task = tokio::spawn(probe_loop(self.shared.clone(), t.clone(), check.clone()));
            self.probes.insert(t, Probe { check, task: task.abort_handle() });
        }
    }

    /// `None` while unknown (no probe, or before the first one ends), else the
    /// verdict. A passive mark-down wins over the probes while it lasts.
    pub fn healthy(&self, t: &Target) -> Option<bool> {
        self.shared.lock().get(t).and_then(|s| s.healthy(Instant::now()))
    }

    /// The probes' verdict alone, without passive mark-downs: what the plan uses, as
    /// the HTTP proxy, the only source of those, applies its own ejections.
    pub fn probed(&self, t: &Target) -> Option<bool> {
        self.shared.lock().get(t).and_then(|s| s.probe)
    }

    /// When the target last went from unhealthy to healthy, for slow start. `None`
    /// for one healthy from the start: like nginx, slow start is for recoveries.
    pub fn healthy_since(&self, t: &Target) -> Option<Instant> {
        let states = self.shared.lock();
        states.get(t).filter(|s| s.announced != Some(false)).and_then(|s| s.since)
    }

    /// A failure the HTTP proxy saw. nginx semantics: `max_fails` failures within
    /// `fail_timeout` mark the target down for `fail_timeout`; 0 disables it.
    /// Failures reported while down do not extend it.
    pub fn report_failure(&mut self, t: &Target, max_fails: u32, fail_timeout: Duration) {
        if max_fails == 0 {
            return;
        }
        let now = Instant::now();
        {
            let mut states = self.shared.lock();
            // Targets without probes are forgotten once nothing about them matters:
            // not down (nor awaiting the recovery event), no recent failure, no
            // recent recovery (slow start).
            states.retain(|t, s| {
                self.probes.contains_key(t) || s.announced == Some(false) || s.fails.is_live(now) || s.since.is_some_and(|r| now - r < FORGET_AFTER)
            });
            states.entry(t.clone()).or_default();
        }
        let mut marked = false;
        self.shared.update(t, |s| marked = s.fails.fail(max_fails, fail_timeout, now));
        if marked {
            warn!(service = %t.service, addr = %t.addr, "{max_fails} failures within {fail_timeout:?}: out for {fail_timeout:?}");
            let (shared, t) = (self.shared.clone(), t.clone());
            tokio::spawn(async move {
                tokio::time::sleep(fail_timeout).await;
                shared.update(&t, |_| {});
            });
        }
    }
}

/// How long a recovered target without probes is remembered: longer than any sensible
/// slow start.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Shortest probe interval: a zero one would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Probe period of a target until its first success.
const STARTING_INTERVAL: Duration = Duration::from_millis(100);

/// Probes every interval (±10%), first at once. The first result sets the verdict;
/// after that `rise` successes or `fall` failures in a row flip it. The verdict is
/// read from the shared state, so a restarted probe carries on from the old one's.
async fn probe_loop(shared: Arc<Shared>, t: Target, check: HealthCheck) {
    let interval = check.interval.max(MIN_INTERVAL);
    let mut streak = 0u32;
    let mut last = None;
    // A target that never passed (a container still starting) is probed often, so it
    // serves soon after it listens rather than an interval later.
    let mut passed = false;
    loop {
        let result = match tokio::time::timeout(check.timeout, probe(t.addr, &check)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no answer within {:?}", check.timeout)),
        };
        let ok = result.is_ok();
        passed |= ok;
        streak = if last == Some(ok) { streak.saturating_add(1) } else { 1 };
        last = Some(ok);
        if let Err(e) = &result {
            debug!(service = %t.service, addr = %t.addr, "health probe failed: {e:#}");
        }
        let needed = if ok { check.rise.0 } else { check.fall.0 };
        let mut flipped = false;
        shared.update(&t, |s| {
            if s.probe.is_none() || (s.probe != Some(ok) && streak >= needed) {
                flipped = s.probe != Some(ok);
                s.probe = Some(ok);
            }
        });
        if flipped {
            match &result {
                Ok(()) => info!(service = %t.service, addr = %t.addr, "backend healthy"),
                Err(e) => warn!(service = %t.service, addr = %t.addr, "backend unhealthy: {e:#}"),
            }
        }
        let next = if passed { interval } else { interval.min(STARTING_INTERVAL) };
        tokio::time::sleep(next.mul_f64(rand::random_range(0.9..=1.1))).await;
    }
}

async fn probe(addr: SocketAddr, check: &HealthCheck) -> anyhow::Result<()> {
    let mut conn = TcpStream::connect(addr).await.context("connecting")?;
    let Some(path) = &check.http else {
        return Ok(());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xlb\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.context("sending the request")?;
    let status = read_status(&mut conn).await?;
    if status != check.expect_status {
        bail!("GET {path}: status {status}, expected {}", check.expect_status);
    }
    Ok(())
}

/// The status code of an HTTP/1.x response's status line.
async fn read_status(conn: &mut TcpStream) -> anyhow::Result<u16> {
    let mut buf = Vec::with_capacity(256);
    while !buf.contains(&b'\n') {
        if buf.len() >= 1024 {
            bail!("status line too long");
        }
        if conn.read_buf(&mut buf).await.context("reading the response")? == 0 {
            bail!("connection closed before the status line");
        }
    }
    let line = String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len())]).into_owned();
    let mut parts = line.split_ascii_whitespace();
    match (parts.next(), parts.next().map(str::parse)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/1.") => Ok(code),
        _ => bail!("bad status line {:?}", line.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv4Addr,
        sync::atomic::{AtomicU16, Ordering},
    };

    use tokio::{net::TcpListener, task::JoinHandle, time::timeout};

    use super::*;
    use crate::config::Positive;

    fn check(http: Option<&str>, rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            http: http.map(Into::into),
            expect_status: 200,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            rise: Positive(rise),
            fall: Positive(fall),
        }
    }

    fn target(addr: SocketAddr) -> Target {
        Target { service: "web".into(), addr }
    }

    async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
        timeout(Duration::from_secs(2), rx.recv()).await.expect("no event in time").expect("channel closed")
    }

    /// Accepts and drops connections until aborted.
    fn accept(l: TcpListener) -> JoinHandle<()> {
        tokio::spawn(async move { while l.accept().await.is_ok() {} })
    }

    #[tokio::test]
    async fn tcp_probe_follows_a_listener() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let t = target(l.local_addr().unwrap());
        let server = accept(l);
        let (tx, mut rx) = mpsc::channel(8);
        let mut h = Health::new(tx);
        h.set(vec![(t.clone(), check(None, 2, 3))]);
        // The first verdict is announced: callers wait for it before sending traffic.
        assert_eq!(next(&mut rx).await, Event { target: t.clone(), healthy: true });
        assert_eq!(h.healthy(&t), Some(true));
        assert_eq!(h.healthy_since(&t), None);

        server.abort();
        let _ = server.await;
        let closed = Instant::now();
        assert_eq!(next(&mut rx).await, Event { target: t.clone(), healthy: false });
        // Three failures: the first at once, two more about an interval apart.
        assert!(closed.elapsed() >= Duration::from_millis(80), "{:?}", closed.elapsed());
        assert_eq!(h.healthy(&t), Some(false));

        let server = accept(TcpListener::bind(t.addr).await.unwrap());
        let reopened = Instant::now();
        assert_eq!(next(&mut rx).await, Event { target: t.clone(), healthy: true });
        assert!(h.healthy_since(&t).is_some_and(|s| s > reopened));

        // A changed check restarts the probe: this server closes without answering.
        h.set(vec![(t.clone(), check(Some("/"), 1, 1))]);
        assert_eq!(next(&mut rx).await, Event { target: t.clone(), healthy: false });

        // Dropping the target stops its probe and forgets it.
        h.set(vec![]);
        assert_eq!(h.healthy(&t), None);
        server.abort();
        assert!(timeout(Duration::from_millis(300), rx.recv()).await.is_err(), "a stopped probe still reports");
    }

    #[tokio::test]
    async fn http_probe_wants_the_expected_status() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let t = target(l.local_addr().unwrap());
        let status = Arc::new(AtomicU16::new(503));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (st, seen) = (status.clone(), paths.clone());
        let server = tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.lock().unwrap().push(req.lines().next().unwrap_or_default().to_owned());
                let code = st.load(Ordering::Relaxed);
                let _ = c.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let (tx, mut rx) = mpsc::channel(8);
        let mut h = Health::new(tx);
        h.set(vec![(t.clone(), check(Some("/healthz"), 2, 1))]);
        // The first probe's 503 excludes the new backend at once.
        assert_eq!(next(&mut rx).await, Event { target: t.clone(), healthy: false });

        status.store(200, Ordering::Relaxed);
        assert_eq!(next(&mut rx).await, Event { target: t.clone(), healthy: true });
        assert_eq!(paths.lock().unwrap()[0], "GET /healthz HTTP/1.1");
        server.abort();
    }

    #[tokio::test]
    async fn nothing_listening_is_unhealthy_at_once() {
        let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap().local_addr().unwrap();
        let t = target(addr);
        let (tx, mut rx) = mpsc::channel(8);
        let mut h = Health::new(tx);
        let started = Instant::now();
        h.set(vec![(t.clone(), check(None, 2, 3))]);
        assert_eq!(next(&mut rx).await, Event { target: t.clone(), healthy: false });
        assert!(started.elapsed() < Duration::from_millis(200), "{:?}", started.elapsed());
        assert_eq!(h.healthy(&t), Some(false));
    }

    #[tokio::test]
    async fn passive_failures_within_the_window() {
        let t = target("127.0.0.1:9".parse().unwrap());
        let (tx, mut rx) = mpsc::channel(8);
        let mut h = Health::new(tx);
        let window = Duration::from_millis(200);
        h.report_failure(&t, 3, window);
        h.report_failure(&t, 3, window);
        // Those two age out of the window: two more are not enough.
        tokio::time::sleep(window + Duration::from_millis(20)).await;
        h.report_failure(&t, 3, window);
        h.report_failure(&t, 3, window);
        assert_eq!(h.healthy(&t), None);
        assert!(rx.try_recv().is_err());

        h.report_failure(&t, 3, window);
        let down = Instant::now();
        assert_eq!(h.healthy(&t), Some(false));
        assert_eq!(next(&mut rx).await, Event { target: t.clone(), healthy: false });
        assert_eq!(next(&mut rx).await, Event { target: t.clone(), healthy: true });
        assert!(down.elapsed() >= window);
        assert_eq!(h.healthy(&t), None);
        assert!(h.healthy_since(&t).is_some());
    }
}
