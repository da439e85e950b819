//! A strict HTTP/1 framing check in front of hyper, on the client side.
//!
//! hyper 1 is lenient where a proxy must not be (checked by `tests::hyper_alone`, raw
//! TCP against a bare hyper server): it accepts `Content-Length` together with
//! `Transfer-Encoding` (chunked wins), repeated equal `Content-Length`s, bare LF line
//! ends, whitespace after a chunk size, `Transfer-Encoding: gzip, chunked`, and a
//! missing or repeated `Host`. (It does refuse obsolete line folding, a bare CR,
//! `Content-Length` lists, whitespace before a colon, non-hex chunk sizes and
//! `Transfer-Encoding` in HTTP/1.0.) The first group are
//! request-smuggling vectors when the next hop reads the message differently, so every
//! byte a client sends goes through [`Framer`] first, which follows the message framing
//! itself and lets hyper see a request head only once the whole head passed these rules:
//!
//! - lines end in CRLF; a bare LF or a bare CR anywhere in a head, a chunk-size line or
//!   a trailer is rejected;
//! - request line `METHOD SP TARGET SP HTTP/1.0|HTTP/1.1`, single spaces, a token
//!   method, visible-ASCII target;
//! - header lines `name:value`: token name, no whitespace before the colon, no
//!   obsolete line folding (a line starting with SP/HTAB), no control characters;
//! - at most one `Content-Length`, all digits (no lists, signs or spaces inside);
//!   at most one `Transfer-Encoding`, exactly `chunked`, never with `Content-Length`,
//!   never in HTTP/1.0; HTTP/1.1 has exactly one `Host`;
//! - chunk sizes are 1-16 hex digits, directly followed by CRLF or by `;` and
//!   visible-ASCII extensions; chunk data is followed by CRLF; trailers are header lines;
//! - a request line longer than `max_request_line` is 414, a head above
//!   `max_header_bytes` or with more than `max_headers` fields 431.
//!
//! On a violation the reader sees end of file (hyper finishes what is in flight and
//! closes), and the connection's owner answers with the status and closes. Bytes
//! starting with the HTTP/2 preface pass untouched (h2c prior knowledge: the h2 codec
//! checks its own framing), as do the bytes after a `101 Switching Protocols`.
//!
//! [`GuardedIo`] also enforces the client timeouts: a head must be complete within
//! `client_header` of its first byte (else 408), a request body must not stall longer
//! than `idle` (408), an idle keep-alive connection is closed after `keepalive`, and a
//! client that reads nothing of a response for `idle` is cut off.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::Sleep,
};

use crate::config::http::is_tchar;

/// Why a client's bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Bad(&'static str),
    UriTooLong,
    HeadTooLarge,
    Timeout,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Self::Bad(_) => 400,
            Self::UriTooLong => 414,
            Self::HeadTooLarge => 431,
            Self::Timeout => 408,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_request_line: usize,
    pub max_head: usize,
    pub max_headers: usize,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
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
}

