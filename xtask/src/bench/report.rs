//! Medians, goals and the files under bench/results/: Markdown, JSON and the chart.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use super::{
    Plan, Run,
    contender::Kind,
    docker_event::{DockerEvents, Reaction},
    measure::HostCpu,
    scale::{self, Fill, Memory},
    wrk::Mode,
};

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
        let mine = super::sys::tag();
        let other_namespaces = super::sys::sh(std::process::Command::new("ip").args(["netns", "list"]))
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

/// Median and range of a figure over the rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1] })
    }

    fn show(&self, f: impl Fn(f64) -> String) -> String {
        if self.min == self.max {
            f(self.median)
        } else {
            format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
        }
    }
}

pub struct Measured {
    pub kind: Kind,
    pub mode: Mode,
    pub run: Run,
}

/// One contender in one connection mode.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: &'static str,
    pub label: &'static str,
    pub mode: Option<Mode>,
    /// Why there are no figures.
    pub note: Option<String>,
    pub runs: usize,
    pub rps: Option<Spread>,
    /// Median req/s as a share of the direct run's median.
    pub vs_direct: Option<f64>,
    pub p50_ms: Option<Spread>,
    pub p99_ms: Option<Spread>,
    pub p999_ms: Option<Spread>,
    /// The balancer's own CPU: its processes, plus its BPF programs for xlb.
    pub balancer_cpu_ms_per_1k: Option<Spread>,
    /// The parts of it: xlb's BPF programs, and the balancer's processes.
    pub bpf_ms_per_1k: Option<Spread>,
    pub process_ms_per_1k: Option<Spread>,
    /// All CPU on the host.
    pub host_cpu_ms_per_1k: Option<Spread>,
    /// Host CPU per 1,000 requests above the direct run of the same round and mode.
    pub host_cpu_over_direct_ms_per_1k: Option<Spread>,
    /// Failed requests over all rounds (connect, read, write, status, timeout).
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub mode: Mode,
    pub target: f64,
    pub actual: Option<f64>,
    pub met: Option<bool>,
    pub verdict: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleState {
    Loaded,
    TableFull,
}

impl ScaleState {
    pub fn label(self) -> &'static str {
        match self {
            ScaleState::Loaded => "1,000 services loaded",
            ScaleState::TableFull => "connection table full",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    pub state: ScaleState,
    pub mode: Mode,
    pub run: Run,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    pub state: ScaleState,
    pub mode: Mode,
    pub rps: Option<Spread>,
    /// Median req/s as a share of xlb L4's with its 3-backend config.
    pub vs_xlb_l4: Option<f64>,
    pub p99_ms: Option<Spread>,
    pub bpf_ms_per_1k: Option<Spread>,
    pub process_ms_per_1k: Option<Spread>,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub services: usize,
    pub backends: usize,
    pub table_size: u32,
    pub conntrack_size: u32,
    /// Seconds from starting xlb to its `ready` line, per round.
    pub ready_seconds: Vec<f64>,
    pub memory_loaded: Option<Memory>,
    pub memory_full: Option<Memory>,
    pub fill: Option<Fill>,
    pub rows: Vec<ScaleRow>,
    pub runs: Vec<ScaleRun>,
    pub error: Option<String>,
}

impl Scale {
    pub fn new() -> Scale {
        Scale {
            services: scale::SERVICES,
            backends: scale::BACKENDS,
            table_size: scale::TABLE_SIZE,
            conntrack_size: scale::CONNTRACK_SIZE,
            ready_seconds: Vec::new(),
            memory_loaded: None,
            memory_full: None,
            fill: None,
            rows: Vec::new(),
            runs: Vec::new(),
            error: None,
        }
    }

