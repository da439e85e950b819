//! What the benchmark found: per contender and mode, medians and spreads over the rounds,
//! the goals, and the scale test's rows. `report.rs` renders it.
use std::{
    collections::{BTreeMap, HashMap},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::Value;

use super::{
    contender::Kind,
    docker_event::DockerEvents,
    host::Host,
    idle::IdleTls,
    plan::Plan,
    sample::Run,
    scale::{self, Fill, Memory},
    stats::{Spread, fmt_ms},
    wrk::Mode,
};

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
    #[serde(flatten)]
    pub figures: Figures,
    /// Median req/s as a share of the direct run's median.
    pub vs_direct: Option<f64>,
    pub p50_ms: Option<Spread>,
    pub p999_ms: Option<Spread>,
    /// The balancer's own CPU: its processes, plus its BPF programs for xlb.
    pub balancer_cpu_ms_per_1k: Option<Spread>,
    /// All CPU on the host.
    pub host_cpu_ms_per_1k: Option<Spread>,
    /// Host CPU per 1,000 requests above the direct run of the same round and mode.
    pub host_cpu_over_direct_ms_per_1k: Option<Spread>,
}

/// What the throughput table and the scale table both show of a set of runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub rps: Option<Spread>,
    pub p99_ms: Option<Spread>,
    /// The parts of the balancer's CPU: xlb's BPF programs (none without BPF statistics),
    /// and the balancer's processes.
    pub bpf_ms_per_1k: Option<Spread>,
    pub process_ms_per_1k: Option<Spread>,
    /// Failed requests over all rounds (connect, read, write, status, timeout).
    pub errors: u64,
    /// SYNs the client sent again over all rounds: connections that waited.
    pub syn_retransmits: u64,
}

impl Figures {
    fn of(runs: &[&Run]) -> Figures {
        let s = |f: &dyn Fn(&Run) -> f64| Spread::of(runs.iter().map(|r| f(r)));
        Figures {
            rps: s(&|r| r.rps),
            p99_ms: s(&|r| r.wrk.p99_us / 1000.0),
            bpf_ms_per_1k: if runs.iter().any(|r| r.bpf_run_ns.is_some()) { s(&|r| r.per_1k(r.bpf_run_ns.unwrap_or(0) as f64 / 1e6)) } else { None },
            process_ms_per_1k: s(&|r| r.per_1k(r.balancer_process_ms)),
            errors: runs.iter().map(|r| r.wrk.errors.total()).sum(),
            syn_retransmits: runs.iter().map(|r| r.syn_retransmits).sum(),
        }
    }
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
    #[serde(flatten)]
    pub figures: Figures,
    /// Median req/s as a share of xlb L4's with its 3-backend config.
    pub vs_xlb_l4: Option<f64>,
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
    pub idle_tls: Vec<IdleTls>,
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
    /// Memory per idle TLS connection: xlb's and nginx's HTTPS proxies.
    pub idle_tls: Vec<IdleTls>,
    pub micro: Option<Value>,
    pub docker_events: Option<DockerEvents>,
    pub scale: Option<Scale>,
    pub runs: Vec<ContenderRuns>,
    /// `20261121T053700Z`: the result files' names.
    #[serde(skip)]
    pub stamp: String,
}

impl Results {
    pub fn new(input: Input) -> Results {
        let Input { started, seconds, command, host, plan, versions, kinds, unavailable, runs, xlb_memory, idle_tls, micro, docker_events, mut scale } =
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
            for &mode in kind.modes() {
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
            idle_tls,
            micro,
            docker_events,
            scale,
            runs: by_kind,
            stamp,
        }
    }
}

impl Row {
    fn empty(kind: Kind, mode: Option<Mode>, note: String) -> Row {
        Row {
            id: kind.id(),
            label: kind.label(),
            mode,
            note: Some(note),
            runs: 0,
            figures: Figures::default(),
            vs_direct: None,
            p50_ms: None,
            p999_ms: None,
            balancer_cpu_ms_per_1k: None,
            host_cpu_ms_per_1k: None,
            host_cpu_over_direct_ms_per_1k: None,
        }
    }

    fn new(kind: Kind, mode: Mode, runs: &[&Run], direct: &[&Run]) -> Row {
        let s = |f: &dyn Fn(&Run) -> f64| Spread::of(runs.iter().map(|r| f(r)));
        let figures = Figures::of(runs);
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
            vs_direct: figures.rps.zip(direct_rps).map(|(a, d)| a.median / d.median),
            figures,
            p50_ms: s(&|r| r.wrk.p50_us / 1000.0),
            p999_ms: s(&|r| r.wrk.p999_us / 1000.0),
            balancer_cpu_ms_per_1k: s(&|r| r.balancer_ms_per_1k()),
            host_cpu_ms_per_1k: s(&|r| r.host_ms_per_1k()),
            host_cpu_over_direct_ms_per_1k: if kind == Kind::Direct { None } else { over_direct },
        }
    }
}

