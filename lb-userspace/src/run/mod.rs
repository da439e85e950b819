//! `xlb run`: load, attach, fill the maps, then follow discovery, health and signals
//! until told to stop.

mod access;
mod fdlimit;
mod privilege;
mod reload;
mod reply;
mod stamp;
mod status;
mod stop;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{debug, error, info, warn};

use crate::{
    access_log::AccessLog,
    acme::{self, Acme},
    announce::{self, Announcer},
    config::{Config, HealthCheck, Source},
    dataplane::{
        Dataplane, Limits, Timeouts, features, monotonic_ns,
        pin::{self, Scope},
    },
    discovery::{Registry, Sources, Update},
    health::{self, Health},
    netdev,
    observe::{Reloads, Snapshot, Transitions, admin},
    plan::{self, Desired, ServiceView, Vitals},
    proxy::Proxy,
};

/// How often idle connection entries are looked for (and live ones counted).
const EXPIRE_EVERY: Duration = Duration::from_secs(5);
/// How often the status snapshot behind `xlb status` and `/metrics` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How often the config file is checked for changes.
const WATCH_FILE_EVERY: Duration = Duration::from_secs(1);
/// How often weights are recomputed while a slow start is ramping.
const RAMP_EVERY: Duration = Duration::from_millis(500);
/// The longest an adopted data plane serves as it was kept, waiting for discovery and
/// first probes, before the maps are synced with whatever is known by then.
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// `keep_dataplane`: on SIGINT/SIGTERM, pin the data plane under `bpffs` and leave it
/// running. A data plane kept there before is adopted either way.
// long: the start order (signals, lock, load, attach, adopt), the one select over every
// source of change and the exit path share a dozen locals; split, they would be passed around.
pub async fn run(source: Source, kernel_log: aya_log::Level, keep_dataplane: bool, bpffs: &Path) -> anyhow::Result<()> {
    // Before anything is attached: a signal that came before its handler would end the
    // process with the programs still attached (SIGINT, SIGTERM) or kill it outright
    // (SIGHUP, e.g. a reload sent as soon as `ready` is logged).
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    // SIGUSR1 reopens the access log (logrotate's way); without one it is ignored.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    // Stamped before reading: a change made while xlb starts is then seen by the watcher.
    let mut file_stamp = stamp::stamp(source.file.as_deref());
    let config = source.load()?;
    let fd_limit = fdlimit::raise()?;
    fdlimit::check(&config, fd_limit);
    let iface = config.dataplane.interface.clone().context("no interface: give --iface or dataplane.interface")?;
    netdev::ifindex(&iface)?;
    features::check()?;
    let scope_name = pin::scope_name(&iface)?;
    let _lock = pin::lock(&scope_name, &iface)?;
    if keep_dataplane {
        check_keepable(bpffs)?;
    }
    let limits = Limits::from(&config.dataplane);
    let admin = admin::bind(config.admin.address).await?;
    admin::warn_if_exposed(config.admin.address, config.admin.token.as_deref());
    let kept = Scope::find(bpffs, &scope_name).filter(Scope::is_kept);
    let adopt_started = Instant::now();
    let (dp, logger) = match &kept {
        Some(scope) => Dataplane::adopt(limits, kernel_log, scope)?,
        None => Dataplane::load(limits, kernel_log)?,
    };
    let (snapshots, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (failures_tx, mut failures) = mpsc::unbounded_channel();
    let access_log = config.access_log.as_ref().map(AccessLog::start).transpose()?;
    let proxy = Proxy::new(Arc::new(failures_tx)).with_access_log(access_log.clone());
    let (admin_token, token_rx) = watch::channel(config.admin.token.clone());
    tokio::spawn(admin::serve(admin, snapshot_rx, proxy.metrics().clone(), token_rx));
    let (updates_tx, mut updates) = mpsc::channel(256);
    let (health_tx, mut health_events) = mpsc::channel(256);
    let mut ctl = Controller {
        limits,
        dp,
        registry: Registry::default(),
        health: Health::new(health_tx),
        acme: Acme::start(proxy.challenges().clone()),
        proxy,
        first_seen: HashMap::new(),
        reply_ifaces: BTreeSet::new(),
        forwarding: netdev::Forwarding::default(),
        plan: Vec::new(),
        http_plan: Vec::new(),
        settle: None,
        reported: HashSet::new(),
        snapshots,
        last_status: None,
        backend_transitions: Transitions::default(),
        discovery_events: HashMap::new(),
        reloads: Reloads::default(),
        sources: Sources::new(updates_tx),
        unroutable: BTreeMap::new(),
        admin_address: config.admin.address,
        admin_token,
        cert_stamps: Vec::new(),
        announcer: config.announce.as_ref().map(Announcer::new).transpose()?,
        access_log,
        iface,
        config,
    };
    ctl.dp.record_ended(ctl.access_log.is_some());
    ctl.load_certificates();
    ctl.forwarding.enable(&ctl.iface)?;
    ctl.dp.attach_client_side(&ctl.iface)?;
    ctl.dp.start_socket_lb(&ctl.config.dataplane.socket_lb)?;
    if let Some(scope) = &kept {
        ctl.adopt_kept(scope, adopt_started)?;
    }
    ctl.sources.watch(&ctl.config);
    let ramping = ctl.replan(false)?;
    // Kept while running: a crash or kill -9 leaves the data plane forwarding.
    match check_keepable(bpffs).and_then(|()| Scope::create(bpffs, &scope_name)).and_then(|scope| ctl.dp.keep_while_running(scope)) {
        Ok(links) => info!(links, "data plane pinned while running: it forwards on if xlb dies, and the next `xlb run` adopts it"),
        Err(e) => info!("data plane not pinned, so it stops with xlb however xlb ends: {e:#}"),
    }
    privilege::drop_unneeded()?;
    info!(iface = %ctl.iface, services = ctl.config.services.len(), "ready");

    // SAFETY: the logger owns its ring buffer descriptor for as long as AsyncFd holds it.
    let mut logger = unsafe { AsyncFd::register(logger) }.map_err(|e| e.into_parts().1).context("polling the kernel log")?;
    let mut expire = tokio::time::interval(EXPIRE_EVERY);
    let mut ramp = tokio::time::interval(RAMP_EVERY);
    let mut status = tokio::time::interval(STATUS_EVERY);
    let mut watch_file = tokio::time::interval(WATCH_FILE_EVERY);
    let mut ramping = ramping;
    loop {
        let changed = tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = usr1.recv() => {
                ctl.access_log.iter().for_each(|l| l.reopen());
                false
            }
            // A reload replans itself: it must know whether its changes could be applied.
            _ = hup.recv() => {
                ramping = ctl.reload(&source).unwrap_or(ramping);
                false
            }
            _ = watch_file.tick() => {
                ramping = ctl.watch_files(&source, &mut file_stamp).unwrap_or(ramping);
                false
            }
            Some(u) = updates.recv() => ctl.discovered(u, &mut updates),
            // Health keeps its own state; the event only says it changed.
            Some(e) = health_events.recv() => {
                info!(service = %e.target.service, backend = %e.target.addr, healthy = e.healthy, "health changed");
                ctl.backend_transitions.record(&e.target.service, e.target.addr, e.healthy);
                true
            }
            // The proxy's failures; it decided the ejections (one is one mark-down), which
            // come back as health events, for status and metrics.
            Some(f) = failures.recv() => {
                if f.ejected {
                    ctl.health.report_failure(&health::Target { service: f.service, addr: f.addr }, 1, f.fail_timeout);
                }
                false
            }
            _ = status.tick() => {
                if let Err(e) = ctl.publish_status() {
                    warn!("refreshing the status: {e:#}");
                }
                false
            }
            _ = ramp.tick(), if ramping => true,
            // Also the retry of backends that had no route: routes come and go unannounced.
            _ = expire.tick() => {
                ctl.expire();
                !ctl.unroutable.is_empty()
            }
            guard = logger.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
                false
            }
        };
        if changed {
            match ctl.replan(false) {
                Ok(r) => ramping = r,
                Err(e) => error!("applying changes: {e:#}"),
            }
        }
    }
    // Withdrawn first, so the routers move new flows elsewhere while this node drains; a
    // kept data plane forwards on, and its routes stay for the xlb that adopts it.
    if !keep_dataplane && let Some(a) = &mut ctl.announcer {
        match a.withdraw_all() {
            Ok(()) => info!("stopping: VIPs withdrawn"),
            Err(e) => error!("withdrawing VIPs: {e:#}"),
        }
    }
    stop::drain_http(&ctl.proxy, &mut int, &mut term).await;
    if keep_dataplane {
        match Scope::create(bpffs, &scope_name).and_then(|scope| ctl.dp.keep(&scope).map(|links| (scope, links))) {
            Ok((scope, links)) => {
                // The kept programs still need the forwarding switches xlb turned on.
                ctl.forwarding.keep();
                info!(
                    dir = %scope.dir().display(),
                    links,
                    "stopping: data plane kept (maps, programs and links pinned; `xlb run` adopts it, `xlb down` removes it)"
                );
                return Ok(());
            }
            Err(e) => {
                error!("keeping the data plane failed, detaching it instead: {e:#}");
                if let Some(scope) = Scope::find(bpffs, &scope_name) {
                    scope.remove().context("removing the partly written pins")?;
                }
            }
        }
    }
    ctl.dp.unpin().context("removing the pins")?;
    info!("stopping: detaching programs");
    Ok(())
}

