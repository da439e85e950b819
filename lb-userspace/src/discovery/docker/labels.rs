//! The `xlb.*` labels a container carries, and compose's: the names and their parsing.
use std::collections::HashMap;

use bollard::models::ContainerInspectResponse;

use crate::{
    config::http::{Protocol, UpstreamOptions, UpstreamTls},
    discovery::update::TlsLabels,
};

/// The xlb service a container joins.
pub const LABEL_SERVICE: &str = "xlb.service";
/// Target port.
pub const LABEL_PORT: &str = "xlb.port";
/// Selection weight, 1-1000.
pub const LABEL_WEIGHT: &str = "xlb.weight";
/// `true`: a backup backend.
pub const LABEL_BACKUP: &str = "xlb.backup";
/// Comma-separated host names for HTTP routing.
pub const LABEL_HOST: &str = "xlb.host";
/// `"true"`: the hosts of `xlb.host` are served on the TLS listener too;
/// `"passthrough"`: there, passed to the container unread (it terminates TLS itself).
pub const LABEL_TLS: &str = "xlb.tls";
/// The protocol xlb speaks to the container: `http1`, `https`, `h2c` or `h2`.
pub const LABEL_UPSTREAM: &str = "xlb.upstream";
/// `"false"`: its certificate (`https`, `h2`) is not checked (a self-signed one).
pub const LABEL_UPSTREAM_VERIFY: &str = "xlb.upstream_verify";
/// Network whose address to use.
pub const LABEL_NETWORK: &str = "xlb.network";
/// Comma-separated names a pin header or cookie may use for this container.
pub const LABEL_NAME: &str = "xlb.name";
/// `false`: the container's service is not balanced at the socket for local callers.
pub const LABEL_SOCKET_LB: &str = "xlb.socket_lb";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";

/// The `xlb.*` labels of a container, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub backup: bool,
    pub hosts: Vec<String>,
    pub tls: TlsLabels,
    pub network: Option<String>,
    /// `xlb.name`: pinning names.
    pub names: Vec<String>,
    /// `xlb.socket_lb`, when given.
    pub socket_lb: Option<bool>,
}

/// Parses the `xlb.*` labels. A bad value is left out and described in the second
/// result (for a warning naming the container).
pub fn parse_labels(labels: &HashMap<String, String>) -> (Labels, Vec<String>) {
    let mut out = Labels::default();
    let mut problems = Vec::new();
    let mut bad = |key: &str, value: &str, why: &str| problems.push(format!("label {key}={value:?} ignored: {why}"));
    if let Some(v) = labels.get(LABEL_PORT) {
        match v.trim().parse::<u16>() {
            Ok(p) if p != 0 => out.port = Some(p),
            _ => bad(LABEL_PORT, v, "not a port (1-65535)"),
        }
    }
    if let Some(v) = labels.get(LABEL_WEIGHT) {
        match v.trim().parse::<u32>() {
            Ok(w @ 1..=1000) => out.weight = Some(w),
            _ => bad(LABEL_WEIGHT, v, "not a weight (1-1000)"),
        }
    }
    if let Some(v) = labels.get(LABEL_BACKUP) {
        match flag(v) {
            Some(b) => out.backup = b,
            None => bad(LABEL_BACKUP, v, "not true or false"),
        }
    }
    if let Some(v) = labels.get(LABEL_TLS) {
        match flag(v) {
            Some(b) => out.tls.serve = b,
            None if v.trim().eq_ignore_ascii_case("passthrough") => (out.tls.serve, out.tls.passthrough) = (true, true),
            None => bad(LABEL_TLS, v, "not true, false or passthrough"),
        }
    }
    if let Some(v) = labels.get(LABEL_UPSTREAM) {
        match upstream(v) {
            Some(u) => out.tls.upstream = Some(u),
            None => bad(LABEL_UPSTREAM, v, "not http1, https, h2c or h2"),
        }
    }
    if let Some(v) = labels.get(LABEL_UPSTREAM_VERIFY) {
        match (flag(v), out.tls.upstream.as_mut().and_then(|u| u.tls.as_mut())) {
            (Some(b), Some(t)) => t.verify = b,
            (Some(_), None) => bad(LABEL_UPSTREAM_VERIFY, v, "needs xlb.upstream https or h2"),
            (None, _) => bad(LABEL_UPSTREAM_VERIFY, v, "not true or false"),
        }
    }
    if let Some(v) = labels.get(LABEL_SOCKET_LB) {
        match flag(v) {
            Some(b) => out.socket_lb = Some(b),
            None => bad(LABEL_SOCKET_LB, v, "not true or false"),
        }
    }
    if let Some(v) = labels.get(LABEL_HOST) {
        out.hosts = name_list(v);
    }
    if out.tls.serve && out.hosts.is_empty() {
        let v = if out.tls.passthrough { "passthrough" } else { "true" };
        (out.tls.serve, out.tls.passthrough) = (false, false);
        bad(LABEL_TLS, v, "needs xlb.host to name the hosts to serve over TLS");
    }
    if let Some(v) = labels.get(LABEL_NAME) {
        out.names = name_list(v);
    }
    if let Some(v) = labels.get(LABEL_NETWORK).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        out.network = Some(v.to_owned());
    }
    (out, problems)
}

