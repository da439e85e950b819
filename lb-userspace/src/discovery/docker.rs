//! Docker discovery: running containers join xlb services by label, compose service,
//! container name or network alias (see [`DockerWatch`]).
//!
//! [`run`] lists the running containers once, then follows the daemon's event stream;
//! an event touches only the container it names (one inspect, or none). After each
//! change it sends, for every watched service whose set changed, that service's complete
//! set. When the daemon goes away the last sets stay as they are; the source reconnects
//! with exponential backoff and resynchronises with a full listing.
//!
//! The decisions (does a container join a watch, what its labels say, which network's
//! address to use) are plain functions over bollard's model types, tested below.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    fmt,
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use bollard::{
    Docker,
    errors::Error as DockerError,
    models::{ContainerInspectResponse, EndpointSettings, EventMessage, EventMessageTypeEnum, HealthStatusEnum},
    query_parameters::EventsOptions,
};
use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use tokio::sync::{mpsc, watch};

use super::update::{Discovered, DockerWatch, SourceKind, Update};

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
/// Network whose address to use.
pub const LABEL_NETWORK: &str = "xlb.network";
/// Comma-separated names a pin header or cookie may use for this container.
pub const LABEL_NAME: &str = "xlb.name";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";
const COMPOSE_PROJECT: &str = "com.docker.compose.project";

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Containers inspected at once during a full listing.
const INSPECT_CONCURRENCY: usize = 8;
/// Actions followed; anything else (create, exec_*, attach, ...) is filtered by the daemon.
const EVENTS: &[&str] = &["start", "die", "stop", "kill", "destroy", "pause", "unpause", "health_status", "rename", "connect", "disconnect"];

// ---------------------------------------------------------------------------------------
// Pure parts: what a container's inspect data means.

/// The `xlb.*` labels of a container, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub backup: bool,
    pub hosts: Vec<String>,
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
    if let Some(v) = labels.get(LABEL_BACKUP) {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => out.backup = true,
            "false" | "0" | "no" | "off" | "" => {}
            _ => bad(LABEL_BACKUP, v, "not true or false"),
        }
    }
    if let Some(v) = labels.get(LABEL_HOST) {
        out.hosts = name_list(v);
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

fn label<'a>(c: &'a ContainerInspectResponse, key: &str) -> Option<&'a str> {
    c.config.as_ref()?.labels.as_ref()?.get(key).map(String::as_str)
}