impl Framer {
    pub fn new(limits: HeadLimits) -> Self {
        Self { state: State::Detect, pending: Vec::new(), limits, lines: 0, line_start: 0, upgrade: false, blank: 0, messages: 0 }
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
            match self.state {
                State::Failed(r) => return Err(r),
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::AwaitUpgrade => {
                    if self.pending.len() + input.len() > MAX_EARLY_UPGRADE_DATA {
                        return Err(Reject::Bad("too much data before the upgrade answer"));
                    }
                    self.pending.extend_from_slice(input);
                    return Ok(());
                }
                State::Detect => {
                    let take = (PREFACE.len() - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if !PREFACE.starts_with(&self.pending) {
                        let held = std::mem::take(&mut self.pending);
                        self.start_head();
                        self.run(&held, out)?;
                    } else if self.pending.len() == PREFACE.len() {
                        self.state = State::Passthrough;
                        out.append(&mut self.pending);
                    }
                }
                State::Fixed(n) => {
                    let k = (n as usize).min(input.len());
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    if n - k as u64 == 0 {
                        self.message_end();
                    } else {
                        self.state = State::Fixed(n - k as u64);
                    }
                }
                State::ChunkData(n) => {
                    let k = (n as usize).min(input.len());
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.state = if n - k as u64 == 0 { State::ChunkEnd } else { State::ChunkData(n - k as u64) };
                }
                State::ChunkEnd => {
                    self.pending.push(input[0]);
                    input = &input[1..];
                    match self.pending.as_slice() {
                        b"\r" => {}
                        b"\r\n" => {
                            out.extend_from_slice(b"\r\n");
                            self.pending.clear();
                            self.state = State::ChunkSize;
                        }
                        _ => return Err(Reject::Bad("chunk data not followed by CRLF")),
                    }
                }
                State::ChunkSize => {
                    let (used, done) = self.take_line(input, MAX_CHUNK_LINE, Reject::Bad("chunk size line too long"))?;
                    input = &input[used..];
                    if done {
                        let size = chunk_size(&self.pending[..self.pending.len() - 2])?;
                        out.append(&mut self.pending);
                        self.lines = 0;
                        self.line_start = 0;
                        self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                    }
                }
                State::Head | State::Trailers => {
                    let trailers = self.state == State::Trailers;
                    let (used, done) = self.scan_section(input)?;
                    input = &input[used..];
                    if done {
                        let section = std::mem::take(&mut self.pending);
                        if trailers {
                            for line in section.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !l.is_empty()) {
                                check_field(line)?;
                            }
                            out.extend_from_slice(&section);
                            self.message_end();
                        } else {
                            let framing = check_head(&section, &self.limits)?;
                            out.extend_from_slice(&section);
                            self.messages += 1;
                            self.upgrade = framing.upgrade;
                            match framing.body {
                                Body::None => self.message_end(),
                                Body::Fixed(n) => self.state = State::Fixed(n),
                                Body::Chunked => {
                                    self.state = State::ChunkSize;
                                    self.pending.clear();
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
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

enum Body {
    None,
    Fixed(u64),
    Chunked,
}

struct Framing {
    body: Body,
    upgrade: bool,
}

/// Validates a complete head (CRLF line ends already checked).
fn check_head(head: &[u8], limits: &HeadLimits) -> Result<Framing, Reject> {
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !l.is_empty());
    let request_line = lines.next().ok_or(Reject::Bad("empty head"))?;
    if request_line.len() > limits.max_request_line {
        return Err(Reject::UriTooLong);
    }
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Reject::Bad("bad request line"));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Reject::Bad("bad method"));
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(Reject::Bad("bad request target"));
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(Reject::Bad("bad HTTP version")),
    };
    let (mut cl, mut cls, mut tes, mut hosts, mut fields) = (None, 0, 0, 0, 0);
    let (mut conn_upgrade, mut upgrade_hdr) = (false, false);
    for line in lines {
        fields += 1;
        if fields > limits.max_headers {
            return Err(Reject::HeadTooLarge);
        }
        let (name, value) = check_field(line)?;
        if name.eq_ignore_ascii_case(b"content-length") {
            cls += 1;
            if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                return Err(Reject::Bad("bad content-length"));
            }
            cl = Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            tes += 1;
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(Reject::Bad("transfer-encoding other than chunked"));
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn_upgrade |= value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_hdr = true;
        }
    }
    if cls > 1 {
        return Err(Reject::Bad("more than one content-length"));
    }
    if tes > 1 {
        return Err(Reject::Bad("more than one transfer-encoding"));
    }
    if tes == 1 && cls == 1 {
        return Err(Reject::Bad("content-length with transfer-encoding"));
    }
    if tes == 1 && !http11 {
        return Err(Reject::Bad("transfer-encoding in HTTP/1.0"));
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(Reject::Bad("missing or repeated host"));
    }
    let body = match (tes, cl) {
        (1, _) => Body::Chunked,
        (_, Some(n)) if n > 0 => Body::Fixed(n),
        _ => Body::None,
    };
    Ok(Framing { body, upgrade: http11 && conn_upgrade && upgrade_hdr })
}

/// Checks a header line (no CRLF); returns the name and the OWS-trimmed value.
fn check_field(line: &[u8]) -> Result<(&[u8], &[u8]), Reject> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(Reject::Bad("obsolete line folding"));
    }
    let colon = line.iter().position(|&b| b == b':').ok_or(Reject::Bad("header line without a colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(Reject::Bad("bad header name"));
    }
    if !value.iter().all(|&b| b == b'\t' || b >= 0x20 && b != 0x7f) {
        return Err(Reject::Bad("control character in a header value"));
    }
    Ok((name, value.trim_ascii()))
}

/// `1*16HEXDIG [ ";" ext ]` with visible-ASCII extensions, nothing else.
fn chunk_size(line: &[u8]) -> Result<u64, Reject> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let bad = Reject::Bad("bad chunk size");
    if digits == 0 || digits > 16 {
        return Err(bad);
    }
    match line.get(digits) {
        None => {}
        Some(b';') if line[digits + 1..].iter().all(|&b| (0x21..0x7f).contains(&b)) => {}
        Some(_) => return Err(bad),
    }
    let s = std::str::from_utf8(&line[..digits]).map_err(|_| bad)?;
    u64::from_str_radix(s, 16).map_err(|_| bad)
}

// ---------------------------------------------------------------------------------------
// The connection side.

/// Upgrade outcomes (`ConnShared::upgrade`).
const UPGRADE_NONE: u8 = 0;
const UPGRADE_SWITCHED: u8 = 1;
const UPGRADE_DECLINED: u8 = 2;

/// What the guard and the request handler of one client connection share.
#[derive(Debug)]
pub struct ConnShared {
    pub peer: SocketAddr,
    violation: Mutex<Option<Reject>>,
    answered: AtomicBool,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    upgrade: AtomicU8,
    upgraded: AtomicBool,
    read_waker: Mutex<Option<Waker>>,
    /// The client connection slot, freed when the connection (or its tunnel) ends.
    _permit: Option<OwnedSemaphorePermit>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnShared {
    pub fn new(peer: SocketAddr, permit: Option<OwnedSemaphorePermit>) -> Arc<Self> {
        Arc::new(Self {
            peer,
            violation: Mutex::new(None),
            answered: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            upgrade: AtomicU8::new(UPGRADE_NONE),
            upgraded: AtomicBool::new(false),
            read_waker: Mutex::new(None),
            _permit: permit,
        })
    }

    pub fn violation(&self) -> Option<Reject> {
        *lock(&self.violation)
    }

    /// The handler answered the violation itself (a bad body it was reading).
    pub fn set_answered(&self) {
        self.answered.store(true, Ordering::Relaxed);
    }

    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    pub fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// A request is being handled until the returned guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// The handler's answer to an upgrade request.
    pub fn upgrade_outcome(&self, switched: bool) {
        self.upgrade.store(if switched { UPGRADE_SWITCHED } else { UPGRADE_DECLINED }, Ordering::Relaxed);
        if switched {
            self.upgraded.store(true, Ordering::Relaxed);
        }
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = lock(&self.read_waker).take() {
            w.wake();
        }
    }
}

/// Ends a request's part in the connection's keep-alive clock when dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnShared>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        *lock(&self.0.idle_since) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.wake();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    pub header: Duration,
    pub keepalive: Duration,
    pub body_idle: Duration,
}

/// A client socket as hyper sees it: reads pass the [`Framer`], writes go straight out.
/// The socket is shared (`Arc`) so the owner can still answer a violation after hyper
/// let go of it.
pub struct GuardedIo {
    stream: Arc<TcpStream>,
    framer: Framer,
    ready: Vec<u8>,
    pos: usize,
    raw: Box<[u8]>,
    eof: bool,
    conn: Arc<ConnShared>,
    timeouts: ClientTimeouts,
    accepted: Instant,
    head_started: Option<Instant>,
    last_read: Instant,
    timer: Pin<Box<Sleep>>,
    deadline: Option<Instant>,
    /// Since when writes have been blocked (the client reads nothing).
    write_blocked: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
    write_deadline: Option<Instant>,
}

impl GuardedIo {
    pub fn new(stream: Arc<TcpStream>, limits: HeadLimits, timeouts: ClientTimeouts, conn: Arc<ConnShared>) -> Self {
        let now = Instant::now();
        Self {
            stream,
            framer: Framer::new(limits),
            ready: Vec::new(),
            pos: 0,
            raw: vec![0; 16 * 1024].into_boxed_slice(),
            eof: false,
            conn,
            timeouts,
            accepted: now,
            head_started: None,
            last_read: now,
            timer: Box::pin(tokio::time::sleep_until(now.into())),
            deadline: None,
            write_blocked: None,
            write_timer: Box::pin(tokio::time::sleep_until(now.into())),
            write_deadline: None,
        }
    }

