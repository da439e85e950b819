//! Differential test of the data plane: frames from a seeded generator (`generate`) go
//! through the real programs (`BPF_PROG_TEST_RUN`, one frame per run: `xlb_xdp` on the
//! clients' side, `xlb_reply` on the backends') and through a reference model written
//! apart from the kernel code (`model`), while the configuration changes (`config`:
//! backends draining, removed, back); every verdict, output frame and metadata must be the
//! model's, and so must the drop counters, each service's packets, bytes and new flows
//! and, at the end, the connection and half-open tables (keys, backends, closed flags).
//!
//! Checksums are judged by what they cover: a rewritten frame must leave every checksum
//! exactly as valid as it came (a wrong one stays wrong by as much), which is what an
//! incremental update promises and what holds whatever the input; all other bytes must be
//! equal.
//!
//! `cargo test` runs [`FIXED_SEED`] for [`CI_FRAMES`] frames. `cargo xtask fuzz --dataplane
//! --seconds N` sets `XLB_DIFFERENTIAL_SECONDS` and runs fresh seeds for that long. A
//! mismatch names the seed and frame index; `XLB_DIFFERENTIAL_SEED` and
//! `XLB_DIFFERENTIAL_FRAMES` replay them.

mod config;
mod generate;
mod model;
mod sums;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    mem,
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::Array;
use lb_common::{Backend, Conn, ConnKind, FwdMeta, words_addr};
use xlb::dataplane::Limits;

use self::{
    config::desired,
    generate::{Gen, Step},
    model::{Expect, Model, To},
    sums::Sum,
};
use crate::{
    harness::{Fixture, Outcome},
    net::Dev,
    ones,
    runner::{XDP_DROP, XDP_PASS, action_name, hex},
};

/// The seed and length of the run in `cargo test`.
const FIXED_SEED: u64 = 0x786c_6264_6966_6631;
const CI_FRAMES: usize = 1_000_000;
/// Frames per seed when running for a time: a fresh namespace and data plane each.
const FRAMES_PER_SEED: usize = 200_000;
/// Counters are compared this often (and at the end).
const COUNTER_EVERY: usize = 4096;

const XDP_TX: u32 = 3;
const TC_ACT_UNSPEC: u32 = -1i32 as u32;
const TC_ACT_REDIRECT: u32 = 7;

fn tc_action_name(a: u32) -> String {
    match a {
        TC_ACT_UNSPEC => "TC_ACT_UNSPEC".into(),
        TC_ACT_REDIRECT => "TC_ACT_REDIRECT".into(),
        a => format!("TC action {}", a as i32),
    }
}

/// Outcomes and drop reasons every run of this many frames reaches.
const MIN_FRAMES_FOR_COVERAGE: usize = 20_000;
const OUTCOMES: &[&str] = &[
    "refused",
    "passed",
    "dropped",
    "sent back out (XDP_TX)",
    "to TC",
    "to TC, partial checksum",
    "ICMP error translated",
    "neighbor answered",
    "reply: passed",
    "reply: redirected",
    "reply: rewritten, to the stack",
    "reply: ICMP error translated",
    "fragment",
    "no_flow",
    "ttl_expired",
    "no_backend",
    "fib_unreachable",
];

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

