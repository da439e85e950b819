//! An access log entry and its two line formats: nginx's `combined` and JSON.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::config::access_log::Format;

/// One HTTP request, from its arrival to the end of its response body.
#[derive(Debug, Clone)]
pub struct Http {
    /// When the request arrived.
    pub time: SystemTime,
    /// The connection's peer.
    pub client: SocketAddr,
    pub method: String,
    pub target: String,
    pub version: &'static str,
    pub host: Option<String>,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// The service the request was routed to (none: no route).
    pub service: Option<String>,
    /// The backend that answered, or the last one tried.
    pub upstream: Option<(SocketAddr, String)>,
    /// Backends tried (1 + retries); 0: none was.
    pub tries: u32,
    /// Opening the backend connection of the last try (none: a pooled one, or no try).
    pub connect: Option<Duration>,
    /// From the last try's start to the backend's response head.
    pub header: Option<Duration>,
    pub total: Duration,
}

/// One L4 connection of the kernel's, as the expiry pass removes its entries.
#[derive(Debug, Clone)]
pub struct L4 {
    /// The connection's last packet.
    pub time: SystemTime,
    pub client: SocketAddr,
    pub service: SocketAddr,
    pub backend: Option<SocketAddr>,
    pub protocol: &'static str,
    /// `closed` (FIN or RST seen), `idle` (timed out) or `drained` (its backend's drain ended).
    pub end: &'static str,
}

#[derive(Debug, Clone)]
pub enum Entry {
    Http(Box<Http>),
    L4(L4),
}

impl Entry {
    /// Appends the entry's line (with its newline) to `out`.
    pub fn write(&self, format: Format, out: &mut String) {
        match (self, format) {
            (Entry::Http(h), Format::Combined) => combined(h, out),
            (Entry::L4(c), Format::Combined) => {
                let backend = c.backend.map_or("-".to_owned(), |b| b.to_string());
                let _ = writeln!(out, "{} - - [{}] \"{} {}\" {} {backend}", c.client.ip(), time_local(c.time), c.protocol, c.service, c.end);
            }
            (e, Format::Json) => {
                out.push_str(&e.json().to_string());
                out.push('\n');
            }
        }
    }

    fn json(&self) -> Value {
        match self {
            Entry::Http(h) => json!({
                "time": iso8601(h.time),
                "kind": "http",
                "client": h.client.to_string(),
                "method": h.method,
                "target": h.target,
                "version": h.version,
                "host": h.host,
                "status": h.status,
                "bytes": h.bytes,
                "referer": h.referer,
                "user_agent": h.user_agent,
                "route": h.service,
                "upstream": h.upstream.as_ref().map(|u| u.0.to_string()),
                "upstream_name": h.upstream.as_ref().map(|u| u.1.as_str()),
                "tries": h.tries,
                "retries": h.tries.saturating_sub(1),
                "connect_time": h.connect.map(seconds),
                "header_time": h.header.map(seconds),
                "request_time": seconds(h.total),
            }),
            Entry::L4(c) => json!({
                "time": iso8601(c.time),
                "kind": c.protocol.to_ascii_lowercase(),
                "client": c.client.to_string(),
                "service": c.service.to_string(),
                "upstream": c.backend.map(|b| b.to_string()),
                "end": c.end,
            }),
        }
    }
}

/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent"`, escaped as nginx escapes (`\xHH` for `"`, `\`
/// and bytes outside printable ASCII).
fn combined(h: &Http, out: &mut String) {
    let _ = write!(out, "{} - - [{}] \"", h.client.ip(), time_local(h.time));
    escape(&h.method, out);
    out.push(' ');
    escape(&h.target, out);
    let _ = write!(out, " {}\" {} {} \"", h.version, h.status, h.bytes);
    escape(h.referer.as_deref().unwrap_or("-"), out);
    out.push_str("\" \"");
    escape(h.user_agent.as_deref().unwrap_or("-"), out);
    out.push_str("\"\n");
}

fn escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

/// Seconds with millisecond resolution, as nginx's `$request_time`.
fn seconds(d: Duration) -> f64 {
    (d.as_micros() as f64 / 1000.0).round() / 1000.0
}

/// UTC civil time of `t`: (year, month, day, hour, minute, second, millisecond).
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    // Days to a proleptic Gregorian date, counting from 0000-03-01 in 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem / 60 % 60, rem % 60, since.subsec_millis())
}

/// nginx's `$time_local` (in UTC): `05/Dec/2026:21:11:19 +0000`.
fn time_local(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, mo, d, h, mi, s, _) = civil(t);
    format!("{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000", MONTHS[mo as usize - 1])
}

/// `2026-12-05T21:11:19.123Z`.
fn iso8601(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + 42)
    }

    #[test]
    fn times_in_utc() {
        assert_eq!(time_local(at(0)), "01/Jan/1970:00:00:00 +0000");
        // 2000-02-29 (a leap day of a century leap year) and 2026-12-05 21:11:19.
        assert_eq!(iso8601(at(951_782_400)), "2000-02-29T00:00:00.042Z");
        assert_eq!(time_local(at(1_796_505_079)), "05/Dec/2026:21:11:19 +0000");
    }

    fn request() -> Http {
        Http {
            time: at(1_796_505_079),
            client: "10.0.0.9:40000".parse().unwrap(),
            method: "GET".into(),
            target: "/a\"b".into(),
            version: "HTTP/1.1",
            host: Some("api.app.dev".into()),
            referer: None,
            user_agent: Some("curl/8.0".into()),
            status: 200,
            bytes: 12,
            service: Some("api".into()),
            upstream: Some(("172.17.0.2:8080".parse().unwrap(), "app1".into())),
            tries: 2,
            connect: None,
            header: Some(Duration::from_micros(2_400)),
            total: Duration::from_millis(3),
        }
    }

    #[test]
    fn combined_is_nginx_s() {
        let mut line = String::new();
        Entry::Http(Box::new(request())).write(Format::Combined, &mut line);
        assert_eq!(line, "10.0.0.9 - - [05/Dec/2026:21:11:19 +0000] \"GET /a\\x22b HTTP/1.1\" 200 12 \"-\" \"curl/8.0\"\n");
    }

    #[test]
    fn json_has_every_field() {
        let mut line = String::new();
        Entry::Http(Box::new(request())).write(Format::Json, &mut line);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-12-05T21:11:19.042Z");
        assert_eq!(v["target"], "/a\"b");
        assert_eq!(v["upstream"], "172.17.0.2:8080");
        assert_eq!(v["upstream_name"], "app1");
        assert_eq!((v["tries"].as_u64(), v["retries"].as_u64()), (Some(2), Some(1)));
        assert_eq!((v["header_time"].as_f64(), v["connect_time"].is_null(), v["request_time"].as_f64()), (Some(0.002), true, Some(0.003)));
        assert_eq!(v["route"], "api");
    }
}