    fn reject(&mut self, r: Reject) {
        let mut v = lock(&self.conn.violation);
        if v.is_none() {
            *v = Some(r);
        }
        self.eof = true;
    }

    fn after_read(&mut self, now: Instant) {
        self.last_read = now;
        match self.framer.phase() {
            Phase::Head => {
                self.head_started.get_or_insert(now);
            }
            _ => self.head_started = None,
        }
    }

    /// When the current wait ends, and whether that is a violation (408) or a quiet
    /// close.
    fn due(&self, now: Instant) -> Option<(Instant, bool)> {
        match self.framer.phase() {
            Phase::Idle if self.framer.messages == 0 => Some((self.accepted + self.timeouts.header, false)),
            Phase::Idle if self.conn.in_flight.load(Ordering::Relaxed) > 0 => Some((now + self.timeouts.keepalive, false)),
            Phase::Idle => Some((*lock(&self.conn.idle_since) + self.timeouts.keepalive, false)),
            Phase::Head => Some((self.head_started.unwrap_or(now) + self.timeouts.header, true)),
            Phase::Body => Some((self.last_read + self.timeouts.body_idle, true)),
            Phase::Other => None,
        }
    }

    /// Applies the handler's upgrade answer, if one came.
    fn check_upgrade(&mut self) {
        if !self.framer.awaiting_upgrade() {
            return;
        }
        let switched = match self.conn.upgrade.swap(UPGRADE_NONE, Ordering::Relaxed) {
            UPGRADE_SWITCHED => true,
            UPGRADE_DECLINED => false,
            _ => return,
        };
        if let Err(r) = self.framer.upgrade_outcome(switched, &mut self.ready) {
            self.reject(r);
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.check_upgrade();
            if this.pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.pos);
                buf.put_slice(&this.ready[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.ready.len() {
                    this.ready.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match this.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => match this.stream.try_read(&mut this.raw) {
                    Ok(0) => this.eof = true,
                    Ok(n) => {
                        let now = Instant::now();
                        if let Err(r) = this.framer.feed(&this.raw[..n], &mut this.ready) {
                            this.reject(r);
                        }
                        this.after_read(now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    *lock(&this.conn.read_waker) = Some(cx.waker().clone());
                    // The handler may have answered an upgrade since the check above.
                    if this.framer.awaiting_upgrade() && this.conn.upgrade.load(Ordering::Relaxed) != UPGRADE_NONE {
                        continue;
                    }
                    let now = Instant::now();
                    let Some((at, violation)) = this.due(now) else {
                        return Poll::Pending;
                    };
                    if this.deadline != Some(at) {
                        this.deadline = Some(at);
                        this.timer.as_mut().reset(at.into());
                    }
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.deadline = None;
                    if violation {
                        this.reject(Reject::Timeout);
                    } else if this.framer.phase() == Phase::Idle && this.conn.in_flight.load(Ordering::Relaxed) == 0 {
                        this.eof = true;
                    }
                }
            }
        }
    }
}

impl GuardedIo {
    /// Writes with `write`, failing once the client has accepted nothing for
    /// `body_idle` (nginx's `send_timeout`): a client that stops reading must not hold
    /// a backend connection forever.
    fn poll_write_with(&mut self, cx: &mut Context<'_>, write: impl Fn(&TcpStream) -> io::Result<usize>) -> Poll<io::Result<usize>> {
        loop {
            match self.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => match write(&self.stream) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => {
                        self.write_blocked = None;
                        return Poll::Ready(r);
                    }
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    let at = *self.write_blocked.get_or_insert_with(Instant::now) + self.timeouts.body_idle;
                    if self.write_deadline != Some(at) {
                        self.write_deadline = Some(at);
                        self.write_timer.as_mut().reset(at.into());
                    }
                    if self.write_timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The owner answers a violation before closing; it shuts the socket down then.
        if self.conn.violation().is_none() {
            let _ = socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_request_line: 64, max_head: 512, max_headers: 8 };

    fn run(input: &[u8]) -> (Result<(), Reject>, Vec<u8>) {
        let mut f = Framer::new(LIMITS);
        let mut out = Vec::new();
        let r = f.feed(input, &mut out);
        (r, out)
    }

    /// Also fed one byte at a time: the verdict must not depend on how reads split.
    fn verdict(input: &[u8]) -> Result<(), Reject> {
        let (whole, out) = run(input);
        let mut f = Framer::new(LIMITS);
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
    fn pipelined_requests_each_checked() {
        let two = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdict(two), Ok(()));
        let mut f = Framer::new(LIMITS);
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
    fn smuggling_and_malformed_are_400() {
        let cases: &[(&[u8], &str)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "content-length with transfer-encoding"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", "content-length with transfer-encoding"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", "more than one content-length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\n", "bad content-length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n", "bad content-length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\n", "bad content-length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", "bad content-length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\n", "bad header name"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", "transfer-encoding other than chunked"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer-encoding other than chunked"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "more than one transfer-encoding"),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "transfer-encoding in HTTP/1.0"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", "obsolete line folding"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\tX-A: 1\r\n\r\n", "obsolete line folding"),
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a\n\n", "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "bare CR"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", "control character in a header value"),
            (b"GET / HTTP/1.1\r\n\r\n", "missing or repeated host"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "missing or repeated host"),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "bad request line"),
            (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "bad request line"),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "bad HTTP version"),
            (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", "bad request target"),
            (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", "bad method"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n", "bad chunk size"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\n", "bad chunk size"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n", "bad chunk size"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n", "bad chunk size"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello", "bare LF"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhelloo\r\n", "chunk data not followed by CRLF"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX :1\r\n\r\n", "bad header name"),
        ];
        for (req, why) in cases {
            assert_eq!(verdict(req), Err(Reject::Bad(why)), "{:?}", String::from_utf8_lossy(req));
        }
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
            let mut f = Framer::new(LIMITS);
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
        let mut f = Framer::new(LIMITS);
        let mut out = Vec::new();
        f.feed(req, &mut out).unwrap();
        f.feed(b"\x81\x85frame\r\n\r\n", &mut out).unwrap();
        assert_eq!(f.upgrade_outcome(false, &mut out), Err(Reject::Bad("bad request line")));
    }

    #[test]
    fn phases() {
        let mut f = Framer::new(LIMITS);
        let mut out = Vec::new();
        assert_eq!(f.phase(), Phase::Idle);
        f.feed(b"POST / HTTP/1.1\r\nHo", &mut out).unwrap();
        assert_eq!(f.phase(), Phase::Head);
        f.feed(b"st: a\r\nContent-Length: 2\r\n\r\na", &mut out).unwrap();
        assert_eq!(f.phase(), Phase::Body);
        f.feed(b"b", &mut out).unwrap();
        assert_eq!(f.phase(), Phase::Idle);
    }

    /// What hyper 1 alone makes of the requests the guard refuses: the reason the guard
    /// exists. Each case goes to a bare hyper HTTP/1 server over loopback TCP.
    #[tokio::test]
    async fn hyper_alone() {
        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
                        let text = match n {
                            Ok(n) => format!("body {n}"),
                            Err(_) => "body error".to_string(),
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
                });
            }
        });
        let cases: &[(&str, &[u8])] = &[
            ("CL+TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
            ("duplicate CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"),
            ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n"),
            ("chunk size + space", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\nx\r\n0\r\n\r\n"),
            ("missing Host", b"GET / HTTP/1.1\r\n\r\n"),
            ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
            ("bare CR", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"),
            ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx"),
            ("space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 1\r\n\r\nx"),
            ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("TE list", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            ("chunk without CRLF", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxX0\r\n\r\n"),
            ("NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
            ("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ];
        let mut accepted = Vec::new();
        for (what, bytes) in cases {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.map(|r| r.unwrap_or(0)).unwrap_or(0);
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            if answer.starts_with("HTTP/1.1 200") && !answer.contains("body error") {
                accepted.push(*what);
            }
            // And the guard refuses every one of them.
            assert!(run(bytes).0.is_err(), "{what}");
        }
        eprintln!("hyper 1 alone accepts: {accepted:?}");
        // If hyper tightens up, this list shrinks; the guard stays either way.
        for must in ["CL+TE", "duplicate CL", "bare LF", "chunk size + space", "missing Host", "two Hosts", "TE list"] {
            assert!(accepted.contains(&must), "hyper now refuses {must}: {accepted:?}");
        }
    }
}
