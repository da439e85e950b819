//! wrk, the HTTP load generator, bounded by its duration, and what it counted.

use std::{process::Command, time::Duration};

/// What wrk counted.
#[derive(Debug, Default)]
pub struct Wrk {
    pub requests: u64,
    pub non_2xx: u64,
    /// connect, read, write, timeout
    pub socket_errors: [u64; 4],
    pub latency_max: Duration,
}

impl Wrk {
    /// Requests that got no 2xx or 3xx answer.
    pub fn failed(&self) -> u64 {
        self.non_2xx + self.socket_errors.iter().sum::<u64>()
    }
}

/// The arguments for `conns` connections on 2 threads for `secs` against `url`, each
/// request given 5 s.
pub fn args(url: &str, conns: u32, secs: u32) -> Vec<String> {
    ["-t", "2", "-c", &conns.to_string(), "-d", &format!("{secs}s"), "--timeout", "5s", "--latency", url].map(str::to_owned).to_vec()
}

/// Runs `cmd` (wrk with [`args`], perhaps in a namespace) and reads its counts.
pub fn run(mut cmd: Command) -> Wrk {
    let out = cmd.output().expect("wrk (apt-get install wrk, or cargo xtask setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let mut w = Wrk::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.contains("requests in") {
            w.requests = words[0].parse().unwrap_or(0);
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = n.trim().parse().unwrap_or(0);
        } else if line.starts_with("Socket errors:") {
            // Socket errors: connect 0, read 1, write 0, timeout 0
            let nums: Vec<u64> = line.split([',', ' ']).filter_map(|x| x.parse().ok()).collect();
            w.socket_errors.copy_from_slice(&nums[..4]);
        } else if words.first() == Some(&"Latency") && words.len() >= 4 {
            w.latency_max = duration(words[3]);
        }
    }
    assert!(w.requests > 0, "wrk made no request: {text}");
    w
}

/// wrk's `315.33ms`, `1.02s`, `812.00us`.
fn duration(s: &str) -> Duration {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let v: f64 = s[..split].parse().unwrap_or(0.0);
    let secs = match &s[split..] {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => 0.0,
    };
    Duration::from_secs_f64(secs)
}
