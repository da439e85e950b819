//! The sans-IO framing checker: follows HTTP/1 message framing over a client's bytes
//! and passes on only what the rules (`rules.rs`) accept.

use super::rules::{Body, HeadLimits, Reject, check_field, check_head, chunk_size};

/// The HTTP/2 client connection preface (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes a client may send after an upgrade request before the answer.
const MAX_EARLY_UPGRADE_DATA: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first bytes of a connection: HTTP/2 preface or not.
    Detect,
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    /// An upgrade request went to hyper; what follows waits for the answer.
    AwaitUpgrade,
    Passthrough,
    Failed(Reject),
}

/// What the framer is waiting for, for timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests, nothing received yet.
    Idle,
    /// Inside a request head (or the first bytes of the connection).
    Head,
    /// Inside a request body.
    Body,
    /// No client timeouts (h2, tunnels, awaiting an upgrade answer, failed).
    Other,
}

/// The sans-IO framing checker. Bytes go in through [`Framer::feed`]; what passed the
/// checks comes out in `out`, in order; a partial line is held back until complete.
#[derive(Debug)]
pub struct Framer {
    state: State,
    pending: Vec<u8>,
    limits: HeadLimits,
    /// Lines of the head (or trailer section) completed so far.
    lines: usize,
    line_start: usize,
    /// The message being read is an upgrade request.
    upgrade: bool,
    /// Empty lines skipped before this request line.
    blank: u32,
    /// Request heads passed so far.
    pub messages: u64,
    /// Chunk data announced so far in the current message's body.
    body: u64,
    /// A chunked body announcing more data than this is refused (413) at the chunk-size
    /// line, so what passed never ends in the last chunk. Each head resets it to
    /// `default_max_body`; the owner lowers it once the request's service is known.
    pub max_body: u64,
    default_max_body: u64,
}

