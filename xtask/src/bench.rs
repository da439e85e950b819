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
mod h2load;
mod host;
mod idle;
mod measure;
mod plan;
mod report;
mod results;
mod sample;
mod scale;
mod stats;
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

pub use self::plan::Options;
use self::{
    contender::{Ctx, Kind},
    host::Host,
    plan::Plan,
    results::{Input, Measured, Results, Scale, ScaleRun, ScaleState},
    sample::{Loader, Run, measure},
    scale::Memory,
    topo::{BACKEND_PORT, Topo, VIP_PORT, socket_vip_of},
    wrk::Mode,
};
use crate::{build, cmd, setup};

pub fn bench(opts: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark needs root (network namespaces, XDP): run `cargo xtask bench` as root");
    }
    let only = only(opts)?;
    let plan = Plan::new(opts);
    let building = Instant::now();
    setup::ensure_bench_packages()?;
    sys::remove_stale();
    let xlb = xlb_binary(opts)?;
    // A kernel-bench that no longer builds (the xlb library moved on) costs the micro-figures,
    // not the whole benchmark.
    let kernel_bench = if opts.no_micro { None } else { Some(build_kernel_bench(&xlb)) };
    // The time budget counts from here: builds are incremental and shared with the tests.
    eprintln!("bench: packages and builds took {:.0} s", building.elapsed().as_secs_f64());
    let clock = Instant::now();
    let started = SystemTime::now();

    let host = quiet_host();
    let micro = kernel_bench.map(|bin| micro_figures(bin, plan.quick));

    let dir = std::env::temp_dir().join(format!("xlb-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    eprintln!("bench: building the namespaces (files in {})", dir.display());
    let topo = Topo::build(&dir, plan.backends)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ctx = Ctx { topo, xlb, cores, bpf_stats: !opts.no_bpf_stats };
    let scripts = Scripts::write(&ctx.topo)?;

    let mut unavailable: HashMap<Kind, String> = HashMap::new();
    if let Err(why) = contender::xlb_http_available(&ctx) {
        for kind in Kind::ALL.into_iter().filter(|k| k.is_xlb_http()) {
            unavailable.insert(kind, format!("not available: `xlb check` rejects a service with `protocol: http` ({why})"));
        }
    }
    let kinds: Vec<Kind> =
        Kind::ALL.into_iter().filter(|k| k.is_direct() || only.is_empty() || only.contains(k)).collect();

    let (runs, memory) = rounds(&ctx, &scripts, &plan, &kinds, &mut unavailable, clock);
    let idle_tls = idle_tls(&ctx, &kinds, &unavailable);

    let scale = (!opts.no_scale).then(|| {
        run_scale(&ctx, &scripts, &plan, clock).unwrap_or_else(|err| {
            eprintln!("bench: scale test failed: {err:#}");
            Scale::failed(format!("{err:#}"))
        })
    });
    let docker_events = (!opts.no_micro).then(|| docker_events(&ctx, plan.quick));

    let results = Results::new(Input {
        started,
        seconds: clock.elapsed().as_secs_f64(),
        command: opts.command_line(),
        host,
        plan: plan.clone(),
        versions: versions(&ctx.xlb),
        kinds,
        unavailable,
        runs,
        xlb_memory: memory,
        idle_tls,
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
    for line in results.ratio_lines() {
        println!("{line}");
    }
    Ok(())
}

/// Each round starts each contender in turn (the order rotates) and measures it in every
/// mode; a contender that fails to start is marked unavailable. Also gives xlb L4's memory.
fn rounds(
    ctx: &Ctx,
    scripts: &Scripts,
    plan: &Plan,
    kinds: &[Kind],
    unavailable: &mut HashMap<Kind, String>,
    clock: Instant,
) -> (Vec<Measured>, Option<Memory>) {
    let mut runs: Vec<Measured> = Vec::new();
    let mut memory = None;
    let total: usize = plan.rounds * kinds.iter().map(|k| k.modes().len()).sum::<usize>();
    let mut done = 0;
    for round in 0..plan.rounds {
        let mut order = kinds.to_vec();
        order.rotate_left(round % kinds.len());
        for kind in order {
            if unavailable.contains_key(&kind) {
                done += kind.modes().len();
                continue;
            }
            let running = match contender::start(kind, ctx) {
                Ok(r) => r,
                Err(err) => {
                    eprintln!("bench: {} could not be started: {err:#}", kind.label());
                    let why = if kind.is_xlb_http() { "not available" } else { "failed to start" };
                    unavailable.insert(kind, format!("{why}: {}", first_line(&format!("{err:#}"))));
                    done += kind.modes().len();
                    continue;
                }
            };
            for &mode in kind.modes() {
                done += 1;
                let load = if kind.is_h2() { Loader::H2load } else { Loader::Wrk(scripts.for_kind(kind)) };
                let result = measure(ctx, &running, &load, &kind.url(&ctx.topo), mode, plan, round);
                match result {
                    Ok(run) => {
                        progress(clock, done, total, &format!("round {}/{} {}", round + 1, plan.rounds, kind.label()), mode, &run);
                        runs.push(Measured { kind, mode, run });
                    }
                    Err(err) => eprintln!("bench: {} {}: {err:#}", kind.label(), mode.short()),
                }
            }
            if kind == Kind::XlbL4 && memory.is_none() {
                memory = running.xlb_pid.map(Memory::of);
            }
            if let Err(err) = running.stop() {
                eprintln!("bench: stopping {}: {err:#}", kind.label());
            }
        }
    }
    (runs, memory)
}

/// Memory per idle connection, xlb's and nginx's, over TLS once both TLS contenders ran,
/// and over plain HTTP once both HTTP proxies ran.
fn idle_tls(ctx: &Ctx, kinds: &[Kind], unavailable: &HashMap<Kind, String>) -> Vec<idle::IdleTls> {
    let pairs = [[Kind::XlbHttps, Kind::NginxHttps], [Kind::XlbHttp, Kind::NginxHttp]];
    let ran = |pair: &[Kind; 2]| pair.iter().all(|k| kinds.contains(k) && !unavailable.contains_key(k));
    let mut out = Vec::new();
    for kind in pairs.iter().filter(|p| ran(p)).flatten().copied() {
        eprintln!("bench: {} idle connections to {}", idle::CONNECTIONS, kind.label());
        match idle::measure(ctx, kind) {
            Ok(m) => {
                eprintln!("bench: {}: {:.1} KiB per idle connection (opened in {:.1} s)", kind.label(), m.kib_per_connection, m.open_seconds);
                out.push(m);
            }
            Err(err) => eprintln!("bench: idle connections to {}: {err:#}", kind.label()),
        }
    }
    out
}

/// The contenders of `--only`.
fn only(opts: &Options) -> Result<Vec<Kind>> {
    opts.only.iter().map(|id| Kind::from_id(id).with_context(|| format!("--only: no contender {id:?} (one of: {})", ids()))).collect()
}

/// `--xlb PATH`, else the working tree's release build.
fn xlb_binary(opts: &Options) -> Result<PathBuf> {
    match &opts.xlb {
        Some(path) => path.canonicalize().with_context(|| format!("--xlb {}", path.display())),
        None => build::build(true),
    }
}

fn ids() -> String {
    Kind::ALL.map(Kind::id).join(", ")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// Builds `xlb-kernel-bench` (the xtask with `--features kernel-bench`, release), which
/// lands next to the release `xlb`.
fn build_kernel_bench(xlb: &Path) -> Result<PathBuf> {
    let mut cargo = build::cargo();
    cargo.args(["build", "--release", "--package", "xtask", "--features", "kernel-bench", "--bin", "xlb-kernel-bench"]);
    cmd::run(&mut cargo)?;
    Ok(xlb.with_file_name("xlb-kernel-bench"))
}

/// Samples the host for a second (how busy it is before the start); warns when it is busy.
fn quiet_host() -> Host {
    eprintln!("bench: measuring how busy the host is before starting (1 s)");
    let host = Host::probe();
    if host.busy_percent > 10.0 {
        eprintln!(
            "bench: warning: the host is {:.0}% busy before the benchmark starts: figures will be noisy",
            host.busy_percent
        );
    }
    host
}

/// The kernel micro-benchmarks' figures, or the error (of the build or the run) in their place.
fn micro_figures(bin: Result<PathBuf>, quick: bool) -> serde_json::Value {
    eprintln!("bench: kernel micro-benchmarks");
    bin.and_then(|bin| micro(&bin, quick)).unwrap_or_else(|err| {
        eprintln!("bench: kernel micro-benchmarks failed: {err:#}");
        serde_json::json!({ "error": format!("{err:#}") })
    })
}

/// Docker event to map update, over a few containers; the error in their place.
fn docker_events(ctx: &Ctx, quick: bool) -> docker_event::DockerEvents {
    let reps = if quick { 3 } else { 10 };
    eprintln!("bench: Docker event to map update, {reps} containers started and stopped");
    docker_event::measure(ctx, reps).unwrap_or_else(|err| {
        eprintln!("bench: Docker event measurement failed: {err:#}");
        docker_event::DockerEvents::failed(format!("{err:#}"))
    })
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
    /// Thread I to socket VIP I (`Kind::XlbSocketPinned`).
    socket_vips: PathBuf,
}

impl Scripts {
    fn write(topo: &Topo) -> Result<Scripts> {
        let targets: Vec<_> = topo.backends.iter().map(|b| (b.addr, BACKEND_PORT)).collect();
        let vips: Vec<_> = (0..topo.backends.len()).map(|i| (socket_vip_of(i), VIP_PORT)).collect();
        Ok(Scripts {
            vip: wrk::script(&topo.dir, "vip", &[])?,
            direct: wrk::script(&topo.dir, "direct", &targets)?,
            socket_vips: wrk::script(&topo.dir, "socket-vips", &vips)?,
        })
    }

    fn for_kind(&self, kind: Kind) -> PathBuf {
        match kind {
            Kind::XlbSocketPinned => self.socket_vips.clone(),
            k if k.is_direct() => self.direct.clone(),
            _ => self.vip.clone(),
        }
    }
}

fn progress(clock: Instant, done: usize, total: usize, what: &str, mode: Mode, run: &Run) {
    let t = clock.elapsed().as_secs();
    let errors = run.wrk.errors.total();
    let errors = if errors > 0 { format!(", {errors} errors") } else { String::new() };
    let syns = if run.syn_retransmits > 0 { format!(", {} SYNs sent again", run.syn_retransmits) } else { String::new() };
    eprintln!(
        "[{done:>3}/{total} {:>2}m{:02}s] {what}, {}: {:.0} req/s, p99 {:.2} ms, balancer {:.2} ms CPU/1k req, others {:.0}% CPU{errors}{syns}",
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
fn run_scale(ctx: &Ctx, scripts: &Scripts, plan: &Plan, clock: Instant) -> Result<Scale> {
    let config = scale::config(ctx)?;
    let mut out = Scale::new();
    let total = plan.scale_rounds * 2 * Mode::ALL.len();
    let mut done = 0;
    for round in 0..plan.scale_rounds {
        let (running, ready) = scale::start(ctx, &config)?;
        let pid = running.xlb_pid.context("xlb pid")?;
        out.ready_seconds.push(ready);
        for state in [ScaleState::Loaded, ScaleState::TableFull] {
            if state == ScaleState::TableFull {
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
                let run = measure(ctx, &running, &Loader::Wrk(scripts.vip.clone()), &ctx.topo.vip_url(false), mode, plan, round)?;
                progress(clock, done, total, &format!("scale {}/{} xlb, {}", round + 1, plan.scale_rounds, state.label()), mode, &run);
                out.runs.push(ScaleRun { state, mode, run });
            }
        }
        out.memory_full.get_or_insert_with(|| scale::Memory::of(pid));
        running.stop()?;
        // Let the kernel free the previous maps before the next round loads new ones.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(out)
}
