//! Automatic certificates (issue 13, ACME) end to end: xlb orders from a real ACME CA,
//! Debian's `pebble`, which validates HTTP-01 against xlb's own HTTP listener (no
//! always-valid shortcut), resolving the name through the test's DNS server.
//!
//! - `issue.rs`: an order, files 0600 in 0700 directories, the chain verified by openssl
//!   against pebble's root; a restart orders nothing; an expiring certificate is renewed;
//!   a TLS service's host is ordered and served (curl over HTTPS, trusting pebble's root),
//!   also with TLS-ALPN-01 answered by xlb's TLS listener;
//! - `nodes.rs`: a name whose lock another process holds is not ordered; two xlb sharing
//!   the state directory order it once; a node answers the challenges of another;
//! - `failures.rs`: the CA down, then a name it refuses: `failed` with the error, retried
//!   with doubling waits, issued once the CA is back.
//!
//! Run with `XLB_BIN=$PWD/target/debug/xlb cargo test -p xlb-tests --test acme --
//! --test-threads=1` as root, with `pebble` and `openssl` installed (`cargo xtask setup`).

mod common;
mod failures;
mod issue;
mod nodes;
mod pebble;
