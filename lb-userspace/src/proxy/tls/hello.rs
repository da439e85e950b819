//! The server name of a ClientHello, read from the connection's first TLS record without
//! decrypting anything: what TLS passthrough routes by (`listen/passthrough.rs`).
//!
//! Only what routing needs is read: the record header, the handshake header, and the
//! `server_name` extension (RFC 6066 section 3) among the ClientHello's extensions. A
//! ClientHello split over several records (legal, but no common client does it) is read
//! as one without a name, so the connection is terminated like any other.

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed: the first record is not complete yet.
    Partial,
    /// A ClientHello, with the host name it asks for (lowercased), if any.
    Name(Option<String>),
    /// Not a TLS ClientHello at all: the handshake will fail on its own.
    NotTls,
}

/// The largest TLS record (2^14 bytes of plaintext, plus what TLS 1.2 allows over it).
pub const MAX_RECORD: usize = 5 + 16_384 + 2_048;

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;

/// Reads the start of a connection (`bytes`: everything received so far).
pub fn read(bytes: &[u8]) -> Hello {
    if bytes.is_empty() {
        return Hello::Partial;
    }
    if bytes[0] != HANDSHAKE {
        return Hello::NotTls;
    }
    let Some(header) = bytes.get(..5) else { return Hello::Partial };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if header[1] != 3 || len == 0 || 5 + len > MAX_RECORD {
        return Hello::NotTls;
    }
    let Some(record) = bytes.get(5..5 + len) else { return Hello::Partial };
    match client_hello(record) {
        Some(Some(name)) => Hello::Name(Some(name)),
        Some(None) => Hello::Name(None),
        None if record.first() == Some(&CLIENT_HELLO) => Hello::Name(None),
        None => Hello::NotTls,
    }
}

/// The server name in a handshake record holding a whole ClientHello: `None` when the
/// record is no (whole) ClientHello, `Some(None)` when it names no host.
fn client_hello(record: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(record);
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    let body = r.vec24()?;
    let mut r = Reader(body);
    r.take(2 + 32)?; // version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind == SERVER_NAME {
            return Some(host_name(data));
        }
    }
    Some(None)
}

/// The `host_name` entry of a `server_name` extension, if it is a valid DNS name.
fn host_name(data: &[u8]) -> Option<String> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == HOST_NAME {
            // One trailing dot (the root) is allowed; empty labels are not.
            let name = std::str::from_utf8(name).ok()?;
            let name = name.strip_suffix('.').unwrap_or(name);
            let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let valid = name.len() <= 253 && name.split('.').all(label_ok);
            return valid.then(|| name.to_ascii_lowercase());
        }
    }
    None
}

/// Big-endian fields off the front of a slice; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-, two- or three-byte length in front (RFC 8446 section 3.4).
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn vec24(&mut self) -> Option<&'a [u8]> {
        let b = self.take(3)?;
        self.take(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{ClientConfig, ClientConnection, RootCertStore, pki_types::ServerName};

    use super::*;

    /// The first bytes a real client (rustls) sends for `name`.
    fn real_hello(name: &str) -> Vec<u8> {
        let config = ClientConfig::builder_with_provider(crate::proxy::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let server = ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn a_real_client_hello_names_its_host() {
        let hello = real_hello("App.Example.test");
        assert_eq!(read(&hello), Hello::Name(Some("app.example.test".into())));
        // Any prefix of it asks for more.
        for n in [0, 1, 4, 5, hello.len() / 2, hello.len() - 1] {
            assert_eq!(read(&hello[..n]), Hello::Partial, "{n} of {} bytes", hello.len());
        }
    }

    /// Names that are no DNS name (empty, a lone dot, empty labels) are none.
    #[test]
    fn only_dns_names_count() {
        let with_name = |name: &[u8]| {
            let mut hello = real_hello("abcdefgh.test");
            let at = hello.windows(13).position(|w| w == b"abcdefgh.test").unwrap();
            // Same length, so every length field stays right.
            hello[at..at + 13].copy_from_slice(name);
            read(&hello)
        };
        assert_eq!(with_name(b"abcdefgh.tes."), Hello::Name(Some("abcdefgh.tes".into())));
        for bad in [b"............." as &[u8], b"abcdefgh..tes", b".bcdefgh.test", b"abcdefgh.t st", b"abcdefgh.t\xffst"] {
            assert_eq!(with_name(bad), Hello::Name(None), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn an_address_sends_no_name() {
        // rustls sends no SNI for an IP address.
        assert_eq!(read(&real_hello("10.0.0.1")), Hello::Name(None));
    }

    #[test]
    fn other_bytes_are_not_tls() {
        assert_eq!(read(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(read(&[22, 3, 1, 0, 0]), Hello::NotTls, "empty record");
        assert_eq!(read(&[22, 9, 1, 0, 5, 1]), Hello::NotTls, "not version 3.x");
        assert_eq!(read(&[22, 3, 1, 0xff, 0xff]), Hello::NotTls, "longer than a record");
    }

    /// Lengths that point past their container never panic and never find a name.
    #[test]
    fn bad_lengths_are_no_name() {
        let hello = real_hello("app.test");
        for i in 5..hello.len() {
            for v in [0x00, 0x7f, 0xff] {
                let mut bad = hello.clone();
                bad[i] = v;
                if let Hello::Name(Some(name)) = read(&bad) {
                    assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'), "{name:?}");
                }
            }
        }
    }
}
