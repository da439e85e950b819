//! The `http:` block of a service: what the proxy does with requests for it.
//!
//! Every field has a default, so `http: {}` makes a service HTTP with nginx-like
//! behaviour. Values are checked while deserializing (unknown keys, bad durations,
//! bad methods and networks are rejected with serde's position).

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, de};

use super::units::{duration, parse_duration};

/// Options of an HTTP service. The lead embeds it as `http: Option<HttpOptions>` in
/// `config::Service`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpOptions {
    /// Host names this service answers: exact (`app.dev`) or wildcard (`*.app.dev`,
    /// any depth of subdomain, not `app.dev` itself). Empty: any host.
    pub hosts: Vec<HostPattern>,
    /// Path prefixes (`/api`), matched on whole segments. Empty: every path.
    pub paths: Vec<PathPrefix>,
    /// Receives the requests that no route of its listener matches (else 404).
    pub default: bool,
    /// How a backend is chosen; see `balance::Method`.
    pub method: Method,
    /// A request header whose value names the backend to use (`app: app2`).
    pub pin_header: Option<String>,
    /// A cookie whose value names the backend to use (`Cookie: app=app2`).
    pub pin_cookie: Option<String>,
    /// Sticky sessions: the first response sets this cookie to an opaque value derived
    /// from the chosen backend's stable name; later requests carrying it go there.
    pub sticky_cookie: Option<StickyCookie>,
    pub timeouts: Timeouts,
    pub retries: Retries,
    /// Peers whose `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Host` and
    /// `X-Forwarded-Proto` are believed; from anyone else they are replaced.
    pub trusted_networks: Vec<Cidr>,
    pub limits: Limits,
    /// Passive health, nginx style: this many failures (connect error, timeout,
    /// 502/503/504 answers) within `fail_timeout` take a backend out for
    /// `fail_timeout`. 0 disables it.
    pub max_fails: u32,
    #[serde(deserialize_with = "duration")]
    pub fail_timeout: Duration,
    /// Most requests in flight to one backend at a time; 0: no limit. A backend at its
    /// limit is skipped; when all are, the request gets 503.
    pub max_conns: u32,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            paths: Vec::new(),
            default: false,
            method: Method::default(),
            pin_header: None,
            pin_cookie: None,
            sticky_cookie: None,
            timeouts: Timeouts::default(),
            retries: Retries::default(),
            trusted_networks: Vec::new(),
            limits: Limits::default(),
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            max_conns: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyCookie {
    pub name: String,
    #[serde(default = "root_path")]
    pub path: String,
    /// `Max-Age`; none: a session cookie.
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_age: Option<Duration>,
    #[serde(default)]
    pub secure: bool,
    #[serde(default = "yes")]
    pub http_only: bool,
    /// `SameSite` value (`Lax`, `Strict`, `None`).
    #[serde(default)]
    pub same_site: Option<String>,
}

fn root_path() -> String {
    "/".into()
}
fn yes() -> bool {
    true
}

/// Timeouts, nginx's names in brackets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to a backend, per try (`proxy_connect_timeout`).
    #[serde(deserialize_with = "duration")]
    pub connect: Duration,
    /// From the request sent to the response head, per try (`proxy_read_timeout` for
    /// the first byte).
    #[serde(deserialize_with = "duration")]
    pub header: Duration,
    /// Longest silence while a response body streams (`proxy_read_timeout`), while a
    /// client sends a request body (`client_body_timeout`), and while a client reads
    /// nothing of a response (`send_timeout`).
    #[serde(deserialize_with = "duration")]
    pub idle: Duration,
    /// Whole exchange, all tries and the response body included; none: unlimited.
    #[serde(deserialize_with = "opt_duration")]
    pub total: Option<Duration>,
    /// A client has this long to send a complete request head
    /// (`client_header_timeout`): slow senders get 408 and are cut off.
    #[serde(deserialize_with = "duration")]
    pub client_header: Duration,
    /// An idle keep-alive client connection is closed after this (`keepalive_timeout`).
    #[serde(deserialize_with = "duration")]
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            header: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: None,
            client_header: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
        }
    }
}