/// Fails at start, not at exit, when `--keep-dataplane` could not be honoured: the kept
/// attachments must be BPF links (XDP links since 5.9, TCX links since 6.6; netlink
/// attachments cannot be pinned) and a BPF file system must be reachable.
fn check_keepable(bpffs: &Path) -> anyhow::Result<()> {
    use aya::util::KernelVersion;
    let current = KernelVersion::current().map_err(|e| anyhow::anyhow!("reading the kernel version: {e}"))?;
    if current < KernelVersion::new(6, 6, 0) {
        bail!("--keep-dataplane needs Linux 6.6 or later (TC programs attached as links), this is {current:?}");
    }
    pin::check_bpffs(bpffs)
}

/// Everything `xlb run` keeps between events.
struct Controller {
    config: Config,
    iface: String,
    limits: Limits,
    dp: Dataplane,
    registry: Registry,
    health: Health,
    /// Serves the HTTP services.
    proxy: Proxy,
    /// Keeps the certificates of `acme::names` (follows every plan).
    acme: Acme,
    /// When each discovered backend was first seen: slow start's clock for backends
    /// without health probes.
    first_seen: HashMap<(String, IpAddr), Instant>,
    reply_ifaces: BTreeSet<String>,
    forwarding: netdev::Forwarding,
    /// The services as last written to the maps.
    plan: Vec<Desired>,
    /// The HTTP services as last handed to the proxy.
    http_plan: Vec<ServiceView>,
    /// Until when an adopted data plane serves as kept (see `settled`).
    settle: Option<Instant>,
    /// Services a discovery source has reported on since the start.
    reported: HashSet<String>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    last_status: Option<(Instant, Snapshot)>,
    /// Health changes per service and backend address.
    backend_transitions: Transitions,
    discovery_events: HashMap<String, u64>,
    reloads: Reloads,
    sources: Sources,
    /// Kernel backends left out of the maps at the last replan, and why: no route to
    /// them, or their interface could not take the reply program.
    unroutable: BTreeMap<IpAddr, String>,
    /// Where the admin endpoint listens: fixed at start.
    admin_address: SocketAddr,
    /// The `admin.token` the endpoint checks; a reload may change it.
    admin_token: watch::Sender<Option<String>>,
    /// The certificate files as last loaded (`stamp::cert_stamps`), to load them on change.
    cert_stamps: Vec<Option<(std::time::SystemTime, u64)>>,
    /// Keeps the VIP routes of `announce.table` (fixed at start).
    announcer: Option<Announcer>,
    /// `access_log` as the start opened it (fixed until a restart).
    access_log: Option<Arc<AccessLog>>,
}

