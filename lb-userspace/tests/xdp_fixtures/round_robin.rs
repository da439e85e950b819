//! Round robin walks the smooth weighted sequence, per CPU, also where its position wraps
//! around the end of the table.

use std::{collections::BTreeSet, io, mem, net::IpAddr};

use xlb::config::Method;

use crate::{
    harness::{Fixture, LIMITS},
    net::{B4A, B4B, B4C, Host, TRIO},
    services::{even, web, web_flows},
};

/// Pins the calling thread to the CPU it is on until dropped. Round-robin positions are
/// per CPU and a test run executes on the caller's CPU, so consecutive runs then walk one
/// position.
struct PinCpu(libc::cpu_set_t);

impl PinCpu {
    fn here() -> Self {
        // SAFETY: cpu_set_t is plain data; the calls get valid pointers and their sizes.
        unsafe {
            let mut saved: libc::cpu_set_t = mem::zeroed();
            let size = mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut saved), 0, "sched_getaffinity: {}", io::Error::last_os_error());
            let cpu = libc::sched_getcpu();
            assert!(cpu >= 0, "sched_getcpu: {}", io::Error::last_os_error());
            let mut one: libc::cpu_set_t = mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0, "pinning to CPU {cpu}: {}", io::Error::last_os_error());
            PinCpu(saved)
        }
    }
}

impl Drop for PinCpu {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// The backends `n` consecutive new flows went to, all on one CPU.
fn sequence(fx: &mut Fixture, n: u16, hosts: &[&'static Host]) -> Vec<&'static Host> {
    let _pin = PinCpu::here();
    web_flows(n).iter().map(|p| fx.send("round robin: new flow", p, hosts)).collect()
}

/// Hosts as one letter each (a, b, c), for printing sequences.
fn letters(seq: &[&Host]) -> String {
    seq.iter().map(|h| (b'a' + TRIO.iter().position(|t| t.ip == h.ip).unwrap() as u8) as char).collect()
}

/// Round robin walks the smooth weighted sequence: consecutive new flows repeat it with a
/// period of the total weight (equal weights: a cycle through every backend), and the
/// shares over 300 flows are the weights' exactly, or within one flow.
#[test]
fn round_robin_cycles_in_weight_proportion() {
    // Name, backends with weights, flows, and each backend's share of them.
    type Weighted<'a> = (&'a str, &'a [(&'a Host, u32)], u16, &'a [usize]);
    let cases: [Weighted; 3] = [
        ("1:1:1", &[(&B4A, 1), (&B4B, 1), (&B4C, 1)], 300, &[100, 100, 100]),
        ("1:2", &[(&B4A, 1), (&B4B, 2)], 300, &[100, 200]),
        ("1:2:3", &[(&B4A, 1), (&B4B, 2), (&B4C, 3)], 600, &[100, 200, 300]),
    ];
    for (name, backends, n, want) in cases {
        let hosts: Vec<&'static Host> = TRIO[..backends.len()].to_vec();
        let mut fx = Fixture::new(&[web(Method::RoundRobin, backends)]);
        let seq = sequence(&mut fx, n, &hosts);
        let counts: Vec<usize> = hosts.iter().map(|h| seq.iter().filter(|s| s.ip == h.ip).count()).collect();
        println!("round robin {name}: {n} flows -> {counts:?}; first flows {}", letters(&seq[..12]));
        for ((h, got), want) in hosts.iter().zip(&counts).zip(want) {
            assert!(got.abs_diff(*want) <= 1, "{name}: {} got {got} of {n} flows, want {want} (±1): {counts:?}", h.ip);
        }
        // Within one table (where the position does not wrap) the sequence is periodic.
        let period: usize = backends.iter().map(|b| b.1 as usize).sum();
        let within = (LIMITS.table_size as usize).min(seq.len());
        if let Some(i) = (period..within).find(|&i| seq[i].ip != seq[i - period].ip) {
            panic!("{name}: flow {i} went to {}, flow {} (one period before) to {}: {}", seq[i].ip, i - period, seq[i - period].ip, letters(&seq[..within]));
        }
        if backends.iter().all(|b| b.1 == 1) {
            let cycle: BTreeSet<IpAddr> = seq[..period].iter().map(|h| h.ip).collect();
            assert_eq!(cycle.len(), period, "{name}: the first {period} flows should visit every backend once: {}", letters(&seq[..period]));
        }
    }
}

/// The cycle goes on where the per-CPU position wraps around the end of the table: with 3
/// equal backends no backend is skipped or chosen twice in a row there either.
#[test]
fn round_robin_cycle_continues_past_the_table_end() {
    let mut fx = Fixture::new(&[even(Method::RoundRobin, &TRIO)]);
    let size = LIMITS.table_size as usize;
    let seq = sequence(&mut fx, 2 * size as u16 + 10, &TRIO);
    let breaks: Vec<usize> = (3..seq.len()).filter(|&i| seq[i].ip != seq[i - 3].ip).collect();
    let around = |i: usize| letters(&seq[i.saturating_sub(6)..(i + 6).min(seq.len())]);
    assert!(
        breaks.is_empty(),
        "the a-b-c cycle breaks at flows {breaks:?} (table of {size} slots; {size} % 3 = {}); around the first: {}",
        size % 3,
        breaks.first().map(|&i| around(i)).unwrap_or_default()
    );
}
