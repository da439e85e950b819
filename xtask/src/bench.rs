//! `cargo xtask bench [--quick]`: xlb against the physical limit and against the usual
//! balancers, on this machine, with the same backends and the same client.
//!
//! Everything runs in network namespaces the benchmark creates (see `bench/topo.rs`):
//! wrk in a client namespace, the balancer in an LB namespace that routes between the
//! client and three backend namespaces, each running nginx with a small body served from
//! memory. nginx rather than the tests' `xlb-testd`: it is event-driven (xlb-testd starts a
//! thread per connection, which would make the new-connection runs measure thread creation)
//! and it is nobody's contender here, so it favours none.
//!
//! The contenders take turns within each round (the order rotates from round to round), and
//! each is measured with keep-alive and with a new connection per request. Reported: the
//! median over the rounds with the spread (min–max) of requests per second, latency
//! percentiles, and CPU time per 1,000 requests (see `bench/measure.rs` for how). Results go
//! to `bench/results/` as Markdown, JSON and a PNG chart (timestamped, and `latest.*`).
mod chart;
mod contender;
mod docker_event;
mod measure;
mod report;
mod scale;
mod sys;
mod topo;
mod wrk;
mod xdp_pass;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use self::{
    contender::{Ctx, Kind, Running},
    measure::HostCpu,
    topo::{BACKEND_PORT, Topo},
    wrk::{Load, Mode},
};
use crate::{apt, build, cmd};

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
    /// haproxy-http, haproxy-tcp.
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    only: Vec<String>,
    /// Skip the micro-benchmarks (kernel programs, Maglev, map sync, Docker event to map
    /// update).
    #[arg(long)]
    no_micro: bool,
    /// Skip the 1,000-service scale test.
    #[arg(long)]
    no_scale: bool,
    /// Do not time xlb's BPF programs (timing costs two clock reads per program run; xlb's
    /// balancer CPU then shows its process alone).
    #[arg(long)]
    no_bpf_stats: bool,
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
    fn new(o: &Options) -> Plan {
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

/// Debian packages the benchmark runs (the kernel tools come with `cargo xtask setup`).
const PACKAGES: &[&str] = &["wrk", "nginx", "libnginx-mod-stream", "haproxy", "curl", "iproute2", "fonts-dejavu-core"];

pub fn bench(opts: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark needs root (network namespaces, XDP): run `cargo xtask bench` as root");
    }
    let only: Vec<Kind> = opts
        .only
        .iter()
        .map(|id| Kind::from_id(id).with_context(|| format!("--only: no contender {id:?} (one of: {})", ids())))
        .collect::<Result<_>>()?;
    let plan = Plan::new(opts);
    let building = Instant::now();
    ensure_packages()?;
    sys::remove_stale();
    let xlb = build::build(true)?;
    // A kernel-bench that no longer builds (the xlb library moved on) costs the micro-figures,
    // not the whole benchmark.
    let kernel_bench = if opts.no_micro { None } else { Some(build_kernel_bench(&xlb)) };
    // The time budget counts from here: builds are incremental and shared with the tests.
    eprintln!("bench: packages and builds took {:.0} s", building.elapsed().as_secs_f64());
    let clock = Instant::now();
    let started = SystemTime::now();

    eprintln!("bench: measuring how busy the host is before starting (1 s)");
    let host = report::Host::probe();
    if host.busy_percent > 10.0 {
        eprintln!(
            "bench: warning: the host is {:.0}% busy before the benchmark starts: figures will be noisy",
            host.busy_percent
        );
    }

    let micro = kernel_bench.map(|bin| {
        eprintln!("bench: kernel micro-benchmarks");
        bin.and_then(|bin| micro(&bin, plan.quick)).unwrap_or_else(|err| {
            eprintln!("bench: kernel micro-benchmarks failed: {err:#}");
            serde_json::json!({ "error": format!("{err:#}") })
        })
    });

    let dir = std::env::temp_dir().join(format!("xlb-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    eprintln!("bench: building the namespaces (files in {})", dir.display());
    let topo = Topo::build(&dir, plan.backends)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ctx = Ctx { topo, xlb, cores, bpf_stats: !opts.no_bpf_stats };
    let scripts = Scripts::write(&ctx.topo)?;

    let mut unavailable: HashMap<Kind, String> = HashMap::new();
    if let Err(why) = contender::xlb_http_available(&ctx) {
        unavailable.insert(Kind::XlbHttp, format!("not available: `xlb check` rejects a service with `protocol: http` ({why})"));
    }
    let kinds: Vec<Kind> =
        Kind::ALL.into_iter().filter(|k| k.is_direct() || only.is_empty() || only.contains(k)).collect();

    let mut runs: Vec<report::Measured> = Vec::new();
    let mut memory = None;
    let total = plan.rounds * kinds.len() * Mode::ALL.len();
    let mut done = 0;
    for round in 0..plan.rounds {
        let mut order = kinds.clone();
        order.rotate_left(round % kinds.len());
        for kind in order {
            if unavailable.contains_key(&kind) {
                done += Mode::ALL.len();
                continue;
            }
            let running = match contender::start(kind, &ctx) {
                Ok(r) => r,
                Err(err) => {
                    eprintln!("bench: {} could not be started: {err:#}", kind.label());
                    let why = if kind == Kind::XlbHttp { "not available" } else { "failed to start" };
                    unavailable.insert(kind, format!("{why}: {}", first_line(&format!("{err:#}"))));
                    done += Mode::ALL.len();
                    continue;
                }
            };
            for mode in Mode::ALL {
                done += 1;
                let result = measure(&ctx, &running, &scripts.for_kind(kind), &url(&ctx.topo, kind), mode, &plan, round);
                match result {
                    Ok(run) => {
                        progress(clock, done, total, &format!("round {}/{} {}", round + 1, plan.rounds, kind.label()), mode, &run);
                        runs.push(report::Measured { kind, mode, run });
                    }
                    Err(err) => eprintln!("bench: {} {}: {err:#}", kind.label(), mode.short()),
                }
            }
            if kind == Kind::XlbL4 && memory.is_none() {
                memory = running.xlb_pid.map(scale::Memory::of);
            }
            if let Err(err) = running.stop() {
                eprintln!("bench: stopping {}: {err:#}", kind.label());
            }
        }
    }

    let scale = if opts.no_scale {
        None
    } else {
        Some(run_scale(&ctx, &scripts, &plan, clock).unwrap_or_else(|err| {
            eprintln!("bench: scale test failed: {err:#}");
            report::Scale::failed(format!("{err:#}"))
        }))
    };

    let docker_events = (!opts.no_micro).then(|| {
        let reps = if plan.quick { 3 } else { 10 };
        eprintln!("bench: Docker event to map update, {reps} containers started and stopped");
        docker_event::measure(&ctx, reps).unwrap_or_else(|err| {
            eprintln!("bench: Docker event measurement failed: {err:#}");
            docker_event::DockerEvents::failed(format!("{err:#}"))
        })
    });

    let results = report::Results::new(report::Input {
        started,
        seconds: clock.elapsed().as_secs_f64(),
        command: command_line(opts),
        host,
        plan: plan.clone(),
        versions: versions(&ctx.xlb),
        kinds,
        unavailable,
        runs,
        xlb_memory: memory,
        micro,
        docker_events,
        scale,
    });
    drop(ctx);
    let written = report::write(&results, &results_dir())?;
    let _ = fs::remove_dir_all(&dir);
    println!("{}", results.markdown_table());
    for path in written {
        eprintln!("bench: wrote {}", path.display());
    }
    eprintln!("bench: done in {:.0} s", clock.elapsed().as_secs_f64());
    Ok(())
}

fn ids() -> String {
    Kind::ALL.map(Kind::id).join(", ")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// Installs what is missing. Debian starts the nginx and HAProxy services it installs on
/// hosts that run systemd: the benchmark runs its own instances in namespaces, so services
/// it caused to be installed are stopped and disabled again.
fn ensure_packages() -> Result<()> {
    let had = ["nginx", "haproxy"].map(|p| cmd::which(p).is_some());
    apt::ensure(PACKAGES)?;
    if Path::new("/run/systemd/system").exists() {
        for (name, had) in ["nginx", "haproxy"].into_iter().zip(had) {
            if !had {
                let _ = cmd::probe(Command::new("systemctl").args(["disable", "--now", name]));
            }
        }
    }
    Ok(())
}

/// Builds `xlb-kernel-bench` (the xtask with `--features kernel-bench`, release), which
/// lands next to the release `xlb`.
fn build_kernel_bench(xlb: &Path) -> Result<PathBuf> {
    let mut cargo = build::cargo();
    cargo.args(["build", "--release", "--package", "xtask", "--features", "kernel-bench", "--bin", "xlb-kernel-bench"]);
    cmd::run(&mut cargo)?;
    Ok(xlb.with_file_name("xlb-kernel-bench"))
}

fn micro(bin: &Path, quick: bool) -> Result<serde_json::Value> {
    let mut c = Command::new(bin);
    if quick {
        c.arg("--quick");
    }
    let out = c.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("starting {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", bin.display(), out.status);
    }
    serde_json::from_slice(&out.stdout).context("parsing xlb-kernel-bench's output")
}

fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").join("bench/results")
}

fn command_line(o: &Options) -> String {
    let mut c = String::from("cargo xtask bench");
    if o.quick {
        c.push_str(" --quick");
    }
    if let Some(r) = o.rounds {
        c.push_str(&format!(" --rounds {r}"));
    }
    if let Some(s) = o.seconds {
        c.push_str(&format!(" --seconds {s}"));
    }
    if !o.only.is_empty() {
        c.push_str(&format!(" --only {}", o.only.join(",")));
    }
    if o.no_micro {
        c.push_str(" --no-micro");
    }
    if o.no_scale {
        c.push_str(" --no-scale");
    }
    if o.no_bpf_stats {
        c.push_str(" --no-bpf-stats");
    }
    c
}

/// The first line each tool prints about its version.
fn versions(xlb: &Path) -> Vec<(String, String)> {
    let first = |prog: &Path, args: &[&str]| -> String {
        Command::new(prog)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned()
            })
            .unwrap_or_else(|| "not found".into())
    };
    let git = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    // "lb-userspace 0.1.0", "nginx version: nginx/1.22.1", "HAProxy version 2.6.12-1 2026/10/17 -
    // https://…", "wrk debian/4.1.0-3+b2 [epoll] Copyright …": the name and the version.
    let version = |line: String| line.split_whitespace().last().unwrap_or("?").trim_start_matches("nginx/").to_owned();
    let word = |line: String, n: usize| line.split_whitespace().nth(n).unwrap_or("?").trim_start_matches("debian/").to_owned();
    vec![
        ("xlb".into(), format!("xlb {} ({git})", version(first(xlb, &["--version"])))),
        ("nginx".into(), format!("nginx {}", version(first(Path::new("nginx"), &["-v"])))),
        ("haproxy".into(), format!("HAProxy {}", word(first(Path::new("haproxy"), &["-v"]), 2))),
        ("wrk".into(), format!("wrk {}", word(first(Path::new("wrk"), &["-v"]), 1))),
    ]
}