impl Controller {
    /// Takes over the rest of a kept data plane (the reply attachments), removes its
    /// pins, and holds the first sync until what feeds it has spoken (`settled`).
    fn adopt_kept(&mut self, scope: &Scope, started: Instant) -> anyhow::Result<()> {
        for iface in self.dp.kept_reply_ifaces() {
            if netdev::ifindex(&iface).is_err() {
                warn!(%iface, "a kept reply attachment's interface is gone");
                continue;
            }
            self.forwarding.enable(&iface)?;
            self.dp.attach_backend_side(&iface)?;
            self.reply_ifaces.insert(iface);
        }
        self.dp.finish_adoption(scope)?;
        let held = self.dp.adopted()?;
        info!(
            dir = %scope.dir().display(),
            services = held.services,
            backends = held.backends,
            connections = held.connections,
            took_ms = started.elapsed().as_millis() as u64,
            "adopted the kept data plane"
        );
        self.settle = Some(Instant::now() + SETTLE_MAX);
        Ok(())
    }

    /// Whether `services` can replace what an adopted data plane holds: every discovery
    /// source has reported on its services and every probed backend has a verdict.
    /// Syncing earlier would write empty or not-yet-healthy backend sets, turning away
    /// new connections (and, for vanished backends, re-balancing live ones).
    fn settled(&self, services: &[Desired]) -> bool {
        let discovered = self.config.services.iter().filter(|s| s.docker.is_some() || s.dns.is_some()).all(|s| self.reported.contains(&s.name));
        let probed = services.iter().filter(|d| self.config.services.iter().any(|s| s.name == d.name && s.probes().is_some())).all(|d| {
            d.backends.iter().all(|b| self.health.healthy(&health::Target { service: d.name.clone(), addr: SocketAddr::new(b.addr, b.port) }).is_some())
        });
        discovered && probed
    }

