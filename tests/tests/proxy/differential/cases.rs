//! The byte sequences of the differential test: request-smuggling shapes (after
//! http-garden, PortSwigger's CL.TE/TE.CL/TE.TE families and RFC 9112 section 6.3),
//! malformed heads, limits, and valid requests proxies must still pass.

use super::wire::Step;
use crate::client::{H2_GET, H2_START};

pub struct Case {
    pub name: &'static str,
    pub steps: Vec<Step>,
    /// The bodies of the requests the bytes hold when read strictly; empty when the
    /// bytes are ambiguous or invalid (then only a refusal or one unambiguous request
    /// will do).
    pub meant: Vec<&'static str>,
}

impl Case {
    /// Answers the client should get.
    pub fn answers(&self) -> usize {
        self.meant.len().max(1)
    }

    /// The bytes sent, in order (all steps).
    pub fn bytes(&self) -> Vec<u8> {
        self.steps
            .iter()
            .flat_map(|s| match s {
                Step::Send(b) | Step::SendIf101(b) => b.clone(),
                Step::Await => Vec::new(),
            })
            .collect()
    }
}

fn case(name: &'static str, bytes: impl AsRef<[u8]>, meant: &[&'static str]) -> Case {
    Case { name, steps: vec![Step::Send(bytes.as_ref().to_vec())], meant: meant.to_vec() }
}

/// `POST /` with these header lines (each ending CRLF) and this body.
fn post(fields: &str, body: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: x\r\n{fields}\r\n{body}")
}

const CHUNKED_HELLO: &str = "5\r\nhello\r\n0\r\n\r\n";

