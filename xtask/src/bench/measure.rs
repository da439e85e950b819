//! CPU and memory accounting from /proc, and the kernel's BPF run-time statistics.
//!
//! - Host CPU: the `cpu` line of /proc/stat (all processes, interrupts and softirqs).
//! - A user-space balancer: utime + stime of every process in the LB namespace
//!   (/proc/PID/stat; a thread group leader's line sums its threads).
//! - xlb's kernel programs run in softirq context and are charged to no process. With
//!   `BPF_ENABLE_STATS` held, the kernel times every program run; /proc/PID/fdinfo of each
//!   program fd xlb holds shows `run_time_ns` and `run_cnt`. Timing costs two clock reads
//!   per program run, so it is on only while xlb runs.
//! - The client's SYN retransmissions (/proc/net/netstat in its namespace): connections
//!   that waited for a lost or refused SYN, time that no request's latency shows.
use std::{collections::HashMap, fs, os::fd::OwnedFd, os::fd::FromRawFd as _};

use anyhow::{Context as _, Result, bail};

use super::sys::{self, Ns};

/// Ticks of the `cpu` line of /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostCpu {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub irq: u64,
    pub softirq: u64,
    pub total: u64,
}

impl HostCpu {
    pub fn read() -> Result<HostCpu> {
        let stat = fs::read_to_string("/proc/stat")?;
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { bail!("no cpu line in /proc/stat") };
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 8 {
            bail!("short cpu line in /proc/stat: {line}");
        }
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        Ok(HostCpu {
            user: v[0] + v[1],
            system: v[2],
            idle: v[3] + v[4],
            irq: v[5],
            softirq: v[6],
            total: v[..8].iter().sum(),
        })
    }

    pub fn since(&self, earlier: &HostCpu) -> HostCpu {
        HostCpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            idle: self.idle - earlier.idle,
            irq: self.irq - earlier.irq,
            softirq: self.softirq - earlier.softirq,
            total: self.total - earlier.total,
        }
    }

    /// Milliseconds of CPU that were not idle.
    pub fn busy_ms(&self) -> f64 {
        ticks_ms(self.total - self.idle)
    }
}

pub fn ticks_ms(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1000.0 / hz
}

/// utime + stime of `pid` in ticks.
pub fn proc_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of each process in `ns`.
pub fn ns_ticks(ns: &Ns) -> HashMap<u32, u64> {
    ns.pids().into_iter().filter_map(|pid| Some((pid, proc_ticks(pid)?))).collect()
}

/// Milliseconds the processes present at both samples spent between them.
pub fn ns_ms(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> f64 {
    let ticks = after.iter().filter_map(|(pid, t)| Some(t - before.get(pid)?)).sum();
    ticks_ms(ticks)
}

/// SYNs the kernel of `ns` has sent again so far (`TcpExt: TCPSynRetrans`).
pub fn syn_retransmits(ns: &Ns) -> Result<u64> {
    let text = sys::sh(ns.cmd("cat").arg("/proc/net/netstat"))?;
    netstat_field(&text, "TcpExt", "TCPSynRetrans").context("no TcpExt TCPSynRetrans in /proc/net/netstat")
}

/// A counter of /proc/net/netstat, whose groups are a line of names and a line of values.
fn netstat_field(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Sum of `run_time_ns` and `run_cnt` over the BPF programs `pid` holds.
pub fn bpf_run_time(pid: u32) -> (u64, u64) {
    let (mut ns, mut count) = (0, 0);
    for info in fdinfos(pid) {
        if info.contains("prog_id:") {
            ns += fdinfo_field(&info, "run_time_ns").unwrap_or(0);
            count += fdinfo_field(&info, "run_cnt").unwrap_or(0);
        }
    }
    (ns, count)
}

/// Kernel memory charged to the BPF maps and programs `pid` holds (`memlock` in fdinfo).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct BpfMemory {
    pub maps: u64,
    pub map_count: u64,
    pub programs: u64,
}

pub fn bpf_memory(pid: u32) -> BpfMemory {
    let mut mem = BpfMemory::default();
    for info in fdinfos(pid) {
        let memlock = fdinfo_field(&info, "memlock").unwrap_or(0);
        if info.contains("map_id:") {
            mem.maps += memlock;
            mem.map_count += 1;
        } else if info.contains("prog_id:") {
            mem.programs += memlock;
        }
    }
    mem
}

/// Resident memory of a process in bytes, by kind (/proc/PID/status), and the part of it
/// that is BPF maps mapped into the process (/proc/PID/smaps: `anon_inode:bpf-map`
/// mappings, the `BPF_F_MMAPABLE` maps): kernel map memory, also counted in `bpf` memlock,
/// which RSS counts as a mapped file (RssFile) once the process touches its pages.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Rss {
    /// VmRSS: the sum of the three below.
    pub total: u64,
    /// RssAnon: the heap, thread stacks and other private anonymous memory.
    pub anon: u64,
    /// RssFile: mapped files (the binary, its libraries, the mapped BPF maps).
    pub file: u64,
    /// RssShmem: shared memory (System V, tmpfs, shared anonymous).
    pub shmem: u64,
    /// Resident pages of mapped BPF maps (from smaps).
    pub bpf_maps: u64,
}

