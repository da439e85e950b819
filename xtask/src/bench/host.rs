//! The machine the benchmark runs on, and how quiet it was.
use std::{fs, time::Duration};

use serde::Serialize;

use super::{measure::HostCpu, sys};

/// The machine, and how quiet it was.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    /// Share of all cores busy in the second before the benchmark started.
    pub busy_percent: f64,
    pub load_average: String,
    /// Network namespaces that are not the benchmark's (e.g. tests running alongside).
    pub other_namespaces: usize,
}

impl Host {
    /// Reads the machine's description and samples its CPU for one second.
    pub fn probe() -> Host {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let before = HostCpu::read().ok();
        std::thread::sleep(Duration::from_secs(1));
        let busy_percent = before
            .zip(HostCpu::read().ok())
            .map(|(a, b)| {
                let d = b.since(&a);
                100.0 * (d.total - d.idle) as f64 / d.total.max(1) as f64
            })
            .unwrap_or(0.0);
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
            .unwrap_or_else(|| "unknown CPU".into());
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let mine = sys::tag();
        let other_namespaces = sys::sh(std::process::Command::new("ip").args(["netns", "list"]))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with(&mine))
            .count();
        Host {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            busy_percent,
            load_average: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            other_namespaces,
        }
    }
}
