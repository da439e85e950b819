//! Differential HTTP: the same raw bytes (`cases.rs`) through xlb's proxy and through
//! a real nginx, each in front of a backend that records the exact bytes it receives
//! (`recorder.rs`). For every case xlb must either refuse with a 4xx while the backend
//! sees nothing, or forward requests that read one way only (strictly parsed, bodies
//! as the client meant them). nginx's behaviour is reported beside xlb's in
//! `docs/http-differential.md`, which this test regenerates: the committed file must
//! equal the run (`XLB_WRITE_DIFFERENTIAL=1` rewrites it).

mod cases;
mod nginx;
mod recorder;
mod wire;

use std::{fmt::Write as _, net::SocketAddr, path::Path};

use cases::Case;
use recorder::{Framing, Recorder, Request};

use crate::{backends::backend, lb::Lb};

/// What one proxy did with one case.
struct Outcome {
    /// Statuses of the HTTP/1 answers, interim ones included.
    answers: Vec<u16>,
    /// The answer was HTTP/2 frames (to the preface, or after `101`).
    h2: bool,
    /// Bytes came back that are neither (an HTTP/0.9 answer).
    unframed: bool,
    /// The backend's connections, read strictly.
    forwarded: Result<Vec<Request>, String>,
}

fn run_case(addr: SocketAddr, rec: &Recorder, case: &Case) -> Outcome {
    let got = wire::exchange(addr, &case.steps, case.answers());
    let answers: Vec<u16> = wire::answers(&got).iter().map(|a| a.status).collect();
    let h2 = answers.contains(&101) || wire::is_h2(&got);
    let unframed = answers.is_empty() && !h2 && !got.is_empty();
    let forwarded = rec.take().iter().map(|c| recorder::requests(c)).collect::<Result<Vec<_>, _>>().map(|v| v.concat());
    Outcome { answers, h2, unframed, forwarded }
}

/// The table cell: answers, then what the backend got.
fn describe(o: &Outcome, backend: SocketAddr) -> String {
    let mut said: Vec<String> = o.answers.iter().map(u16::to_string).collect();
    if o.h2 {
        said.push("h2".into());
    }
    if o.unframed {
        said.push("bytes without a status line".into());
    }
    let said = if said.is_empty() { "no answer".to_string() } else { said.join(" ") };
    let got = match &o.forwarded {
        Err(e) => format!("**invalid**: {e}"),
        Ok(r) if r.is_empty() => "nothing forwarded".into(),
        Ok(r) => r.iter().map(|r| forwarded(r, backend)).collect::<Vec<_>>().join(", "),
    };
    format!("{said} · {got}")
}

/// One forwarded request; a `Host` naming the backend's address is shown as `<backend>`.
fn forwarded(r: &Request, backend: SocketAddr) -> String {
    let mut s = format!("{} {}", r.method, r.target);
    match r.framing {
        Framing::None => {}
        Framing::Length(n) => write!(s, " CL {n}").unwrap(),
        Framing::Chunked => write!(s, " chunked {} B", r.body.len()).unwrap(),
    }
    match r.host.as_deref() {
        Some("x") => {}
        Some(h) if h == backend.to_string() => s.push_str(" Host <backend>"),
        h => write!(s, " Host {}", h.unwrap_or("none")).unwrap(),
    }
    if r.expect {
        s.push_str(" Expect");
    }
    s
}

