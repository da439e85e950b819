//! The latest config reloads and what came of each, for the dashboard.

use std::collections::VecDeque;

use super::snapshot::{ReloadEvent, unix_ms};

/// How many reloads the dashboard is shown.
const KEPT: usize = 20;

#[derive(Debug, Default, Clone)]
pub struct Reloads(VecDeque<ReloadEvent>);

/// What came of a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// The file did not parse, or did not fit the data plane.
    Rejected,
    /// Its changes could not be applied; the previous config was put back.
    RolledBack,
}

impl Reloads {
    pub fn record(&mut self, outcome: Outcome, detail: String) {
        if self.0.len() == KEPT {
            self.0.pop_front();
        }
        let outcome = match outcome {
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
            Outcome::RolledBack => "rolled_back",
        };
        self.0.push_back(ReloadEvent { at_ms: unix_ms(), outcome: outcome.to_owned(), detail });
    }

    /// The latest reloads, oldest first.
    pub fn list(&self) -> Vec<ReloadEvent> {
        self.0.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_in_order() {
        let mut r = Reloads::default();
        for i in 0..KEPT + 3 {
            r.record(if i % 2 == 0 { Outcome::Applied } else { Outcome::Rejected }, format!("n{i}"));
        }
        let l = r.list();
        assert_eq!(l.len(), KEPT);
        assert_eq!((l[0].detail.as_str(), l[0].outcome.as_str()), ("n3", "rejected"));
        assert_eq!(l.last().map(|e| e.detail.as_str()), Some(format!("n{}", KEPT + 2).as_str()));
    }
}