/// Retries on another backend (`proxy_next_upstream`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Extra tries after the first; 0 disables retries. Never more than the backends
    /// there are: a retry always goes to a backend not tried yet.
    pub attempts: u32,
    /// Backoff before retry n (1-based): a uniformly random time in
    /// `[0, min(max_backoff, backoff * 2^(n-1))]` ("full jitter").
    #[serde(deserialize_with = "duration")]
    pub backoff: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Backend answers that count as failures and are retried.
    pub statuses: Vec<u16>,
}

impl Retries {
    /// The longest wait before retry `n` (1-based): `min(max_backoff, backoff·2^(n−1))`.
    pub fn backoff_cap(&self, n: u32) -> Duration {
        self.max_backoff.min(self.backoff.saturating_mul(1 << n.saturating_sub(1).min(16)))
    }

    /// The wait before retry `n`: uniform in `[0, backoff_cap(n)]` ("full jitter"), so
    /// clients retrying together spread out instead of hitting the next backend at once.
    pub fn backoff(&self, n: u32) -> Duration {
        Duration::from_micros(rand::random_range(0..=self.backoff_cap(n).as_micros() as u64))
    }
}

impl Default for Retries {
    fn default() -> Self {
        Self { attempts: 2, backoff: Duration::from_millis(10), max_backoff: Duration::from_millis(200), statuses: vec![502, 503, 504] }
    }
}

/// Client-side limits. Services sharing a listener share its connections, so for those
/// the listener applies the smallest value any of them sets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections open at once; more are answered 503 and closed.
    pub max_connections: u32,
    /// Longest request line; longer: 414.
    pub max_request_line: u32,
    /// Largest request head (request line and headers); larger: 431.
    pub max_header_bytes: u32,
    /// Most header fields; more: 431.
    pub max_headers: u32,
    /// Largest request body; larger: 413 (`client_max_body_size`).
    pub max_body: u64,
    /// Read the whole request body before choosing a backend (nginx's
    /// `proxy_request_buffering on`): a bad body never reaches a backend, and requests
    /// with a body can be retried. Off: bodies stream, and only connect failures retry.
    pub buffer_requests: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_request_line: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body: 1024 * 1024,
            buffer_requests: true,
        }
    }
}

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

/// Where `hash` takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Path and query (`$request_uri`).
    Uri,
    /// The path alone.
    Path,
    /// The client address (after trusted proxies), whole.
    Client,
    Header(String),
    Cookie(String),
}

/// The balancing method and its parameters; written as in nginx, e.g.
/// `round_robin`, `least_conn`, `ip_hash`, `hash header:x-user consistent`, `random`,
/// `random two least_time=last_byte`, `least_time header inflight`, `peak_ewma`,
/// `peak_ewma decay=5s`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Method {
    #[default]
    RoundRobin,
    LeastConn,
    IpHash,
    Hash {
        key: HashKey,
        consistent: bool,
    },
    Random,
    /// Power of two random choices, keeping the better by `by`.
    RandomTwo {
        by: TwoBy,
    },
    LeastTime {
        measure: TimeMeasure,
        inflight: bool,
    },
    PeakEwma {
        decay: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwoBy {
    LeastConn,
    LeastTime(TimeMeasure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMeasure {
    /// Time to the response head.
    Header,
    /// Time to the end of the response body.
    LastByte,
}

impl FromStr for TimeMeasure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "header" => Ok(Self::Header),
            "last_byte" => Ok(Self::LastByte),
            _ => Err(format!("{s:?}: expected header or last_byte")),
        }
    }
}

pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let err = |why: &str| {
            format!(
                "bad method {s:?}: {why} (expected round_robin, least_conn, ip_hash, hash KEY [consistent], random, \
                 random two [least_conn|least_time=header|least_time=last_byte], least_time header|last_byte [inflight], \
                 peak_ewma [decay=10s])"
            )
        };
        Ok(match words.as_slice() {
            ["round_robin"] => Self::RoundRobin,
            ["least_conn"] => Self::LeastConn,
            ["ip_hash"] => Self::IpHash,
            ["random"] => Self::Random,
            ["random", "two"] | ["random", "two", "least_conn"] => Self::RandomTwo { by: TwoBy::LeastConn },
            ["random", "two", by] => match by.strip_prefix("least_time=") {
                Some(m) => Self::RandomTwo { by: TwoBy::LeastTime(m.parse().map_err(|e: String| err(&e))?) },
                None => return Err(err("unknown random two criterion")),
            },
            ["least_time", m, rest @ ..] => {
                let inflight = match rest {
                    [] => false,
                    ["inflight"] => true,
                    _ => {
                        return Err(err("least_time takes header or last_byte, then optionally inflight"));
                    }
                };
                Self::LeastTime { measure: m.parse().map_err(|e: String| err(&e))?, inflight }
            }
            ["peak_ewma"] => Self::PeakEwma { decay: DEFAULT_EWMA_DECAY },
            ["peak_ewma", d] => match d.strip_prefix("decay=").map(parse_duration) {
                Some(Ok(decay)) if !decay.is_zero() => Self::PeakEwma { decay },
                _ => return Err(err("peak_ewma takes decay=DURATION")),
            },
            ["hash", key, rest @ ..] => {
                let consistent = match rest {
                    [] => false,
                    ["consistent"] => true,
                    _ => return Err(err("hash takes a KEY, then optionally consistent")),
                };
                let key = match *key {
                    "uri" | "$request_uri" => HashKey::Uri,
                    "path" | "$uri" => HashKey::Path,
                    "client" | "$remote_addr" => HashKey::Client,
                    k => match k.split_once(':') {
                        Some(("header", h)) if valid_token(h) => HashKey::Header(h.to_ascii_lowercase()),
                        Some(("cookie", c)) if valid_token(c) => HashKey::Cookie(c.to_owned()),
                        _ => {
                            return Err(err("KEY is uri, path, client, header:NAME or cookie:NAME"));
                        }
                    },
                };
                Self::Hash { key, consistent }
            }
            _ => return Err(err("unknown method")),
        })
    }
}

/// An RFC 9110 token (header and cookie names).
pub fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl HttpOptions {
    fn validate(&self) -> Result<(), String> {
        for (what, name) in [("pin_header", &self.pin_header), ("pin_cookie", &self.pin_cookie)] {
            if let Some(n) = name
                && !valid_token(n)
            {
                return Err(format!("{what}: {n:?} is not a valid name"));
            }
        }
        if let Some(s) = &self.sticky_cookie
            && !valid_token(&s.name)
        {
            return Err(format!("sticky_cookie: {:?} is not a valid cookie name", s.name));
        }
        if self.retries.statuses.iter().any(|s| !(100..=599).contains(s)) {
            return Err("retries.statuses: expected HTTP status codes".into());
        }
        let l = &self.limits;
        if l.max_connections == 0 || l.max_request_line < 16 || l.max_header_bytes < l.max_request_line || l.max_headers == 0 {
            return Err(
                "limits: max_connections and max_headers must be above 0, max_request_line at least 16 and max_header_bytes at least max_request_line".into()
            );
        }
        Ok(())
    }

    /// Parses and validates (for tests and for the lead's own checks).
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let o: Self = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        o.validate()?;
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------
// Deserializers that validate inside the visitor, so errors keep their position.

macro_rules! from_str_deserialize {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$t, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    )*};
}

