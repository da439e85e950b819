//! What the proxy measures about each backend: requests in flight, moving averages of
//! response times, peak-EWMA latency, and recent failures (local passive health).

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{health::FailureWindow, proxy::workers::PerWorker};

/// Weight of a new sample in the `least_time` moving averages:
/// `avg ← avg + α·(sample − avg)`, α = 1/4 (the first sample is taken as is).
pub const LEAST_TIME_ALPHA: f64 = 0.25;

/// Peak-EWMA cost of a backend with no sample yet (Linkerd's default RTT).
pub const PEAK_EWMA_DEFAULT_RTT: Duration = Duration::from_millis(30);

/// A moving average (exponentially weighted by sample count).
#[derive(Debug, Clone, Copy, Default)]
pub struct MovingAvg(Option<f64>);

impl MovingAvg {
    pub fn add(&mut self, sample: f64) {
        self.0 = Some(match self.0 {
            None => sample,
            Some(a) => a + LEAST_TIME_ALPHA * (sample - a),
        });
    }

    pub fn get(&self) -> Option<f64> {
        self.0
    }
}

/// Peak-sensitive EWMA of latency (Finagle's `PeakEwma`, Linkerd's balancer):
/// a sample above the estimate replaces it at once (the peak); one below decays the
/// estimate towards it with weight `w = exp(−Δt/τ)` on the old estimate, Δt the time
/// since the previous sample and τ the decay time:
/// `est ← rtt` if `rtt > est`, else `est ← est·w + rtt·(1 − w)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakEwma {
    est: Option<f64>,
    stamp: Option<Instant>,
}

impl PeakEwma {
    pub fn add(&mut self, rtt: f64, now: Instant, decay: Duration) {
        self.est = Some(match (self.est, self.stamp) {
            (Some(est), Some(stamp)) if rtt <= est => {
                let dt = now.saturating_duration_since(stamp).as_secs_f64();
                let w = (-dt / decay.as_secs_f64().max(1e-9)).exp();
                est * w + rtt * (1.0 - w)
            }
            _ => rtt,
        });
        self.stamp = Some(now);
    }

    /// The estimate in seconds, or the default RTT before any sample.
    pub fn get(&self) -> f64 {
        self.est.unwrap_or(PEAK_EWMA_DEFAULT_RTT.as_secs_f64())
    }
}

/// One backend's counters. Shared by all requests to it and kept across config
/// updates (by service and backend name), so a reload does not forget them.
///
/// What every request writes is kept off the lines every pick reads: the in-flight
/// counts (global: `max_conns` and `least_conn` count every worker's requests) on lines
/// of their own; the moving averages and the request count per worker, so a response
/// updates its own worker's lines without a lock another core takes (as nginx's workers
/// each keep theirs); whether the backend is out after failures, one atomic load.
#[derive(Debug)]
pub struct Stats {
    flight: InFlightCounts,
    /// What start times and `down_until` count from: they fit a `u64` of nanoseconds.
    epoch: Instant,
    /// Out after failures until then (ns since `epoch`; 0: not out). Mirrors `fails`,
    /// written under its lock when a failure ejects, read by every pick without it.
    down_until: AtomicU64,
    fails: Mutex<FailureWindow>,
    /// A failure may be counted in `fails`: a success then takes the lock to end the
    /// run; otherwise it costs one atomic load.
    failing: AtomicBool,
    local: PerWorker<Local>,
}

/// Requests in flight, written by every request of every worker.
#[derive(Debug, Default)]
#[repr(align(128))]
struct InFlightCounts {
    /// Sent and not finished (response body not yet ended).
    active: AtomicU32,
    /// Sum of the start times (ns since `epoch`) of the requests in flight, for
    /// `least_time ... inflight`.
    inflight_sum: AtomicU64,
}

/// One worker's view of a backend: its samples only.
#[derive(Debug, Default)]
struct Local {
    times: Mutex<Times>,
    /// Requests sent to it, all time (for tests and status).
    requests: AtomicU64,
}

#[derive(Debug, Default)]
struct Times {
    header: MovingAvg,
    last_byte: MovingAvg,
    peak: PeakEwma,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            flight: InFlightCounts::default(),
            epoch: Instant::now(),
            down_until: AtomicU64::default(),
            fails: Mutex::default(),
            failing: AtomicBool::new(false),
            local: PerWorker::new(Local::default),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    pub fn active(&self) -> u32 {
        self.flight.active.load(Ordering::Relaxed)
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        let started = Instant::now();
        let ns = self.ns(started);
        self.flight.active.fetch_add(1, Ordering::Relaxed);
        self.flight.inflight_sum.fetch_add(ns, Ordering::Relaxed);
        self.local.get().requests.fetch_add(1, Ordering::Relaxed);
        InFlight { stats: self.clone(), ns, started }
    }