    pub fn failed(error: String) -> Scale {
        Scale { error: Some(error), ..Scale::new() }
    }
}

pub struct Input {
    pub started: SystemTime,
    pub seconds: f64,
    pub command: String,
    pub host: Host,
    pub plan: Plan,
    pub versions: Vec<(String, String)>,
    pub kinds: Vec<Kind>,
    pub unavailable: HashMap<Kind, String>,
    pub runs: Vec<Measured>,
    pub xlb_memory: Option<Memory>,
    pub micro: Option<Value>,
    pub docker_events: Option<DockerEvents>,
    pub scale: Option<Scale>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContenderRuns {
    pub id: &'static str,
    pub label: &'static str,
    pub mode: Mode,
    pub runs: Vec<Run>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub started_utc: String,
    pub seconds: f64,
    pub command: String,
    pub host: Host,
    pub plan: Plan,
    pub versions: BTreeMap<String, String>,
    pub table: Vec<Row>,
    pub goals: Vec<Goal>,
    /// Share of all cores that processes other than the benchmark's used during the runs
    /// (a lower bound: processes that ended meanwhile are not counted).
    pub others_cpu_percent: Option<Spread>,
    /// xlb L4's memory with the 3-backend config (xlb's default sizes).
    pub xlb_memory: Option<Memory>,
    pub micro: Option<Value>,
    pub docker_events: Option<DockerEvents>,
    pub scale: Option<Scale>,
    pub runs: Vec<ContenderRuns>,
    #[serde(skip)]
    stamp: String,
}

impl Results {
    pub fn new(input: Input) -> Results {
        let Input { started, seconds, command, host, plan, versions, kinds, unavailable, runs, xlb_memory, micro, docker_events, mut scale } =
            input;
        let of = |kind: Kind, mode: Mode| -> Vec<&Run> {
            runs.iter().filter(|m| m.kind == kind && m.mode == mode).map(|m| &m.run).collect()
        };
        let mut table = Vec::new();
        let mut by_kind = Vec::new();
        for kind in Kind::ALL.into_iter().filter(|k| kinds.contains(k)) {
            if let Some(note) = unavailable.get(&kind) {
                table.push(Row::empty(kind, None, note.clone()));
                continue;
            }
            for mode in Mode::ALL {
                let mine = of(kind, mode);
                if mine.is_empty() {
                    table.push(Row::empty(kind, Some(mode), "no successful run".into()));
                    continue;
                }
                let direct = of(Kind::Direct, mode);
                table.push(Row::new(kind, mode, &mine, &direct));
                by_kind.push(ContenderRuns {
                    id: kind.id(),
                    label: kind.label(),
                    mode,
                    runs: mine.into_iter().cloned().collect(),
                });
            }
        }
        let goals = goals(&table);
        if let Some(scale) = &mut scale {
            scale.rows = scale_rows(scale, &table);
        }
        let scale_runs = scale.iter().flat_map(|s| s.runs.iter().map(|r| &r.run));
        let others_cpu_percent = Spread::of(runs.iter().map(|m| &m.run).chain(scale_runs).map(Run::others_percent));
        let (stamp, started_utc) = timestamps(started);
        Results {
            started_utc,
            seconds,
            command,
            host,
            plan,
            versions: versions.into_iter().collect(),
            table,
            goals,
            others_cpu_percent,
            xlb_memory,
            micro,
            docker_events,
            scale,
            runs: by_kind,
            stamp,
        }
    }