    /// Records an update and any others already queued, so a burst of events costs
    /// one map sync.
    fn discovered(&mut self, first: Update, more: &mut mpsc::Receiver<Update>) -> bool {
        let mut changed = self.apply_update(first);
        while let Ok(u) = more.try_recv() {
            changed |= self.apply_update(u);
        }
        changed
    }

    fn apply_update(&mut self, u: Update) -> bool {
        debug!(service = %u.service, source = ?u.source, backends = u.backends.len(), "discovered");
        *self.discovery_events.entry(format!("{:?}", u.source).to_lowercase()).or_default() += 1;
        self.reported.insert(u.service.clone());
        let now = Instant::now();
        for b in &u.backends {
            self.first_seen.entry((u.service.clone(), b.addr)).or_insert(now);
        }
        self.registry.apply(u)
    }

    /// Recomputes what the maps should hold and writes the difference. Returns whether
    /// a slow start is still ramping. `reload`: the config is a reloaded one, so an HTTP
    /// listener that cannot be bound fails the replan before the maps are touched (the
    /// caller puts the previous config back), and `config reloaded` is logged once only
    /// the maps are left to write; otherwise a listener error is logged and the rest applied.
    fn replan(&mut self, reload: bool) -> anyhow::Result<bool> {
        let started = Instant::now();
        let plan = plan::plan(&self.config, &self.iface, &self.registry, started, |service, addr| {
            let target = health::Target { service: service.to_owned(), addr };
            let seen = self.first_seen.get(&(service.to_owned(), addr.ip())).copied();
            // Probes only: the proxy's own view of its ejections decides (cap, panic mode).
            Vitals { probe: self.health.probed(&target), since: self.health.healthy_since(&target).or(seen) }
        })?;
        match self.proxy.update(plan.http.clone()) {
            Err(e) if reload => return Err(e.context("HTTP proxy")),
            Err(e) => error!("HTTP proxy: {e:#}"),
            Ok(()) => {}
        }
        self.http_plan = plan.http;
        self.acme.want(self.config.acme.as_ref(), acme::names(&self.config, &self.http_plan));
        // Every planned backend of every service, kernel or proxy, by service name.
        let backends: Vec<(&str, SocketAddr)> = plan
            .services
            .iter()
            .flat_map(|d| d.backends.iter().map(|b| (d.name.as_str(), SocketAddr::new(b.addr, b.port))))
            .chain(self.http_plan.iter().flat_map(|v| v.backends.iter().map(|b| (v.name.as_str(), b.addr))))
            .collect();
        let checks: HashMap<&str, HealthCheck> = self.config.services.iter().filter_map(|s| Some((s.name.as_str(), s.probes()?))).collect();
        self.health.set(
            backends
                .iter()
                .filter_map(|(service, addr)| Some((health::Target { service: (*service).to_owned(), addr: *addr }, checks.get(service)?.clone())))
                .collect(),
        );
        forget_gone(&backends, &mut self.first_seen, &mut self.backend_transitions);
        let unroutable = self.attach_reply(&plan.services);
        self.report_unroutable(unroutable);
        if reload {
            info!(services = self.config.services.len(), "config reloaded");
        }
        if let Some(until) = self.settle {
            if started < until && !self.settled(&plan.services) {
                debug!("adopted data plane: waiting for discovery and first probes before syncing");
                // Replanned again at the next ramp tick.
                return Ok(true);
            }
            self.settle = None;
            info!(services = plan.services.len(), "resynchronised the adopted data plane");
        }
        let reachable: Vec<Desired> = plan
            .services
            .iter()
            .map(|d| Desired { backends: d.backends.iter().filter(|b| !self.unroutable.contains_key(&b.addr)).copied().collect(), ..d.clone() })
            .collect();
        self.dp.sync(&reachable)?;
        debug!(elapsed_us = started.elapsed().as_micros() as u64, "maps synced");
        // After the maps: a VIP is announced once this node can serve it.
        if let Some(Err(e)) = self.announcer.as_mut().map(|a| a.sync(&announce::wanted(&reachable))) {
            warn!("announcing VIPs: {e:#}");
        }
        self.plan = plan.services;
        Ok(plan.ramping)
    }

