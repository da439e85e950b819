//! The benchmark's options, and what they come to.
use serde::Serialize;

use super::wrk::Load;

#[derive(clap::Args)]
pub struct Options {
    /// A short run (about 3 minutes instead of about 13): 2 s per measurement, a warm-up
    /// only after each start (not before the second mode), the scale test in one round,
    /// fewer kernel test runs and Docker containers.
    #[arg(long)]
    quick: bool,
    /// Rounds; the contenders take turns in each [default: 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measurement [default: 10, 2 with --quick].
    #[arg(long)]
    seconds: Option<u64>,
    /// Only these contenders, comma-separated; the two direct runs (the references) always
    /// run. Ids: direct, direct-xdp, xlb-l4, xlb-http, nginx-http, nginx-stream,
    /// haproxy-http, haproxy-tcp, xlb-https, nginx-https, xlb-h2c, nginx-h2c, xlb-h2, nginx-h2,
    /// xlb-socket, xlb-socket-pinned, direct-spread, nginx-local.
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    pub only: Vec<String>,
    /// Skip the micro-benchmarks (kernel programs, Maglev, map sync, Docker event to map
    /// update).
    #[arg(long)]
    pub no_micro: bool,
    /// Skip the 1,000-service scale test.
    #[arg(long)]
    pub no_scale: bool,
    /// Measure this xlb binary instead of building the working tree's (an A/B of two
    /// builds on the same host, one run after the other).
    #[arg(long, value_name = "PATH")]
    pub xlb: Option<std::path::PathBuf>,
    /// Do not time xlb's BPF programs (timing costs two clock reads per program run; xlb's
    /// balancer CPU then shows its process alone).
    #[arg(long)]
    pub no_bpf_stats: bool,
}

/// What the options come to.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub warmup_seconds: u64,
    pub load: Load,
    pub scale_rounds: usize,
    pub backends: usize,
}

impl Plan {
    pub fn new(o: &Options) -> Plan {
        let seconds = o.seconds.unwrap_or(if o.quick { 2 } else { 10 }).max(1);
        Plan {
            quick: o.quick,
            rounds: o.rounds.unwrap_or(3).max(1),
            warmup_seconds: if o.quick { 1 } else { 2 },
            // Three threads so that the direct run has one per backend; 48 connections keep
            // every contender busy without queueing in wrk.
            load: Load { threads: 3, connections: 48, seconds },
            scale_rounds: if o.quick { 1 } else { 3 },
            backends: 3,
        }
    }
}

impl Options {
    /// The options as the command that gave them (for the report).
    pub fn command_line(&self) -> String {
        let mut c = String::from("cargo xtask bench");
        if self.quick {
            c.push_str(" --quick");
        }
        if let Some(r) = self.rounds {
            c.push_str(&format!(" --rounds {r}"));
        }
        if let Some(s) = self.seconds {
            c.push_str(&format!(" --seconds {s}"));
        }
        if !self.only.is_empty() {
            c.push_str(&format!(" --only {}", self.only.join(",")));
        }
        if self.no_micro {
            c.push_str(" --no-micro");
        }
        if self.no_scale {
            c.push_str(" --no-scale");
        }
        if let Some(xlb) = &self.xlb {
            c.push_str(&format!(" --xlb {}", xlb.display()));
        }
        if self.no_bpf_stats {
            c.push_str(" --no-bpf-stats");
        }
        c
    }
}
