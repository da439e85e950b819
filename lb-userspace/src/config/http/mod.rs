//! The `http:` block of a service: what the proxy does with requests for it.
//!
//! Every field has a default, so `http: {}` makes a service HTTP with nginx-like
//! behaviour. Values are checked while deserializing (unknown keys, bad durations,
//! bad methods and networks are rejected with serde's position).

mod method;
mod patterns;
mod upstream;

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, de};

pub use self::{
    method::{DEFAULT_EWMA_DECAY, HashKey, Method, TimeMeasure, TwoBy},
    patterns::{Cidr, HostPattern, PathPrefix, canonical, is_tchar, valid_token},
    upstream::{Protocol, UpstreamOptions, UpstreamTls},
};
use super::units::{duration, opt_duration};

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
    /// Passive health (outlier detection): this many failures in a row (no success in
    /// between), within `fail_timeout`, take a backend out for `fail_timeout`. 0
    /// disables it. Several in a row, not nginx's 1, so one client's bad luck is not
    /// an ejection.
    pub max_fails: u32,
    #[serde(deserialize_with = "duration")]
    pub fail_timeout: Duration,
    /// What counts towards `max_fails`. Default `[connect, error]`: faults of the
    /// backend itself. A timeout is left out, as one slow path (that any client can
    /// ask for) would otherwise take every backend out.
    pub fail_on: Vec<FailOn>,
    /// Backend answers that count towards `max_fails`; default none: a 503 is the
    /// backend answering, and counting it lets one client asking for a failing path
    /// eject backends. Retrying on them is `retries.statuses`.
    pub fail_statuses: Vec<u16>,
    /// Passive health never has more than this share (percent) of a service's active
    /// backends out at once (Envoy's `max_ejection_percent`); when every active
    /// backend is out anyway (the rest down by probes), they are all used (panic mode).
    pub max_ejection_percent: u32,
    /// Most requests in flight to one backend at a time; 0: no limit. A backend at its
    /// limit is skipped; when all are, the request gets 503.
    pub max_conns: u32,
    /// Also (or only) served over TLS; see `config::tls::ServiceTls`.
    pub tls: Option<super::tls::ServiceTls>,
    /// How the backends are spoken to: HTTP/1.1 or HTTP/2, plain or TLS.
    pub upstream: UpstreamOptions,
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
            max_fails: 5,
            fail_timeout: Duration::from_secs(10),
            fail_on: vec![FailOn::Connect, FailOn::Error],
            fail_statuses: Vec::new(),
            max_ejection_percent: 50,
            max_conns: 0,
            tls: None,
            upstream: UpstreamOptions::default(),
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