from_str_deserialize! {
    HostPattern => "a host name such as app.dev or *.app.dev",
    PathPrefix => "a path prefix such as /api",
    Cidr => "a network such as 10.0.0.0/8",
    Method => "a balancing method such as least_conn",
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// The lead's `config::Service` calls this from its validation (through
/// `deserialize_with`, or after parsing): `HttpOptions` checks cross-field rules here.
pub fn deserialize_checked<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HttpOptions>, D::Error> {
    let o = HttpOptions::deserialize(d)?;
    o.validate().map_err(de::Error::custom)?;
    Ok(Some(o))
}

/// A balancing method as the config writes it (`least_time header inflight`).
impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let measure = |t: &TimeMeasure| match t {
            TimeMeasure::Header => "header",
            TimeMeasure::LastByte => "last_byte",
        };
        let text: String = match self {
            Method::RoundRobin => "round_robin".into(),
            Method::LeastConn => "least_conn".into(),
            Method::IpHash => "ip_hash".into(),
            Method::Random => "random".into(),
            Method::Hash { key, consistent } => {
                let key = match key {
                    HashKey::Uri => "uri".into(),
                    HashKey::Path => "path".into(),
                    HashKey::Client => "client".into(),
                    HashKey::Header(h) => format!("header:{h}"),
                    HashKey::Cookie(c) => format!("cookie:{c}"),
                };
                format!("hash {key}{}", if *consistent { " consistent" } else { "" })
            }
            Method::RandomTwo { by: TwoBy::LeastConn } => "random two least_conn".into(),
            Method::RandomTwo { by: TwoBy::LeastTime(t) } => format!("random two least_time={}", measure(t)),
            Method::LeastTime { measure: t, inflight } => format!("least_time {}{}", measure(t), if *inflight { " inflight" } else { "" }),
            Method::PeakEwma { decay } => format!("peak_ewma decay={}s", decay.as_secs_f64()),
        };
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_methods_read_as_written() {
        for text in ["round_robin", "hash header:x-user consistent", "random two least_time=last_byte", "least_time header inflight", "peak_ewma decay=5s"] {
            let m: Method = text.parse().unwrap();
            assert_eq!(m.to_string(), text);
        }
    }

    #[test]
    fn methods_parse_like_nginx() {
        let m = |s: &str| s.parse::<Method>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m("round_robin"), Method::RoundRobin);
        assert_eq!(m("hash header:X-User consistent"), Method::Hash { key: HashKey::Header("x-user".into()), consistent: true });
        assert_eq!(m("hash $request_uri"), Method::Hash { key: HashKey::Uri, consistent: false });
        assert_eq!(m("random two"), Method::RandomTwo { by: TwoBy::LeastConn });
        assert_eq!(m("random two least_time=last_byte"), Method::RandomTwo { by: TwoBy::LeastTime(TimeMeasure::LastByte) });
        assert_eq!(m("least_time header inflight"), Method::LeastTime { measure: TimeMeasure::Header, inflight: true });
        assert_eq!(m("peak_ewma decay=5s"), Method::PeakEwma { decay: Duration::from_secs(5) });
        for bad in ["fastest", "hash", "hash header: x", "least_time", "least_time body", "random three", "peak_ewma decay=0s", "hash uri sometimes"] {
            assert!(bad.parse::<Method>().is_err(), "{bad}");
        }
    }

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

    #[test]
    fn backoff_doubles_up_to_its_cap_with_full_jitter() {
        let r = Retries::default();
        let caps: Vec<u128> = (1..=7).map(|n| r.backoff_cap(n).as_millis()).collect();
        assert_eq!(caps, [10, 20, 40, 80, 160, 200, 200]);
        assert_eq!(Retries { backoff: Duration::from_secs(1), ..r.clone() }.backoff_cap(40), Duration::from_millis(200), "no overflow");
        for n in [1, 3, 9] {
            let waits: Vec<Duration> = (0..400).map(|_| r.backoff(n)).collect();
            let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
            let cap = r.backoff_cap(n);
            assert!(*hi <= cap, "retry {n}: {hi:?} above {cap:?}");
            // Uniform over [0, cap]: 400 draws reach both ends' tenths.
            assert!(*lo < cap / 10 && *hi > cap * 9 / 10, "retry {n}: {lo:?}..{hi:?} of {cap:?}");
        }
        assert_eq!(Retries { backoff: Duration::ZERO, ..r }.backoff(2), Duration::ZERO);
    }

    #[test]
    fn yaml_with_defaults_and_errors() {
        let o = HttpOptions::from_yaml("hosts: ['*.app.dev']\nmethod: least_conn\ntimeouts: { connect: 1s }\nsticky_cookie: { name: srv }\n").unwrap();
        assert_eq!(o.method, Method::LeastConn);
        assert_eq!(o.timeouts.connect, Duration::from_secs(1));
        assert_eq!(o.timeouts.header, Duration::from_secs(60));
        assert_eq!(o.sticky_cookie.unwrap().path, "/");
        let e = HttpOptions::from_yaml("method: fastest\n").unwrap_err();
        assert!(e.contains("bad method") && e.contains("line 1"), "{e}");
        assert!(HttpOptions::from_yaml("colour: red\n").unwrap_err().contains("unknown field"));
        assert!(HttpOptions::from_yaml("pin_header: 'a b'\n").unwrap_err().contains("pin_header"));
    }
}
