//! A service from the command line (`xlb run [SPEC...]`), in the style of the DNS-based
//! nginx proxies.

use std::{net::IpAddr, str::FromStr, time::Duration};

use super::{
    service::{Backend, BackendState, DnsSource, DockerSource, Forwarding, Method, Protocol, Service, one_second},
    units::Weight,
};

/// A service from the command line: `[VIP:]PORT:TARGET[,TARGET...][:TARGETPORT][/tcp|/udp|/http]`,
/// with IPv6 addresses in brackets and an optional `@WEIGHT` on each target.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub vip: Option<IpAddr>,
    pub port: u16,
    pub targets: Targets,
    pub target_port: Option<u16>,
    pub protocol: Protocol,
}

/// A SPEC's backends: addresses, or one name that resolves to Docker containers
/// first, then to DNS records.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Addresses(Vec<(IpAddr, Weight)>),
    Name(String),
}

impl Spec {
    pub(super) fn to_service(&self) -> Service {
        let vip = self.vip.map(|v| v.to_string()).unwrap_or_default();
        let (backends, name) = match &self.targets {
            Targets::Addresses(list) => (
                list.iter()
                    .map(|&(address, weight)| Backend {
                        address,
                        port: self.target_port,
                        weight,
                        state: BackendState::Active,
                        backup: false,
                        down: false,
                        max_conns: None,
                    })
                    .collect(),
                None,
            ),
            Targets::Name(n) => (Vec::new(), Some(n.clone())),
        };
        Service {
            name: format!("{vip}:{}/{}", self.port, self.protocol).trim_start_matches(':').to_owned(),
            vip: self.vip,
            port: self.port,
            protocol: self.protocol,
            method: Method::default(),
            backends,
            docker: name.clone().map(|name| DockerSource { name, project: None, network: None, port: self.target_port }),
            dns: name.map(|name| DnsSource { name, port: self.target_port, interval: one_second(), server: None }),
            health: None,
            slow_start: Duration::ZERO,
            http: None,
            socket_lb: true,
            forwarding: Forwarding::Nat,
        }
    }

    /// The port backends listen on.
    pub fn target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

impl FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let err = |why: &str| format!("bad SPEC {s:?}: {why} (expected [VIP:]PORT:TARGET[,TARGET...][:TARGETPORT][/tcp|/udp|/http])");
        let (body, protocol) = match s.rsplit_once('/') {
            Some((b, "tcp")) => (b, Protocol::Tcp),
            Some((b, "udp")) => (b, Protocol::Udp),
            Some((b, "http")) => (b, Protocol::Http),
            Some(_) => return Err(err("protocol must be tcp, udp or http")),
            None => (s, Protocol::Tcp),
        };
        let fields = split_fields(body).map_err(|e| err(&e))?;
        let port = |f: &str| f.parse::<u16>().ok().filter(|p| *p != 0);
        // The target list is the first field after the port that is not a number.
        let (vip, port_idx) = match fields.as_slice() {
            [first, ..] if port(first).is_some() => (None, 0),
            [first, ..] => (Some(parse_addr(first).map_err(|e| err(&e))?), 1),
            [] => return Err(err("empty")),
        };
        let listen = fields.get(port_idx).and_then(|f| port(f)).ok_or_else(|| err("missing or bad PORT"))?;
        let targets_field = fields.get(port_idx + 1).ok_or_else(|| err("missing TARGET"))?;
        let target_port = match fields.get(port_idx + 2) {
            Some(f) => Some(port(f).ok_or_else(|| err("bad TARGETPORT"))?),
            None => None,
        };
        if fields.len() > port_idx + 3 {
            return Err(err("too many fields"));
        }
        let is_name = |t: &str| t.starts_with(|c: char| c.is_ascii_alphabetic()) && !t.contains(['@', ',']) && t.parse::<IpAddr>().is_err();
        if is_name(targets_field) {
            if !targets_field.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(err("a TARGET name may hold letters, digits, '-', '_' and '.'"));
            }
            return Ok(Spec { vip, port: listen, targets: Targets::Name(targets_field.to_string()), target_port, protocol });
        }
        let targets = targets_field
            .split(',')
            .map(|t| {
                let (addr, weight) = match t.split_once('@') {
                    Some((a, w)) => {
                        let w = w.parse().map_err(|_| format!("bad weight {w:?}"))?;
                        (a, Weight::new(w)?)
                    }
                    None => (t, Weight::default()),
                };
                Ok((parse_addr(addr)?, weight))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| err(&e))?;
        let spec = Spec { vip, port: listen, targets: Targets::Addresses(targets), target_port, protocol };
        spec.to_service().validate().map_err(|e| err(&e))?;
        Ok(spec)
    }
}

/// Splits on ':' outside brackets, so `[fd00::1]:80` is two fields.
fn split_fields(s: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' if depth == 0 => return Err("unbalanced ']'".into()),
            ']' => depth -= 1,
            ':' if depth == 0 => {
                fields.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '['".into());
    }
    fields.push(&s[start..]);
    Ok(fields)
}

fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let bare = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s);
    bare.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Spec {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn specs_in_the_dns_proxy_style() {
        let s = spec("80:10.0.0.2:8080");
        assert_eq!((s.vip, s.port, s.target_port, s.protocol), (None, 80, Some(8080), Protocol::Tcp));
        let s = spec("10.9.0.1:53:10.0.0.2@3,10.0.0.3/udp");
        assert_eq!(s.vip, Some("10.9.0.1".parse().unwrap()));
        let Targets::Addresses(t) = &s.targets else { panic!("{s:?}") };
        assert_eq!((t.len(), t[0].1), (2, Weight(3)));
        assert_eq!(s.protocol, Protocol::Udp);
        let s = spec("[fd00::100]:80:[fd00:1::2],[fd00:1::3]:8080");
        assert_eq!(s.vip, Some("fd00::100".parse().unwrap()));
        let Targets::Addresses(t) = &s.targets else { panic!("{s:?}") };
        assert_eq!(t[1].0, "fd00:1::3".parse::<IpAddr>().unwrap());
        assert_eq!(s.target_port, Some(8080));
        let s = spec("81:graphite:8081");
        assert_eq!((s.targets.clone(), s.target_port()), (Targets::Name("graphite".into()), 8081));
        let svc = s.to_service();
        assert_eq!(svc.docker.map(|d| d.name), Some("graphite".into()));
        assert_eq!(svc.dns.map(|d| d.name), Some("graphite".into()));
    }

    #[test]
    fn bad_specs_say_why() {
        for bad in [
            "",
            "80",
            "x:80:10.0.0.1",
            "80:10.0.0.1/sctp",
            "80:10.0.0.1:0",
            "80:10.0.0.1@0",
            "[fd00::1:80:::1",
            "10.0.0.1:80:[fd00::2]",
            "80:web/app:8080",
            "80:10.0.0.1,web",
        ] {
            let e = bad.parse::<Spec>().unwrap_err();
            assert!(e.contains("bad SPEC"), "{bad}: {e}");
        }
    }
}
