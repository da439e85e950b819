//! Which containers join which watched service, and as which backend.
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use bollard::models::ContainerInspectResponse;

use super::{
    inspect::{Tracked, container_name, endpoint_address, exposed_port, health, is_paused, networks},
    labels::{COMPOSE_PROJECT, COMPOSE_SERVICE, LABEL_SERVICE, label},
    swarm::SWARM_SERVICE_NAME,
};
use crate::discovery::update::{Discovered, DockerWatch};

/// Whether the container joins `w`: `xlb.service` label (a swarm task's service's too),
/// compose service (in `w.project` when set), swarm service, container name, or a network
/// alias equal to `w.name`.
pub fn matches(w: &DockerWatch, c: &ContainerInspectResponse) -> bool {
    let name = w.name.as_str();
    if label(c, LABEL_SERVICE) == Some(name) {
        return true;
    }
    if label(c, COMPOSE_SERVICE) == Some(name) && w.project.as_deref().is_none_or(|p| label(c, COMPOSE_PROJECT) == Some(p)) {
        return true;
    }
    if label(c, SWARM_SERVICE_NAME) == Some(name) {
        return true;
    }
    if container_name(c) == name {
        return true;
    }
    networks(c).iter().any(|(_, ep)| ep.aliases.iter().flatten().any(|a| a == name))
}

/// Which network's address to use, and the address.
///
/// `wanted` (the watch's network, else the `xlb.network` label) must be one of the
/// container's networks (a compose container's `PROJECT_wanted` also counts). Without
/// it: among the networks sorted by name, the first whose gateway is an address of the
/// host (`host`: so the host can reach the container directly), else the first with an
/// address.
pub fn choose_network(c: &ContainerInspectResponse, wanted: Option<&str>, host: &HashSet<IpAddr>) -> Result<(String, IpAddr), String> {
    let nets = networks(c);
    if let Some(want) = wanted {
        let prefixed = label(c, COMPOSE_PROJECT).map(|p| format!("{p}_{want}"));
        let found = nets.iter().find(|(n, _)| *n == want).or_else(|| nets.iter().find(|(n, _)| Some(*n) == prefixed.as_deref()));
        let Some((name, ep)) = found else {
            return Err(format!("not attached to network {want:?}"));
        };
        return endpoint_address(ep).map(|(a, _)| (name.to_string(), a)).ok_or_else(|| format!("no IP address on network {name:?}"));
    }
    let addressed: Vec<_> = nets.iter().filter_map(|(n, ep)| endpoint_address(ep).map(|a| (*n, a))).collect();
    addressed
        .iter()
        .find(|(_, (_, gw))| gw.is_some_and(|g| host.contains(&g)))
        .or(addressed.first())
        .map(|(n, (a, _))| (n.to_string(), *a))
        .ok_or_else(|| "no IP address on any network".to_owned())
}