#[test]
fn kernel_agrees_with_the_model() {
    let start = Instant::now();
    let (mut frames, mut seeds) = (0, 0);
    match env::<u64>("XLB_DIFFERENTIAL_SECONDS") {
        Some(seconds) => {
            let deadline = start + Duration::from_secs(seconds);
            let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
            while Instant::now() < deadline {
                println!("seed {seed:#x}");
                frames += run(seed, FRAMES_PER_SEED, Some(deadline)).unwrap_or_else(|e| fail(frames, &e));
                seeds += 1;
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            }
        }
        None => {
            let seed = env("XLB_DIFFERENTIAL_SEED").unwrap_or(FIXED_SEED);
            let n = env("XLB_DIFFERENTIAL_FRAMES").unwrap_or(CI_FRAMES);
            frames = run(seed, n, None).unwrap_or_else(|e| fail(frames, &e));
            seeds = 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    summary(&format!("dataplane differential: {frames} frames tried ({seeds} seeds, {:.0} frames/s), 0 failures", frames as f64 / secs));
}

/// Prints the summary line `cargo xtask test` collects, past the test harness's capture.
fn summary(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "summary: {line}");
}

fn fail(frames: usize, e: &str) -> ! {
    summary(&format!("dataplane differential: {} frames tried, 1 failures", frames));
    panic!("{e}");
}

/// Runs `n` frames (until `deadline`) of `seed`'s sequence; returns how many ran, or the
/// first disagreement.
fn run(seed: u64, n: usize, deadline: Option<Instant>) -> Result<usize, String> {
    let limits = Limits { conntrack_size: 65536, table_size: 251, max_services: 8, hash_seed: seed as u32 | 1 };
    let mut steps = Gen::new(seed);
    let config = steps.config();
    let mut fx = Fixture::with_limits(limits, &desired(&config));
    fx.dp.answer_neighbors_on(Dev::Fx0.name()).expect("writing fx0's MAC");
    let out = Command::new("ip").args(["route", "add", "blackhole", model::BLACKHOLE4]).output().expect("ip route");
    assert!(out.status.success(), "adding the blackhole route: {}", String::from_utf8_lossy(&out.stderr));
    let mut model = Model::new(limits, [fx.ifindex(Dev::Fx0), fx.ifindex(Dev::Fx1)]);
    model.sync(&config);
    let mut ran = 0;
    let mut i = 0;
    while ran < n && deadline.is_none_or(|d| ran % 1024 != 0 || Instant::now() < d) {
        let frame = match steps.next() {
            Step::Sync(config) => {
                fx.sync(&desired(&config));
                model.sync(&config);
                continue;
            }
            Step::Frame(f) => (false, f),
            Step::Reply(f) => (true, f),
        };
        let (reply, frame) = frame;
        let (want, got) = if reply { (model.reply(&frame), fx.run_reply(&frame)) } else { (model.xdp(&frame), fx.run(&frame)) };
        if let Err(why) = agree(&want, &frame, &got, reply) {
            let got = match &got {
                Ok(o) => format!("{} meta [{}]\n   out: {}", if reply { tc_action_name(o.action) } else { action_name(o.action) }, hex(&o.meta), hex(&o.frame)),
                Err(e) => format!("errno {e}"),
            };
            return Err(format!(
                "seed {seed:#x}, frame {i} ({}): {why}\n    in: {}\n model: {}\nkernel: {got}\nreplay: XLB_DIFFERENTIAL_SEED={seed} XLB_DIFFERENTIAL_FRAMES={}",
                if reply { "xlb_reply" } else { "xlb_xdp" },
                hex(&frame),
                describe(&want),
                i + 1
            ));
        }
        i += 1;
        ran += 1;
        if ran % COUNTER_EVERY == 0 {
            counters(&mut fx, &model).map_err(|e| format!("seed {seed:#x}, by frame {i}: {e}"))?;
        }
    }
    counters(&mut fx, &model).map_err(|e| format!("seed {seed:#x}, by frame {i}: {e}"))?;
    tables(&mut fx, &model).map_err(|e| format!("seed {seed:#x}, after frame {i}: {e}"))?;
    println!("seed {seed:#x}: {ran} frames; outcomes {:?}; drops {:?}", model.outcomes, model.drops);
    // The generator must reach every outcome and drop reason it aims at, or it tests less
    // than it seems to.
    if ran >= MIN_FRAMES_FOR_COVERAGE {
        let reached = model.outcomes.keys().chain(model.drops.keys()).copied().collect::<BTreeSet<&str>>();
        let missed: Vec<&&str> = OUTCOMES.iter().filter(|o| !reached.contains(**o)).collect();
        if !missed.is_empty() {
            return Err(format!("seed {seed:#x}: {ran} frames never reached {missed:?}"));
        }
    }
    Ok(ran)
}

/// The `FwdMeta` XDP left in front of the frame, if any.
fn meta(m: &[u8]) -> Option<FwdMeta> {
    if m.len() != mem::size_of::<FwdMeta>() {
        return None;
    }
    let w = |i: usize| u32::from_ne_bytes(m[i * 4..i * 4 + 4].try_into().unwrap());
    Some(FwdMeta { magic: w(0), ifindex: w(1), l4_addr_diff: w(2), l4_port_diff: w(3), flags: w(4) })
}

fn describe(want: &Expect) -> String {
    match want {
        Expect::Out { frame, sums, to, partial } => format!("{to:?}, partial checksum: {}, checksums {sums:?}\n   out: {}", partial.is_some(), hex(frame)),
        e => format!("{e:?}"),
    }
}

/// Whether the kernel's outcome is the model's; `tc`: of the reply program.
fn agree(want: &Expect, input: &[u8], got: &Result<Outcome, i32>, tc: bool) -> Result<(), String> {
    let out = match (want, got) {
        (Expect::Refused | Expect::RefusedOrPass, Err(e)) if *e == libc::EINVAL => return Ok(()),
        (_, Err(e)) => return Err(format!("the test run failed (errno {e})")),
        (Expect::Refused, Ok(_)) => return Err("ran a frame the kernel should refuse".into()),
        (_, Ok(o)) => o,
    };
    let name = |a: u32| if tc { tc_action_name(a) } else { action_name(a) };
    let action = |a: u32| if out.action == a { Ok(()) } else { Err(format!("{}, want {}", name(out.action), name(a))) };
    match want {
        Expect::Refused => unreachable!(),
        Expect::Pass | Expect::RefusedOrPass => {
            action(if tc { TC_ACT_UNSPEC } else { XDP_PASS })?;
            if !out.meta.is_empty() || out.frame != input {
                return Err("passed, but changed or with metadata".into());
            }
        }
        Expect::Drop => action(XDP_DROP)?,
        Expect::Out { frame, sums, to, partial } => {
            match to {
                To::Redirect => action(TC_ACT_REDIRECT)?,
                To::BackOut(ifindex) => {
                    action(XDP_PASS)?;
                    let want = FwdMeta { magic: FwdMeta::MAGIC, ifindex: *ifindex, flags: FwdMeta::F_BACK_OUT, ..Default::default() };
                    if meta(&out.meta) != Some(want) {
                        return Err(format!("metadata [{}], want {want:?}", hex(&out.meta)));
                    }
                }
                To::Stack => action(TC_ACT_UNSPEC)?,
                To::Tx => {
                    action(XDP_TX)?;
                    if !out.meta.is_empty() {
                        return Err("metadata left for XDP_TX".into());
                    }
                }
                To::Tc(ifindex) => {
                    action(XDP_PASS)?;
                    let meta = meta(&out.meta).ok_or_else(|| format!("metadata of {} bytes", out.meta.len()))?;
                    let flags = if partial.is_some() { FwdMeta::F_FIX_L4 } else { 0 };
                    if (meta.magic, meta.ifindex, meta.flags) != (FwdMeta::MAGIC, *ifindex, flags) {
                        return Err(format!("metadata {meta:?}, want ifindex {ifindex}, flags {flags}"));
                    }
                    if partial.is_none() && (meta.l4_addr_diff, meta.l4_port_diff) != (0, 0) {
                        return Err(format!("checksum differences for a complete checksum: {meta:?}"));
                    }
                    if let Some(p) = partial {
                        partial_diffs(*p, input, &out.frame, &meta)?;
                    }
                }
            }
            if out.frame.len() != frame.len() {
                return Err(format!("{} bytes out, want {}", out.frame.len(), frame.len()));
            }
            let fields: BTreeSet<usize> = sums.iter().flat_map(|s| [s.field(), s.field() + 1]).collect();
            if let Some(at) = (0..frame.len()).find(|i| !fields.contains(i) && out.frame[*i] != frame[*i]) {
                return Err(format!("byte {at} is {:#04x}, want {:#04x}", out.frame[at], frame[at]));
            }
            for s in sums {
                let (was, is) = (s.residual(input), s.residual(&out.frame));
                if !ones::same(was, is) {
                    return Err(format!("{s:?}: covered sum {is:#06x} after, {was:#06x} before"));
                }
                if let Sum::L4 { udp: true, field, .. } = s
                    && out.frame[*field..*field + 2] == [0, 0]
                {
                    return Err(format!("{s:?}: a UDP checksum of 0 (none) made of one"));
                }
            }
        }
    }
    Ok(())
}

/// The differences XDP leaves TC for a checksum that may be partial: folded into the
/// pseudo-header sum they give the rewritten one; folded into a complete checksum (had the
/// guess been wrong) they keep it as valid as it came.
fn partial_diffs(sum: Sum, input: &[u8], out: &[u8], meta: &FwdMeta) -> Result<(), String> {
    let (addr, port) = (ones::from_meta(meta.l4_addr_diff), ones::from_meta(meta.l4_port_diff));
    if !ones::same(ones::add(sum.pseudo(input), addr), sum.pseudo(out)) {
        return Err(format!("address difference {addr:#06x} does not turn the pseudo-header sum into the rewritten one"));
    }
    let field = sum.field();
    let check = u16::from_be_bytes([out[field], out[field + 1]]);
    let mut fixed = out.to_vec();
    fixed[field..field + 2].copy_from_slice(&ones::apply(check, ones::add(addr, port)).to_be_bytes());
    if !ones::same(sum.residual(input), sum.residual(&fixed)) {
        return Err(format!("differences {addr:#06x} + {port:#06x} do not carry a complete checksum over"));
    }
    Ok(())
}

/// The drop counters and each service's packets, bytes and new flows.
fn counters(fx: &mut Fixture, m: &Model) -> Result<(), String> {
    let stats = fx.dp.counters().expect("counters");
    let kernel: BTreeMap<&str, u64> = stats.drops.into_iter().filter(|(_, n)| *n > 0).collect();
    let model: BTreeMap<&str, u64> = m.drops.iter().map(|(k, v)| (*k, *v)).collect();
    if kernel != model {
        return Err(format!("drop counters {kernel:?}, the model's {model:?}"));
    }
    for (key, c) in stats.services {
        let (vip, port, proto) = (key.ip(), u16::from_be(key.port), key.proto);
        let want = m.services_counted.get(&(vip, port, proto)).copied().unwrap_or_default();
        if [c.packets, c.bytes, c.new_flows] != want {
            return Err(format!("{vip}:{port}/{proto}: packets, bytes, new flows {:?}, the model's {want:?}", [c.packets, c.bytes, c.new_flows]));
        }
    }
    Ok(())
}

/// An entry of the connection or half-open table: client, its port, peer, its port,
/// protocol, kind; the backend it names (address, port) and whether it is closed.
type Row = ((IpAddr, u16, IpAddr, u16, u8, u8), Option<(IpAddr, u16)>, bool);

/// The connection and half-open tables against the model's flows.
fn tables(fx: &mut Fixture, m: &Model) -> Result<(), String> {
    let backends: Array<_, Backend> = Array::try_from(fx.map(lb_common::names::BACKENDS)).expect("BACKENDS as an array");
    let mut read = |half_open: bool| -> BTreeSet<Row> {
        let map = if half_open { fx.half_open() } else { fx.conntrack() };
        map.iter()
            .map(|e| {
                let (k, v) = e.expect("reading a connection entry");
                let b = backends.get(&v.backend, 0).expect("the backend an entry names");
                let key =
                    (words_addr(&k.client, k.family), u16::from_be(k.client_port), words_addr(&k.peer, k.family), u16::from_be(k.peer_port), k.proto, k.kind);
                // A half-open entry's flag is not kept up (closing needs the handshake done).
                (key, Some((words_addr(&b.addr, b.family), u16::from_be(b.port))), !half_open && v.flags & Conn::F_CLOSED != 0)
            })
            .collect()
    };
    let (kernel_ct, kernel_ho) = (read(false), read(true));
    let at = |i: usize| (m.instances[i].addr, m.instances[i].port);
    let svc = ConnKind::Service as u8;
    let be = ConnKind::Backend as u8;
    let mut model_ct: BTreeSet<Row> =
        m.established.iter().map(|(f, e)| ((f.client, f.cport, f.vip, f.vport, f.proto, svc), Some(at(e.inst)), e.closed)).collect();
    let mut model_ho: BTreeSet<Row> = m.half_open.iter().map(|(f, &i)| ((f.client, f.cport, f.vip, f.vport, f.proto, svc), Some(at(i)), false)).collect();
    // The backend entries name the backend in their key; what they hold is the flow's
    // entry at the time it was written, its backend included: compared by key and flag.
    let strip = |s: &BTreeSet<Row>| -> BTreeSet<Row> { s.iter().map(|(k, b, c)| if k.5 == be { (*k, None, *c) } else { (*k, *b, *c) }).collect() };
    model_ct.extend(m.to_backend.iter().map(|(&(c, cp, b, bp, proto), &(_, closed))| ((c, cp, b, bp, proto, be), None, closed)));
    model_ho.extend(m.half_open_backend.keys().map(|&(c, cp, b, bp, proto)| ((c, cp, b, bp, proto, be), None, false)));
    for (name, kernel, model) in [("connection", strip(&kernel_ct), model_ct), ("half-open", strip(&kernel_ho), model_ho)] {
        if kernel != model {
            let extra: Vec<_> = kernel.difference(&model).take(5).collect();
            let missing: Vec<_> = model.difference(&kernel).take(5).collect();
            return Err(format!(
                "{name} table: {} entries, the model's {}; kernel only (first 5): {extra:?}; model only: {missing:?}",
                kernel.len(),
                model.len()
            ));
        }
    }
    Ok(())
}
