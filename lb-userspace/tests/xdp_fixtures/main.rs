//! Packet fixtures for `xlb_xdp`, run through `BPF_PROG_TEST_RUN`. Needs root (BPF,
//! namespaces).
//!
//! A case is an input frame, the XDP action, and the frame and metadata the program must
//! leave. Frames are built from scratch by etherparse, so the checksums a case expects come
//! from an implementation independent of xlb's; `ones` checks the checksum differences
//! that XDP hands to TC with arithmetic of its own.
//!
//! The machinery, in the order it builds on itself:
//! - `net`: the test network (interfaces, addresses, backend hosts);
//! - `ones`, `packet`: checksum arithmetic and the frame builder;
//! - `harness`: a namespace per fixture with the data plane loaded, one test run, and what
//!   the program keeps (counters, connection table);
//! - `services`: the services the cases configure and the backend a new flow must get;
//! - `runner`: `Case`, `Want` and `Fixture::check`, which runs a case and checks it all.
//!
//! The cases, one file per feature: `forward`, `icmp`, `checksum`, `parsing` (with the garbage
//! frames), `tcp_flows`, `ttl`, `removal`, `expiry`, `consistency`, `maglev`, `round_robin`, `random`,
//! `syn_flood`, `neighbors`, `dsr` (direct server return: direct and tunnel forwarding, steering of unknown segments);
//! `differential`: a million generated frames through `xlb_xdp` and `xlb_reply` against a reference model;
//! `socket`: the socket-level programs pass this kernel's verifier.
//!
//! To add a feature's cases: a file here with `mod` below; a table of frames goes in its
//! `pub fn cases() -> Vec<Case>` run by a `#[test] fn frames() { run_table(&cases()) }`
//! and listed in [`all_cases`] (the garbage test mutates every table's frames); a case
//! that needs its own services or several steps is a `#[test]` on its own `Fixture`.
//! Source ports 40001..40036 are taken by the tables (one port per case, so the cases of a
//! table never meet in the connection table).

mod harness;
mod net;
mod ones;
mod packet;
mod runner;
mod services;

mod checksum;
mod consistency;
mod differential;
mod dsr;
mod expiry;
mod forward;
mod icmp;
mod maglev;
mod neighbors;
mod parsing;
mod random;
mod removal;
mod round_robin;
mod socket;
mod syn_flood;
mod tcp_flows;
mod ttl;

/// Every table's cases: the templates of the garbage frames.
fn all_cases() -> Vec<runner::Case> {
    [forward::cases(), checksum::cases(), parsing::cases(), tcp_flows::cases(), ttl::cases()].into_iter().flatten().collect()
}
