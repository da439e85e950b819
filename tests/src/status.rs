//! Reading a running xlb's status the way an operator does: `xlb status [--json]` run inside
//! xlb's namespace, and `GET /metrics` with curl. The tests have no JSON crate, so this holds
//! a small JSON reader (enough for `xlb status --json`) and a Prometheus text sample reader.

use std::{collections::BTreeMap, fmt};

use crate::{netns::NetNs, xlb::xlb_bin};

/// A JSON value. Numbers keep their text, so `u64` counters are read exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser { b: text.as_bytes(), i: 0 };
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(p.err("trailing characters"));
        }
        Ok(v)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("JSON: {what} at byte {}", self.i)
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected {:?}", c as char)))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.b.get(self.i) {
            None => Err(self.err("unexpected end")),
            Some(b'{') => {
                self.i += 1;
                let mut kv = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(kv));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    kv.push((k, self.value()?));
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(kv));
                        }
                        _ => return Err(self.err("expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return Err(self.err("expected ',' or ']'")),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.b.len() && (self.b[self.i].is_ascii_digit() || b"+-.eE".contains(&self.b[self.i])) {
                    self.i += 1;
                }
                Ok(Json::Num(String::from_utf8_lossy(&self.b[start..self.i]).into_owned()))
            }
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json, String> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(self.err("bad literal"))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.b.get(self.i) != Some(&b'"') {
            return Err(self.err("expected a string"));
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.b.get(self.i) else { return Err(self.err("unterminated string")) };
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|_| self.err("bad UTF-8")),
                b'\\' => {
                    let Some(&e) = self.b.get(self.i) else { return Err(self.err("unterminated escape")) };
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self.b.get(self.i..self.i + 4).ok_or_else(|| self.err("short \\u escape"))?;
                            let cp = u32::from_str_radix(std::str::from_utf8(hex).unwrap_or("x"), 16).map_err(|_| self.err("bad \\u escape"))?;
                            self.i += 4;
                            let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                            out.extend_from_slice(ch.to_string().as_bytes());
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

/// One backend of `xlb status --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStatus {
    pub address: String,
    pub name: String,
    pub origin: String,
    pub state: String,
    pub weight: f64,
    pub active_connections: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// One service of `xlb status --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u64,
    pub protocol: String,
    pub method: String,
    pub sources: Vec<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStatus>,
}

impl ServiceStatus {
    pub fn backend(&self, address: &str) -> Option<&BackendStatus> {
        self.backends.iter().find(|b| b.address == address)
    }

    /// The backends' addresses, sorted.
    pub fn addresses(&self) -> Vec<String> {
        let mut a: Vec<String> = self.backends.iter().map(|b| b.address.clone()).collect();
        a.sort();
        a
    }
}

/// `xlb status --json` decoded (the fields the tests look at), plus its text.
#[derive(Debug, Clone)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    /// Kernel drops by reason.
    pub drops: BTreeMap<String, u64>,
    pub raw: String,
}

impl Status {
    pub fn parse(text: &str) -> Result<Status, String> {
        let j = Json::parse(text)?;
        let field = |o: &Json, k: &str| o.get(k).cloned().ok_or_else(|| format!("status JSON: no field {k:?} in {o:?}"));
        let s = |o: &Json, k: &str| field(o, k)?.as_str().map(str::to_string).ok_or_else(|| format!("status JSON: {k} is not a string"));
        let u = |o: &Json, k: &str| field(o, k)?.as_u64().ok_or_else(|| format!("status JSON: {k} is not a whole number"));
        let f = |o: &Json, k: &str| field(o, k)?.as_f64().ok_or_else(|| format!("status JSON: {k} is not a number"));
        let arr = |o: &Json, k: &str| field(o, k)?.as_array().map(<[Json]>::to_vec).ok_or_else(|| format!("status JSON: {k} is not an array"));
        let mut services = Vec::new();
        for sv in arr(&j, "services")? {
            let mut backends = Vec::new();
            for b in arr(&sv, "backends")? {
                backends.push(BackendStatus {
                    address: s(&b, "address")?,
                    name: s(&b, "name")?,
                    origin: s(&b, "origin")?,
                    state: s(&b, "state")?,
                    weight: f(&b, "weight")?,
                    active_connections: u(&b, "active_connections")?,
                    packets: u(&b, "packets")?,
                    bytes: u(&b, "bytes")?,
                    new_flows: u(&b, "new_flows")?,
                });
            }
            services.push(ServiceStatus {
                name: s(&sv, "name")?,
                vip: s(&sv, "vip")?,
                port: u(&sv, "port")?,
                protocol: s(&sv, "protocol")?,
                method: s(&sv, "method")?,
                sources: arr(&sv, "sources")?.iter().map(|x| x.as_str().unwrap_or("?").to_string()).collect(),
                packets: u(&sv, "packets")?,
                bytes: u(&sv, "bytes")?,
                new_flows: u(&sv, "new_flows")?,
                backends,
            });
        }
        let mut drops = BTreeMap::new();
        for d in arr(&j, "drops")? {
            drops.insert(s(&d, "reason")?, u(&d, "packets")?);
        }
        Ok(Status { services, drops, raw: text.to_string() })
    }

    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// `ip netns exec NS $XLB_BIN status ARGS...`: stdout, or the error with stderr.
pub fn xlb_status_raw(ns: &NetNs, args: &[&str]) -> Result<String, String> {
    let bin = xlb_bin();
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    ns.try_run(bin.to_str().expect("utf-8 path"), &all)
}

/// `xlb status --json` inside `ns`, decoded.
pub fn xlb_status(ns: &NetNs) -> Result<Status, String> {
    let out = xlb_status_raw(ns, &["--json"])?;
    Status::parse(&out).map_err(|e| format!("{e}; the output:\n{out}"))
}

/// One Prometheus sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        write!(f, "{}{{{}}} {}", self.name, l.join(","), self.value)
    }
}

