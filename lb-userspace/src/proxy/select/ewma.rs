//! What the proxy measures about each backend: requests in flight, moving averages of
//! response times, peak-EWMA latency, and recent failures (local passive health).

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::health::FailureWindow;

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
#[derive(Debug)]
pub struct Stats {
    /// Requests in flight: sent and not finished (response body not yet ended).
    active: AtomicU32,
    /// What `inflight_sum` counts from: start times fit a `u64` of nanoseconds.
    epoch: Instant,
    /// Sum of the start times (ns since `epoch`) of the requests in flight, for
    /// `least_time ... inflight`.
    inflight_sum: AtomicU64,
    times: Mutex<Times>,
    fails: Mutex<FailureWindow>,
    /// A failure may be counted in `fails`: a success then takes the lock to end the
    /// run; otherwise it costs one atomic load.
    failing: AtomicBool,
    /// Requests sent to it, all time (for tests and status).
    pub requests: AtomicU64,
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
            active: AtomicU32::default(),
            epoch: Instant::now(),
            inflight_sum: AtomicU64::default(),
            times: Mutex::default(),
            fails: Mutex::default(),
            failing: AtomicBool::new(false),
            requests: AtomicU64::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        let started = Instant::now();
        let ns = started.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.active.fetch_add(1, Ordering::Relaxed);
        self.inflight_sum.fetch_add(ns, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight { stats: self.clone(), ns, started }
    }

    /// Mean age of the requests in flight, in seconds (0 with none).
    pub fn inflight_age(&self, now: Instant) -> f64 {
        let n = self.active.load(Ordering::Relaxed);
        if n == 0 {
            return 0.0;
        }
        let mean_start = self.inflight_sum.load(Ordering::Relaxed) / u64::from(n);
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        now_ns.saturating_sub(mean_start) as f64 / 1e9
    }

    pub fn record_header(&self, took: Duration, now: Instant, decay: Duration) {
        let mut t = lock(&self.times);
        t.header.add(took.as_secs_f64());
        t.peak.add(took.as_secs_f64(), now, decay);
    }

    pub fn record_last_byte(&self, took: Duration) {
        lock(&self.times).last_byte.add(took.as_secs_f64());
    }

    /// Moving average of the time to the response head, in seconds.
    pub fn avg_header(&self) -> Option<f64> {
        lock(&self.times).header.get()
    }

    pub fn avg_last_byte(&self) -> Option<f64> {
        lock(&self.times).last_byte.get()
    }

    pub fn peak_ewma(&self) -> f64 {
        lock(&self.times).peak.get()
    }

    /// Records a failure; `max_fails` of them in a row within `window` take the
    /// backend out for `window`, if `may_eject` (see `Balancer::fail`). Says whether
    /// this one did.
    pub fn fail(&self, max_fails: u32, window: Duration, now: Instant, may_eject: bool) -> bool {
        self.failing.store(true, Ordering::Relaxed);
        lock(&self.fails).fail_if(max_fails, window, now, may_eject)
    }

    /// Records an answer: the failures before it were not in a row with later ones.
    pub fn succeed(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            lock(&self.fails).succeed();
        }
    }

    /// Out after failures, for now.
    pub fn is_failed(&self, now: Instant) -> bool {
        lock(&self.fails).is_down(now)
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
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.stats.inflight_sum.fetch_sub(self.ns, Ordering::Relaxed);
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
