//! What requests are matched against: host patterns, path prefixes, client networks, and
//! the token grammar of header and cookie names.

use std::{fmt, net::IpAddr, str::FromStr};

/// A host pattern, lowercased: `app.dev` or `*.app.dev`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `*.app.dev` is `.app.dev`.
    Wildcard(String),
}

impl FromStr for HostPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            // An IP literal is a host too (`10.0.0.1`, `[fd00::1]`).
            let bare = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
            if wild || bare.parse::<IpAddr>().is_err() {
                return Err(format!("bad host {s:?}: expected a name such as app.dev or *.app.dev"));
            }
            return Ok(Self::Exact(bare.to_owned()));
        }
        Ok(if wild { Self::Wildcard(format!(".{name}")) } else { Self::Exact(name.to_owned()) })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// A path prefix: starts with `/`, no trailing `/` except for `/` itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPrefix(pub String);

impl FromStr for PathPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') || s.bytes().any(|b| !(0x21..0x7f).contains(&b) || b == b'?' || b == b'#') {
            return Err(format!("bad path prefix {s:?}: expected e.g. /api"));
        }
        let t = s.trim_end_matches('/');
        Ok(Self(if t.is_empty() { "/".into() } else { t.to_owned() }))
    }
}

/// A network, `10.0.0.0/8` or `fd00::/8`; a bare address is a host route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d` (a dual-stack socket reports IPv4 clients so).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad network {s:?}: expected e.g. 10.0.0.0/8 or fd00::/8");
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr = canonical(a.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}

/// An RFC 9110 token (header and cookie names).
pub fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_paths_networks() {
        assert_eq!("*.App.Dev.".parse::<HostPattern>().unwrap(), HostPattern::Wildcard(".app.dev".into()));
        assert_eq!("10.0.0.1".parse::<HostPattern>().unwrap(), HostPattern::Exact("10.0.0.1".into()));
        assert!("a b".parse::<HostPattern>().is_err() && "*.".parse::<HostPattern>().is_err());
        assert_eq!("/api/".parse::<PathPrefix>().unwrap().0, "/api");
        assert!("api".parse::<PathPrefix>().is_err());
        let n: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()) && !n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let n: Cidr = "fd00::/8".parse().unwrap();
        assert!(n.contains("fd12::1".parse().unwrap()) && !n.contains("fe80::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
