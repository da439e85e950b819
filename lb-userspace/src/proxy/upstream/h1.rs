//! HTTP/1.1 toward a backend, sans I/O: the request head written straight from the
//! client's parsed head (no second header map), and the response head parsed with
//! httparse into the parts hyper's server side sends on, with the body's framing
//! (RFC 9112 6.3). A backend whose framing is ambiguous gets no benefit of the doubt:
//! `Content-Length` with `Transfer-Encoding`, or differing lengths, are errors (502).

use bytes::{Bytes, BytesMut};
use hyper::{
    HeaderMap, Method, StatusCode, Version,
    header::{self, HeaderName, HeaderValue},
    http::{response::Parts, uri::Authority},
};

/// Response heads larger than this are refused (hyper's client buffer was 400 KiB;
/// nginx's proxy_buffer_size is 4–8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// Header fields of a response head (hyper's default).
const MAX_HEADERS: usize = 100;

/// How the request body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFraming {
    /// The bytes as they are (`Content-Length` written, or no body).
    Plain,
    /// `Transfer-Encoding: chunked`: a streamed body of unknown length.
    Chunked,
}

/// Writes the request head. `body_len`: the whole body's length when it is here
/// (`None`: streamed). The client's `Content-Length` stands for a streamed body; a
/// buffered one is sent with its own length; one of unknown length goes chunked.
pub fn encode_request(method: &Method, target: &str, headers: &HeaderMap, authority: &Authority, body_len: Option<usize>, out: &mut Vec<u8>) -> SendFraming {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        field(out, b"host", authority.as_str().as_bytes());
    }
    // A buffered body of some bytes carries its own length; empty, the client's
    // headers stand as they are (a `Content-Length: 0` stays).
    let own_length = body_len.is_some_and(|n| n > 0);
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || (own_length && name == header::CONTENT_LENGTH) {
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = match body_len {
        Some(n) if n > 0 => {
            let digits = itoa_buf(n as u64);
            field(out, b"content-length", digits.as_bytes());
            SendFraming::Plain
        }
        Some(_) => SendFraming::Plain,
        None if headers.contains_key(header::CONTENT_LENGTH) => SendFraming::Plain,
        None => {
            field(out, b"transfer-encoding", b"chunked");
            SendFraming::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    framing
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A number's decimal digits, without a formatter.
fn itoa_buf(mut n: u64) -> DecimalDigits {
    let mut d = DecimalDigits { buf: [0; 20], start: 20 };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

struct DecimalDigits {
    buf: [u8; 20],
    start: usize,
}

impl DecimalDigits {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`HEAD`, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes.
    Close,
    /// `101 Switching Protocols`: the connection is the tunnel's from here.
    Upgrade,
}

/// A parsed response head.
pub struct Head {
    pub parts: Parts,
    pub framing: Framing,
    /// The connection may carry another request once this response has ended.
    pub keep_alive: bool,
}

/// What the bytes read so far hold.
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A `1xx` interim response of this many bytes, to skip.
    Interim(usize),
    Final(Head),
}

/// Parses a response head at the start of `buf`; a final head is split off it.
/// `head_request`: the request was `HEAD` (the response has no body whatever it says).
pub fn parse_response(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err("response head too large"),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response header fields"),
        Err(_) => return Err("malformed response head"),
    };
    let code = resp.code.ok_or("malformed response head")?;
    let status = StatusCode::from_u16(code).map_err(|_| "bad response status")?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Parsed::Interim(len));
    }
    let http10 = resp.version == Some(0);
    // Field values are slices of the head, shared rather than copied.
    let n = resp.headers.len();
    let spans: Vec<(HeaderName, std::ops::Range<usize>)> = resp
        .headers
        .iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "bad response header name")?;
            let start = h.value.as_ptr() as usize - buf.as_ptr() as usize;
            Ok((name, start..start + h.value.len()))
        })
        .collect::<Result<_, &'static str>>()?;
    let bytes: Bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(n);
    for (name, span) in spans {
        let value = HeaderValue::from_maybe_shared(bytes.slice(span)).map_err(|_| "bad response header value")?;
        headers.append(name, value);
    }
    let framing = framing(status, &headers, head_request)?;
    let close = connection_says(&headers, b"close");
    let keep_alive = !close && (!http10 || connection_says(&headers, b"keep-alive")) && !matches!(framing, Framing::Close | Framing::Upgrade);
    let (mut parts, ()) = hyper::Response::new(()).into_parts();
    parts.status = status;
    parts.version = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    parts.headers = headers;
    Ok(Parsed::Final(Head { parts, framing, keep_alive }))
}

