//! `xlb-testd fetch`: a client for socket-level balancing tests, where the caller must be
//! a process in a chosen cgroup, also inside a `FROM scratch` container (no shell, no curl).

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::exit,
    time::{Duration, Instant},
};

use crate::args::usage;

const TIMEOUT: Duration = Duration::from_secs(3);
/// How long `--when-moved` waits for the test to move this process.
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// `xlb-testd fetch [--udp] [--when-moved] [--hold] ADDR COUNT`: COUNT times, on a new
/// socket, a `GET /` (TCP) or a datagram (UDP) to ADDR; prints one line each, `NAME PEER`,
/// where NAME is the answer and PEER the address the socket reports: getpeername() for TCP,
/// the source recvfrom() gives for UDP (`error WHAT` for a failed one). `--when-moved` first
/// waits until this process's cgroup v2 membership changes (the test moves it into its
/// cgroup), then prints `moved` and starts. `--hold` first opens one more socket to ADDR
/// (TCP: connected; UDP: its datagram sent) and asks it only after the COUNT others, as a
/// last line `held NAME PEER`: whether a long-lived socket still sees the address it asked.
pub fn fetch(args: impl Iterator<Item = String>) -> ! {
    let (mut udp, mut when_moved, mut hold, mut rest) = (false, false, false, Vec::new());
    for a in args {
        match a.as_str() {
            "--udp" => udp = true,
            "--when-moved" => when_moved = true,
            "--hold" => hold = true,
            _ => rest.push(a),
        }
    }
    let [addr, count] = rest.as_slice() else { usage() };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| usage());
    let count: usize = count.parse().unwrap_or_else(|_| usage());
    if when_moved {
        wait_moved();
        println!("moved");
    }
    let held = hold.then(|| Held::open(addr, udp));
    for _ in 0..count {
        let line = Held::open(addr, udp).and_then(Held::ask);
        println!("{}", line.unwrap_or_else(|e| format!("error {e}")));
        let _ = io::stdout().flush();
    }
    if let Some(held) = held {
        println!("held {}", held.and_then(Held::ask).unwrap_or_else(|e| format!("error {e}")));
    }
    exit(0)
}

/// A socket to ADDR, opened (TCP connected, UDP query sent) but not asked yet.
enum Held {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Held {
    fn open(addr: SocketAddr, udp: bool) -> io::Result<Held> {
        if !udp {
            return Ok(Held::Tcp(TcpStream::connect_timeout(&addr, TIMEOUT)?));
        }
        let local: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("address");
        let s = UdpSocket::bind(local)?;
        s.send_to(b"q", addr)?;
        Ok(Held::Udp(s))
    }

    /// `NAME PEER`: the answer, and the peer getpeername() (TCP) or recvfrom() (UDP) reports.
    fn ask(self) -> io::Result<String> {
        match self {
            Held::Tcp(mut s) => {
                let peer = s.peer_addr()?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                let name = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned();
                Ok(format!("{name} {peer}"))
            }
            Held::Udp(s) => {
                s.set_read_timeout(Some(TIMEOUT))?;
                let mut buf = [0u8; 256];
                let (n, from) = s.recv_from(&mut buf)?;
                Ok(format!("{} {from}", String::from_utf8_lossy(&buf[..n]).trim()))
            }
        }
    }
}

fn wait_moved() {
    let v2 = || std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|t| t.lines().find(|l| l.starts_with("0::")).map(str::to_owned));
    let start = v2();
    let deadline = Instant::now() + MOVE_TIMEOUT;
    while v2() == start {
        if Instant::now() > deadline {
            eprintln!("xlb-testd fetch: not moved to another cgroup within {MOVE_TIMEOUT:?} (still {start:?})");
            exit(2)
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
