//! `xlb-testd check`: the Docker HEALTHCHECK of a `FROM scratch` image (no shell, no curl).

use crate::args::{parse_port, usage};
use std::{
    io::{self, BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::exit,
    time::Duration,
};

/// Time limit of each step of `check` (Docker's own timeout kills it anyway).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `xlb-testd check [--port PORT]`: exits 0 if this host's xlb-testd answers `GET /health`
/// with 200, else 1.
pub fn check(mut args: impl Iterator<Item = String>) -> ! {
    let mut port = std::env::var("XLB_TESTD_PORT").map(|p| parse_port(&p)).unwrap_or(8080);
    while let Some(a) = args.next() {
        match a.split_once('=') {
            Some(("--port", v)) => port = parse_port(v),
            _ if a == "--port" || a == "-p" => port = parse_port(&args.next().unwrap_or_else(|| usage())),
            _ => {
                eprintln!("xlb-testd check: unknown argument {a:?}");
                usage()
            }
        }
    }
    let verdict = (|| -> io::Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, CHECK_TIMEOUT)?;
        s.set_read_timeout(Some(CHECK_TIMEOUT))?;
        s.set_write_timeout(Some(CHECK_TIMEOUT))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    })();
    match verdict {
        Ok(line) if line.split_whitespace().nth(1) == Some("200") => {
            println!("{line}");
            exit(0)
        }
        Ok(line) => {
            println!("unhealthy: {line:?}");
            exit(1)
        }
        Err(e) => {
            println!("unhealthy: 127.0.0.1:{port}: {e}");
            exit(1)
        }
    }
}