/// The wrk scripts: one for the VIP, one that spreads wrk's threads over the backends.
struct Scripts {
    vip: PathBuf,
    direct: PathBuf,
}

impl Scripts {
    fn write(topo: &Topo) -> Result<Scripts> {
        let targets: Vec<_> = topo.backends.iter().map(|b| (b.addr, BACKEND_PORT)).collect();
        Ok(Scripts { vip: wrk::script(&topo.dir, "vip", &[])?, direct: wrk::script(&topo.dir, "direct", &targets)? })
    }

    fn for_kind(&self, kind: Kind) -> PathBuf {
        if kind.is_direct() { self.direct.clone() } else { self.vip.clone() }
    }
}

fn url(topo: &Topo, kind: Kind) -> String {
    match kind {
        // The script sets each thread's address; the URL gives the Host header and path.
        Kind::Direct | Kind::DirectXdp => format!("http://{}:{BACKEND_PORT}/", topo.backends[0].addr),
        _ => topo.vip_url(),
    }
}

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
    fn per_1k(&self, ms: f64) -> f64 {
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

/// A warm-up run (results dropped), then the measured run with CPU samples around it.
fn measure(ctx: &Ctx, running: &Running, script: &Path, url: &str, mode: Mode, plan: &Plan, round: usize) -> Result<Run> {
    let topo = &ctx.topo;
    // --quick warms a contender up once after its start; the full run before every mode.
    if plan.warmup_seconds > 0 && (!plan.quick || mode == Mode::ALL[0]) {
        wrk::run(topo, script, url, Load { seconds: plan.warmup_seconds, ..plan.load }, mode).context("warm-up")?;
    }
    let ours = topo.namespaces();
    let others0 = measure::foreign_ticks(&ours);
    let host0 = HostCpu::read()?;
    let lb0 = measure::ns_ticks(&topo.lb);
    // Without BPF statistics the kernel keeps no run times: none rather than zero.
    let timed = running.xlb_pid.filter(|_| ctx.bpf_stats);
    let bpf0 = timed.map(measure::bpf_run_time);
    let out = wrk::run(topo, script, url, plan.load, mode)?;
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
        wrk: out,
    })
}