// long: one table of cases, read top to bottom
pub fn all() -> Vec<Case> {
    let te = |v: &str| post(&format!("Transfer-Encoding: {v}\r\n"), CHUNKED_HELLO);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(10 * 1024));
    let long_field = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n", "b".repeat(40 * 1024));
    let upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
    vec![
        case("GET", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[""]),
        case("POST with Content-Length", post("Content-Length: 5\r\n", "hello"), &["hello"]),
        case("POST chunked", te("chunked"), &["hello"]),
        case("chunked with an extension and a trailer", post("Transfer-Encoding: chunked\r\n", "5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), &["hello"]),
        case("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", &[""]),
        case("GET with a body", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", &["hello"]),
        // CL.TE, TE.CL: both framings present.
        case("CL.TE", post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nG"), &[]),
        case("TE.CL", post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "8\r\nSMUGGLED\r\n0\r\n\r\n"), &[]),
        case("CL.TE, CL 0", post("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO), &[]),
        // TE.TE: Transfer-Encoding one reader honours and another ignores.
        case("TE: xchunked", post("Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n", "hello"), &[]),
        case("TE: xchunked alone", te("xchunked"), &[]),
        case("TE: chunked, identity", te("chunked, identity"), &[]),
        case("TE: identity, chunked", te("identity, chunked"), &[]),
        case("TE: gzip, chunked", te("gzip, chunked"), &[]),
        case("TE: CHUNKED (case)", te("CHUNKED"), &["hello"]),
        case("TE: tab before value", post("Transfer-Encoding:\tchunked\r\n", CHUNKED_HELLO), &["hello"]),
        case("TE: space before colon", post("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", "hello"), &[]),
        case("TE: tab before colon", post("Transfer-Encoding\t: chunked\r\nContent-Length: 5\r\n", "hello"), &[]),
        case("TE: duplicate", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO), &[]),
        case("TE: chunked then xchunked", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: xchunked\r\n", CHUNKED_HELLO), &[]),
        case("TE: obs-folded", post("X-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "hello"), &[]),
        case("TE: vertical tab", post("Transfer-Encoding: \x0bchunked\r\nContent-Length: 5\r\n", "hello"), &[]),
        case("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", &[]),
        // Content-Length shapes.
        case("CL: duplicate, equal", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), &[]),
        case("CL: duplicate, different", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), &[]),
        case("CL: blank", post("Content-Length: \r\n", "hello"), &[]),
        case("CL: list", post("Content-Length: 5, 5\r\n", "hello"), &[]),
        case("CL: plus sign", post("Content-Length: +5\r\n", "hello"), &[]),
        case("CL: leading zeros", post("Content-Length: 005\r\n", "hello"), &["hello"]),
        case("CL: overflow", post("Content-Length: 18446744073709551621\r\n", "hello"), &[]),
        case("CL: negative", post("Content-Length: -5\r\n", "hello"), &[]),
        case("CL: trailing space", post("Content-Length: 5 \r\n", "hello"), &["hello"]),
        case("CL named in Connection", post("Content-Length: 5\r\nConnection: Content-Length\r\n", "hello"), &["hello"]),
        case("TE named in Connection", post("Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n", CHUNKED_HELLO), &["hello"]),
        case("Host named in Connection", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Host\r\n\r\n", &[""]),
        case("Transfer-Encoding in a trailer", post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"), &["hello"]),
        case("Content-Length in a trailer", post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"), &["hello"]),
        case("CL: space before colon", post("Content-Length : 5\r\n", "hello"), &[]),
        // Chunk syntax.
        case("chunk size with a space", post("Transfer-Encoding: chunked\r\n", "5 \r\nhello\r\n0\r\n\r\n"), &[]),
        case("chunk size 0x5", post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"), &[]),
        case("chunk size overflow", post("Transfer-Encoding: chunked\r\n", "10000000000000005\r\nhello\r\n0\r\n\r\n"), &[]),
        case("chunk data longer than its size", post("Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n"), &[]),
        case("bare LF after a chunk size", post("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"), &[]),
        // Line ends and characters.
        case("obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", &[]),
        case("bare LF line ends", "GET / HTTP/1.1\nHost: x\n\n", &[]),
        case("bare LF ending one field", "GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", &[]),
        case("bare CR in a field", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", &[]),
        case("NUL in a field value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", &[]),
        case("NUL in a field name", "GET / HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n", &[]),
        case("NUL in the target", "GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n", &[]),
        case("space in a field name", "GET / HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", &[]),
        case("field without a colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n", &[]),
        case("tab in the request line", "GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n", &[]),
        case("lowercase version", "GET / http/1.1\r\nHost: x\r\n\r\n", &[]),
        case("obs-text in a field value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: caf\xc3\xa9\r\n\r\n", &[""]),
        case("two spaces in the request line", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", &[]),
        case("HTTP/0.9 request line", "GET /\r\n\r\n", &[]),
        case("empty line before the request", "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", &[""]),
        case("no Host", "GET / HTTP/1.1\r\n\r\n", &[]),
        case("two Hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", &[]),
        // Limits.
        case("request line of 10 KiB", long_target, &[]),
        case("field of 40 KiB", long_field, &[]),
        case("150 fields", format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", (0..150).map(|i| format!("X-{i}: v\r\n")).collect::<String>()), &[]),
        // Targets.
        case("absolute-form target", "GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n", &[""]),
        case("absolute-form, other Host", "GET http://y/a HTTP/1.1\r\nHost: x\r\n\r\n", &[""]),
        case("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", &[""]),
        case("CONNECT", "CONNECT y:443 HTTP/1.1\r\nHost: y:443\r\n\r\n", &[]),
        case("absolute-form with userinfo", "GET http://u@y/a HTTP/1.1\r\nHost: x\r\n\r\n", &[]),
        case("Host with a comma", "GET / HTTP/1.1\r\nHost: x, y\r\n\r\n", &[]),
        case("asterisk-form GET", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", &[]),
        // Conversations.
        Case {
            name: "Expect: 100-continue",
            steps: vec![Step::Send(post("Content-Length: 5\r\nExpect: 100-continue\r\n", "").into_bytes()), Step::Await, Step::Send(b"hello".to_vec())],
            meant: vec!["hello"],
        },
        case("pipelined GET, GET", "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n", &["", ""]),
        case("pipelined POST, GET", post("Content-Length: 5\r\n", "helloGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"), &["hello", ""]),
        case(
            "pipelined GET, CL.TE",
            format!("GET /1 HTTP/1.1\r\nHost: x\r\n\r\n{}", post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nG")),
            &[""],
        ),
        case("pipelined chunked POST, GET", post("Transfer-Encoding: chunked\r\n", "0\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"), &["", ""]),
        case(
            "declined upgrade, then GET",
            "GET /1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
            &["", ""],
        ),
        Case { name: "h2c upgrade", steps: vec![Step::Send(upgrade.to_vec()), Step::Await, Step::SendIf101(H2_START.to_vec())], meant: vec![""] },
        case("h2 prior knowledge", [H2_START, H2_GET].concat(), &[""]),
    ]
}
