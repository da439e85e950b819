//! HTTP/2 streams per connection (`limits.max_concurrent_streams`, issue 17): the limit
//! is what xlb advertises over TLS, h2c prior knowledge and h2c upgrade alike (nghttp
//! reads the SETTINGS), a client opening more than that gets the extra streams refused
//! (REFUSED_STREAM) and keeps its connection, and h2load, which holds its requests back
//! to the advertised limit, gets every answer with memory bounded.

use std::{
    io::{self, Read},
    net::SocketAddr,
    process::Command,
    time::Duration,
};

use xlb::config::tls::CertFiles;

use crate::{
    backends::Testd,
    client::{Client, H2_START},
    lb::{Lb, svc},
};

const LIMIT: u32 = 4;

/// One frame: type, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    [&len[1..], &[kind, flags], &stream.to_be_bytes(), payload].concat()
}

fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut h = [0u8; 9];
    r.read_exact(&mut h)?;
    let mut payload = vec![0; u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize];
    r.read_exact(&mut payload)?;
    Ok((h[3], h[4], u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff, payload))
}

/// Frames until none came for `quiet`.
fn frames_until_quiet(c: &mut Client, quiet: Duration) -> Vec<Frame> {
    c.w.set_read_timeout(Some(quiet)).unwrap();
    std::iter::from_fn(|| read_frame(&mut c.r).ok()).collect()
}

/// The prior-knowledge start of a connection: what the server's SETTINGS say of
/// MAX_CONCURRENT_STREAMS (0x3), acknowledged.
fn start(addr: SocketAddr) -> (Client, Option<u32>) {
    let mut c = Client::connect(addr);
    c.send(H2_START).unwrap();
    c.w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let settings = loop {
        let (kind, flags, _, p) = read_frame(&mut c.r).expect("the server's SETTINGS");
        if kind == 4 && flags & 1 == 0 {
            break p;
        }
    };
    let max = settings.chunks(6).find(|s| s[..2] == [0, 3]).map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    c.send(&frame(4, 1, 0, &[])).unwrap();
    (c, max)
}

/// Opens `streams`, each a GET whose body has not ended (so each stays open): HEADERS
/// with END_HEADERS only; `:method GET`, `:scheme http`, `:path /`, `:authority x`.
fn open(c: &mut Client, streams: &[u32]) {
    let bytes: Vec<u8> = streams.iter().flat_map(|&s| frame(1, 4, s, &[0x82, 0x86, 0x84, 0x01, 0x01, b'x'])).collect();
    c.send(&bytes).unwrap();
}

/// Ends the bodies of `streams`; the body each was answered, by stream.
fn finish(c: &mut Client, streams: &[u32]) -> Vec<(u32, String)> {
    let bytes: Vec<u8> = streams.iter().flat_map(|&s| frame(0, 1, s, &[])).collect();
    c.send(&bytes).unwrap();
    let mut bodies = std::collections::BTreeMap::<u32, Vec<u8>>::new();
    for (kind, _, s, p) in frames_until_quiet(c, Duration::from_millis(800)) {
        if kind == 0 {
            bodies.entry(s).or_default().extend(p);
        }
    }
    bodies.into_iter().map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned())).collect()
}

fn refused(frames: &[Frame]) -> Vec<u32> {
    frames.iter().filter(|(kind, _, _, p)| *kind == 3 && p[..] == [0, 0, 0, 7]).map(|f| f.2).collect()
}