    /// Requests sent to it, all time, by every worker.
    pub fn requests(&self) -> u64 {
        self.local.all().map(|l| l.requests.load(Ordering::Relaxed)).sum()
    }

    /// Mean age of the requests in flight, in seconds (0 with none).
    pub fn inflight_age(&self, now: Instant) -> f64 {
        let n = self.flight.active.load(Ordering::Relaxed);
        if n == 0 {
            return 0.0;
        }
        let mean_start = self.flight.inflight_sum.load(Ordering::Relaxed) / u64::from(n);
        self.ns(now).saturating_sub(mean_start) as f64 / 1e9
    }

    fn times(&self) -> MutexGuard<'_, Times> {
        lock(&self.local.get().times)
    }

    pub fn record_header(&self, took: Duration, now: Instant, decay: Duration) {
        let mut t = self.times();
        t.header.add(took.as_secs_f64());
        t.peak.add(took.as_secs_f64(), now, decay);
    }

    pub fn record_last_byte(&self, took: Duration) {
        self.times().last_byte.add(took.as_secs_f64());
    }

    /// Moving average of the time to the response head, in seconds, as this worker saw it.
    pub fn avg_header(&self) -> Option<f64> {
        self.times().header.get()
    }

    pub fn avg_last_byte(&self) -> Option<f64> {
        self.times().last_byte.get()
    }

    pub fn peak_ewma(&self) -> f64 {
        self.times().peak.get()
    }

    /// Records a failure; `max_fails` of them in a row within `window` take the
    /// backend out for `window`, if `may_eject` (see `Balancer::fail`). Says whether
    /// this one did.
    pub fn fail(&self, max_fails: u32, window: Duration, now: Instant, may_eject: bool) -> bool {
        self.failing.store(true, Ordering::Relaxed);
        let mut fails = lock(&self.fails);
        let ejected = fails.fail_if(max_fails, window, now, may_eject);
        if ejected {
            self.down_until.store(self.ns(now + window).max(1), Ordering::Relaxed);
        }
        ejected
    }

    /// Records an answer: the failures before it were not in a row with later ones.
    /// Without failures it only reads `failing`: every answer would otherwise write
    /// the line every pick reads.
    pub fn succeed(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            lock(&self.fails).succeed();
        }
    }

    /// Out after failures, for now.
    pub fn is_failed(&self, now: Instant) -> bool {
        self.down_until.load(Ordering::Relaxed) > self.ns(now)
    }
}

/// A request in flight; finishing (dropping) it updates the counters.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<Stats>,
    ns: u64,
    started: Instant,
}

impl InFlight {
    pub fn started(&self) -> Instant {
        self.started
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.flight.active.fetch_sub(1, Ordering::Relaxed);
        self.stats.flight.inflight_sum.fetch_sub(self.ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average() {
        let mut a = MovingAvg::default();
        assert_eq!(a.get(), None);
        a.add(8.0);
        a.add(0.0);
        assert_eq!(a.get(), Some(6.0));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let tau = Duration::from_secs(10);
        let mut p = PeakEwma::default();
        assert_eq!(p.get(), PEAK_EWMA_DEFAULT_RTT.as_secs_f64());
        p.add(0.010, t0, tau);
        p.add(0.100, t0 + Duration::from_millis(1), tau);
        assert_eq!(p.get(), 0.100, "a peak replaces the estimate");
        // One τ later a low sample weighs 1 − e⁻¹ ≈ 63%.
        p.add(0.0, t0 + Duration::from_millis(1) + tau, tau);
        assert!((p.get() - 0.100 * (-1f64).exp()).abs() < 1e-9, "{}", p.get());
    }

    #[test]
    fn in_flight_and_failures() {
        let s = Arc::new(Stats::default());
        let a = s.start();
        let b = s.start();
        assert_eq!(s.active(), 2);
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.inflight_age(Instant::now()) >= 0.02);
        drop((a, b));
        assert_eq!((s.active(), s.inflight_age(Instant::now())), (0, 0.0));

        let now = Instant::now();
        let w = Duration::from_secs(1);
        assert!(!s.fail(2, w, now, true));
        s.succeed();
        assert!(!s.fail(2, w, now, true), "a success ended the run");
        assert!(s.fail(2, w, now, true));
        assert!(s.is_failed(now) && !s.is_failed(now + w));
        assert!(!s.fail(0, w, now, true));
    }
}
