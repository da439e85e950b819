//! The access log's L4 lines: the flows each expiry pass removed, sampled (`l4_sample`).

use std::{
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    time::{Duration, SystemTime},
};

use crate::{
    access_log::{self, AccessLog},
    dataplane::Ended,
};

/// Logs the flows of an expiry pass at `now_ns` (monotonic) that `l4_sample` keeps.
pub fn log_ended(log: &AccessLog, flows: Vec<Ended>, now_ns: u64) {
    for flow in flows {
        if let Some(entry) = l4_entry(log, &flow, now_ns) {
            log.log(entry);
        }
    }
}

/// The access log line of an L4 flow the expiry pass removed, if `l4_sample` keeps it
/// (by a hash of its client address and port, so a flow is kept or not whatever the pass).
fn l4_entry(log: &AccessLog, flow: &Ended, now_ns: u64) -> Option<access_log::Entry> {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((flow.client, flow.proto));
    if !log.samples_l4(hash) {
        return None;
    }
    let ago = Duration::from_nanos(now_ns.saturating_sub(flow.last_seen));
    Some(access_log::Entry::L4(access_log::L4 {
        time: SystemTime::now() - ago,
        client: flow.client,
        service: flow.service?,
        backend: flow.backend,
        protocol: if flow.proto == lb_common::IPPROTO_UDP { "UDP" } else { "TCP" },
        end: if flow.drained {
            "drained"
        } else if flow.closed {
            "closed"
        } else {
            "idle"
        },
    }))
}