/// The container's name without Docker's leading '/' (its short id if it has none).
pub fn container_name(c: &ContainerInspectResponse) -> String {
    match c.name.as_deref().map(|n| n.trim_start_matches('/')) {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => short_id(c.id.as_deref().unwrap_or_default()).to_owned(),
    }
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

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The container's networks, sorted by name.
fn networks(c: &ContainerInspectResponse) -> Vec<(&str, &EndpointSettings)> {
    let mut v: Vec<_> = c.network_settings.iter().flat_map(|s| s.networks.iter().flatten()).map(|(n, ep)| (n.as_str(), ep)).collect();
    v.sort_by_key(|(n, _)| *n);
    v
}

/// Whether the container joins `w`: `xlb.service` label, compose service (in `w.project`
/// when set), container name, or a network alias equal to `w.name`.
pub fn matches(w: &DockerWatch, c: &ContainerInspectResponse) -> bool {
    let name = w.name.as_str();
    if label(c, LABEL_SERVICE) == Some(name) {
        return true;
    }
    if label(c, COMPOSE_SERVICE) == Some(name) && w.project.as_deref().is_none_or(|p| label(c, COMPOSE_PROJECT) == Some(p)) {
        return true;
    }
    if container_name(c) == name {
        return true;
    }
    networks(c).iter().any(|(_, ep)| ep.aliases.iter().flatten().any(|a| a == name))
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

fn started_at(c: &ContainerInspectResponse) -> Option<&str> {
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
        draining: c.stopping || is_paused(&c.info),
        healthy: health(&c.info),
        origin: format!("docker:{network}"),
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

/// What an event asks of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Inspect this container again.
    Inspect(String),
    /// Inspect it again if it is being followed (network events name every container).
    InspectKnown(String),
    /// The container is gone.
    Forget(String),
    /// A signal was sent (`kill`, with its number when the event says) or the container
    /// was stopped (`stop`, `signal: None`).
    Stopping {
        id: String,
        signal: Option<i32>,
    },
    Nothing,
}

/// Reads one event of the daemon's stream.
pub fn classify(ev: &EventMessage) -> Change {
    let action = ev.action.as_deref().unwrap_or_default();
    // `health_status: healthy`, `exec_start: sh`: the verb is before the colon.
    let verb = action.split(':').next().unwrap_or_default().trim();
    let actor = ev.actor.as_ref();
    let attr = |k: &str| actor.and_then(|a| a.attributes.as_ref()?.get(k).cloned());
    match ev.typ {
        Some(EventMessageTypeEnum::CONTAINER) => {
            let Some(id) = actor.and_then(|a| a.id.clone()) else {
                return Change::Nothing;
            };
            match verb {
                "die" | "destroy" => Change::Forget(id),
                "kill" => Change::Stopping { id, signal: attr("signal").as_deref().and_then(parse_signal) },
                "stop" => Change::Stopping { id, signal: None },
                "start" | "pause" | "unpause" | "health_status" | "rename" => Change::Inspect(id),
                _ => Change::Nothing,
            }
        }
        Some(EventMessageTypeEnum::NETWORK) if matches!(verb, "connect" | "disconnect") => attr("container").map_or(Change::Nothing, Change::InspectKnown),
        _ => Change::Nothing,
    }
}

/// A signal by number (`15`) or name (`SIGTERM`, `term`).
pub fn parse_signal(s: &str) -> Option<i32> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP",
        "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    let s = s.trim();
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == name).map(|i| i as i32 + 1)
}

/// Whether a `kill` with `signal` stops the container: the usual stopping signals and the
/// container's own stop signal do; a reload signal (`docker kill -s HUP`) does not. An
/// unknown signal counts as stopping.
pub fn stops_container(signal: Option<i32>, c: &ContainerInspectResponse) -> bool {
    let Some(sig) = signal else { return true };
    let own = c.config.as_ref().and_then(|c| c.stop_signal.as_deref()).and_then(parse_signal);
    matches!(sig, 2 | 3 | 6 | 9 | 15) || own == Some(sig)
}

// ---------------------------------------------------------------------------------------
// The task.

/// Follows the Docker daemon for `watches` and sends an [`Update`] per watched service:
/// all of them after every (re)synchronisation and watch change, then each time a
/// service's set changes. Never returns while `tx` has a receiver.
pub async fn run(watches: watch::Receiver<Vec<DockerWatch>>, tx: mpsc::Sender<Update>) {
    run_on(None, watches, tx).await
}

/// [`run`] against `host` (`unix:///path`, `tcp://...`) instead of `DOCKER_HOST` or the
/// local socket.
async fn run_on(host: Option<String>, watches: watch::Receiver<Vec<DockerWatch>>, tx: mpsc::Sender<Update>) {
    let mut src = Source::new(host, watches, tx);
    let mut delay = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let Err(e) = src.session().await;
        if e.is::<Closed>() {
            tracing::debug!("Docker discovery stops: nobody receives its updates");
            return;
        }
        if std::mem::take(&mut src.synced_in_session) {
            delay = BACKOFF_MIN;
            failing = false;
        }
        if failing {
            tracing::debug!(error = format!("{e:#}"), retry_in = ?delay, "Docker daemon still unreachable");
        } else {
            tracing::warn!(error = format!("{e:#}"), "Docker daemon unreachable; keeping the last known containers, retrying");
            failing = true;
        }
        if src.pause(delay).await.is_err() {
            return;
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// The consumer dropped its receiver.
#[derive(Debug)]
struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the update channel is closed")
    }
}

impl std::error::Error for Closed {}