fn progress(clock: Instant, done: usize, total: usize, what: &str, mode: Mode, run: &Run) {
    let t = clock.elapsed().as_secs();
    let errors = run.wrk.errors.total();
    let errors = if errors > 0 { format!(", {errors} errors") } else { String::new() };
    eprintln!(
        "[{done:>3}/{total} {:>2}m{:02}s] {what}, {}: {:.0} req/s, p99 {:.2} ms, balancer {:.2} ms CPU/1k req, others {:.0}% CPU{errors}",
        t / 60,
        t % 60,
        mode.short(),
        run.rps,
        run.wrk.p99_us / 1000.0,
        run.balancer_ms_per_1k(),
        run.others_percent(),
    );
}

/// xlb with 1,000 services and 10,000 backends: memory, then throughput before and after
/// the connection table is filled.
fn run_scale(ctx: &Ctx, scripts: &Scripts, plan: &Plan, clock: Instant) -> Result<report::Scale> {
    let config = scale::config(ctx)?;
    let mut out = report::Scale::new();
    let total = plan.scale_rounds * 2 * Mode::ALL.len();
    let mut done = 0;
    for round in 0..plan.scale_rounds {
        let (running, ready) = scale::start(ctx, &config)?;
        let pid = running.xlb_pid.context("xlb pid")?;
        out.ready_seconds.push(ready);
        for state in [report::ScaleState::Loaded, report::ScaleState::TableFull] {
            if state == report::ScaleState::TableFull {
                // After the loaded runs: xlb's steady state (status snapshots, health and
                // expiry passes have run), not the moment it became ready.
                out.memory_loaded.get_or_insert_with(|| scale::Memory::of(pid));
                let fill = scale::fill(ctx)?;
                eprintln!(
                    "bench: scale: sent {} new UDP flows in {:.1} s to fill the connection table ({} flows seen by xlb)",
                    fill.sent,
                    fill.seconds,
                    fill.flows_seen.map_or("?".into(), |n| n.to_string())
                );
                out.fill.get_or_insert(fill);
            }
            for mode in Mode::ALL {
                done += 1;
                let run = measure(ctx, &running, &scripts.vip, &ctx.topo.vip_url(), mode, plan, round)?;
                progress(clock, done, total, &format!("scale {}/{} xlb, {}", round + 1, plan.scale_rounds, state.label()), mode, &run);
                out.runs.push(report::ScaleRun { state, mode, run });
            }
        }
        out.memory_full.get_or_insert_with(|| scale::Memory::of(pid));
        running.stop()?;
        // Let the kernel free the previous maps before the next round loads new ones.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(out)
}