    fn expire(&mut self) {
        let now = monotonic_ns();
        match self.dp.expire(now, &Timeouts::from(&self.config.dataplane)) {
            Ok(0) => {}
            Ok(n) => info!(expired = n, "idle connection entries removed"),
            Err(e) => warn!("expiring connection entries: {e:#}"),
        }
        if let Some(log) = &self.access_log {
            access::log_ended(log, self.dp.take_ended(), now);
        }
    }
}

/// Forgets what was recorded about backends that are no longer planned: when they
/// were first seen (slow start's clock), their health transitions.
fn forget_gone(planned: &[(&str, SocketAddr)], first_seen: &mut HashMap<(String, IpAddr), Instant>, transitions: &mut Transitions) {
    let hosts: BTreeSet<(&str, IpAddr)> = planned.iter().map(|(s, a)| (*s, a.ip())).collect();
    first_seen.retain(|(s, a), _| hosts.contains(&(s.as_str(), *a)));
    let backends: BTreeSet<(&str, SocketAddr)> = planned.iter().copied().collect();
    transitions.retain(|s, a| backends.contains(&(s, a)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_backends_that_left_the_plan_are_forgotten() {
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
        let mut first_seen = HashMap::from([(("web".to_owned(), a.ip()), Instant::now()), (("web".to_owned(), b.ip()), Instant::now())]);
        let mut transitions = Transitions::default();
        for (service, addr) in [("web", a), ("web", b), ("web", b), ("api", a)] {
            transitions.record(service, addr, true);
        }
        forget_gone(&[("web", a)], &mut first_seen, &mut transitions);
        assert_eq!(first_seen.keys().collect::<Vec<_>>(), [&("web".to_owned(), a.ip())]);
        assert_eq!((transitions.len(), transitions.get("web", a), transitions.get("web", b), transitions.get("api", a)), (1, 1, 0, 0));
        assert_eq!(transitions.total(), 4, "the total is a counter: forgotten backends' changes stay in it");
    }
}