/// A boolean label value (an empty one is false).
fn flag(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// An `xlb.upstream` value: `https` is HTTP/1.1 over TLS, `h2` HTTP/2 over TLS; the
/// certificate checked against the system's trust store for the container's address,
/// unless `xlb.upstream_verify` is false.
fn upstream(v: &str) -> Option<UpstreamOptions> {
    let (protocol, tls) = match v.trim().to_ascii_lowercase().as_str() {
        "http1" => (Protocol::Http1, false),
        "https" => (Protocol::Http1, true),
        "h2c" => (Protocol::H2c, false),
        "h2" => (Protocol::H2, true),
        _ => return None,
    };
    Some(UpstreamOptions { protocol, tls: tls.then(UpstreamTls::default) })
}

/// A comma-separated label value: trimmed, lowercased, without empty or repeated names.
fn name_list(v: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in v.split(',').map(|n| n.trim().to_ascii_lowercase()) {
        if !n.is_empty() && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// A label's value, if the container has it.
pub fn label<'a>(c: &'a ContainerInspectResponse, key: &str) -> Option<&'a str> {
    c.config.as_ref()?.labels.as_ref()?.get(key).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_bad_ones_are_reported() {
        let l = |kv: &[(&str, &str)]| parse_labels(&kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let (good, problems) = l(&[
            (LABEL_PORT, "8080"),
            (LABEL_WEIGHT, "1000"),
            (LABEL_BACKUP, "true"),
            (LABEL_TLS, "yes"),
            (LABEL_UPSTREAM, " H2 "),
            (LABEL_UPSTREAM_VERIFY, "false"),
            (LABEL_HOST, " A.example.com, b.example.com,,a.example.com "),
            (LABEL_NETWORK, "front"),
            (LABEL_NAME, " App2 ,,web-two, app2"),
            (LABEL_SOCKET_LB, "false"),
            ("unrelated", "x"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            good,
            Labels {
                port: Some(8080),
                weight: Some(1000),
                backup: true,
                hosts: vec!["a.example.com".into(), "b.example.com".into()],
                tls: TlsLabels {
                    serve: true,
                    passthrough: false,
                    upstream: Some(UpstreamOptions { protocol: Protocol::H2, tls: Some(UpstreamTls { verify: false, ..UpstreamTls::default() }) }),
                },
                network: Some("front".into()),
                names: vec!["app2".into(), "web-two".into()],
                socket_lb: Some(false),
            }
        );

        for (key, value) in [
            (LABEL_WEIGHT, "0"),
            (LABEL_WEIGHT, "1001"),
            (LABEL_WEIGHT, "heavy"),
            (LABEL_WEIGHT, "-1"),
            (LABEL_PORT, "0"),
            (LABEL_PORT, "70000"),
            (LABEL_BACKUP, "maybe"),
            (LABEL_SOCKET_LB, "sometimes"),
            (LABEL_TLS, "maybe"),
            (LABEL_TLS, "true"),
            (LABEL_TLS, "passthrough"),
            (LABEL_UPSTREAM, "h3"),
            (LABEL_UPSTREAM_VERIFY, "false"),
        ] {
            let (parsed, problems) = l(&[(key, value)]);
            assert_eq!(parsed, Labels::default(), "{key}={value}");
            assert_eq!(problems.len(), 1, "{key}={value}");
            assert!(problems[0].contains(key) && problems[0].contains(value), "{}", problems[0]);
        }
        assert!(!l(&[(LABEL_BACKUP, "False")]).0.backup);
        let (pass, problems) = l(&[(LABEL_TLS, "Passthrough"), (LABEL_HOST, "vault.test")]);
        assert!(problems.is_empty() && pass.tls.serve && pass.tls.passthrough, "{pass:?} {problems:?}");
        let https = l(&[(LABEL_UPSTREAM, "https")]).0.tls.upstream.unwrap();
        assert_eq!((https.protocol, https.tls.map(|t| t.verify)), (Protocol::Http1, Some(true)));
        assert_eq!(l(&[(LABEL_UPSTREAM, "h2c")]).0.tls.upstream.unwrap().tls, None);
        assert_eq!(l(&[(LABEL_WEIGHT, " 5 ")]).0.weight, Some(5));
    }
}
