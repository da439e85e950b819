//! Certificates replaced, broken and refused while xlb runs: open TLS connections go on,
//! new ones see the new certificate, a bad file is reported and the old certificate
//! keeps serving, garbage instead of a ClientHello is logged and nothing crashes.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use xlb_tests::util::wait_for;

use crate::{LB, Setup};

/// A keep-alive TLS connection held by `openssl s_client`, one request at a time.
struct Held {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Held {
    fn open(s: &Setup) -> Held {
        let ca = s.path("ca.pem");
        let mut child = s
            .topo
            .client
            .exec("openssl", ["s_client", "-quiet", "-connect", &format!("{LB}:443"), "-servername", "app.test", "-CAfile", &ca.display().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s_client");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Held { child, lines }
    }

    /// Sends a GET on the held connection and waits for the backend's name.
    fn get(&mut self) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        loop {
            match self.lines.recv_timeout(Duration::from_secs(5)) {
                Ok(l) if l.trim() == "b1" => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(format!("no answer on the held connection: {e}")),
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a new connection for `app.test` is served a certificate whose subject
/// ends with `want`.
fn served(s: &Setup, want: &str) -> Option<String> {
    wait_for(Duration::from_secs(8), Duration::from_millis(200), || s.subject("app.test").ok().filter(|got| got.ends_with(want)))
}

#[test]
fn certificates_reload_under_open_connections_and_bad_files_keep_the_old_one() {
    let s = Setup::new();
    s.ca.leaf(s.dir.path(), "app", "app one", &["app.test"], false);
    let d = s.dir.path().display();
    // No default certificate: an unknown name gets an alert.
    let cfg = s.config(&format!("  certificates:\n    - {{ cert: {d}/app.crt, key: {d}/app.key }}\n"), "{ port: 443 }");
    let mut xlb = s.start(&cfg);
    let unknown = s.subject("unknown.test");
    assert!(unknown.is_err(), "unknown SNI without a default certificate: an alert, got {unknown:?}");
    assert!(served(&s, "CN = app one").is_some(), "first certificate\n{}", xlb.log());
    let mut held = Held::open(&s);
    held.get().unwrap_or_else(|e| panic!("{e}\n{}", xlb.log()));

    // Replaced on disk: the file watcher loads it, no signal.
    s.ca.leaf(s.dir.path(), "app", "app two", &["app.test"], false);
    assert!(served(&s, "CN = app two").is_some(), "the replaced certificate is served to new connections\n{}", xlb.log());
    held.get().unwrap_or_else(|e| panic!("the connection opened before the replacement: {e}\n{}", xlb.log()));

    // Broken files, each through SIGHUP: logged, in the status, the old one serves.
    let good_key = fs::read(s.path("app.key")).unwrap();
    s.ca.leaf(s.dir.path(), "other", "other", &["other.test"], false);
    s.ca.leaf(s.dir.path(), "old", "expired", &["app.test"], true);
    let cases: [(&str, Box<dyn Fn()>); 3] = [
        ("bad PEM", Box::new(|| fs::write(s.path("app.crt"), "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n").unwrap())),
        ("KeyMismatch", Box::new(|| {
            s.ca.leaf(s.dir.path(), "app", "app three", &["app.test"], false);
            fs::copy(s.path("other.key"), s.path("app.key")).unwrap();
        })),
        ("expired", Box::new(|| {
            fs::copy(s.path("old.crt"), s.path("app.crt")).unwrap();
            fs::copy(s.path("old.key"), s.path("app.key")).unwrap();
        })),
    ];
    for (why, break_it) in &cases {
        break_it();
        let lines = xlb.reload();
        let rejected = lines.iter().find(|l| l.contains("tls certificate rejected")).unwrap_or_else(|| panic!("{why}: no rejection logged:\n{}", lines.join("\n")));
        assert!(rejected.contains(why) && rejected.contains("app.crt"), "{why}: the error names the file and the cause: {rejected}");
        assert!(s.subject("app.test").is_ok_and(|g| g.ends_with("CN = app two")), "{why}: the old certificate keeps serving\n{}", xlb.log());
        let status = wait_for(Duration::from_secs(5), Duration::from_millis(200), || xlb.admin_get("/api/v1/services").ok().filter(|j| j.contains(why)));
        assert!(status.is_some(), "{why}: the status shows the error: {:?}", xlb.admin_get("/api/v1/services"));
        held.get().unwrap_or_else(|e| panic!("{why}: {e}"));
    }
    fs::write(s.path("app.key"), good_key).unwrap();

    // Garbage instead of a ClientHello: logged with the peer, closed, nothing else.
    let lb = SocketAddr::from((LB, 443));
    let answer = s.topo.client.enter(|| {
        let mut c = TcpStream::connect_timeout(&lb, Duration::from_secs(2)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00]).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").unwrap();
        let _ = c.shutdown(Shutdown::Write);
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c, &mut buf);
        buf
    });
    assert!(!answer.windows(4).any(|w| w == b"HTTP"), "no HTTP answer to garbage: {answer:?}");
    let logged = wait_for(Duration::from_secs(3), Duration::from_millis(100), || xlb.log().lines().find(|l| l.contains("tls handshake failed")).map(str::to_owned));
    assert!(logged.is_some(), "the malformed ClientHello is logged\n{}", xlb.log());
    held.get().unwrap_or_else(|e| panic!("after garbage: {e}"));
    assert!(s.subject("app.test").is_ok_and(|g| g.ends_with("CN = app two")), "still serving\n{}", xlb.log());
    xlb.assert_running();
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
}