/// xlb's rule for a case: refused with a 4xx and nothing forwarded, or each forwarded
/// request unambiguous, meant by the client, and answered.
fn judge(case: &Case, o: &Outcome) -> Result<(), String> {
    let reqs = o.forwarded.as_ref().map_err(|e| format!("forwarded bytes that do not read one way: {e}"))?;
    if reqs.len() > case.answers() {
        return Err(format!("{} requests forwarded, the client sent {}", reqs.len(), case.answers()));
    }
    for (r, want) in reqs.iter().zip(&case.meant) {
        if r.body != want.as_bytes() {
            return Err(format!("forwarded body {:?}, the client meant {want:?}", String::from_utf8_lossy(&r.body)));
        }
    }
    if o.h2 {
        return if reqs.len() == case.answers() { Ok(()) } else { Err("switched to HTTP/2 but forwarded nothing".into()) };
    }
    let finals: Vec<u16> = o.answers.iter().copied().filter(|&s| s >= 200).collect();
    let ok = finals.iter().take_while(|&&s| s < 400).count();
    if ok != reqs.len() {
        return Err(format!("{} requests forwarded, {ok} answered", reqs.len()));
    }
    if reqs.len() < case.answers() && !finals.get(ok).is_some_and(|s| (400..500).contains(s)) {
        return Err(format!("neither forwarded nor refused with a 4xx (answers {:?})", o.answers));
    }
    Ok(())
}

/// The bytes as a table cell: printable ASCII, escapes for the rest, long ones cut.
fn shown(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b.iter().take(90) {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'|' | b'`' => write!(s, "\\x{c:02x}").unwrap(),
            0x20..0x7f => s.push(c as char),
            _ => write!(s, "\\x{c:02x}").unwrap(),
        }
    }
    if b.len() > 90 {
        write!(s, "… ({} bytes)", b.len()).unwrap();
    }
    format!("`{s}`")
}

fn table(nginx: &str, rows: &[(String, String, String, String)]) -> String {
    let mut t = String::from(
        "# HTTP differential: xlb and nginx on the same bytes\n\n\
         Generated by `tests/tests/proxy/differential/` (`cargo test -p xlb-tests --test proxy differential`;\n\
         `XLB_WRITE_DIFFERENTIAL=1` rewrites this file, the test fails when it differs from the run).\n\
         Each case's raw bytes go to xlb's proxy and to nginx, each in front of a backend that records the\n\
         exact bytes it receives and reads them with a strict parser of its own. A cell is the client's\n\
         answers (status codes; `h2`: HTTP/2 frames), then what the backend received: each request as\n\
         method, target and framing (`CL n`, or `chunked` with the body's size; `Host` when not `x`,\n\
         `<backend>` being the backend's own address; `Expect` when forwarded), or `invalid` with the\n\
         strict rule it broke (ambiguous framing, a missing `Host`, bytes left over). xlb must refuse with\n\
         a 4xx and forward nothing, or forward what the client meant, unambiguously; nginx is reported,\n\
         not judged.\n\n",
    );
    writeln!(t, "nginx: `{nginx}`, default settings but `proxy_http_version 1.1` and `proxy_set_header Host $host`.\n").unwrap();
    t.push_str("| case | bytes sent | xlb | nginx |\n|---|---|---|---|\n");
    for (name, bytes, x, n) in rows {
        writeln!(t, "| {name} | {bytes} | {x} | {n} |").unwrap();
    }
    t
}

#[test]
fn http_differential_against_nginx() {
    let rec_x = Recorder::start();
    let lb = Lb::one("", vec![backend("recorder", rec_x.addr, 1)]);
    let rec_n = Recorder::start();
    let ng = nginx::Nginx::start(rec_n.addr);
    let (mut rows, mut failures) = (Vec::new(), Vec::new());
    let all = cases::all();
    for case in &all {
        let x = run_case(lb.addr(), &rec_x, case);
        let n = run_case(ng.addr, &rec_n, case);
        if let Err(e) = judge(case, &x) {
            failures.push(format!("{}: {e} ({})", case.name, describe(&x, rec_x.addr)));
        }
        rows.push((case.name.to_string(), shown(&case.bytes()), describe(&x, rec_x.addr), describe(&n, rec_n.addr)));
    }
    println!("HTTP differential: {} cases, {} failures", all.len(), failures.len());
    let text = table(&ng.version, &rows);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/http-differential.md");
    if std::env::var_os("XLB_WRITE_DIFFERENTIAL").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert!(failures.is_empty(), "xlb forwarded ambiguously or did not refuse:\n{}", failures.join("\n"));
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == text, "{} differs from this run (XLB_WRITE_DIFFERENTIAL=1 rewrites it); the run:\n{text}", path.display());
}