/// The body's framing (RFC 9112 6.3), strict about ambiguity.
fn framing(status: StatusCode, h: &HeaderMap, head_request: bool) -> Result<Framing, &'static str> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Framing::Upgrade);
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    let te = h.contains_key(header::TRANSFER_ENCODING);
    let mut length = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let s = v.as_bytes();
        if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
            return Err("bad content-length");
        }
        let n: u64 = std::str::from_utf8(s).map_err(|_| "bad content-length")?.parse().map_err(|_| "bad content-length")?;
        if length.is_some_and(|l| l != n) {
            return Err("differing content-lengths");
        }
        length = Some(n);
    }
    match (te, length) {
        (true, Some(_)) => Err("content-length with transfer-encoding"),
        (true, None) => {
            let last = h.get_all(header::TRANSFER_ENCODING).iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()).next_back();
            Ok(if last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) { Framing::Chunked } else { Framing::Close })
        }
        (false, Some(n)) => Ok(Framing::Length(n)),
        (false, None) => Ok(Framing::Close),
    }
}

/// Whether a `Connection` field lists `token`.
fn connection_says(h: &HeaderMap, token: &[u8]) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head: bool) -> Result<Parsed, &'static str> {
        parse_response(&mut BytesMut::from(raw), head)
    }

    fn head(raw: &[u8]) -> Head {
        match parse(raw, false) {
            Ok(Parsed::Final(h)) => h,
            _ => panic!("{:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn the_request_head_carries_its_framing() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-a", HeaderValue::from_static("1"));
        let auth: Authority = "10.0.0.1:80".parse().unwrap();
        let mut out = Vec::new();
        assert_eq!(encode_request(&Method::POST, "/p?q", &h, &auth, Some(3), &mut out), SendFraming::Plain);
        assert_eq!(out, b"POST /p?q HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-a: 1\r\ncontent-length: 3\r\n\r\n");
        out.clear();
        h.remove(header::CONTENT_LENGTH);
        h.insert(header::HOST, HeaderValue::from_static("app"));
        assert_eq!(encode_request(&Method::PUT, "/", &h, &auth, None, &mut out), SendFraming::Chunked);
        assert_eq!(out, b"PUT / HTTP/1.1\r\nx-a: 1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n");
        out.clear();
        assert_eq!(encode_request(&Method::GET, "/", &h, &auth, Some(0), &mut out), SendFraming::Plain);
        assert_eq!(out, b"GET / HTTP/1.1\r\nx-a: 1\r\nhost: app\r\n\r\n");
        assert_eq!(itoa_buf(0).as_bytes(), b"0");
        assert_eq!(itoa_buf(18_446_744_073_709_551_615).as_bytes(), b"18446744073709551615");
    }

    #[test]
    fn response_framing() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: a\r\n\r\nhello");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        assert_eq!(h.parts.headers["x"], "a");
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: x, Close\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        assert_eq!(head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").framing, Framing::Empty);
        assert_eq!(head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").framing, Framing::Upgrade);
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true), Ok(Parsed::Final(Head { framing: Framing::Empty, keep_alive: true, .. }))));
        assert!(matches!(parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", false), Ok(Parsed::Interim(25))));
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", false), Ok(Parsed::Partial)));
    }

    #[test]
    fn ambiguous_responses_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(parse(bad, false).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert!(parse(&big, false).is_err());
    }
}
