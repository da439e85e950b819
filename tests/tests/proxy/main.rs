//! xlb's HTTP proxy (lb-userspace/src/proxy) end to end on loopback: the proxy runs
//! in-process, the backends are xlb-testd processes (plus small raw backends written
//! here where a test needs to see request heads, WebSocket, or fixed answers), and the
//! clients are raw TCP, so every byte on the wire is the test's own. No root needed,
//! except `binary`, which runs the xlb binary in namespaces.
//!
//! Figures (distributions, timings) are printed with `-- --nocapture`.
//!
//! The harness: `backends`, `client`, `lb` (the proxy under test), `websocket`. The tests,
//! a file per feature: `access_log`, `balancing`, `routing`, `failures`, `headers`, `bad_input`,
//! `binary`, `differential` (the same bytes through xlb and nginx), `idle_limits` (HTTP/2
//! and tunnels), `slow_clients` (slowloris, slow bodies, per-address limits, greedy
//! bodies), `slow_read` (slowhttptest's slow read), `h2_streams` (HTTP/2 streams per
//! connection), `faults` (a backend paused or resetting under wrk). A new feature's tests go in a file of their own, declared below.

mod backends;
mod client;
mod lb;
mod websocket;

mod access_log;
mod bad_input;
mod balancing;
mod binary;
mod differential;
mod failures;
mod faults;
mod h2_streams;
mod headers;
mod idle_limits;
mod routing;
mod slow_clients;
mod slow_read;
