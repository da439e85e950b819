//! The result files under bench/results/: Markdown, JSON and the chart.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::{
    chart,
    contender::Kind,
    docker_event::{DockerEvents, Reaction},
    results::{Results, Row, Scale},
    scale::Memory,
    stats::{Spread, fmt_ms, thousands},
    wrk::Mode,
};

impl Results {
    /// Issue 12's ratios, a line per xlb HTTP row and mode: req/s against nginx's and
    /// HAProxy's HTTP proxies, p99 against nginx's, balancer CPU per request against
    /// nginx's (medians of the same run). What `--quick` prints last.
    pub fn ratio_lines(&self) -> Vec<String> {
        let row = |id: &str, mode: Mode| self.table.iter().find(|r| r.id == id && r.mode == Some(mode) && r.note.is_none());
        let med = |s: &Option<Spread>| s.map(|s| s.median);
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or("–".to_owned(), |(a, b)| format!("{:.2}×", a / b));
        let mut out = Vec::new();
        for kind in Kind::ALL.into_iter().filter(|k| k.is_xlb_http()) {
            for mode in Mode::ALL {
                let Some(x) = row(kind.id(), mode) else { continue };
                let (n, h) = (row(Kind::NginxHttp.id(), mode), row(Kind::HaproxyHttp.id(), mode));
                let nginx = |f: fn(&Row) -> &Option<Spread>| n.and_then(|n| med(f(n)));
                out.push(format!(
                    "ratio {}, {}: req/s {} nginx, {} HAProxy; p99 {} ms (nginx {} ms); CPU per request {} nginx's",
                    kind.label(),
                    mode.short(),
                    ratio(med(&x.figures.rps), nginx(|r| &r.figures.rps)),
                    ratio(med(&x.figures.rps), h.and_then(|h| med(&h.figures.rps))),
                    med(&x.figures.p99_ms).map_or("–".into(), fmt_ms),
                    nginx(|r| &r.figures.p99_ms).map_or("–".into(), fmt_ms),
                    ratio(med(&x.balancer_cpu_ms_per_1k), nginx(|r| &r.balancer_cpu_ms_per_1k)),
                ));
            }
        }
        let idle = |k: Kind| self.idle_tls.iter().find(|m| m.id == k.id()).map(|m| m.kib_per_connection);
        if let (Some(x), Some(n)) = (idle(Kind::XlbHttps), idle(Kind::NginxHttps)) {
            out.push(format!("ratio memory per idle TLS connection: xlb {x:.1} KiB, nginx {n:.1} KiB ({})", ratio(Some(x), Some(n))));
        }
        // Issue 13's TLS rows and the HTTP/2 rows, each against nginx doing the same.
        for (xlb, nginx) in [(Kind::XlbHttps, Kind::NginxHttps), (Kind::XlbH2c, Kind::NginxH2c), (Kind::XlbH2, Kind::NginxH2)] {
            for &mode in xlb.modes() {
                let (Some(x), Some(n)) = (row(xlb.id(), mode), row(nginx.id(), mode)) else { continue };
                out.push(format!(
                    "ratio {}, {}: req/s {} {}; p99 {} ms (nginx {} ms); CPU per request {} nginx's",
                    xlb.label(),
                    mode.short(),
                    ratio(med(&x.figures.rps), med(&n.figures.rps)),
                    nginx.short(),
                    med(&x.figures.p99_ms).map_or("–".into(), fmt_ms),
                    med(&n.figures.p99_ms).map_or("–".into(), fmt_ms),
                    ratio(med(&x.balancer_cpu_ms_per_1k), med(&n.balancer_cpu_ms_per_1k)),
                ));
            }
        }
        out
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
            let errors = if r.figures.errors > 0 { format!(" ({} errors)", thousands(r.figures.errors as f64)) } else { String::new() };
            writeln!(
                s,
                "| {} | {} | {}{errors} | {} | {} | {} | {} | {} | {} |",
                r.label,
                mode.short(),
                r.figures.rps.map_or("–".into(), |x| x.show(thousands)),
                r.vs_direct.map_or("–".into(), |v| format!("{:.0}%", v * 100.0)),
                ms(&r.p50_ms),
                ms(&r.figures.p99_ms),
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
        self.markdown_header(&mut s);
        s.push_str("## Throughput and latency\n\n");
        s.push_str(&self.markdown_table());
        s.push('\n');
        s.push_str(
            "\"close\": a new connection per request (`Connection: close`). Balancer CPU: utime + stime of the balancer's processes; \
             for xlb the run time of its BPF programs (kernel BPF statistics) plus the xlb process. Host CPU: everything busy on all cores \
             (/proc/stat), which on a saturated two-core host is close to 2,000 ms per second divided by the rate.\n\n",
        );
        for r in self.table.iter().filter(|r| r.id == Kind::XlbL4.id() && r.note.is_none()) {
            if let (Some(mode), Some(bpf), Some(process)) = (r.mode, r.figures.bpf_ms_per_1k, r.figures.process_ms_per_1k) {
                let (m, b, p) = (mode.short(), fmt_ms(bpf.median), fmt_ms(process.median));
                writeln!(s, "xlb L4's balancer CPU, {m}: BPF programs {b} + xlb process {p} ms/1k req.").unwrap();
            }
        }
        let waited: Vec<String> = self
            .table
            .iter()
            .filter(|r| r.figures.syn_retransmits > 0)
            .map(|r| format!("{} {} {}", r.label, r.mode.map_or("", Mode::short), r.figures.syn_retransmits))
            .collect();
        if !waited.is_empty() {
            writeln!(s, "\nSYNs the client sent again (over all rounds; each a connection that waited): {}.", waited.join(", ")).unwrap();
        }
        self.markdown_goals(&mut s);
        s.push('\n');
        self.markdown_idle_tls(&mut s);
        self.markdown_micro(&mut s);
        self.markdown_docker(&mut s);
        self.markdown_scale(&mut s);
        s.push_str(METHOD);
        let _ = writeln!(s, "\nVersions: {}.", self.versions.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; "));
        s
    }

    /// Memory per idle connection, TLS and plain HTTP (`bench/idle.rs`).
    fn markdown_idle_tls(&self, s: &mut String) {
        if self.idle_tls.is_empty() {
            return;
        }
        s.push_str(
            "## Memory per idle connection

",
        );
        s.push_str(
            "| contender | idle connections | RSS before MiB | RSS with them MiB | KiB per connection | seconds to open them |\n\
             |---|--:|--:|--:|--:|--:|\n",
        );
        let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
        for m in &self.idle_tls {
            writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} | {:.1} |",
                m.label,
                thousands(m.connections as f64),
                mib(m.rss_before_kib),
                mib(m.rss_after_kib),
                m.kib_per_connection,
                m.open_seconds
            )
            .unwrap();
        }
        s.push_str(
            "\nEach connection: a TLS handshake (ECDSA P-256, the same certificate; none to the plain HTTP proxies) and one `GET /` answered, then silent. \
             RSS: VmRSS of the balancer's processes (nginx: master and workers).\n\n",
        );
    }