struct Source {
    /// `None`: `DOCKER_HOST`, else the local socket.
    host: Option<String>,
    watches: watch::Receiver<Vec<DockerWatch>>,
    /// False once the watch sender is gone: the last watches stay.
    watches_open: bool,
    tx: mpsc::Sender<Update>,
    /// Every running container, by id (matching or not: watches change).
    containers: HashMap<String, Tracked>,
    /// The last set sent per service.
    sent: HashMap<String, Vec<Discovered>>,
    /// A listing has succeeded: until then the source knows nothing and sends nothing.
    synced: bool,
    /// The current session reached its listing (resets the backoff).
    synced_in_session: bool,
    /// Problems already logged (each is logged once while it lasts).
    problems: HashSet<Problem>,
}

impl Source {
    fn new(host: Option<String>, watches: watch::Receiver<Vec<DockerWatch>>, tx: mpsc::Sender<Update>) -> Self {
        Source {
            host,
            watches,
            watches_open: true,
            tx,
            containers: HashMap::new(),
            sent: HashMap::new(),
            synced: false,
            synced_in_session: false,
            problems: HashSet::new(),
        }
    }

    /// Connects, lists, then follows events until something fails.
    async fn session(&mut self) -> anyhow::Result<Infallible> {
        let docker = connect(self.host.as_deref()).await?;
        // Events since just before the listing: what happens during it is replayed, and
        // replaying an event is harmless (it inspects the container again).
        let mut events = docker.events(Some(events_options(SystemTime::now())));
        self.resync(&docker).await?;
        self.synced = true;
        self.synced_in_session = true;
        tracing::info!(
            api = %docker.client_version(),
            containers = self.containers.len(),
            "Docker discovery: synchronised with the daemon"
        );
        self.publish(true).await?;
        loop {
            tokio::select! {
                ev = events.next() => {
                    let ev = match ev {
                        None => bail!("the Docker event stream ended"),
                        Some(ev) => ev.context("reading the Docker event stream")?,
                    };
                    let change = classify(&ev);
                    tracing::trace!(?change, action = ?ev.action, "Docker event");
                    if self.apply(&docker, change).await? {
                        self.publish(false).await?;
                    }
                }
                r = self.watches.changed(), if self.watches_open => {
                    if r.is_err() {
                        self.watches_open = false;
                    } else {
                        self.publish(true).await?;
                    }
                }
            }
        }
    }