/// The samples of a Prometheus text exposition (comments skipped). Errors name the line.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("metrics line {}: {why}: {line:?}", n + 1);
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end = loop {
                // key
                let Some(&(ks, c)) = chars.peek() else { return Err(bad("unterminated labels")) };
                if c == '}' {
                    break ks + 1;
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(bad("label value not quoted"));
                }
                let mut val = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => val.push('\n'),
                            Some(o) => val.push(o),
                            None => return Err(bad("bad escape")),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => val.push(c),
                    }
                }
                if !closed {
                    return Err(bad("unterminated label value"));
                }
                labels.insert(key.trim().to_string(), val);
                if let Some(&(_, ',')) = chars.peek() {
                    chars.next();
                }
            };
            rest = &r[end..];
        }
        let value = rest.split_whitespace().next().ok_or_else(|| bad("no value"))?;
        let value = value.parse::<f64>().map_err(|_| bad("bad value"))?;
        out.push(Sample { name, labels, value });
    }
    Ok(out)
}

/// `curl -sS --fail --max-time 2 http://ADDR/metrics` inside `ns`: the text.
pub fn metrics_text(ns: &NetNs, admin: &str) -> Result<String, String> {
    ns.try_run("curl", &["-sS", "--fail", "--max-time", "2", &format!("http://{admin}/metrics")])
}

/// The samples named `name` whose labels include every `(key, value)` of `labels`.
pub fn samples<'a>(all: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_status() {
        let text = r#"{"services":[{"name":"web \"x\"","vip":"10.0.0.1","port":80,"protocol":"tcp","method":"maglev",
            "sources":["static"],"packets":10,"bytes":1000,"new_flows":18446744073709551615,
            "backends":[{"address":"10.1.0.2:8080","name":"10.1.0.2","origin":"static","state":"healthy",
            "weight":1.0,"active_connections":2,"packets":10,"bytes":1000,"new_flows":5,
            "new_flows_per_sec":0.0,"bytes_per_sec":1.5e3}]}],
            "drops":[{"reason":"no_backend","packets":3}],"health_transitions":0,"discovery_events":{}}"#;
        let s = Status::parse(text).unwrap();
        let w = s.service("web \"x\"").unwrap();
        assert_eq!(w.new_flows, u64::MAX);
        assert_eq!(w.backends[0].new_flows, 5);
        assert_eq!(w.backends[0].weight, 1.0);
        assert_eq!(s.drops["no_backend"], 3);
        assert!(Json::parse("{\"a\": [1, 2,]}").is_err());
        assert_eq!(Json::parse(" [\"\\u00e9\", null, true] ").unwrap(), Json::Arr(vec![Json::Str("é".into()), Json::Null, Json::Bool(true)]));
    }

    #[test]
    fn metrics_samples() {
        let text = "# HELP x y\n# TYPE x counter\nxlb_backend_flows_total{service=\"web \\\"a\\\"\",backend=\"10.1.0.2:8080\",name=\"b1\"} 5\nxlb_health_transitions_total 0\n";
        let s = parse_metrics(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["service"], "web \"a\"");
        assert_eq!(s[0].labels["backend"], "10.1.0.2:8080");
        assert_eq!(s[0].value, 5.0);
        assert_eq!(samples(&s, "xlb_backend_flows_total", &[("name", "b1")]).len(), 1);
        assert_eq!(s[1].name, "xlb_health_transitions_total");
        assert!(parse_metrics("x{a=\"b} 1\n").is_err());
    }
}
