//! Passive health's side of the balancer: ejecting after failures, within
//! `max_ejection_percent`, and panic mode when every active backend is out anyway.

use std::time::{Duration, Instant};

use super::balance::{Balancer, Peer};
use crate::plan::PeerState;

impl Balancer {
    /// Records a counted failure of `peer` (one of `peers`); `max_fails` in a row take
    /// it out for `window`, unless more than `max_percent` of the active backends would
    /// then be out. Says whether this one took it out.
    pub fn fail(&self, peer: &Peer, max_fails: u32, window: Duration, max_percent: u32, now: Instant) -> bool {
        let _one_at_a_time = self.eject.lock().unwrap_or_else(|e| e.into_inner());
        let active = self.peers.iter().filter(|q| q.state == PeerState::Active);
        let (n, out) = active.fold((0u64, 0u64), |(n, out), q| (n + 1, out + u64::from(!std::ptr::eq(&**q, peer) && q.stats.is_failed(now))));
        let may_eject = (out + 1) * 100 <= u64::from(max_percent) * n;
        peer.stats.fail(max_fails, window, now, may_eject)
    }

    /// Panic mode (Envoy's): every active backend is out after failures, so ejections
    /// are ignored; trying them beats a certain 503.
    pub(super) fn panicking(&self, now: Instant) -> bool {
        let mut active = self.peers.iter().filter(|q| q.state == PeerState::Active).peekable();
        active.peek().is_some() && active.all(|q| q.stats.is_failed(now))
    }
}