    /// Waits `delay`, still answering watch changes with the last known containers.
    async fn pause(&mut self, delay: Duration) -> Result<(), Closed> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Ok(()),
                r = self.watches.changed(), if self.watches_open => match r {
                    Err(_) => self.watches_open = false,
                    Ok(()) => self.publish(true).await?,
                },
            }
        }
    }

    /// Replaces the followed containers with a fresh listing.
    async fn resync(&mut self, docker: &Docker) -> anyhow::Result<()> {
        let list = docker.list_containers(None).await.context("listing running containers")?;
        let ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
        let inspected: Vec<_> = stream::iter(ids)
            .map(|id| async move { inspect(docker, &id).await.map(|info| (id, info)) })
            .buffer_unordered(INSPECT_CONCURRENCY)
            .try_collect()
            .await?;
        let mut old = std::mem::take(&mut self.containers);
        for (id, info) in inspected {
            if let Some(info) = info {
                self.track(id.clone(), info, old.remove(&id));
            }
        }
        Ok(())
    }

    /// Starts (or goes on) following a container from its inspect data; says whether the
    /// followed containers changed.
    fn track(&mut self, id: String, info: ContainerInspectResponse, old: Option<Tracked>) -> bool {
        if !is_running(&info) {
            return self.containers.remove(&id).is_some() || old.is_some();
        }
        let (mut t, problems) = Tracked::new(info);
        match &old {
            // The same run of the container: a stop seen before still holds.
            Some(o) => t.stopping = o.stopping && started_at(&o.info) == started_at(&t.info),
            None => {
                for p in problems {
                    tracing::warn!(container = %container_name(&t.info), "{p}");
                }
            }
        }
        self.containers.insert(id, t);
        true
    }

    /// Applies one event; says whether anything may have changed.
    async fn apply(&mut self, docker: &Docker, change: Change) -> anyhow::Result<bool> {
        Ok(match change {
            Change::Nothing => false,
            Change::Forget(id) => self.containers.remove(&id).is_some(),
            Change::Stopping { id, signal } => match self.containers.get_mut(&id) {
                Some(t) if !t.stopping && stops_container(signal, &t.info) => {
                    t.stopping = true;
                    true
                }
                _ => false,
            },
            Change::InspectKnown(id) if !self.containers.contains_key(&id) => false,
            Change::Inspect(id) | Change::InspectKnown(id) => match inspect(docker, &id).await? {
                Some(info) => {
                    let old = self.containers.remove(&id);
                    self.track(id, info, old)
                }
                None => self.containers.remove(&id).is_some(),
            },
        })
    }

    /// Sends the sets of the watched services: all of them when `all` (or the watches
    /// changed), else those that differ from what was last sent. A service no longer
    /// watched gets an empty set (once) if it had containers.
    async fn publish(&mut self, all: bool) -> Result<(), Closed> {
        if !self.synced {
            return Ok(());
        }
        let all = all || self.watches.has_changed().unwrap_or(false);
        let watches = self.watches.borrow_and_update().clone();
        let host = host_addresses();
        let (sets, problems) = service_sets(&watches, self.containers.values(), &host);
        self.log_problems(problems);

        let gone: Vec<String> = self.sent.keys().filter(|s| !sets.contains_key(*s)).cloned().collect();
        for service in gone {
            if self.sent.remove(&service).is_some_and(|v| !v.is_empty()) {
                self.send(service, Vec::new()).await?;
            }
        }
        for (service, set) in sets {
            if all || self.sent.get(&service) != Some(&set) {
                self.sent.insert(service.clone(), set.clone());
                self.send(service, set).await?;
            }
        }
        Ok(())
    }

    async fn send(&self, service: String, backends: Vec<Discovered>) -> Result<(), Closed> {
        tracing::debug!(%service, backends = backends.len(), "Docker discovery update");
        self.tx.send(Update { service, source: SourceKind::Docker, backends }).await.map_err(|_| Closed)
    }

    fn log_problems(&mut self, now: Vec<Problem>) {
        let now: HashSet<Problem> = now.into_iter().collect();
        for p in now.difference(&self.problems) {
            tracing::warn!(container = %p.container, service = %p.service, "container left out: {}", p.why);
        }
        self.problems = now;
    }
}

async fn connect(host: Option<&str>) -> anyhow::Result<Docker> {
    let docker = match host {
        Some(h) => Docker::connect_with_host(h).with_context(|| format!("setting up the Docker client for {h}"))?,
        None => Docker::connect_with_defaults().context("setting up the Docker client (DOCKER_HOST)")?,
    };
    docker.negotiate_version().await.context("negotiating the API version with the Docker daemon")
}

/// Inspects a container; `None` when it no longer exists.
async fn inspect(docker: &Docker, id: &str) -> anyhow::Result<Option<ContainerInspectResponse>> {
    match docker.inspect_container(id, None).await {
        Ok(info) => Ok(Some(info)),
        Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting container {}", short_id(id))),
    }
}

fn events_options(since: SystemTime) -> EventsOptions {
    let since = since.duration_since(UNIX_EPOCH).unwrap_or_default();
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned(), "network".to_owned()]),
        ("event".to_owned(), EVENTS.iter().map(|e| e.to_string()).collect()),
    ]);
    EventsOptions { since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())), until: None, filters: Some(filters) }
}

