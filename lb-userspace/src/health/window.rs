//! Passive failure accrual: `max_fails` failures within the window take a backend out
//! for the window (nginx's `max_fails`/`fail_timeout`); the proxy also ends a run of
//! failures on a success, so they must come in a row, and may refuse an ejection
//! (its max ejection percent). One implementation for the shared health state
//! (`health/mod.rs`) and the proxy's own per-backend view (`proxy/select/ewma.rs`).

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct FailureWindow {
    /// Failures inside the current window.
    recent: Vec<Instant>,
    /// The window, as last reported.
    window: Duration,
    /// Out until then.
    down_until: Option<Instant>,
}

impl FailureWindow {
    /// Records a failure and says whether it took the backend out. 0 `max_fails`
    /// disables accrual; failures while out do not extend the time out.
    pub fn fail(&mut self, max_fails: u32, window: Duration, now: Instant) -> bool {
        self.fail_if(max_fails, window, now, true)
    }

    /// [`fail`](Self::fail), taking the backend out only if `may_eject`; refused, the
    /// failures stay counted, so the next one asks again.
    pub fn fail_if(&mut self, max_fails: u32, window: Duration, now: Instant, may_eject: bool) -> bool {
        if max_fails == 0 || self.is_down(now) {
            return false;
        }
        self.window = window;
        self.recent.retain(|&t| now.saturating_duration_since(t) < window);
        self.recent.push(now);
        if self.recent.len() < max_fails as usize {
            return false;
        }
        if !may_eject {
            let extra = self.recent.len() - max_fails as usize;
            self.recent.drain(..extra);
            return false;
        }
        self.recent.clear();
        self.down_until = Some(now + window);
        true
    }

    /// A success: the failures so far were not in a row with the next ones.
    pub fn succeed(&mut self) {
        self.recent.clear();
    }

    pub fn is_down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|u| u > now)
    }

    /// Whether anything of it still matters at `now`: out, or a failure in the window.
    pub fn is_live(&self, now: Instant) -> bool {
        self.is_down(now) || self.recent.iter().any(|&f| now.saturating_duration_since(f) < self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_fails_within_the_window_take_it_out_for_the_window() {
        let (w, t0) = (Duration::from_secs(10), Instant::now());
        let mut f = FailureWindow::default();
        assert!(!f.fail(0, w, t0), "0 disables");
        assert!(!f.fail(2, w, t0));
        assert!(!f.fail(2, w, t0 + w), "the first failure left the window");
        assert!(f.fail(2, w, t0 + w + Duration::from_secs(1)));
        let out = t0 + w + Duration::from_secs(1);
        assert!(f.is_down(out) && !f.fail(2, w, out), "failures while out do not count");
        assert!(!f.is_down(out + w) && !f.is_live(out + w));
    }

    #[test]
    fn a_success_ends_the_run_and_a_refused_ejection_asks_again() {
        let (w, t0) = (Duration::from_secs(10), Instant::now());
        let mut f = FailureWindow::default();
        assert!(!f.fail(2, w, t0));
        f.succeed();
        assert!(!f.fail(2, w, t0), "not in a row with the first");
        assert!(!f.fail_if(2, w, t0, false) && !f.is_down(t0), "refused");
        assert!(f.fail_if(2, w, t0, true) && f.is_down(t0), "the next failure asks again");
    }
}
