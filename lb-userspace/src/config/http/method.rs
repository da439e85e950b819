//! The balancing method of an HTTP service, written as in nginx.

use std::{fmt, str::FromStr, time::Duration};

use super::patterns::valid_token;
use crate::config::units::parse_duration;

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
}
