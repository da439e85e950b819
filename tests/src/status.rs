//! Reading a running xlb's status the way an operator does: `xlb status --json` run inside
//! xlb's namespace, decoded into xlb's own snapshot types (so a field xlb renames breaks
//! here at compile time), and `GET /metrics` with curl, read by a Prometheus text sample
//! reader (xlb writes that format but has no reader of it).

use std::{collections::BTreeMap, fmt};

pub use xlb::observe::{BackendStatus, ServiceStatus, Snapshot};

use crate::{netns::NetNs, xlb::xlb_bin};

/// `xlb status --json` (or `/api/v1/services`) decoded, with its text for failure messages.
#[derive(Debug, Clone)]
pub struct Status {
    pub snapshot: Snapshot,
    pub raw: String,
}

impl Status {
    pub fn parse(text: &str) -> Result<Status, String> {
        let snapshot = serde_json::from_str(text).map_err(|e| format!("status JSON: {e}"))?;
        Ok(Status { snapshot, raw: text.to_string() })
    }

    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.snapshot.services.iter().find(|s| s.name == name)
    }

    /// The kernel's drops counted under `reason` (0 when it is not listed).
    pub fn drops(&self, reason: &str) -> u64 {
        self.snapshot.drops.iter().filter(|d| d.reason == reason).map(|d| d.packets).sum()
    }
}

/// What the tests look up in a service's status (the type is xlb's, so the lookups live here).
pub trait ServiceLookup {
    fn backend(&self, address: &str) -> Option<&BackendStatus>;
    /// The backends' addresses, sorted.
    fn addresses(&self) -> Vec<String>;
}

impl ServiceLookup for ServiceStatus {
    fn backend(&self, address: &str) -> Option<&BackendStatus> {
        self.backends.iter().find(|b| b.address == address)
    }

    fn addresses(&self) -> Vec<String> {
        let mut a: Vec<String> = self.backends.iter().map(|b| b.address.clone()).collect();
        a.sort();
        a
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
    fn status_decodes_into_xlb_types() {
        let text = r#"{"services":[{"name":"web \"x\"","vip":"10.0.0.1","port":80,"protocol":"tcp","method":"maglev",
            "sources":["static"],"packets":10,"bytes":1000,"new_flows":18446744073709551615,
            "backends":[{"address":"10.1.0.2:8080","name":"10.1.0.2","origin":"static","state":"healthy",
            "weight":1.0,"active_connections":2,"packets":10,"bytes":1000,"new_flows":5,
            "new_flows_per_sec":0.0,"bytes_per_sec":1.5e3}]}],
            "drops":[{"reason":"no_backend","packets":3}],"health_transitions":0,"discovery_events":{}}"#;
        let s = Status::parse(text).unwrap();
        let w = s.service("web \"x\"").unwrap();
        assert_eq!(w.new_flows, u64::MAX);
        assert_eq!(w.backend("10.1.0.2:8080").unwrap().new_flows, 5);
        assert_eq!(w.backends[0].bytes_per_sec, 1500.0);
        assert_eq!((s.drops("no_backend"), s.drops("ttl_expired")), (3, 0));
        assert!(Status::parse("{\"services\": [1, 2,]}").is_err());
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
