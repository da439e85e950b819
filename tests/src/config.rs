//! Writing xlb SPECs and YAML configs (see docs/contracts.md).

use std::{fmt::Write as _, net::IpAddr};

fn ip_spec(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// `[VIP:]PORT:TARGET[@W][,TARGET[@W]...][:TARGETPORT][/PROTO]`
pub fn spec(
    vip: Option<IpAddr>,
    port: u16,
    targets: &[(IpAddr, Option<u32>)],
    target_port: Option<u16>,
    proto: Option<&str>,
) -> String {
    let mut s = String::new();
    if let Some(v) = vip {
        write!(s, "{}:", ip_spec(v)).unwrap();
    }
    write!(s, "{port}:").unwrap();
    let t: Vec<String> = targets
        .iter()
        .map(|(ip, w)| match w {
            Some(w) => format!("{}@{w}", ip_spec(*ip)),
            None => ip_spec(*ip),
        })
        .collect();
    s.push_str(&t.join(","));
    if let Some(p) = target_port {
        write!(s, ":{p}").unwrap();
    }
    if let Some(p) = proto {
        write!(s, "/{p}").unwrap();
    }
    s
}

#[derive(Debug, Clone)]
pub struct BackendCfg {
    pub address: IpAddr,
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub draining: bool,
}

impl BackendCfg {
    pub fn new(address: IpAddr, port: u16) -> Self {
        BackendCfg { address, port: Some(port), weight: None, draining: false }
    }

    pub fn weight(mut self, w: u32) -> Self {
        self.weight = Some(w);
        self
    }

    pub fn draining(mut self, yes: bool) -> Self {
        self.draining = yes;
        self
    }
}

#[derive(Debug, Clone)]
pub struct ServiceCfg {
    pub name: String,
    pub vip: Option<IpAddr>,
    pub port: u16,
    pub protocol: &'static str,
    pub method: Option<&'static str>,
    pub backends: Vec<BackendCfg>,
}

impl ServiceCfg {
    pub fn tcp(name: &str, vip: IpAddr, port: u16, backends: Vec<BackendCfg>) -> Self {
        ServiceCfg { name: name.into(), vip: Some(vip), port, protocol: "tcp", method: None, backends }
    }

    pub fn udp(name: &str, vip: IpAddr, port: u16, backends: Vec<BackendCfg>) -> Self {
        ServiceCfg { protocol: "udp", ..Self::tcp(name, vip, port, backends) }
    }
}

/// The YAML text of a config with these services (dataplane defaults).
pub fn render(services: &[ServiceCfg]) -> String {
    let mut y = String::from("services:\n");
    for s in services {
        writeln!(y, "  - name: {}", s.name).unwrap();
        if let Some(v) = s.vip {
            writeln!(y, "    vip: \"{v}\"").unwrap();
        }
        writeln!(y, "    port: {}", s.port).unwrap();
        writeln!(y, "    protocol: {}", s.protocol).unwrap();
        if let Some(m) = s.method {
            writeln!(y, "    method: {m}").unwrap();
        }
        y.push_str("    backends:\n");
        for b in &s.backends {
            writeln!(y, "      - address: \"{}\"", b.address).unwrap();
            if let Some(p) = b.port {
                writeln!(y, "        port: {p}").unwrap();
            }
            if let Some(w) = b.weight {
                writeln!(y, "        weight: {w}").unwrap();
            }
            writeln!(y, "        state: {}", if b.draining { "draining" } else { "active" }).unwrap();
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        let v: IpAddr = "10.0.0.100".parse().unwrap();
        assert_eq!(spec(Some(v), 80, &[(a, None), (b, Some(3))], Some(8080), None), "10.0.0.100:80:10.0.0.2,10.0.0.3@3:8080");
        assert_eq!(spec(None, 53, &[(a, None)], None, Some("udp")), "53:10.0.0.2/udp");
        let v6: IpAddr = "fd00::100".parse().unwrap();
        let t6: IpAddr = "fd00:1::2".parse().unwrap();
        assert_eq!(spec(Some(v6), 80, &[(t6, None)], Some(8080), None), "[fd00::100]:80:[fd00:1::2]:8080");
    }

    #[test]
    fn yaml() {
        let y = render(&[ServiceCfg::udp(
            "dns",
            "10.0.0.100".parse().unwrap(),
            53,
            vec![BackendCfg::new("10.0.0.2".parse().unwrap(), 8080).weight(2).draining(true)],
        )]);
        assert_eq!(
            y,
            "services:\n  - name: dns\n    vip: \"10.0.0.100\"\n    port: 53\n    protocol: udp\n    backends:\n      \
             - address: \"10.0.0.2\"\n        port: 8080\n        weight: 2\n        state: draining\n"
        );
    }
}
