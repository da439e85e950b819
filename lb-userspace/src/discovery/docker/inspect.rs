//! What a container's inspect data says: name, networks, port, health, state.
use std::net::IpAddr;

use bollard::models::{ContainerInspectResponse, EndpointSettings, HealthStatusEnum};

use super::labels::{Labels, parse_labels};

/// The container's name without Docker's leading '/' (its short id if it has none).
pub fn container_name(c: &ContainerInspectResponse) -> String {
    match c.name.as_deref().map(|n| n.trim_start_matches('/')) {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => short_id(c.id.as_deref().unwrap_or_default()).to_owned(),
    }
}

/// The 12-digit short id Docker shows, for logs and nameless containers.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The container's networks, sorted by name.
pub fn networks(c: &ContainerInspectResponse) -> Vec<(&str, &EndpointSettings)> {
    let mut v: Vec<_> = c.network_settings.iter().flat_map(|s| s.networks.iter().flatten()).map(|(n, ep)| (n.as_str(), ep)).collect();
    v.sort_by_key(|(n, _)| *n);
    v
}

/// The container's single exposed TCP/UDP port (`8080/tcp` and `8080/udp` count as one);
/// `None` when it exposes none or several.
pub fn exposed_port(c: &ContainerInspectResponse) -> Option<u16> {
    let mut ports: Vec<u16> = c
        .config
        .as_ref()?
        .exposed_ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            matches!(proto, "tcp" | "udp").then(|| port.parse().ok()).flatten()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    match ports[..] {
        [p] => Some(p),
        _ => None,
    }
}

/// Docker's HEALTHCHECK verdict: `None` when the container has no healthcheck.
pub fn health(c: &ContainerInspectResponse) -> Option<bool> {
    match c.state.as_ref()?.health.as_ref()?.status? {
        HealthStatusEnum::HEALTHY => Some(true),
        HealthStatusEnum::UNHEALTHY | HealthStatusEnum::STARTING => Some(false),
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
    }
}

/// Running (paused counts: it comes back), and not waiting to be restarted.
pub fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().is_some_and(|s| s.running == Some(true) && s.restarting != Some(true))
}

pub fn is_paused(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().is_some_and(|s| s.paused == Some(true))
}

pub fn started_at(c: &ContainerInspectResponse) -> Option<&str> {
    c.state.as_ref()?.started_at.as_deref()
}

/// The container's address on one network (IPv4 when it has one, else its global IPv6)
/// and that family's gateway.
pub fn endpoint_address(ep: &EndpointSettings) -> Option<(IpAddr, Option<IpAddr>)> {
    let parse = |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).and_then(|s| s.parse::<IpAddr>().ok());
    if let Some(a) = parse(&ep.ip_address) {
        return Some((a, parse(&ep.gateway)));
    }
    parse(&ep.global_ipv6_address).map(|a| (a, parse(&ep.ipv6_gateway)))
}

/// A running container as the source keeps it.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub info: ContainerInspectResponse,
    pub labels: Labels,
    /// A `kill` (with a stopping signal) or `stop` event was seen since it started.
    pub stopping: bool,
}

impl Tracked {
    pub fn new(info: ContainerInspectResponse) -> (Self, Vec<String>) {
        let labels = info.config.as_ref().and_then(|c| c.labels.as_ref());
        let (labels, problems) = labels.map(parse_labels).unwrap_or_default();
        (Tracked { info, labels, stopping: false }, problems)
    }
}
