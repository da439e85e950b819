//! Forwarding headers, hop-by-hop headers, HTTP/2 (h2c), HTTP/1.0 and WebSocket.

use std::{process::Command, thread, time::Duration};

use crate::{
    backends::{Behaviour, RawBackend, Testd, header_of},
    client::{Client, get, raw},
    lb::Lb,
    websocket::{ws_accept, ws_read, ws_write},
};

#[test]
fn forwarding_headers_and_hop_by_hop() {
    let echo = RawBackend::start("echo", Behaviour::EchoHead);
    let req = "GET /p?q=1 HTTP/1.1\r\nHost: App.Dev:8080\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
               Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Other: yes\r\n\r\n";
    // An untrusted client: its forwarding headers are replaced.
    let lb = Lb::one("", vec![echo.view()]);
    let (r, _) = raw(lb.addr(), req.as_bytes());
    let r = r.unwrap();
    let head = r.text();
    eprintln!("backend saw (untrusted client):\n{head}");
    let h = |n: &str| header_of(&head, n);
    assert!(head.starts_with("echo\nGET /p?q=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(h("host").as_deref(), Some("App.Dev:8080"));
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-host").as_deref(), Some("App.Dev:8080"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-other").as_deref(), Some("yes"));
    for gone in ["x-secret", "keep-alive", "te", "proxy-connection"] {
        assert_eq!(h(gone), None, "{gone} forwarded");
    }
    // A trusted one: appended, and the real client is the first untrusted hop.
    let lb = Lb::one("trusted_networks: [127.0.0.0/8]", vec![echo.view()]);
    let head = raw(lb.addr(), req.as_bytes()).0.unwrap().text();
    assert_eq!(header_of(&head, "x-forwarded-for").as_deref(), Some("6.6.6.6, 127.0.0.1"));
    assert_eq!(header_of(&head, "x-real-ip").as_deref(), Some("6.6.6.6"));
    assert_eq!(header_of(&head, "x-forwarded-proto").as_deref(), Some("https"));
    // Response hop-by-hop headers are removed too.
    let hop = RawBackend::start("hop", Behaviour::HopHeaders);
    let lb = Lb::one("", vec![hop.view()]);
    let r = get(lb.addr(), "x", "/", &[]);
    assert_eq!(r.header("x-kept").as_deref(), Some("1"));
    assert_eq!(r.header("x-private"), None);
    assert_eq!(r.header("keep-alive"), None);
}

#[test]
fn http2_prior_knowledge_h2c_upgrade_and_http10() {
    let t = Testd::start("h2");
    let lb = Lb::one("", vec![t.view(1)]);
    let addr = lb.addr();
    let bodies: Vec<String> = lb.rt.block_on(async move {
        use http_body_util::{BodyExt, Empty};
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http::<Empty<bytes::Bytes>>();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let r = c.get(format!("http://{addr}/").parse().unwrap()).await.unwrap();
                assert_eq!(r.version(), hyper::Version::HTTP_2);
                assert_eq!(r.status(), 200);
                String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert!(bodies.iter().all(|b| b == "h2\n"), "{bodies:?}");
    // HTTP/1.0 without Host reaches the catch-all service.
    let (r, _) = raw(addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.unwrap().name(), "h2");
    // `Upgrade: h2c` (RFC 7540 3.2), by curl: 101, then the request that asked is
    // answered on stream 1 and the next one on stream 3 of the same connection.
    let url = format!("http://{addr}/");
    let out = Command::new("curl").args(["--http2", "-sS", "-v", "--max-time", "10", &url, &url]).output().expect("curl");
    let (body, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("curl --http2 (h2c upgrade), twice:\n{log}");
    assert!(out.status.success(), "{log}");
    assert_eq!(body, "h2\nh2\n");
    assert!(log.contains("< HTTP/1.1 101"), "{log}");
    assert_eq!(log.matches("< HTTP/2 200").count(), 2, "both answers over HTTP/2: {log}");
    assert_eq!(log.matches("* Connected to").count(), 1, "one connection: {log}");
    // An h2c upgrade the proxy declines (no HTTP2-Settings) is answered over HTTP/1.1,
    // and the connection goes on as HTTP/1.1.
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n").unwrap();
    let r = c.read().unwrap();
    assert_eq!((r.status, r.name()), (200, "h2".to_string()), "{r:?}");
    assert_eq!(r.header("upgrade"), None);
    assert_eq!(c.get("x", "/", &[]).unwrap().name(), "h2", "the connection goes on as HTTP/1.1");
}

#[test]
fn websocket_echo_through_the_proxy() {
    assert_eq!(ws_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455's example");
    let ws = RawBackend::start("ws", Behaviour::WsEcho);
    let lb = Lb::one("timeouts: { keepalive: 300ms, client_header: 300ms }", vec![ws.view()]);
    let mut c = Client::connect(lb.addr());
    let key = "x3JJHMbDL1EzLkh9GBhXDw==";
    c.send(
        format!("GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-accept"), Some(ws_accept(key)));
    assert!(r.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
    // Frames both ways, also after the client timeouts would have closed an HTTP connection.
    for (i, msg) in ["hello", "through xlb", &"x".repeat(70_000)].iter().enumerate() {
        if i == 2 {
            thread::sleep(Duration::from_millis(600));
        }
        ws_write(&mut c.w, 1, msg.as_bytes(), Some([1, 2, 3, 4])).unwrap();
        let (op, payload) = ws_read(&mut c.r).unwrap().expect("an echo");
        assert_eq!((op, payload.len()), (1, msg.len()));
        assert_eq!(&payload[..], msg.as_bytes());
    }
    ws_write(&mut c.w, 8, b"", Some([9, 9, 9, 9])).unwrap();
    assert_eq!(ws_read(&mut c.r).unwrap().map(|f| f.0), Some(8));
    // A declined upgrade is a normal response, and the connection goes on as HTTP.
    let t = Testd::start("plain");
    let lb = Lb::one("", vec![t.view(1)]);
    let mut c = Client::connect(lb.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
    assert_eq!(c.read().unwrap().name(), "plain");
    assert_eq!(c.get("x", "/", &[]).unwrap().name(), "plain");
}