#[test]
fn streams_over_the_limit_are_refused_and_the_connection_goes_on() {
    let t = Testd::start("t");
    let lb = Lb::one(&format!("limits: {{ max_concurrent_streams: {LIMIT} }}"), vec![t.view(1)]);
    let addr = lb.addr();
    let (mut c, max) = start(addr);
    assert_eq!(max, Some(LIMIT), "the advertised limit");
    // Twelve at once, ignoring it: the first four are served, the other eight refused.
    let streams: Vec<u32> = (0..12).map(|i| 1 + 2 * i).collect();
    open(&mut c, &streams);
    let frames = frames_until_quiet(&mut c, Duration::from_millis(800));
    let refusals = refused(&frames);
    eprintln!("12 streams opened with max_concurrent_streams {LIMIT}: refused {refusals:?}");
    assert_eq!(refusals, streams[LIMIT as usize..], "the streams past the limit are refused, and only those");
    // Another client meanwhile; its answer is the backend's, as each stream's must be.
    let answer = Client::connect(addr).get("x", "/", &[]).unwrap();
    assert_eq!(answer.status, 200);
    let served = |streams: &[u32]| streams.iter().map(|&s| (s, answer.text())).collect::<Vec<_>>();
    let first = &streams[..LIMIT as usize];
    assert_eq!(finish(&mut c, first), served(first), "the streams within the limit are answered by the backend");
    // The connection goes on: four more, all served.
    let next: Vec<u32> = (12..12 + LIMIT).map(|i| 1 + 2 * i).collect();
    open(&mut c, &next);
    assert_eq!(finish(&mut c, &next), served(&next), "streams on the same connection afterwards");
    // A client that goes on opening streams regardless: past 1,024 refusals h2 ends the
    // connection (GOAWAY ENHANCE_YOUR_CALM, 0xb), so refusing costs nothing lasting.
    let (mut greedy, _) = start(addr);
    open(&mut greedy, &(0..1100).map(|i| 1 + 2 * i).collect::<Vec<u32>>());
    let frames = frames_until_quiet(&mut greedy, Duration::from_millis(800));
    let goaway = frames.iter().find(|f| f.0 == 7).map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]));
    eprintln!("1,100 streams at once: {} refused, GOAWAY {goaway:?}", refused(&frames).len());
    assert_eq!(goaway, Some(0xb), "a client refused 1,024 times is sent away");
    assert_eq!(Client::connect(addr).get("x", "/", &[]).unwrap().status, 200, "other clients go on");
}

/// This process's resident memory (the proxy runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
}

/// h2load's `requests:` line, and how many succeeded.
fn h2load(url: &str) -> (String, u32) {
    let out = Command::new("h2load").args(["-c", "8", "-m", "100", "-n", "4000", url]).output().expect("h2load (apt-get install nghttp2-client)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("requests:")).unwrap_or_else(|| panic!("h2load: {stdout}")).to_owned();
    let ok = line.split(", ").find_map(|f| f.strip_suffix(" succeeded")).and_then(|n| n.parse().ok()).unwrap_or(0);
    (line, ok)
}

#[test]
fn the_limit_holds_over_tls_prior_knowledge_and_h2c_upgrade() {
    let t = Testd::start("t");
    let dir = xlb_tests::util::TempDir::new();
    xlb_tests::tls::Ca::new().leaf(dir.path(), "lb", "lb", &["lb.test"], false);
    let options = format!("limits: {{ max_concurrent_streams: {LIMIT} }}");
    let plain = Lb::one(&options, vec![t.view(1)]);
    let tls = Lb::new();
    let files = [CertFiles { cert: dir.path().join("lb.crt"), key: dir.path().join("lb.key"), default: true }];
    assert_eq!(tls.proxy.load_certificates(&files), Vec::<String>::new());
    tls.update(vec![xlb::plan::ServiceView { tls: true, ..svc("web", &options, vec![t.view(1)]) }]);
    let urls = [("h2 over TLS", format!("https://{}/", tls.addr()), None), ("h2c prior knowledge", format!("http://{}/", plain.addr()), None)];
    let upgrade = ("h2c upgrade", format!("http://{}/", plain.addr()), Some("-u"));
    for (what, url, flag) in urls.iter().chain([&upgrade]) {
        let out = Command::new("nghttp").args(["-nv"]).args(flag.iter()).arg(url).output().expect("nghttp (apt-get install nghttp2-client)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):{LIMIT}]")), "{what}: the server's SETTINGS\n{stdout}");
        assert!(stdout.contains(":status: 200"), "{what}: answered\n{stdout}");
    }
    // h2load asks for 100 at once on each of 8 connections. Those it sends before the
    // server's SETTINGS arrive may be refused (nghttp2 does not retry them); after, it
    // holds its requests back to the advertised 4: all of them answered, the proxy's
    // memory bounded.
    for (what, url, _) in &urls {
        let before = rss_kib();
        let (line, ok) = h2load(url);
        let grew = rss_kib().saturating_sub(before);
        eprintln!("{what}, h2load -c 8 -m 100 -n 4000 against max_concurrent_streams {LIMIT}: {line}; resident memory grew {grew} KiB");
        assert!(ok >= 4000 - 8 * (100 - LIMIT), "{what}: more failed than were sent before SETTINGS: {line}");
        assert!(grew < 64 * 1024, "{what}: resident memory grew {grew} KiB");
    }
}
