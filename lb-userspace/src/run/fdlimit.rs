//! The process's file-descriptor limit. Every proxied request holds two descriptors
//! (client and backend) beside probes, Docker and BPF objects, so the usual soft limit
//! of 1024 would cap the proxy far below its `max_connections`.

use anyhow::Context as _;
use tracing::{info, warn};

use crate::config::Config;

/// Descriptors kept aside for probes, Docker, DNS, BPF objects and the admin endpoint.
const RESERVE: u64 = 256;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.
pub fn raise() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill and read.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error()).context("raising RLIMIT_NOFILE to its hard limit");
        }
        info!(from = before, to = lim.rlim_cur, "raised the file-descriptor limit");
    }
    Ok(lim.rlim_cur)
}

/// The descriptors `config`'s HTTP services may need at once: two a client connection of
/// the largest `max_connections`, and a reserve.
pub fn needed(config: &Config) -> u64 {
    let max = config.services.iter().filter_map(|s| s.http_options()).map(|o| u64::from(o.limits.max_connections)).max();
    max.map_or(0, |m| 2 * m + RESERVE)
}

/// Warns when `config` may need more descriptors than `limit`.
pub fn check(config: &Config, limit: u64) {
    let needed = needed(config);
    if needed > limit {
        warn!(
            limit,
            needed,
            "the file-descriptor limit is below what max_connections may need (two a connection and a reserve): \
             raise the hard RLIMIT_NOFILE (ulimit -Hn, LimitNOFILE=) or lower limits.max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn soft_hard() -> (u64, u64) {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        (lim.rlim_cur, lim.rlim_max)
    }

    #[test]
    fn raises_the_soft_limit_to_the_hard_one() {
        // One below the hard limit: the other tests of this process keep their descriptors.
        let (_, hard) = soft_hard();
        let low = libc::rlimit { rlim_cur: hard - 1, rlim_max: hard };
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0, "lowering the soft limit");
        assert_eq!(soft_hard().0, hard - 1);
        assert_eq!(raise().unwrap(), hard);
        assert_eq!(soft_hard(), (hard, hard));
    }

    #[test]
    fn needs_two_descriptors_a_connection_of_the_largest_limit() {
        let yaml = "services:\n  - name: a\n    port: 80\n    protocol: http\n    http:\n      limits:\n        max_connections: 100\n  - name: b\n    port: 81\n    protocol: http\n  - name: c\n    port: 82\n";
        let c = Config::parse(yaml, Path::new("x.yaml")).unwrap();
        assert_eq!(needed(&c), 2 * 10_000 + RESERVE, "b's default 10000 is the largest");
        let tcp = Config::parse("services:\n  - name: c\n    port: 82\n", Path::new("x.yaml")).unwrap();
        assert_eq!(needed(&tcp), 0, "kernel services hold no descriptors per connection");
    }
}