    /// The throughput table alone (what the README shows).
    pub fn markdown_table(&self) -> String {
        let mut s = String::from(
            "| contender | connections | req/s | vs direct | p50 ms | p99 ms | p99.9 ms | balancer CPU ms/1k req | host CPU ms/1k req |\n\
             |---|---|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for r in &self.table {
            let Some(mode) = r.mode.filter(|_| r.note.is_none()) else {
                let mode = r.mode.map_or("–", Mode::short);
                writeln!(s, "| {} | {mode} | {} | | | | | | |", r.label, r.note.as_deref().unwrap_or("")).unwrap();
                continue;
            };
            let ms = |x: &Option<Spread>| x.map_or("–".into(), |x| x.show(fmt_ms));
            let errors = if r.errors > 0 { format!(" ({} errors)", thousands(r.errors as f64)) } else { String::new() };
            writeln!(
                s,
                "| {} | {} | {}{errors} | {} | {} | {} | {} | {} | {} |",
                r.label,
                mode.short(),
                r.rps.map_or("–".into(), |x| x.show(thousands)),
                r.vs_direct.map_or("–".into(), |v| format!("{:.0}%", v * 100.0)),
                ms(&r.p50_ms),
                ms(&r.p99_ms),
                ms(&r.p999_ms),
                if Kind::from_id(r.id).is_some_and(Kind::is_direct) { "–".into() } else { ms(&r.balancer_cpu_ms_per_1k) },
                ms(&r.host_cpu_ms_per_1k),
            )
            .unwrap();
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let p = &self.plan;
        let v = |k: &str| self.versions.get(k).cloned().unwrap_or_default();
        writeln!(s, "# xlb benchmark, {}\n", self.started_utc).unwrap();
        writeln!(s, "`{}`: {:.1} minutes. {}.\n", self.command, self.seconds / 60.0, v("xlb")).unwrap();
        let h = &self.host;
        writeln!(
            s,
            "**Host:** {} × {}, {:.0} GiB, Linux {}. Before the start: {:.0}% of the CPUs busy, load average {}, {} network namespaces of others. \
             During the runs, other processes used {} of the CPUs{}.\n",
            h.cores,
            h.cpu,
            h.memory_gib,
            h.kernel,
            h.busy_percent,
            h.load_average,
            h.other_namespaces,
            self.others_cpu_percent.map_or("?".into(), |p| p.show(|x| format!("{x:.0}%"))),
            if self.others_cpu_percent.is_some_and(|p| p.max > 5.0) {
                " (median, min–max over the runs; a lower bound): others' builds and tests ran alongside, so the figures are noisier than on a quiet machine"
            } else {
                " (median, min–max over the runs; a lower bound)"
            },
        )
        .unwrap();
        writeln!(
            s,
            "**Load:** {}, {} threads, {} connections, {} s per run after a {} s warm-up, {} rounds with the contenders' order rotating; median (min–max) over the rounds. \
             **Backends:** {} × {} in namespaces of their own, one worker each, a 3-byte body from memory.\n",
            v("wrk"),
            p.load.threads,
            p.load.connections,
            p.load.seconds,
            p.warmup_seconds,
            p.rounds,
            p.backends,
            v("nginx"),
        )
        .unwrap();
        s.push_str("## Throughput and latency\n\n");
        s.push_str(&self.markdown_table());
        s.push('\n');
        s.push_str(
            "\"close\": a new connection per request (`Connection: close`). Balancer CPU: utime + stime of the balancer's processes; \
             for xlb the run time of its BPF programs (kernel BPF statistics) plus the xlb process. Host CPU: everything busy on all cores \
             (/proc/stat), which on a saturated two-core host is close to 2,000 ms per second divided by the rate.\n\n",
        );
        for r in self.table.iter().filter(|r| r.id == Kind::XlbL4.id() && r.note.is_none()) {
            if let (Some(mode), Some(bpf), Some(process)) = (r.mode, r.bpf_ms_per_1k, r.process_ms_per_1k) {
                writeln!(
                    s,
                    "xlb L4's balancer CPU, {}: BPF programs {} + xlb process {} ms/1k req.",
                    mode.short(),
                    fmt_ms(bpf.median),
                    fmt_ms(process.median)
                )
                .unwrap();
            }
        }
        s.push_str("\n**Goals** (reported, not asserted):\n\n");
        for g in &self.goals {
            writeln!(s, "- {}, {}: {}", g.goal, g.mode.short(), g.verdict).unwrap();
        }
        let median = |kind: Kind, mode: Mode| {
            self.table.iter().find(|r| r.id == kind.id() && r.mode == Some(mode) && r.note.is_none())?.rps.map(|x| x.median)
        };
        for mode in Mode::ALL {
            if let (Some(d), Some(x), Some(l4)) =
                (median(Kind::Direct, mode), median(Kind::DirectXdp, mode), median(Kind::XlbL4, mode))
            {
                writeln!(
                    s,
                    "- For reference, {}: an empty XDP program on the LB's veth alone gives {:.0}% of direct; xlb L4 gives {:.0}% of that.",
                    mode.short(),
                    100.0 * x / d,
                    100.0 * l4 / x
                )
                .unwrap();
            }
        }
        if self.goals.iter().any(|g| g.met == Some(false)) {
            s.push_str("- Where a goal is missed, what profiling showed: [profile.md](profile.md) (perf and heaptrack, by hand).\n");
        }
        s.push('\n');
        self.markdown_micro(&mut s);
        self.markdown_docker(&mut s);
        self.markdown_scale(&mut s);
        s.push_str(METHOD);
        let _ = writeln!(s, "\nVersions: {}.", self.versions.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; "));
        s
    }

    fn markdown_micro(&self, s: &mut String) {
        s.push_str("## Kernel and control-plane micro-figures\n\n");
        let Some(m) = &self.micro else {
            s.push_str("Not run (`--no-micro`).\n\n");
            return;
        };
        if let Some(e) = m["error"].as_str() {
            writeln!(s, "Failed: {e}\n").unwrap();
            return;
        }
        writeln!(s, "`xlb_xdp` per packet ({}):\n", m["xdp"]["method"].as_str().unwrap_or("")).unwrap();
        s.push_str("| case | mean ns | median ns | p99 ns | action | runs |\n|---|--:|--:|--:|---|--:|\n");
        for c in m["xdp"]["cases"].as_array().into_iter().flatten() {
            writeln!(
                s,
                "| {} | {:.0} | {} | {} | {} | {} |",
                c["name"].as_str().unwrap_or(""),
                c["mean_ns"].as_f64().unwrap_or(f64::NAN),
                c["median_ns"],
                c["p99_ns"],
                c["action"].as_str().unwrap_or(""),
                thousands(c["runs"].as_f64().unwrap_or(0.0)),
            )
            .unwrap();
        }
        s.push_str("\nMaglev table build (`xlb::dataplane::maglev::maglev`), one thread:\n\n");
        s.push_str("| backends | table slots | median ms (min–max) | runs |\n|--:|--:|--:|--:|\n");
        for c in m["maglev"].as_array().into_iter().flatten() {
            let f = |k: &str| c[k].as_f64().unwrap_or(f64::NAN) / 1000.0;
            let spread = Spread { median: f("median_us"), min: f("min_us"), max: f("max_us") };
            writeln!(
                s,
                "| {} | {} | {} | {} |",
                thousands(c["backends"].as_f64().unwrap_or(0.0)),
                thousands(c["table_size"].as_f64().unwrap_or(0.0)),
                spread.show(|x| format!("{x:.3}")),
                c["runs"]
            )
            .unwrap();
        }
        s.push_str("\nMap sync (`Dataplane::sync`, tables of 4,099 slots):\n\n| change | ms |\n|---|--:|\n");
        for c in m["sync"].as_array().into_iter().flatten() {
            writeln!(s, "| {} | {:.1} |", c["what"].as_str().unwrap_or(""), c["ms"].as_f64().unwrap_or(f64::NAN)).unwrap();
        }
        s.push('\n');
    }

    fn markdown_docker(&self, s: &mut String) {
        let Some(d) = &self.docker_events else { return };
        s.push_str("Docker event to map update (`xlb run` following containers by label; the tests' `FROM scratch` xlb-testd image):\n\n");
        if let Some(e) = &d.error {
            writeln!(s, "Failed: {e}\n").unwrap();
            return;
        }
        s.push_str(
            "| event | to xlb's discovery update, ms | to `maps synced`, ms | of which the map sync, ms | repetitions |\n|---|--:|--:|--:|--:|\n",
        );
        for (what, reps) in [
            ("container started (`start`): added", &d.start),
            ("`docker stop` (`kill`, SIGTERM): drained", &d.stop),
            ("container exited (`die`): removed", &d.exit),
        ] {
            let show = |f: fn(&Reaction) -> f64| {
                DockerEvents::spread(reps, f).map_or("–".into(), |x| x.show(|v| format!("{v:.1}")))
            };
            writeln!(s, "| {what} | {} | {} | {} | {} |", show(|r| r.discovered_ms), show(|r| r.synced_ms), show(|r| r.sync_ms), reps.len())
                .unwrap();
        }
        s.push_str(
            "\nFrom the engine's event time (`docker events`, `timeNano`) to xlb's log lines: `Docker discovery update` (the event \
             received and the container inspected) and `maps synced` (written after the maps hold the change); median (min–max). \
             xlb runs in the LB namespace with no load.\n\n",
        );
    }

    fn markdown_scale(&self, s: &mut String) {
        s.push_str("## Scale\n\n");
        let Some(sc) = &self.scale else {
            s.push_str("Not run (`--no-scale`).\n\n");
            return;
        };
        if let Some(e) = &sc.error {
            writeln!(s, "Failed: {e}\n").unwrap();
        }
        let ready = Spread::of(sc.ready_seconds.iter().copied());
        writeln!(
            s,
            "xlb with {} services and {} backends from one config (`table_size` {}, `conntrack_size` {}); from start to `ready`: {} s.\n",
            thousands(sc.services as f64),
            thousands(sc.backends as f64),
            thousands(f64::from(sc.table_size)),
            thousands(f64::from(sc.conntrack_size)),
            ready.map_or("–".into(), |r| r.show(|x| format!("{x:.2}"))),
        )
        .unwrap();
        if !sc.rows.is_empty() {
            s.push_str(
                "| state | connections | req/s | vs xlb L4 with 3 backends | p99 ms | BPF ms/1k req | xlb process ms/1k req |\n\
                 |---|---|--:|--:|--:|--:|--:|\n",
            );
            for r in &sc.rows {
                let ms = |x: &Option<Spread>| x.map_or("–".into(), |x| x.show(fmt_ms));
                let errors = if r.errors > 0 { format!(" ({} errors)", thousands(r.errors as f64)) } else { String::new() };
                writeln!(
                    s,
                    "| {} | {} | {}{errors} | {} | {} | {} | {} |",
                    r.state.label(),
                    r.mode.short(),
                    r.rps.map_or("–".into(), |x| x.show(thousands)),
                    r.vs_xlb_l4.map_or("–".into(), |v| format!("{:.0}%", v * 100.0)),
                    ms(&r.p99_ms),
                    ms(&r.bpf_ms_per_1k),
                    ms(&r.process_ms_per_1k),
                )
                .unwrap();
            }
            s.push('\n');
        }
        if let Some(f) = &sc.fill {
            writeln!(
                s,
                "The table was filled with {} new UDP flows (two entries each, {:.0}% of the table's capacity; xlb counted {}) before the \"table full\" runs.\n",
                thousands(f.sent as f64),
                200.0 * f.sent as f64 / f64::from(sc.conntrack_size),
                f.flows_seen.map_or("?".into(), |n| thousands(n as f64)),
            )
            .unwrap();
        }
        s.push_str(
            "| xlb | RSS MiB | anonymous | files | shared | of which mapped BPF maps | RSS without mapped BPF maps | BPF maps MiB (memlock) | maps | BPF programs KiB |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        let mib = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
        let mut mem = |what: &str, m: &Option<Memory>| {
            if let Some(m) = m {
                let r = &m.rss;
                writeln!(
                    s,
                    "| {what} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                    mib(r.total),
                    mib(r.anon),
                    mib(r.file),
                    mib(r.shmem),
                    mib(r.bpf_maps),
                    mib(r.own()),
                    mib(m.bpf.maps),
                    m.bpf.map_count,
                    m.bpf.programs as f64 / 1024.0
                )
                .unwrap();
            }
        };
        mem("3 backends, default sizes (table 65,537 slots × 65 tables, conntrack 262,144)", &self.xlb_memory);
        mem("1,000 services, 10,000 backends", &sc.memory_loaded);
        mem("1,000 services, connection table full", &sc.memory_full);
        s.push_str(
            "\nSampled after each state's runs (the 3-backend row after xlb L4's first runs). \
             RSS from /proc/PID/status (VmRSS = RssAnon + RssFile + RssShmem); the mapped BPF maps from /proc/PID/smaps \
             (`anon_inode:bpf-map` mappings). BPF map memory is kernel memory charged to the maps (`memlock` in /proc/PID/fdinfo). \
             The selection tables are `BPF_F_MMAPABLE` maps that xlb maps into its address space to write them; their pages count \
             in RSS (as a mapped file, RssFile) once touched, so those pages are in both the RSS and the BPF maps columns.\n\n",
        );
        if let Some(m) = &sc.memory_loaded {
            const GOAL: u64 = 50 << 20;
            let verdict = |b: u64| {
                if b < GOAL {
                    format!("met ({} MiB, {} MiB under)", mib(b), mib(GOAL - b))
                } else {
                    format!("missed by {} MiB ({} MiB)", mib(b - GOAL), mib(b))
                }
            };
            writeln!(
                s,
                "**Goal** (reported, not asserted): xlb's resident memory under 50 MiB with 1,000 services and 10,000 backends: {}; \
                 counting the mapped BPF maps as the kernel memory they are (beside it, not in it): {}.\n",
                verdict(m.rss.total),
                verdict(m.rss.own()),
            )
            .unwrap();
        }
    }
}

const METHOD: &str = "## Method

- Namespaces: client (wrk) → LB namespace (a router; the balancer runs there) → three backend namespaces (nginx), veth links. \
The VIP is an address of the LB namespace. Every contender serves the same backends on the same VIP:80, one at a time.
- Direct: no balancer. One wrk whose three threads each talk to one backend (wrk's `thread.addr`), through the same LB \
namespace, routed by the kernel: the limit of this topology on this machine.
- xlb L4: `xlb run --iface … VIP:80:b1,b2,b3:8080` (Maglev, native XDP on the veth). xlb HTTP: the same service with `protocol: http` \
(the proxy's defaults), run only if `xlb check` accepts it and the VIP then answers; otherwise the row says why.
- nginx: Debian's package, `worker_processes` = cores, `worker_connections 8192`, `access_log off`, upstream `keepalive 64` with \
HTTP/1.1 and the `Connection` header cleared, round robin; stream: the same upstreams in a `stream` block. HAProxy: Debian's \
package, `nbthread` = cores, `balance roundrobin`, its defaults otherwise (keep-alive, `http-reuse safe`).
- Client and proxies use `ip_local_port_range 1024 65535` and `tcp_tw_reuse 1` in their namespaces: without them the \
new-connection runs run out of ports within seconds and measure that.
- p99.9 comes from wrk's Lua `done` callback (`latency:percentile(99.9)`). wrk's latency starts when a request is written: \
a new connection's handshake is not in it.
- CPU: xlb's XDP and TC programs run in softirq context, charged to no process, so their time is taken from the kernel's \
BPF run-time statistics (`BPF_ENABLE_STATS`, on only while xlb runs; it adds two clock reads per program run). It does not \
include the kernel work around the programs (veth NAPI, redirects); the host CPU column includes everything, for every contender.
- Everything runs on the same cores: wrk, the backends and the balancer compete for them, so a balancer's CPU cost shows as \
throughput lost by the others. This is a measurement of this machine, not of a dedicated load balancer host.
- wrk is a closed loop (48 connections, each sending its next request when the last is answered) and every run saturates \
the CPUs, so the latency percentiles are those at each contender's own saturation, not at an equal request rate.
- \"Others\" CPU: user-space processes outside the benchmark's namespaces (e.g. other people's builds and tests), sampled \
from /proc around each run; shown per run in the progress lines and the JSON.
";

impl Row {
    fn empty(kind: Kind, mode: Option<Mode>, note: String) -> Row {
        Row {
            id: kind.id(),
            label: kind.label(),
            mode,
            note: Some(note),
            runs: 0,
            rps: None,
            vs_direct: None,
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
            balancer_cpu_ms_per_1k: None,
            bpf_ms_per_1k: None,
            process_ms_per_1k: None,
            host_cpu_ms_per_1k: None,
            host_cpu_over_direct_ms_per_1k: None,
            errors: 0,
        }
    }

    fn new(kind: Kind, mode: Mode, runs: &[&Run], direct: &[&Run]) -> Row {
        let s = |f: &dyn Fn(&Run) -> f64| Spread::of(runs.iter().map(|r| f(r)));
        let rps = s(&|r| r.rps);
        let direct_rps = Spread::of(direct.iter().map(|r| r.rps));
        let over_direct = Spread::of(runs.iter().filter_map(|r| {
            let d = direct.iter().find(|d| d.round == r.round)?;
            Some(r.host_ms_per_1k() - d.host_ms_per_1k())
        }));
        Row {
            id: kind.id(),
            label: kind.label(),
            mode: Some(mode),
            note: None,
            runs: runs.len(),
            rps,
            vs_direct: rps.zip(direct_rps).map(|(a, d)| a.median / d.median),
            p50_ms: s(&|r| r.wrk.p50_us / 1000.0),
            p99_ms: s(&|r| r.wrk.p99_us / 1000.0),
            p999_ms: s(&|r| r.wrk.p999_us / 1000.0),
            balancer_cpu_ms_per_1k: s(&|r| r.balancer_ms_per_1k()),
            bpf_ms_per_1k: if runs.iter().any(|r| r.bpf_run_ns.is_some()) {
                s(&|r| r.per_1k(r.bpf_run_ns.unwrap_or(0) as f64 / 1e6))
            } else {
                None
            },
            process_ms_per_1k: s(&|r| r.per_1k(r.balancer_process_ms)),
            host_cpu_ms_per_1k: s(&|r| r.host_ms_per_1k()),
            host_cpu_over_direct_ms_per_1k: if kind == Kind::Direct { None } else { over_direct },
            errors: runs.iter().map(|r| r.wrk.errors.total()).sum(),
        }
    }
}

fn goals(table: &[Row]) -> Vec<Goal> {
    let median = |kind: Kind, mode: Mode| {
        table.iter().find(|r| r.id == kind.id() && r.mode == Some(mode) && r.note.is_none())?.rps.map(|s| s.median)
    };
    let mut out = Vec::new();
    for mode in Mode::ALL {
        let xlb = median(Kind::XlbL4, mode);
        let ratio = |other: Kind| xlb.zip(median(other, mode)).map(|(x, o)| x / o);
        let vs_direct = ratio(Kind::Direct);
        out.push(Goal {
            goal: "xlb L4 ≥ 90% of direct".into(),
            mode,
            target: 0.9,
            actual: vs_direct,
            met: vs_direct.map(|r| r >= 0.9),
            verdict: match vs_direct {
                None => "no figures".into(),
                Some(r) if r >= 0.9 => format!("met ({:.0}% of direct)", r * 100.0),
                Some(r) => format!(
                    "missed by {:.0} percentage points ({:.0}% of direct)",
                    (0.9 - r) * 100.0,
                    r * 100.0
                ),
            },
        });
        let vs_stream = ratio(Kind::NginxStream);
        out.push(Goal {
            goal: "xlb L4 ≥ 1.5× nginx stream".into(),
            mode,
            target: 1.5,
            actual: vs_stream,
            met: vs_stream.map(|r| r >= 1.5),
            verdict: match vs_stream {
                None => "no figures".into(),
                Some(r) if r >= 1.5 => format!("met ({r:.2}×)"),
                Some(r) => format!("missed: {r:.2}×, {:.0}% short of 1.5×", (1.0 - r / 1.5) * 100.0),
            },
        });
        let row = |kind: Kind| table.iter().find(|r| r.id == kind.id() && r.mode == Some(mode) && r.note.is_none());
        let (xlb_http, nginx) = (row(Kind::XlbHttp), row(Kind::NginxHttp));
        let rps = xlb_http.zip(nginx).and_then(|(x, n)| Some((x.rps?.median, n.rps?.median)));
        let p99 = xlb_http.zip(nginx).and_then(|(x, n)| Some((x.p99_ms?.median, n.p99_ms?.median)));
        let met = rps.zip(p99).map(|((x, n), (xp, np))| x >= n && xp < np);
        out.push(Goal {
            goal: "xlb HTTP proxy ≥ nginx HTTP proxy's req/s, with a lower p99".into(),
            mode,
            target: 1.0,
            actual: rps.map(|(x, n)| x / n),
            met,
            verdict: match (rps, p99, met) {
                (Some((x, n)), Some((xp, np)), Some(met)) => format!(
                    "{} ({:.0}% of nginx's req/s{}; p99 {} ms against nginx's {} ms, {})",
                    if met { "met" } else { "missed" },
                    100.0 * x / n,
                    if x < n { format!(", {:.0}% short", 100.0 * (1.0 - x / n)) } else { String::new() },
                    fmt_ms(xp),
                    fmt_ms(np),
                    if xp < np { "lower" } else { "not lower" },
                ),
                _ => "no figures".into(),
            },
        });
    }
    out
}

fn scale_rows(scale: &Scale, table: &[Row]) -> Vec<ScaleRow> {
    let mut rows = Vec::new();
    for state in [ScaleState::Loaded, ScaleState::TableFull] {
        for mode in Mode::ALL {
            let runs: Vec<&Run> = scale.runs.iter().filter(|r| r.state == state && r.mode == mode).map(|r| &r.run).collect();
            if runs.is_empty() {
                continue;
            }
            let rps = Spread::of(runs.iter().map(|r| r.rps));
            let base = table
                .iter()
                .find(|r| r.id == Kind::XlbL4.id() && r.mode == Some(mode))
                .and_then(|r| r.rps)
                .map(|s| s.median);
            rows.push(ScaleRow {
                state,
                mode,
                rps,
                vs_xlb_l4: rps.zip(base).map(|(a, b)| a.median / b),
                p99_ms: Spread::of(runs.iter().map(|r| r.wrk.p99_us / 1000.0)),
                bpf_ms_per_1k: Spread::of(runs.iter().map(|r| r.per_1k(r.bpf_run_ns.unwrap_or(0) as f64 / 1e6))),
                process_ms_per_1k: Spread::of(runs.iter().map(|r| r.per_1k(r.balancer_process_ms))),
                errors: runs.iter().map(|r| r.wrk.errors.total()).sum(),
            });
        }
    }
    rows
}

/// Writes `<stamp>.{md,json,png}` and `latest.{md,json,png}` into `dir`; each file is written
/// to `*.tmp` first and renamed, so a reader never sees half a file.
pub fn write(results: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = results.markdown();
    let json = serde_json::to_string_pretty(results)? + "\n";
    let mut written = Vec::new();
    // plotters picks the image format from the extension.
    let tmp = std::env::temp_dir().join(format!("xlb-bench-chart-{}.png", std::process::id()));
    let chart = super::chart::draw(results, &tmp).and_then(|()| Ok(fs::read(&tmp)?));
    let _ = fs::remove_file(&tmp);
    let chart = chart.map_err(|err| eprintln!("bench: no chart: {err:#}")).ok();
    for name in [results.stamp.as_str(), "latest"] {
        let files = [("md", Some(md.as_bytes())), ("json", Some(json.as_bytes())), ("png", chart.as_deref())];
        for (ext, bytes) in files {
            let Some(bytes) = bytes else { continue };
            let path = dir.join(format!("{name}.{ext}"));
            put(&path, bytes)?;
            written.push(path);
        }
    }
    Ok(written)
}

fn put(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

/// (`20261121T053700Z`, `2026-11-21 05:37 UTC`).
fn timestamps(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    (format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z"), format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC"))
}

pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

pub fn fmt_ms(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_formats() {
        let s = Spread::of([3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(fmt_ms(0.4567), "0.46");
    }

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(timestamps(t).0, "20231114T221320Z");
    }
}
