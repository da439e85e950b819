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
//! byte a client sends goes through the framer (`framer.rs`) first, which follows the message framing
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
//! The socket hyper reads (`io.rs`) also enforces the client timeouts: a head must be complete within
//! `client_header` of its first byte (else 408), a request body must not stall longer
//! than `idle` (408), an idle keep-alive connection is closed after `keepalive`, and a
//! client that reads nothing of a response for `idle`, or has been behind on it for
//! `idle` and took less than `min_send_rate` bytes/s since, is reset. Past the preface or a
//! `101` the bytes are not HTTP/1 but the clocks still run: an HTTP/2 connection with no
//! request in flight is closed after `keepalive`, a tunnel with no byte either way
//! after `idle`.
//!
//! `body.rs` makes the body checks again per request as the handler reads it, so that
//! HTTP/2 streams get them too.
//!
//! `rules.rs` holds what a head, a header line and a chunk size must look like;
//! `framer.rs` follows the message framing over them; `io.rs` is the socket hyper
//! reads, with the client timeouts; `shared.rs` is what the guard and the request
//! handler of one connection tell each other.

pub mod body;
pub mod framer;
pub mod io;
pub mod rules;
pub mod shared;