impl Rss {
    pub fn of(pid: u32) -> Option<Rss> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
        };
        let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        Some(Rss {
            total: kib("VmRSS:")?,
            anon: kib("RssAnon:")?,
            file: kib("RssFile:")?,
            shmem: kib("RssShmem:")?,
            bpf_maps: smaps_rss(&smaps, |path| path.contains("bpf-map")),
        })
    }

    /// Resident memory that is not kernel map memory.
    pub fn own(&self) -> u64 {
        self.total.saturating_sub(self.bpf_maps)
    }
}

/// Sum of the `Rss:` of the mappings whose path satisfies `pick`, in bytes.
fn smaps_rss(smaps: &str, pick: impl Fn(&str) -> bool) -> u64 {
    let mut picked = false;
    let mut sum = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        // A mapping's header: "start-end perms offset dev inode [path]".
        if first.contains('-') && !first.ends_with(':') {
            picked = pick(words.nth(4).unwrap_or(""));
        } else if picked && first == "Rss:" {
            sum += words.next().and_then(|k| k.parse::<u64>().ok()).unwrap_or(0) * 1024;
        }
    }
    sum
}

fn fdinfos(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Vec::new() };
    dir.filter_map(|e| fs::read_to_string(e.ok()?.path()).ok()).collect()
}

fn fdinfo_field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
}

/// While held, the kernel keeps run-time statistics for every BPF program
/// (`BPF_ENABLE_STATS`, Linux 5.8); closing the descriptor turns them off again, also when
/// the benchmark dies.
pub struct BpfStats(#[allow(dead_code)] OwnedFd);

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }, BPF_STATS_RUN_TIME = 0.
        let attr = [0u32; 2];
        // SAFETY: bpf(2) with a zeroed attr of the size we pass; it returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), std::mem::size_of_val(&attr))
        };
        if fd < 0 {
            bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just gave us and nobody else owns.
        Ok(BpfStats(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// The network namespace inode of a namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
pub fn netns_inode(path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path).ok().map(|m| m.ino())
}

/// CPU ticks of every user-space process on the host that is not this one and not in one
/// of the namespaces `ours` (inodes): other people's builds and tests, the noise in our
/// figures. Kernel threads are left out (softirq work for our own traffic runs in them).
pub fn foreign_ticks(ours: &[u64]) -> HashMap<u32, u64> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else { return HashMap::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest starts at field 3 (state): flags is field 9, utime 14, stime 15.
            if f.get(6)?.parse::<u64>().ok()? & PF_KTHREAD != 0 {
                return None;
            }
            let ns = netns_inode(&format!("/proc/{pid}/ns/net"))?;
            if ours.contains(&ns) {
                return None;
            }
            Some((pid, f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
        })
        .collect()
}

/// Milliseconds the foreign processes spent between two samples; processes that started in
/// between count whole, those that ended are lost (a lower bound).
pub fn foreign_ms(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> f64 {
    let ticks = after.iter().map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0))).sum();
    ticks_ms(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rss_of_picked_mappings() {
        let smaps = "\
55f4b768d000-55f4b965d000 rw-p 00000000 00:00 0                          [heap]
Size:              32576 kB
Rss:               32080 kB
7fcfa46fc000-7fcfa670b000 rw-s 00000000 00:10 1038                       anon_inode:bpf-map
Size:              32828 kB
Rss:               32768 kB
7fcfa6878000-7fcfa68b9000 r--s 00001000 00:10 1038                       anon_inode:bpf-map
Rss:                 260 kB
7fcfa670b000-7fcfa67d4000 rw-p 00000000 00:00 0 
Rss:                 784 kB
VmFlags: rd wr mr mw me ac sd
";
        assert_eq!(smaps_rss(smaps, |p| p.contains("bpf-map")), (32768 + 260) * 1024);
        assert_eq!(smaps_rss(smaps, |p| p == "[heap]"), 32080 * 1024);
        assert_eq!(smaps_rss(smaps, str::is_empty), 784 * 1024);
    }

    #[test]
    fn netstat_counter_by_name() {
        let netstat = "\
TcpExt: SyncookiesSent TCPSynRetrans TCPTimeouts
TcpExt: 0 4631 4702
IpExt: InNoRoutes TCPSynRetrans
IpExt: 3 9
";
        assert_eq!(netstat_field(netstat, "TcpExt", "TCPSynRetrans"), Some(4631));
        assert_eq!(netstat_field(netstat, "IpExt", "TCPSynRetrans"), Some(9));
        assert_eq!(netstat_field(netstat, "TcpExt", "TCPFastOpen"), None);
    }
}
