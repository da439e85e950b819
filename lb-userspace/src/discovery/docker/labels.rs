//! The `xlb.*` labels a container carries, and compose's: the names and their parsing.
use std::collections::HashMap;

use bollard::models::ContainerInspectResponse;

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
/// `"true"`: the hosts of `xlb.host` are served on the TLS listener too.
pub const LABEL_TLS: &str = "xlb.tls";
/// Network whose address to use.
pub const LABEL_NETWORK: &str = "xlb.network";
/// Comma-separated names a pin header or cookie may use for this container.
pub const LABEL_NAME: &str = "xlb.name";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";

/// The `xlb.*` labels of a container, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub backup: bool,
    pub hosts: Vec<String>,
    pub tls: bool,
    pub network: Option<String>,
    /// `xlb.name`: pinning names.
    pub names: Vec<String>,
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
    for (key, flag) in [(LABEL_BACKUP, &mut out.backup), (LABEL_TLS, &mut out.tls)] {
        if let Some(v) = labels.get(key) {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => *flag = true,
                "false" | "0" | "no" | "off" | "" => {}
                _ => bad(key, v, "not true or false"),
            }
        }
    }
    if let Some(v) = labels.get(LABEL_HOST) {
        out.hosts = name_list(v);
    }
    if out.tls && out.hosts.is_empty() {
        out.tls = false;
        bad(LABEL_TLS, "true", "needs xlb.host to name the hosts to serve over TLS");
    }
    if let Some(v) = labels.get(LABEL_NAME) {
        out.names = name_list(v);
    }
    if let Some(v) = labels.get(LABEL_NETWORK).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        out.network = Some(v.to_owned());
    }
    (out, problems)
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
            (LABEL_HOST, " A.example.com, b.example.com,,a.example.com "),
            (LABEL_NETWORK, "front"),
            (LABEL_NAME, " App2 ,,web-two, app2"),
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
                tls: true,
                network: Some("front".into()),
                names: vec!["app2".into(), "web-two".into()],
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
            (LABEL_TLS, "maybe"),
            (LABEL_TLS, "true"),
        ] {
            let (parsed, problems) = l(&[(key, value)]);
            assert_eq!(parsed, Labels::default(), "{key}={value}");
            assert_eq!(problems.len(), 1, "{key}={value}");
            assert!(problems[0].contains(key) && problems[0].contains(value), "{}", problems[0]);
        }
        assert!(!l(&[(LABEL_BACKUP, "False")]).0.backup);
        assert_eq!(l(&[(LABEL_WEIGHT, " 5 ")]).0.weight, Some(5));
    }
}
