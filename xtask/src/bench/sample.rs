//! One measurement: a warm-up, then wrk with the CPU sampled around it.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    contender::{Ctx, Running},
    h2load,
    measure::{self, HostCpu},
    plan::Plan,
    sys,
    wrk::{self, Load, Mode},
};

/// One measurement and the CPU it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub round: usize,
    pub rps: f64,
    #[serde(flatten)]
    pub wrk: wrk::Outcome,
    /// Host CPU (ms) during the run, by kind: all cores, all processes.
    pub host_cpu_ms: CpuSplit,
    /// utime + stime (ms) of the processes in the LB namespace.
    pub balancer_process_ms: f64,
    /// Run time (ns) and runs of xlb's BPF programs, when xlb is the balancer.
    pub bpf_run_ns: Option<u64>,
    pub bpf_runs: Option<u64>,
    /// CPU (ms) used meanwhile by processes that are not the benchmark's: noise.
    pub others_ms: f64,
    /// SYNs the client sent again: connections that waited (a lost SYN costs a second).
    pub syn_retransmits: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuSplit {
    pub busy: f64,
    pub user: f64,
    pub system: f64,
    pub softirq: f64,
    pub irq: f64,
}

impl Run {
    /// `ms` per 1,000 of the run's requests.
    pub fn per_1k(&self, ms: f64) -> f64 {
        ms * 1000.0 / self.wrk.requests.max(1) as f64
    }

    /// Share of all cores that others' processes used during the run.
    pub fn others_percent(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        100.0 * self.others_ms / (self.wrk.seconds * 1000.0 * cores)
    }

    /// Host CPU (ms, all cores) per 1,000 requests.
    pub fn host_ms_per_1k(&self) -> f64 {
        self.per_1k(self.host_cpu_ms.busy)
    }

    /// The balancer's CPU (ms) per 1,000 requests: its processes, plus its BPF programs.
    pub fn balancer_ms_per_1k(&self) -> f64 {
        self.per_1k(self.balancer_process_ms + self.bpf_run_ns.unwrap_or(0) as f64 / 1e6)
    }
}

/// The load generator of a run.
pub enum Loader {
    /// wrk with this script (HTTP/1.1).
    Wrk(PathBuf),
    /// h2load (HTTP/2; keep-alive only).
    H2load,
}

impl Loader {
    /// `caller`: the cgroup wrk runs in (see `Topo::client_cmd`); h2load rows have none.
    fn run(&self, ctx: &Ctx, url: &str, load: Load, mode: Mode, caller: Option<&Path>) -> Result<wrk::Outcome> {
        match self {
            Loader::Wrk(script) => wrk::run(&ctx.topo, script, url, load, mode, caller),
            Loader::H2load => h2load::run(&ctx.topo, url, load),
        }
    }
}

/// A warm-up run (results dropped), then the measured run with CPU samples around it.
pub fn measure(ctx: &Ctx, running: &Running, loader: &Loader, url: &str, mode: Mode, plan: &Plan, round: usize) -> Result<Run> {
    let topo = &ctx.topo;
    // --quick warms a contender up once after its start; the full run before every mode.
    if plan.warmup_seconds > 0 && (!plan.quick || mode == Mode::ALL[0]) {
        loader.run(ctx, url, Load { seconds: plan.warmup_seconds, ..plan.load }, mode, running.caller()).context("warm-up")?;
    }
    let ours = topo.namespaces();
    let others0 = measure::foreign_ticks(&ours);
    let host0 = HostCpu::read()?;
    let lb0 = measure::ns_ticks(&topo.lb);
    // Without BPF statistics the kernel keeps no run times: none rather than zero.
    let timed = running.xlb_pid.filter(|_| ctx.bpf_stats);
    let bpf0 = timed.map(measure::bpf_run_time);
    let syn0 = measure::syn_retransmits(&topo.client)?;
    let out = loader.run(ctx, url, plan.load, mode, running.caller())?;
    let syn_retransmits = measure::syn_retransmits(&topo.client)? - syn0;
    let bpf1 = timed.map(measure::bpf_run_time);
    let lb1 = measure::ns_ticks(&topo.lb);
    let host = HostCpu::read()?.since(&host0);
    let others_ms = measure::foreign_ms(&others0, &measure::foreign_ticks(&ours));
    if out.requests == 0 {
        bail!("no request completed:\n{}", sys::tail(&running.log()));
    }
    let bpf = bpf0.zip(bpf1).map(|(a, b)| (b.0 - a.0, b.1 - a.1));
    Ok(Run {
        round,
        rps: out.rps(),
        host_cpu_ms: CpuSplit {
            busy: host.busy_ms(),
            user: measure::ticks_ms(host.user),
            system: measure::ticks_ms(host.system),
            softirq: measure::ticks_ms(host.softirq),
            irq: measure::ticks_ms(host.irq),
        },
        balancer_process_ms: measure::ns_ms(&lb0, &lb1),
        bpf_run_ns: bpf.map(|b| b.0),
        bpf_runs: bpf.map(|b| b.1),
        others_ms,
        syn_retransmits,
        wrk: out,
    })
}
