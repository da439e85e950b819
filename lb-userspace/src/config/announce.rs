//! `announce:`: VIPs handed to a routing daemon (BIRD, FRR, GoBGP...) through a kernel
//! routing table of their own, which the daemon exports (by BGP, to the routers in front
//! of several xlb nodes). xlb speaks no routing protocol itself (see `announce` and
//! docs/scale-out.md).

use serde::{Deserialize, Deserializer};

use super::units::Checked;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// The kernel routing table that holds a /32 (/128) route for each VIP with a healthy
    /// backend: a table of its own, which no `ip rule` looks up, read by the daemon only.
    #[serde(deserialize_with = "table")]
    pub table: u32,
}

/// 1 to 2^32-1, but not the kernel's own tables: `main` (254) and `local` (255) route the
/// host's packets, and `default` (253) too.
fn table<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_u32(Checked(|v: u32| match v {
        0 => Err("table 0: expected a table number of 1 or more".to_owned()),
        253..=255 => Err(format!("table {v} is one of the kernel's own (default, main, local): give a table of its own, e.g. 100")),
        v => Ok(v),
    }))
}
