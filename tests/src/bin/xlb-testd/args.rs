//! The command line and its environment variables.

use std::{
    io::{self},
    process::exit,
};

const DEFAULT_LAME_DUCK_MS: u64 = 1000;
const MAX_LAME_DUCK_MS: u64 = 600_000;

pub struct Args {
    pub name: String,
    pub port: u16,
    pub udp_port: Option<u16>,
    pub lame_duck_ms: u64,
    pub quiet: bool,
}

pub fn usage() -> ! {
    eprintln!(
        "usage: xlb-testd [--name NAME|@hostname] [--port PORT] [--udp-port PORT] [--lame-duck MS] [--quiet]\n\
         \x20      xlb-testd check [--port PORT]\n\
         \x20      xlb-testd fetch [--udp] [--when-moved] [--hold] ADDR COUNT\n\
         env: XLB_TESTD_NAME, XLB_TESTD_PORT, XLB_TESTD_UDP_PORT, XLB_TESTD_LAME_DUCK_MS"
    );
    exit(2)
}

fn parse_ms(s: &str) -> u64 {
    match s.parse::<u64>() {
        Ok(ms) if ms <= MAX_LAME_DUCK_MS => ms,
        _ => {
            eprintln!("xlb-testd: bad lame-duck period {s:?} (milliseconds, at most {MAX_LAME_DUCK_MS})");
            exit(2)
        }
    }
}

/// The host name (uname's nodename).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        eprintln!("xlb-testd: gethostname: {}", io::Error::last_os_error());
        exit(1)
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn parse_port(s: &str) -> u16 {
    s.parse().unwrap_or_else(|_| {
        eprintln!("xlb-testd: bad port {s:?}");
        exit(2)
    })
}

pub fn parse_args() -> Args {
    let mut args = Args {
        name: std::env::var("XLB_TESTD_NAME").unwrap_or_else(|_| "testd".into()),
        port: std::env::var("XLB_TESTD_PORT").map(|p| parse_port(&p)).unwrap_or(8080),
        udp_port: std::env::var("XLB_TESTD_UDP_PORT").ok().map(|p| parse_port(&p)),
        lame_duck_ms: std::env::var("XLB_TESTD_LAME_DUCK_MS").map(|v| parse_ms(&v)).unwrap_or(DEFAULT_LAME_DUCK_MS),
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).unwrap_or_else(|| usage());
        match key.as_str() {
            "--name" | "-n" => args.name = value(),
            "--port" | "-p" => args.port = parse_port(&value()),
            "--udp-port" => args.udp_port = Some(parse_port(&value())),
            "--lame-duck" => args.lame_duck_ms = parse_ms(&value()),
            "--quiet" | "-q" => args.quiet = true,
            "--help" | "-h" => usage(),
            _ => {
                eprintln!("xlb-testd: unknown argument {a:?}");
                usage()
            }
        }
    }
    if args.name == "@hostname" {
        args.name = hostname();
    }
    if args.name.is_empty() || args.name.contains(['\r', '\n']) {
        eprintln!("xlb-testd: bad name {:?}", args.name);
        exit(2)
    }
    args
}