/// A failure that `fail_on` may count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailOn {
    /// The TCP connect failed or timed out.
    Connect,
    /// The connection failed (reset, closed) after the request was sent, before a
    /// response head.
    Error,
    /// No response head within `timeouts.header`.
    Timeout,
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
    /// A request body may pause this long between two reads (`client_body_timeout`);
    /// longer: 408. Shorter than nginx's 60 s: with `buffer_requests: false` a stalled
    /// body holds a backend connection.
    #[serde(deserialize_with = "duration")]
    pub client_body: Duration,
    /// An idle keep-alive client connection is closed after this (`keepalive_timeout`).
    #[serde(deserialize_with = "duration")]
    pub keepalive: Duration,
    /// Once the listener closes (SIGTERM, SIGINT, a reload that removes or moves it),
    /// requests in flight get this long to finish before their connections are cut
    /// (nginx's `worker_shutdown_timeout`); a listener takes its services' longest.
    #[serde(deserialize_with = "duration")]
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            header: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: None,
            client_header: Duration::from_secs(10),
            client_body: Duration::from_secs(30),
            keepalive: Duration::from_secs(60),
            drain: Duration::from_secs(30),
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
    /// Client connections open at once from one address (an IPv6 client by its /64);
    /// more are answered 503 and closed (nginx's `limit_conn` on `$binary_remote_addr`).
    /// So one client (a slowloris) cannot take the whole listener; a tenth of it by
    /// default, which many users behind one NAT still fit in. Raise it behind a CDN or
    /// another proxy whose address every client shares.
    pub max_connections_per_ip: u32,
    /// Longest request line; longer: 414.
    pub max_request_line: u32,
    /// Largest request head (request line and headers); larger: 431.
    pub max_header_bytes: u32,
    /// Most header fields; more: 431.
    pub max_headers: u32,
    /// Largest request body; larger: 413 (`client_max_body_size`), streamed or not.
    pub max_body: u64,
    /// Request bodies read whole (`buffer_requests`) held in memory at once by one
    /// listener, all its connections and HTTP/2 streams together; a body that would take
    /// more is answered 503. At least `max_body`.
    pub max_buffered_bodies: u64,
    /// Slowest request body, in bytes per second averaged from its first byte, once it
    /// has taken `timeouts.client_body`; slower: 408 (Apache's `mod_reqtimeout`
    /// `MinRate=500`). 0: no minimum. A body trickling a byte at a time within
    /// `client_body` would otherwise hold the connection for ever.
    pub min_body_rate: u32,
    /// Slowest a client may take a response, in bytes per second averaged from the first
    /// write it blocked (its socket full) while it stays behind, once that has lasted
    /// `timeouts.idle`; slower: the connection is closed. 0: no minimum (then only
    /// nothing taken for `idle` closes it, nginx's `send_timeout`). A slow reader taking a
    /// few bytes now and then (slowhttptest `-X`) would otherwise hold the connection
    /// and the backend's response for ever.
    pub min_send_rate: u32,
    /// `SO_SNDBUF` of client sockets in bytes (nginx's `listen ... sndbuf=`); 0: the
    /// kernel's own, autotuned. A cap bounds the kernel memory a connection that reads
    /// nothing pins, and the throughput of a long fat path (one buffer per round trip).
    pub send_buffer: u32,
    /// HTTP/2 streams a client connection may have open at once; more are refused
    /// (`REFUSED_STREAM`) (nginx's `http2_max_concurrent_streams`).
    pub max_concurrent_streams: u32,
    /// Read the whole request body before choosing a backend (nginx's
    /// `proxy_request_buffering on`): a bad body never reaches a backend, and requests
    /// with a body can be retried. Off: bodies stream, and only connect failures retry.
    pub buffer_requests: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_request_line: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body: 1024 * 1024,
            max_buffered_bodies: 256 * 1024 * 1024,
            min_body_rate: 500,
            min_send_rate: 1024,
            send_buffer: 0,
            max_concurrent_streams: 128,
            buffer_requests: true,
        }
    }
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
        if self.fail_statuses.iter().any(|s| !(100..=599).contains(s)) {
            return Err("fail_statuses: expected HTTP status codes".into());
        }
        if self.max_ejection_percent > 100 {
            return Err("max_ejection_percent: expected 0 to 100".into());
        }
        let l = &self.limits;
        if l.max_connections == 0 || l.max_connections_per_ip == 0 || l.max_request_line < 16 || l.max_header_bytes < l.max_request_line || l.max_headers == 0 {
            return Err("limits: max_connections, max_connections_per_ip and max_headers must be above 0, max_request_line at least 16 and max_header_bytes at least max_request_line".into());
        }
        if l.max_buffered_bodies < l.max_body {
            return Err("limits: max_buffered_bodies must be at least max_body".into());
        }
        if l.max_concurrent_streams == 0 {
            return Err("limits: max_concurrent_streams must be above 0".into());
        }
        // The kernel doubles it and takes no less than 4,608 (SOCK_MIN_SNDBUF): below
        // 4 KiB a value would not be what it says.
        if l.send_buffer != 0 && l.send_buffer < 4096 {
            return Err("limits: send_buffer must be 0 (the kernel's) or at least 4096".into());
        }
        self.upstream.validate()
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

/// The lead's `config::Service` calls this from its validation (through
/// `deserialize_with`, or after parsing): `HttpOptions` checks cross-field rules here.
pub fn deserialize_checked<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HttpOptions>, D::Error> {
    let o = HttpOptions::deserialize(d)?;
    o.validate().map_err(de::Error::custom)?;
    Ok(Some(o))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(o.timeouts.drain, Duration::from_secs(30));
        assert_eq!(HttpOptions::from_yaml("timeouts: { drain: 2s }\n").unwrap().timeouts.drain, Duration::from_secs(2));
        assert_eq!(o.sticky_cookie.unwrap().path, "/");
        let e = HttpOptions::from_yaml("method: fastest\n").unwrap_err();
        assert!(e.contains("bad method") && e.contains("line 1"), "{e}");
        assert!(HttpOptions::from_yaml("colour: red\n").unwrap_err().contains("unknown field"));
        assert!(HttpOptions::from_yaml("pin_header: 'a b'\n").unwrap_err().contains("pin_header"));
        assert!(HttpOptions::from_yaml("limits: { max_body: 10, max_buffered_bodies: 5 }\n").unwrap_err().contains("max_buffered_bodies"));
        assert!(HttpOptions::from_yaml("limits: { max_connections_per_ip: 0 }\n").unwrap_err().contains("max_connections_per_ip"));
        assert!(HttpOptions::from_yaml("limits: { max_concurrent_streams: 0 }\n").unwrap_err().contains("max_concurrent_streams"));
        assert!(HttpOptions::from_yaml("limits: { send_buffer: 100 }\n").unwrap_err().contains("send_buffer"));
        assert!(HttpOptions::from_yaml("limits: { min_send_rate: -1 }\n").unwrap_err().contains("min_send_rate"));
        let l = HttpOptions::from_yaml("limits: { send_buffer: 65536, min_send_rate: 0, max_concurrent_streams: 8 }\n").unwrap().limits;
        assert_eq!((l.send_buffer, l.min_send_rate, l.max_concurrent_streams), (65536, 0, 8));
        let d = HttpOptions::default();
        assert_eq!((d.timeouts.client_body, d.limits.min_body_rate, d.limits.max_connections_per_ip), (Duration::from_secs(30), 500, 1000));
        assert_eq!((d.limits.min_send_rate, d.limits.send_buffer, d.limits.max_concurrent_streams), (1024, 0, 128));
    }
}