fn goals(table: &[Row]) -> Vec<Goal> {
    let median = |kind: Kind, mode: Mode| {
        table.iter().find(|r| r.id == kind.id() && r.mode == Some(mode) && r.note.is_none())?.figures.rps.map(|s| s.median)
    };
    let mut out = Vec::new();
    for mode in Mode::ALL {
        let xlb = median(Kind::XlbL4, mode);
        let ratio = |other: Kind| xlb.zip(median(other, mode)).map(|(x, o)| x / o);
        out.push(share_of_direct("xlb L4", mode, 0.9, ratio(Kind::Direct)));
        // Like for like: direct with one VIP's spread of connections over the backends.
        let socket = median(Kind::XlbSocket, mode).zip(median(Kind::DirectSpread, mode)).map(|(x, d)| x / d);
        out.push(share_of_direct("xlb socket LB (a local caller; direct: direct-spread)", mode, 0.97, socket));
        let vs_stream = ratio(Kind::NginxStream);
        out.push(ratio_goal(
            "xlb L4 ≥ 1.5× nginx stream".into(),
            mode,
            1.5,
            vs_stream,
            |r| format!("met ({r:.2}×)"),
            |r| format!("missed: {r:.2}×, {:.0}% short of 1.5×", (1.0 - r / 1.5) * 100.0),
        ));
        let row = |kind: Kind| table.iter().find(|r| r.id == kind.id() && r.mode == Some(mode) && r.note.is_none());
        let (xlb_http, nginx) = (row(Kind::XlbHttp), row(Kind::NginxHttp));
        let rps = xlb_http.zip(nginx).and_then(|(x, n)| Some((x.figures.rps?.median, n.figures.rps?.median)));
        let p99 = xlb_http.zip(nginx).and_then(|(x, n)| Some((x.figures.p99_ms?.median, n.figures.p99_ms?.median)));
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
        out.push(tls_goal(mode, median(Kind::XlbHttps, mode).zip(median(Kind::NginxHttps, mode)).map(|(x, n)| x / n)));
    }
    out
}

/// `who` ≥ `target` of direct's req/s; `ratio`: its req/s over direct's.
fn share_of_direct(who: &str, mode: Mode, target: f64, ratio: Option<f64>) -> Goal {
    let goal = format!("{who} ≥ {:.0}% of direct", target * 100.0);
    ratio_goal(
        goal,
        mode,
        target,
        ratio,
        |r| format!("met ({:.0}% of direct)", r * 100.0),
        |r| format!("missed by {:.0} percentage points ({:.0}% of direct)", (target - r) * 100.0, r * 100.0),
    )
}

/// Issue 13: full handshakes (a new connection per request) ≥ 1.3× nginx's, keep-alive
/// over TLS ≥ 1.2×. `ratio`: xlb's req/s over nginx's, both over TLS.
fn tls_goal(mode: Mode, ratio: Option<f64>) -> Goal {
    let target = if mode == Mode::Close { 1.3 } else { 1.2 };
    let goal = format!("xlb HTTP proxy over TLS ≥ {target}× nginx over TLS (same certificate)");
    ratio_goal(goal, mode, target, ratio, |r| format!("met ({r:.2}×)"), |r| format!("missed: {r:.2}×"))
}

/// A goal met when `ratio` ≥ `target`; `met` and `missed` word the verdict.
fn ratio_goal(goal: String, mode: Mode, target: f64, ratio: Option<f64>, met: impl Fn(f64) -> String, missed: impl Fn(f64) -> String) -> Goal {
    Goal {
        goal,
        mode,
        target,
        actual: ratio,
        met: ratio.map(|r| r >= target),
        verdict: match ratio {
            None => "no figures".into(),
            Some(r) if r >= target => met(r),
            Some(r) => missed(r),
        },
    }
}

fn scale_rows(scale: &Scale, table: &[Row]) -> Vec<ScaleRow> {
    let mut rows = Vec::new();
    for state in [ScaleState::Loaded, ScaleState::TableFull] {
        for mode in Mode::ALL {
            let runs: Vec<&Run> = scale.runs.iter().filter(|r| r.state == state && r.mode == mode).map(|r| &r.run).collect();
            if runs.is_empty() {
                continue;
            }
            let figures = Figures::of(&runs);
            let base = table.iter().find(|r| r.id == Kind::XlbL4.id() && r.mode == Some(mode)).and_then(|r| r.figures.rps).map(|s| s.median);
            let vs_xlb_l4 = figures.rps.zip(base).map(|(a, b)| a.median / b);
            rows.push(ScaleRow { state, mode, figures, vs_xlb_l4 });
        }
    }
    rows
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(timestamps(t).0, "20231114T221320Z");
    }
}