impl Framer {
    /// `max_body`: a chunked body's limit until the owner sets the request's own.
    pub fn new(limits: HeadLimits, max_body: u64) -> Self {
        Self {
            state: State::Detect,
            pending: Vec::new(),
            limits,
            lines: 0,
            line_start: 0,
            upgrade: false,
            blank: 0,
            messages: 0,
            body: 0,
            max_body,
            default_max_body: max_body,
        }
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Head if self.pending.is_empty() => Phase::Idle,
            State::Detect if self.pending.is_empty() => Phase::Idle,
            State::Detect | State::Head => Phase::Head,
            State::Fixed(_) | State::ChunkSize | State::ChunkData(_) | State::ChunkEnd | State::Trailers => Phase::Body,
            State::AwaitUpgrade | State::Passthrough | State::Failed(_) => Phase::Other,
        }
    }

    pub fn awaiting_upgrade(&self) -> bool {
        self.state == State::AwaitUpgrade
    }

    pub fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// Checks `input`, appending what passed to `out`. After an error every later call
    /// fails the same way.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Reject> {
        if let State::Failed(r) = self.state {
            return Err(r);
        }
        let r = self.run(input, out);
        if let Err(e) = r {
            self.state = State::Failed(e);
            self.pending.clear();
        }
        r
    }

    /// The answer to the upgrade request: switched (101) or not.
    pub fn upgrade_outcome(&mut self, switched: bool, out: &mut Vec<u8>) -> Result<(), Reject> {
        if self.state != State::AwaitUpgrade {
            return Ok(());
        }
        let held = std::mem::take(&mut self.pending);
        if switched {
            self.state = State::Passthrough;
            out.extend_from_slice(&held);
            Ok(())
        } else {
            self.start_head();
            self.feed(&held, out)
        }
    }

    fn start_head(&mut self) {
        self.state = State::Head;
        self.pending.clear();
        self.lines = 0;
        self.line_start = 0;
        self.upgrade = false;
        self.blank = 0;
        self.body = 0;
    }

    fn message_end(&mut self) {
        if self.upgrade {
            self.state = State::AwaitUpgrade;
            self.pending.clear();
        } else {
            self.start_head();
        }
    }

    fn run(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Reject> {
        while !input.is_empty() {
            let used = match self.state {
                State::Failed(r) => return Err(r),
                State::Passthrough => {
                    out.extend_from_slice(input);
                    input.len()
                }
                State::AwaitUpgrade => {
                    if self.pending.len() + input.len() > MAX_EARLY_UPGRADE_DATA {
                        return Err(Reject::Bad("too much data before the upgrade answer"));
                    }
                    self.pending.extend_from_slice(input);
                    input.len()
                }
                State::Detect => self.detect(input, out)?,
                State::Fixed(n) => {
                    let k = pass(n, input, out);
                    if n == k as u64 {
                        self.message_end();
                    } else {
                        self.state = State::Fixed(n - k as u64);
                    }
                    k
                }
                State::ChunkData(n) => {
                    let k = pass(n, input, out);
                    self.state = if n == k as u64 { State::ChunkEnd } else { State::ChunkData(n - k as u64) };
                    k
                }
                State::ChunkEnd => self.chunk_end(input[0], out).map(|()| 1)?,
                State::ChunkSize => self.chunk_size_line(input, out)?,
                State::Head | State::Trailers => self.section(input, out)?,
            };
            input = &input[used..];
        }
        Ok(())
    }

    /// The first bytes: the HTTP/2 preface passes the rest untouched, anything else is
    /// HTTP/1. Returns the bytes used.
    fn detect(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Reject> {
        let take = (PREFACE.len() - self.pending.len()).min(input.len());
        self.pending.extend_from_slice(&input[..take]);
        if !PREFACE.starts_with(&self.pending) {
            let held = std::mem::take(&mut self.pending);
            self.start_head();
            self.run(&held, out)?;
        } else if self.pending.len() == PREFACE.len() {
            self.state = State::Passthrough;
            out.append(&mut self.pending);
        }
        Ok(take)
    }

    /// One byte of the CRLF after chunk data.
    fn chunk_end(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), Reject> {
        self.pending.push(b);
        match self.pending.as_slice() {
            b"\r" => {}
            b"\r\n" => {
                out.extend_from_slice(b"\r\n");
                self.pending.clear();
                self.state = State::ChunkSize;
            }
            _ => return Err(Reject::Bad("chunk data not followed by CRLF")),
        }
        Ok(())
    }

    /// Bytes of a chunk-size line; a complete one is checked and passed on.
    fn chunk_size_line(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Reject> {
        let (used, done) = self.take_line(input, MAX_CHUNK_LINE, Reject::Bad("chunk size line too long"))?;
        if done {
            let size = chunk_size(&self.pending[..self.pending.len() - 2])?;
            self.body = self.body.saturating_add(size);
            if self.body > self.max_body {
                return Err(Reject::BodyTooLarge);
            }
            out.append(&mut self.pending);
            self.lines = 0;
            self.line_start = 0;
            self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
        }
        Ok(used)
    }

    /// Bytes of a request head or a trailer section; a complete one is checked and
    /// passed on, and says what follows.
    fn section(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Reject> {
        let trailers = self.state == State::Trailers;
        let (used, done) = self.scan_section(input)?;
        if !done {
            return Ok(used);
        }
        let section = std::mem::take(&mut self.pending);
        if trailers {
            for line in section.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !l.is_empty()) {
                check_field(line)?;
            }
            out.extend_from_slice(&section);
            self.message_end();
            return Ok(used);
        }
        let framing = check_head(&section, &self.limits)?;
        out.extend_from_slice(&section);
        self.messages += 1;
        self.max_body = self.default_max_body;
        self.upgrade = framing.upgrade;
        match framing.body {
            Body::None => self.message_end(),
            Body::Fixed(n) => self.state = State::Fixed(n),
            Body::Chunked => {
                self.state = State::ChunkSize;
                self.pending.clear();
            }
        }
        Ok(used)
    }

    /// Moves bytes of one line into `pending` (CRLF included). Returns the bytes used
    /// and whether the line is complete.
    fn take_line(&mut self, input: &[u8], max: usize, too_long: Reject) -> Result<(usize, bool), Reject> {
        for (i, &b) in input.iter().enumerate() {
            self.push_checked(b)?;
            if self.pending.len() > max {
                return Err(too_long);
            }
            if b == b'\n' {
                return Ok((i + 1, true));
            }
        }
        Ok((input.len(), false))
    }

    /// Appends a byte, refusing a bare CR or a bare LF.
    fn push_checked(&mut self, b: u8) -> Result<(), Reject> {
        let prev = self.pending.last().copied();
        if prev == Some(b'\r') && b != b'\n' {
            return Err(Reject::Bad("bare CR"));
        }
        if b == b'\n' && prev != Some(b'\r') {
            return Err(Reject::Bad("bare LF"));
        }
        self.pending.push(b);
        Ok(())
    }

    /// Moves bytes of a head (or trailer section) into `pending` until its empty line.
    /// Empty lines before a request line are dropped.
    fn scan_section(&mut self, input: &[u8]) -> Result<(usize, bool), Reject> {
        let head = self.state == State::Head;
        for (i, &b) in input.iter().enumerate() {
            self.push_checked(b)?;
            let len = self.pending.len();
            if head && self.lines == 0 && len > self.limits.max_request_line + 2 {
                return Err(Reject::UriTooLong);
            }
            if len > self.limits.max_head {
                return Err(if head && self.lines == 0 { Reject::UriTooLong } else { Reject::HeadTooLarge });
            }
            if b != b'\n' {
                continue;
            }
            let empty = len - self.line_start == 2;
            if empty && head && self.lines == 0 {
                // RFC 9112 2.2: ignore empty lines before the request line (a few).
                self.pending.clear();
                self.line_start = 0;
                self.blank += 1;
                if self.blank > 8 {
                    return Err(Reject::Bad("empty lines before the request"));
                }
                continue;
            }
            if empty {
                return Ok((i + 1, true));
            }
            self.lines += 1;
            self.line_start = len;
            if self.lines > self.limits.max_headers + 1 {
                return Err(Reject::HeadTooLarge);
            }
        }
        Ok((input.len(), false))
    }
}

/// Passes up to `n` bytes of message data on; returns how many.
fn pass(n: u64, input: &[u8], out: &mut Vec<u8>) -> usize {
    let k = usize::try_from(n).unwrap_or(usize::MAX).min(input.len());
    out.extend_from_slice(&input[..k]);
    k
}

#[cfg(test)]
pub mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_request_line: 64, max_head: 512, max_headers: 8 };

    pub fn run(input: &[u8]) -> (Result<(), Reject>, Vec<u8>) {
        let mut f = Framer::new(LIMITS, u64::MAX);
        let mut out = Vec::new();
        let r = f.feed(input, &mut out);
        (r, out)
    }

    /// Also fed one byte at a time: the verdict must not depend on how reads split.
    pub fn verdict(input: &[u8]) -> Result<(), Reject> {
        let (whole, out) = run(input);
        let mut f = Framer::new(LIMITS, u64::MAX);
        let mut bytewise = Vec::new();
        let mut r = Ok(());
        for b in input {
            r = f.feed(std::slice::from_ref(b), &mut bytewise);
            if r.is_err() {
                break;
            }
        }
        assert_eq!(whole, r, "{:?}", String::from_utf8_lossy(input));
        if whole.is_ok() {
            assert_eq!(out, bytewise);
        }
        whole
    }

    const OK: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab:\ta\tb \r\nX-Obs: caf\xc3\xa9\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00",
    ];

    #[test]
    fn good_requests_pass_unchanged() {
        for req in OK {
            let (r, out) = run(req);
            assert_eq!(r, Ok(()), "{:?}", String::from_utf8_lossy(req));
            let want: &[u8] = req.strip_prefix(b"\r\n").unwrap_or(req);
            assert_eq!(out, want);
            verdict(req).unwrap();
        }
    }

    #[test]
    fn a_chunked_body_over_max_body_stops_before_the_chunk_that_passes_it() {
        let req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n";
        for (max, want) in [(7, Ok(())), (6, Err(Reject::BodyTooLarge))] {
            let mut f = Framer::new(LIMITS, max);
            let mut out = Vec::new();
            assert_eq!(f.feed(req, &mut out), want, "max_body {max}");
            if want.is_err() {
                assert!(out.ends_with(b"abcd\r\n"), "{:?}", String::from_utf8_lossy(&out));
            }
        }
        // The count starts again with each message.
        let mut f = Framer::new(LIMITS, 4);
        let mut out = Vec::new();
        let one = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
        assert_eq!(f.feed(&[&one[..], &one[..]].concat(), &mut out), Ok(()));
    }

    #[test]
    fn pipelined_requests_each_checked() {
        let two = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdict(two), Ok(()));
        let mut f = Framer::new(LIMITS, u64::MAX);
        let mut out = Vec::new();
        f.feed(two, &mut out).unwrap();
        assert_eq!(f.messages, 2);
        // A smuggled second request hidden as a body the first did not declare.
        let bad = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        let (r, out) = run(bad);
        assert_eq!(r, Err(Reject::Bad("more than one content-length")));
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "the good first request passes, nothing of the bad one");
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(80));
        assert_eq!(verdict(long.as_bytes()), Err(Reject::UriTooLong));
        // Detected before the line ends: a client streaming an endless line is cut off.
        assert_eq!(run(format!("GET /{}", "a".repeat(100)).as_bytes()).0, Err(Reject::UriTooLong));
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(600));
        assert_eq!(verdict(big.as_bytes()), Err(Reject::HeadTooLarge));
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: 1\r\n".repeat(9));
        assert_eq!(verdict(many.as_bytes()), Err(Reject::HeadTooLarge));
        assert_eq!(Reject::UriTooLong.status(), 414);
        assert_eq!(Reject::HeadTooLarge.status(), 431);
    }

    #[test]
    fn upgrade_waits_for_the_answer() {
        let req = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        for switched in [true, false] {
            let mut f = Framer::new(LIMITS, u64::MAX);
            let mut out = Vec::new();
            f.feed(req, &mut out).unwrap();
            assert!(f.awaiting_upgrade());
            let after: &[u8] = if switched { b"\x81\x85frame" } else { b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" };
            f.feed(after, &mut out).unwrap();
            assert_eq!(out.len(), req.len(), "held back until the answer");
            f.upgrade_outcome(switched, &mut out).unwrap();
            assert_eq!(&out[req.len()..], after);
            assert_eq!(f.is_passthrough(), switched);
        }
        // Declined: what follows is checked like any request.
        let mut f = Framer::new(LIMITS, u64::MAX);
        let mut out = Vec::new();
        f.feed(req, &mut out).unwrap();
        f.feed(b"\x81\x85frame\r\n\r\n", &mut out).unwrap();
        assert_eq!(f.upgrade_outcome(false, &mut out), Err(Reject::Bad("bad request line")));
    }

    #[test]
    fn phases() {
        let mut f = Framer::new(LIMITS, u64::MAX);
        let mut out = Vec::new();
        assert_eq!(f.phase(), Phase::Idle);
        f.feed(b"POST / HTTP/1.1\r\nHo", &mut out).unwrap();
        assert_eq!(f.phase(), Phase::Head);
        f.feed(b"st: a\r\nContent-Length: 2\r\n\r\na", &mut out).unwrap();
        assert_eq!(f.phase(), Phase::Body);
        f.feed(b"b", &mut out).unwrap();
        assert_eq!(f.phase(), Phase::Idle);
    }
}
