//! Passive failure accrual, nginx's `max_fails`/`fail_timeout`: `max_fails` failures
//! within the window take a backend out for the window. One implementation for the
//! shared health state (`health/mod.rs`) and the proxy's own per-backend view
//! (`proxy/ewma.rs`), so the two never disagree on when a backend is out.

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
        if max_fails == 0 || self.is_down(now) {
            return false;
        }
        self.window = window;
        self.recent.retain(|&t| now.saturating_duration_since(t) < window);
        self.recent.push(now);
        if self.recent.len() < max_fails as usize {
            return false;
        }
        self.recent.clear();
        self.down_until = Some(now + window);
        true
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
}