/// Names a pin header or cookie may use besides the container name: the `xlb.name`
/// label's, then the container's hostname (`--hostname`, else Docker's short id).
pub fn aliases(c: &Tracked) -> Vec<String> {
    let name = container_name(&c.info).to_ascii_lowercase();
    let hostname = c.info.config.as_ref().and_then(|c| c.hostname.as_deref()).map(|h| h.trim().to_ascii_lowercase());
    let mut out: Vec<String> = Vec::new();
    for a in c.labels.names.iter().cloned().chain(hostname) {
        if !a.is_empty() && a != name && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The backend `c` is for watch `w` (which it matches), or why it cannot be one.
pub fn backend(w: &DockerWatch, c: &Tracked, host: &HashSet<IpAddr>) -> Result<Discovered, String> {
    let wanted = w.network.as_deref().or(c.labels.network.as_deref());
    let (network, addr) = choose_network(&c.info, wanted, host)?;
    Ok(Discovered {
        addr,
        port: c.labels.port.or(w.port).or_else(|| exposed_port(&c.info)),
        weight: c.labels.weight.unwrap_or(1),
        backup: c.labels.backup,
        name: container_name(&c.info),
        aliases: aliases(c),
        hosts: c.labels.hosts.clone(),
        tls: c.labels.tls.clone(),
        draining: c.stopping || is_paused(&c.info),
        healthy: health(&c.info),
        origin: format!("docker:{network}"),
        socket_lb: c.labels.socket_lb.unwrap_or(true),
    })
}

/// A container that matches a watch but cannot be a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    pub container: String,
    pub service: String,
    pub why: String,
}

/// Every watched service's set (empty when no container joins it), sorted by name, and
/// the containers left out.
pub fn service_sets<'a>(
    watches: &[DockerWatch],
    containers: impl IntoIterator<Item = &'a Tracked>,
    host: &HashSet<IpAddr>,
) -> (BTreeMap<String, Vec<Discovered>>, Vec<Problem>) {
    let mut sets: BTreeMap<String, Vec<Discovered>> = watches.iter().map(|w| (w.service.clone(), Vec::new())).collect();
    let mut problems = Vec::new();
    for c in containers {
        for w in watches.iter().filter(|w| matches(w, &c.info)) {
            match backend(w, c, host) {
                Ok(d) => sets.get_mut(&w.service).expect("every watch has a set").push(d),
                Err(why) => problems.push(Problem { container: container_name(&c.info), service: w.service.clone(), why }),
            }
        }
    }
    for set in sets.values_mut() {
        set.sort_by(|a, b| (&a.name, a.addr, a.port).cmp(&(&b.name, b.addr, b.port)));
        set.dedup();
    }
    (sets, problems)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::discovery::docker::{
        inspect::is_running,
        labels::{LABEL_NAME, LABEL_NETWORK, LABEL_PORT, LABEL_WEIGHT},
        testing::{Net, container, host, net, simple, watch},
    };

    #[test]
    fn matches_label_compose_name_and_alias() {
        let w = watch("web");
        assert!(matches(&w, &simple("x", &[(LABEL_SERVICE, "web")])));
        assert!(!matches(&w, &simple("x", &[(LABEL_SERVICE, "webx")])));
        assert!(matches(&w, &simple("web", &[])), "container name");
        assert!(!matches(&w, &simple("web-1", &[])));

        let compose = simple("p_web_1", &[(COMPOSE_SERVICE, "web"), (COMPOSE_PROJECT, "p")]);
        assert!(matches(&w, &compose));
        assert!(matches(&DockerWatch { project: Some("p".into()), ..w.clone() }, &compose));
        assert!(!matches(&DockerWatch { project: Some("q".into()), ..w.clone() }, &compose));
        // The project restricts compose matches only.
        let labelled = simple("x", &[(LABEL_SERVICE, "web"), (COMPOSE_PROJECT, "other")]);
        assert!(matches(&DockerWatch { project: Some("p".into()), ..w.clone() }, &labelled));

        let aliased = container("x", &[], &[Net { aliases: &["web", "0123abcd"], ..net("appnet", "172.18.0.2", "172.18.0.1") }], &[], json!({}));
        assert!(matches(&w, &aliased));
        assert!(!matches(&watch("api"), &aliased));

        let task = simple("web.1.0123abcd", &[(SWARM_SERVICE_NAME, "web")]);
        assert!(matches(&w, &task), "swarm service");
        assert!(!matches(&watch("web.1"), &task));
    }

    #[test]
    fn pinning_aliases_are_xlb_name_and_hostname() {
        let w = watch("web");
        let aliases = |name: &str, labels: &[(&str, &str)], hostname: Option<&str>| {
            let mut info = simple(name, labels);
            info.config.as_mut().unwrap().hostname = hostname.map(Into::into);
            let (t, problems) = Tracked::new(info);
            assert!(problems.is_empty(), "{problems:?}");
            backend(&w, &t, &host()).unwrap().aliases
        };
        assert_eq!(aliases("x", &[(LABEL_NAME, "App2, b")], Some("Host-2")), ["app2", "b", "host-2"]);
        // Docker's default hostname (the short id) is a name too; nothing repeats the
        // container name or another alias, and an empty one is no name.
        assert_eq!(aliases("x", &[], Some("0123456789ab")), ["0123456789ab"]);
        assert_eq!(aliases("Web-1", &[(LABEL_NAME, "web-1, h")], Some("H")), ["h"]);
        assert!(aliases("x", &[(LABEL_NAME, " , ")], Some("")).is_empty());
        assert!(aliases("x", &[], None).is_empty());
    }

    #[test]
    fn a_bad_weight_falls_back_to_one() {
        let (t, problems) = Tracked::new(simple("x", &[(LABEL_SERVICE, "web"), (LABEL_WEIGHT, "lots")]));
        assert_eq!(problems.len(), 1);
        assert_eq!(backend(&watch("web"), &t, &host()).unwrap().weight, 1);
    }

    #[test]
    fn network_choice() {
        let c = container(
            "x",
            &[],
            &[
                net("zeta", "172.19.0.2", "172.19.0.1"),
                net("bridge", "172.17.0.2", "172.17.0.1"),
                net("alpha", "10.9.0.2", "10.9.0.1"), // gateway not on the host (macvlan-like)
            ],
            &[],
            json!({}),
        );
        let h = host();
        // First reachable by name: alpha's gateway is not a host address.
        assert_eq!(choose_network(&c, None, &h), Ok(("bridge".into(), "172.17.0.2".parse().unwrap())));
        // Nothing reachable: first by name.
        assert_eq!(choose_network(&c, None, &HashSet::new()), Ok(("alpha".into(), "10.9.0.2".parse().unwrap())));
        // Asked for.
        assert_eq!(choose_network(&c, Some("zeta"), &h), Ok(("zeta".into(), "172.19.0.2".parse().unwrap())));
        assert!(choose_network(&c, Some("missing"), &h).unwrap_err().contains("missing"));

        // The watch's network beats the label's, the label beats the default choice.
        let labelled = Tracked::new(container(
            "x",
            &[(LABEL_NETWORK, "zeta")],
            &[net("zeta", "172.19.0.2", "172.19.0.1"), net("bridge", "172.17.0.2", "172.17.0.1")],
            &[],
            json!({}),
        ))
        .0;
        assert_eq!(backend(&watch("x"), &labelled, &h).unwrap().origin, "docker:zeta");
        let w = DockerWatch { network: Some("bridge".into()), ..watch("x") };
        let d = backend(&w, &labelled, &h).unwrap();
        assert_eq!((d.origin.as_str(), d.addr), ("docker:bridge", "172.17.0.2".parse().unwrap()));
    }

    #[test]
    fn compose_network_names_carry_the_project() {
        let c = container(
            "p_web_1",
            &[(COMPOSE_PROJECT, "p")],
            &[net("p_default", "172.20.0.3", "172.20.0.1"), net("p_front", "172.21.0.3", "172.21.0.1")],
            &[],
            json!({}),
        );
        assert_eq!(choose_network(&c, Some("front"), &host()), Ok(("p_front".into(), "172.21.0.3".parse().unwrap())));
    }

    #[test]
    fn ipv4_first_ipv6_when_alone() {
        let dual = container("x", &[], &[Net { ip6: "fd00:1::2", gw6: "fd00:1::1", ..net("dual", "172.22.0.2", "172.22.0.1") }], &[], json!({}));
        assert_eq!(choose_network(&dual, None, &host()).unwrap().1, "172.22.0.2".parse::<IpAddr>().unwrap());
        let v6 = container("x", &[], &[Net { ip6: "fd00:1::2", gw6: "fd00:1::1", ..net("v6", "", "") }], &[], json!({}));
        let h: HashSet<IpAddr> = ["fd00:1::1".parse().unwrap()].into();
        assert_eq!(choose_network(&v6, None, &h), Ok(("v6".into(), "fd00:1::2".parse().unwrap())));
        // A host-networked container has no address of its own.
        let hostnet = container("x", &[], &[net("host", "", "")], &[], json!({}));
        assert!(choose_network(&hostnet, None, &h).is_err());
    }

    #[test]
    fn port_precedence() {
        let h = host();
        let nets = [net("bridge", "172.17.0.2", "172.17.0.1")];
        let c = |labels: &[(&str, &str)], exposed: &[&str]| Tracked::new(container("web", labels, &nets, exposed, json!({}))).0;
        let w = watch("web");
        let wp = DockerWatch { port: Some(7000), ..w.clone() };
        assert_eq!(backend(&w, &c(&[(LABEL_PORT, "9000")], &["8080/tcp"]), &h).unwrap().port, Some(9000));
        assert_eq!(backend(&wp, &c(&[(LABEL_PORT, "9000")], &["8080/tcp"]), &h).unwrap().port, Some(9000));
        assert_eq!(backend(&wp, &c(&[], &["8080/tcp"]), &h).unwrap().port, Some(7000));
        assert_eq!(backend(&w, &c(&[], &["8080/tcp"]), &h).unwrap().port, Some(8080));
        assert_eq!(backend(&w, &c(&[], &["8080/tcp", "8080/udp"]), &h).unwrap().port, Some(8080));
        assert_eq!(backend(&w, &c(&[], &["53/udp", "132/sctp"]), &h).unwrap().port, Some(53));
        assert_eq!(backend(&w, &c(&[], &["80/tcp", "443/tcp"]), &h).unwrap().port, None);
        assert_eq!(backend(&w, &c(&[], &[]), &h).unwrap().port, None);
    }

    #[test]
    fn health_and_draining() {
        let h = host();
        let nets = [net("bridge", "172.17.0.2", "172.17.0.1")];
        let with = |state: Value| Tracked::new(container("web", &[], &nets, &[], state)).0;
        let health_of = |s: &str| backend(&watch("web"), &with(json!({"Health": {"Status": s, "FailingStreak": 0}})), &h).unwrap().healthy;
        assert_eq!(health_of("healthy"), Some(true));
        assert_eq!(health_of("unhealthy"), Some(false));
        assert_eq!(health_of("starting"), Some(false));
        assert_eq!(backend(&watch("web"), &with(json!({})), &h).unwrap().healthy, None);

        assert!(!backend(&watch("web"), &with(json!({})), &h).unwrap().draining);
        assert!(backend(&watch("web"), &with(json!({"Paused": true, "Status": "paused"})), &h).unwrap().draining);
        let mut t = with(json!({}));
        t.stopping = true;
        assert!(backend(&watch("web"), &t, &h).unwrap().draining);

        assert!(is_running(&with(json!({}).clone()).info));
        assert!(!is_running(&with(json!({"Running": false, "Status": "exited"})).info));
        assert!(!is_running(&with(json!({"Restarting": true, "Status": "restarting"})).info));
    }

    #[test]
    fn sets_cover_every_watch_sorted() {
        let nets = |ip: &'static str| [net("bridge", ip, "172.17.0.1")];
        let cs: Vec<Tracked> = [
            container("web-2", &[(LABEL_SERVICE, "web")], &nets("172.17.0.3"), &[], json!({})),
            container("web-1", &[(LABEL_SERVICE, "web")], &nets("172.17.0.2"), &[], json!({})),
            container("other", &[], &nets("172.17.0.4"), &[], json!({})),
            container("broken", &[(LABEL_SERVICE, "web")], &[net("host", "", "")], &[], json!({})),
        ]
        .into_iter()
        .map(|c| Tracked::new(c).0)
        .collect();
        let watches = [DockerWatch { service: "a".into(), ..watch("web") }, DockerWatch { service: "b".into(), ..watch("nothing") }];
        let (sets, problems) = service_sets(&watches, &cs, &host());
        assert_eq!(sets.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(sets["a"].iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["web-1", "web-2"]);
        assert_eq!(sets["a"][0].origin, "docker:bridge");
        assert!(sets["b"].is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!((problems[0].container.as_str(), problems[0].service.as_str()), ("broken", "a"));
    }
}