/// The host's addresses (a network whose gateway is one of them is reachable).
fn host_addresses() -> HashSet<IpAddr> {
    match crate::netdev::addresses() {
        Ok(a) => a.into_iter().map(|(_, a)| a).collect(),
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "cannot read the host's addresses; using containers' first network");
            HashSet::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    struct Net<'a> {
        name: &'a str,
        ip: &'a str,
        gw: &'a str,
        ip6: &'a str,
        gw6: &'a str,
        aliases: &'a [&'a str],
    }

    fn net<'a>(name: &'a str, ip: &'a str, gw: &'a str) -> Net<'a> {
        Net { name, ip, gw, ip6: "", gw6: "", aliases: &[] }
    }

    /// An inspect response shaped like Docker 20.10's.
    fn container(name: &str, labels: &[(&str, &str)], nets: &[Net], exposed: &[&str], state: Value) -> ContainerInspectResponse {
        let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let exposed: serde_json::Map<String, Value> = exposed.iter().map(|p| (p.to_string(), json!({}))).collect();
        let networks: serde_json::Map<String, Value> = nets
            .iter()
            .map(|n| {
                (
                    n.name.to_string(),
                    json!({
                        "IPAMConfig": null, "Links": null, "Aliases": n.aliases,
                        "NetworkID": "0123", "EndpointID": "4567",
                        "Gateway": n.gw, "IPAddress": n.ip, "IPPrefixLen": 16,
                        "IPv6Gateway": n.gw6, "GlobalIPv6Address": n.ip6, "GlobalIPv6PrefixLen": 64,
                        "MacAddress": "02:42:ac:11:00:02", "DriverOpts": null
                    }),
                )
            })
            .collect();
        let mut st = json!({
            "Status": "running", "Running": true, "Paused": false, "Restarting": false,
            "OOMKilled": false, "Dead": false, "Pid": 42, "ExitCode": 0, "Error": "",
            "StartedAt": "2026-01-01T00:00:00.000000000Z", "FinishedAt": "0001-01-01T00:00:00Z"
        });
        for (k, v) in state.as_object().unwrap() {
            st[k] = v.clone();
        }
        serde_json::from_value(json!({
            "Id": format!("{name}-0123456789abcdef"),
            "Name": format!("/{name}"),
            "State": st,
            "Config": { "Hostname": "c", "Labels": labels, "ExposedPorts": exposed, "Image": "img" },
            "NetworkSettings": { "Bridge": "", "IPAddress": "", "Gateway": "", "Networks": networks }
        }))
        .expect("a valid inspect response")
    }

    fn simple(name: &str, labels: &[(&str, &str)]) -> ContainerInspectResponse {
        container(name, labels, &[net("bridge", "172.17.0.2", "172.17.0.1")], &[], json!({}))
    }

    fn watch(name: &str) -> DockerWatch {
        DockerWatch { service: "svc".into(), name: name.into(), project: None, network: None, port: None }
    }

    fn host() -> HashSet<IpAddr> {
        ["172.17.0.1".parse().unwrap(), "192.0.2.2".parse().unwrap()].into()
    }

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
    }

    #[test]
    fn labels_parse_and_bad_ones_are_reported() {
        let l = |kv: &[(&str, &str)]| parse_labels(&kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let (good, problems) = l(&[
            (LABEL_PORT, "8080"),
            (LABEL_WEIGHT, "1000"),
            (LABEL_BACKUP, "true"),
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
        ] {
            let (parsed, problems) = l(&[(key, value)]);
            assert_eq!(parsed, Labels::default(), "{key}={value}");
            assert_eq!(problems.len(), 1, "{key}={value}");
            assert!(problems[0].contains(key) && problems[0].contains(value), "{}", problems[0]);
        }
        assert!(!l(&[(LABEL_BACKUP, "False")]).0.backup);
        assert_eq!(l(&[(LABEL_WEIGHT, " 5 ")]).0.weight, Some(5));
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

    fn event(v: Value) -> EventMessage {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn events_are_classified() {
        let c = |action: &str, attrs: Value| {
            classify(&event(json!({
                "Type": "container", "Action": action, "scope": "local", "time": 1, "timeNano": 1,
                "Actor": { "ID": "abc", "Attributes": attrs }
            })))
        };
        assert_eq!(c("die", json!({"exitCode": "137"})), Change::Forget("abc".into()));
        assert_eq!(c("destroy", json!({})), Change::Forget("abc".into()));
        assert_eq!(c("kill", json!({"signal": "9"})), Change::Stopping { id: "abc".into(), signal: Some(9) });
        assert_eq!(c("stop", json!({})), Change::Stopping { id: "abc".into(), signal: None });
        assert_eq!(c("health_status: unhealthy", json!({})), Change::Inspect("abc".into()));
        for a in ["start", "pause", "unpause", "rename"] {
            assert_eq!(c(a, json!({})), Change::Inspect("abc".into()), "{a}");
        }
        assert_eq!(c("exec_start: sh", json!({})), Change::Nothing);
        let n = classify(&event(json!({
            "Type": "network", "Action": "disconnect", "scope": "local", "time": 1, "timeNano": 1,
            "Actor": { "ID": "net", "Attributes": {"container": "abc", "name": "bridge", "type": "bridge"} }
        })));
        assert_eq!(n, Change::InspectKnown("abc".into()));
    }

    #[test]
    fn reload_signals_do_not_drain() {
        let plain = simple("x", &[]);
        assert!(stops_container(Some(9), &plain));
        assert!(stops_container(Some(15), &plain));
        assert!(stops_container(None, &plain));
        assert!(!stops_container(Some(1), &plain), "HUP reloads");
        assert!(!stops_container(Some(parse_signal("USR1").unwrap()), &plain));
        let mut winch = plain.clone();
        winch.config.as_mut().unwrap().stop_signal = Some("SIGWINCH".into());
        assert!(stops_container(Some(28), &winch), "the container's own stop signal");
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("SIGSYS"), Some(31));
        assert_eq!(parse_signal("nope"), None);
    }

    #[test]
    fn since_is_seconds_and_nanoseconds() {
        let o = events_options(UNIX_EPOCH + Duration::new(1_700_000_000, 5));
        assert_eq!(o.since.as_deref(), Some("1700000000.000000005"));
        assert_eq!(o.filters.unwrap()["type"], ["container", "network"]);
    }

    // -----------------------------------------------------------------------------------
    // Against the real daemon.

    use std::{path::PathBuf, process::Command, time::Instant};

    const IMAGE: &str = "xlb-disc-test:scratch";

    fn docker_cli(args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker").args(args).env("DOCKER_BUILDKIT", "0").output().map_err(|e| format!("docker {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    async fn docker_async(args: Vec<String>) -> Result<String, String> {
        tokio::task::spawn_blocking(move || docker_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
    }

    /// A `FROM scratch` image whose entrypoint is a static binary that listens on 8080
    /// (built once per test process).
    fn build_image() {
        static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        BUILT.get_or_init(build_image_now);
    }

    fn build_image_now() {
        let dir = std::env::temp_dir().join(format!("xlb-disc-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("main.rs");
        std::fs::write(
            &src,
            "fn main() { let l = std::net::TcpListener::bind(\"0.0.0.0:8080\").unwrap(); \
             for s in l.incoming() { drop(s); } }\n",
        )
        .unwrap();
        let bin: PathBuf = dir.join("listen");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let out = Command::new(rustc)
            .args(["-O", "-C", "target-feature=+crt-static", "-C", "panic=abort", "-C", "strip=symbols", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("running rustc");
        assert!(out.status.success(), "rustc (static): {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY listen /listen\nEXPOSE 8080/tcp\nENTRYPOINT [\"/listen\"]\n").unwrap();
        let built = docker_cli(&["build", "--quiet", "--label", "xlb-tests", "-t", IMAGE, dir.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&dir);
        built.unwrap_or_else(|e| panic!("building {IMAGE}: {e}"));
    }

    /// A container removed (`docker rm -f`) on drop, also when the test fails.
    struct TestContainer {
        name: String,
    }

    impl TestContainer {
        fn run(name: &str, labels: &[String]) -> TestContainer {
            let mut args = vec!["run", "-d", "--name", name, "--label", "xlb-tests"];
            let owner = format!("xlb-tests.owner={}", std::process::id());
            args.extend(["--label", &owner]);
            for l in labels {
                args.extend(["--label", l.as_str()]);
            }
            args.push(IMAGE);
            // Guard first: removes it even if `docker run` half-failed.
            let c = TestContainer { name: name.to_owned() };
            docker_cli(&args).unwrap_or_else(|e| panic!("starting {name}: {e}"));
            c
        }

        fn bridge_ip(&self) -> IpAddr {
            let ip = docker_cli(&["inspect", "--format", "{{.NetworkSettings.Networks.bridge.IPAddress}}", &self.name]).unwrap();
            ip.parse().unwrap_or_else(|_| panic!("{}: no bridge address ({ip:?})", self.name))
        }
    }

    impl Drop for TestContainer {
        fn drop(&mut self) {
            let _ = docker_cli(&["rm", "-f", &self.name]);
        }
    }

    /// The next update (with its arrival time) that satisfies `pred`, within `limit`.
    async fn next_update(
        rx: &mut mpsc::UnboundedReceiver<(Instant, Update)>,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Update) -> bool,
    ) -> (Instant, Update) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((t, u))) if pred(&u) => return (t, u),
                Ok(Some(_)) => {}
                Ok(None) => panic!("the source stopped while waiting for {what}"),
                Err(_) => panic!("no update within {limit:?}: {what}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_containers_of_the_docker_daemon() {
        if let Err(e) = docker_cli(&["info", "--format", "{{.ServerVersion}}"]) {
            panic!("this test needs a running Docker engine, and it is not reachable: {e}");
        }
        build_image();
        let id = std::process::id();
        let svc = format!("xt-disc-{id}");
        let label = format!("{LABEL_SERVICE}={svc}");
        let a = TestContainer::run(&format!("{svc}-a"), &[label.clone(), "xlb.port=9000".into(), "xlb.weight=7".into()]);
        let b = TestContainer::run(&format!("{svc}-b"), &[label.clone(), "xlb.weight=heavy".into(), "xlb.host=A.example, b.example".into()]);
        let (ip_a, ip_b) = (a.bridge_ip(), b.bridge_ip());

        let w = DockerWatch { service: "web".into(), name: svc.clone(), project: None, network: None, port: None };
        let (wtx, wrx) = watch::channel(vec![w.clone()]);
        let (tx, mut src_rx) = mpsc::channel(64);
        let task = tokio::spawn(run(wrx, tx));
        // Timestamps each update as it arrives, whatever the test is doing.
        let (ttx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(u) = src_rx.recv().await {
                let _ = ttx.send((Instant::now(), u));
            }
        });

        // The listing finds both.
        let (_, first) = next_update(&mut rx, Duration::from_secs(10), "both containers", |u| u.service == "web" && u.backends.len() == 2).await;
        assert_eq!(first.source, SourceKind::Docker);
        let (da, db) = (&first.backends[0], &first.backends[1]);
        assert_eq!((da.name.as_str(), da.addr, da.port, da.weight), (a.name.as_str(), ip_a, Some(9000), 7));
        // No xlb.port: the one exposed port; a bad weight is ignored.
        assert_eq!((db.name.as_str(), db.addr, db.port, db.weight), (b.name.as_str(), ip_b, Some(8080), 1));
        assert_eq!(db.hosts, ["a.example", "b.example"]);
        for d in [da, db] {
            assert_eq!(d.origin, "docker:bridge");
            assert!(!d.draining && !d.backup && d.healthy.is_none(), "{d:?}");
        }

        // A new watch: one update per watched service, the new one empty.
        wtx.send(vec![w.clone(), DockerWatch { service: "none".into(), name: format!("{svc}-none"), ..w.clone() }]).unwrap();
        next_update(&mut rx, Duration::from_secs(2), "an empty set for the new watch", |u| u.service == "none" && u.backends.is_empty()).await;

        // Paused: draining; unpaused: back.
        docker_async(vec!["pause".into(), b.name.clone()]).await.unwrap();
        next_update(&mut rx, Duration::from_secs(2), "b draining while paused", |u| {
            u.service == "web" && u.backends.iter().any(|d| d.name == b.name && d.draining)
        })
        .await;
        docker_async(vec!["unpause".into(), b.name.clone()]).await.unwrap();
        next_update(&mut rx, Duration::from_secs(2), "b back after unpause", |u| {
            u.service == "web" && u.backends.iter().any(|d| d.name == b.name && !d.draining)
        })
        .await;

        // Killed: draining or gone, fast.
        let called = Instant::now();
        docker_async(vec!["kill".into(), a.name.clone()]).await.unwrap();
        let returned = Instant::now();
        let gone_or_draining = |u: &Update| u.service == "web" && u.backends.iter().all(|d| d.name != a.name || d.draining);
        let (at, u) = next_update(&mut rx, Duration::from_secs(5), "a draining or removed after docker kill", gone_or_draining).await;
        let since_call = at.duration_since(called);
        let since_return = at.checked_duration_since(returned);
        println!(
            "docker kill -> Update: {since_call:?} after the CLI call started; {} (the CLI took {:?}); update: {:?}",
            since_return.map_or_else(|| format!("{:?} before it returned", returned - at), |d| format!("{d:?} after it returned")),
            returned - called,
            u.backends.iter().map(|d| (&d.name, d.draining)).collect::<Vec<_>>(),
        );
        assert!(since_return.unwrap_or_default() < Duration::from_secs(1), "update took {since_return:?}");
        next_update(&mut rx, Duration::from_secs(5), "a removed after it died", |u| {
            u.service == "web" && u.backends.len() == 1 && u.backends[0].name == b.name
        })
        .await;

        task.abort();
        drop((a, b));
    }

    /// Forwards a unix socket to the daemon's until aborted (which closes every
    /// connection): the daemon "goes away" for the source only.
    fn proxy(path: &std::path::Path) -> tokio::task::JoinHandle<()> {
        let daemon = match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_owned(),
            _ => "/var/run/docker.sock".to_owned(),
        };
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).expect("binding the proxy socket");
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let daemon = daemon.clone();
                conns.spawn(async move {
                    if let Ok(mut d) = tokio::net::UnixStream::connect(&daemon).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut d).await;
                    }
                });
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_last_sets_while_the_daemon_is_away_then_resynchronises() {
        if let Err(e) = docker_cli(&["info", "--format", "{{.ServerVersion}}"]) {
            panic!("this test needs a running Docker engine, and it is not reachable: {e}");
        }
        build_image();
        let svc = format!("xt-disc-{}-r", std::process::id());
        let label = format!("{LABEL_SERVICE}={svc}");
        let a = TestContainer::run(&format!("{svc}-a"), std::slice::from_ref(&label));
        let b = TestContainer::run(&format!("{svc}-b"), std::slice::from_ref(&label));

        let sock = std::env::temp_dir().join(format!("xlb-disc-proxy-{}.sock", std::process::id()));
        let up = proxy(&sock);
        let w = DockerWatch { service: "web".into(), name: svc.clone(), project: None, network: None, port: None };
        let (wtx, wrx) = watch::channel(vec![w.clone()]);
        let (tx, mut src_rx) = mpsc::channel(64);
        let task = tokio::spawn(run_on(Some(format!("unix://{}", sock.display())), wrx, tx));
        let (ttx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(u) = src_rx.recv().await {
                let _ = ttx.send((Instant::now(), u));
            }
        });
        next_update(&mut rx, Duration::from_secs(10), "both containers", |u| u.backends.len() == 2).await;

        // The daemon goes away (for the source); a container dies meanwhile.
        up.abort();
        let _ = up.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        docker_async(vec!["kill".into(), a.name.clone()]).await.unwrap();
        // A watch change meanwhile is answered from the last known containers.
        wtx.send(vec![w.clone()]).unwrap();
        let (_, u) = next_update(&mut rx, Duration::from_secs(2), "an update for the watch change", |_| true).await;
        assert_eq!(u.backends.len(), 2, "the last known set stays while the daemon is away: {u:?}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        while let Ok((_, u)) = rx.try_recv() {
            assert_eq!(u.backends.len(), 2, "nothing empties the set while the daemon is away: {u:?}");
        }

        // Back: a full listing, and the dead one is gone.
        let back = Instant::now();
        let up = proxy(&sock);
        let (at, _) =
            next_update(&mut rx, Duration::from_secs(10), "the set after resynchronisation", |u| u.backends.len() == 1 && u.backends[0].name == b.name).await;
        println!("daemon back -> resynchronised update after {:?}", at.duration_since(back));

        task.abort();
        up.abort();
        let _ = std::fs::remove_file(&sock);
        drop((a, b));
    }
}