    /// Title, command, host and load.
    fn markdown_header(&self, s: &mut String) {
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
    }

    /// The goals, how xlb L4 compares to an empty XDP program, and where to read more.
    fn markdown_goals(&self, s: &mut String) {
        s.push_str("\n**Goals** (reported, not asserted):\n\n");
        for g in &self.goals {
            writeln!(s, "- {}, {}: {}", g.goal, g.mode.short(), g.verdict).unwrap();
        }
        let median = |kind: Kind, mode: Mode| {
            self.table.iter().find(|r| r.id == kind.id() && r.mode == Some(mode) && r.note.is_none())?.figures.rps.map(|x| x.median)
        };
        // (reference, what it shows, contender, what that shows): each as a share of direct's
        // and of the reference's rate.
        let references = [
            (Kind::DirectXdp, "an empty XDP program on the LB's veth alone", Kind::XlbL4, "xlb L4"),
            (Kind::DirectSpread, "direct with each connection to any backend (ECMP, the spread of one VIP)", Kind::XlbSocket, "one socket VIP"),
            (Kind::DirectSpread, "the same", Kind::NginxLocal, "nginx on the host, from the same caller"),
            (
                Kind::XlbSocketPinned,
                "the socket hook with wrk's thread I on a VIP whose one backend is backend I (direct's spread)",
                Kind::XlbSocket,
                "one socket VIP (each thread's connections on all three backends)",
            ),
        ];
        for mode in Mode::ALL {
            for (reference, what, kind, shows) in references {
                if let (Some(d), Some(r), Some(x)) = (median(Kind::Direct, mode), median(reference, mode), median(kind, mode)) {
                    let (r_pct, x_pct) = (100.0 * r / d, 100.0 * x / r);
                    writeln!(s, "- For reference, {}: {what} gives {r_pct:.0}% of direct; {shows} gives {x_pct:.0}% of that.", mode.short()).unwrap();
                }
            }
        }
        if self.goals.iter().any(|g| g.met == Some(false)) {
            s.push_str("- Where a goal is missed, what profiling showed: [profile.md](profile.md) (perf and heaptrack, by hand).\n");
        }
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
                let errors = if r.figures.errors > 0 { format!(" ({} errors)", thousands(r.figures.errors as f64)) } else { String::new() };
                writeln!(
                    s,
                    "| {} | {} | {}{errors} | {} | {} | {} | {} |",
                    r.state.label(),
                    r.mode.short(),
                    r.figures.rps.map_or("–".into(), |x| x.show(thousands)),
                    r.vs_xlb_l4.map_or("–".into(), |v| format!("{:.0}%", v * 100.0)),
                    ms(&r.figures.p99_ms),
                    ms(&r.figures.bpf_ms_per_1k),
                    ms(&r.figures.process_ms_per_1k),
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
        self.markdown_memory(s, sc);
    }

    /// xlb's memory in each state, and the memory goal.
    fn markdown_memory(&self, s: &mut String, sc: &Scale) {
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
- xlb socket LB: the service on a VIP no interface has, socket-level balancing attached to a cgroup v2 child, and wrk \
started inside that child (as a container on the host would be): xlb's connect() hook sends each connection straight to \
a backend, so the packets take direct's path (xlb's XDP program sits on an idle veth no packet crosses, its reply \
program on the backends' links, as on a Docker host); its goal is 97% of direct. A VIP per wrk thread: the same \
xlb and cgroup with three more socket VIPs, VIP I having backend I alone, and wrk's thread I asking VIP I: every \
connect() goes through the hook, and the connections are spread as in the direct run (there each thread's go to one \
backend; through the one VIP each thread's go to all three), so this row is xlb's own cost.
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

/// Writes `<stamp>.{md,json,png}` and `latest.{md,json,png}` into `dir`; each file is written
/// to `*.tmp` first and renamed, so a reader never sees half a file.
pub fn write(results: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = results.markdown();
    let json = serde_json::to_string_pretty(results)? + "\n";
    let mut written = Vec::new();
    // plotters picks the image format from the extension.
    let tmp = std::env::temp_dir().join(format!("xlb-bench-chart-{}.png", std::process::id()));
    let chart = chart::draw(results, &tmp).and_then(|()| Ok(fs::read(&tmp)?));
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
