//! The task: lists the running containers, follows the daemon's events, and sends each
//! watched service's set when it changes; reconnects with backoff when the daemon goes away.
use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    fmt,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use bollard::{Docker, errors::Error as DockerError, models::ContainerInspectResponse};
use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use tokio::sync::{mpsc, watch};

use super::{
    events::{Change, classify, events_options, stops_container},
    inspect::{Tracked, container_name, is_running, short_id, started_at},
    select::{Problem, service_sets},
    swarm::{ServiceLabels, service_id},
};
use crate::discovery::update::{Discovered, DockerWatch, SourceKind, Update};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Containers inspected at once during a full listing.
const INSPECT_CONCURRENCY: usize = 8;

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
    /// The labels of the swarm services whose tasks were seen.
    swarm: ServiceLabels,
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
            swarm: ServiceLabels::default(),
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
        self.swarm.clear();
        let mut old = std::mem::take(&mut self.containers);
        for (id, info) in inspected {
            if let Some(mut info) = info {
                self.swarm.add_to(docker, &mut info).await?;
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
            Change::Inspect(id) | Change::InspectKnown(id) => self.reinspect(docker, id).await?,
            Change::Service(service) => {
                self.swarm.forget(&service);
                let tasks: Vec<String> = self.containers.iter().filter(|(_, t)| service_id(&t.info) == Some(&service)).map(|(id, _)| id.clone()).collect();
                let mut changed = false;
                for id in tasks {
                    changed |= self.reinspect(docker, id).await?;
                }
                changed
            }
        })
    }

    /// Inspects a container again (with its swarm service's labels); says whether the
    /// followed containers changed.
    async fn reinspect(&mut self, docker: &Docker, id: String) -> anyhow::Result<bool> {
        Ok(match inspect(docker, &id).await? {
            Some(mut info) => {
                self.swarm.add_to(docker, &mut info).await?;
                let old = self.containers.remove(&id);
                self.track(id, info, old)
            }
            None => self.containers.remove(&id).is_some(),
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
    use std::time::Instant;

    use super::*;
    use crate::discovery::docker::{
        labels::LABEL_SERVICE,
        testing::{TestContainer, build_image, docker_async, docker_cli, next_update, timestamped},
    };

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
        let (tx, src_rx) = mpsc::channel(64);
        let task = tokio::spawn(run(wrx, tx));
        let mut rx = timestamped(src_rx);

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
        let (tx, src_rx) = mpsc::channel(64);
        let task = tokio::spawn(run_on(Some(format!("unix://{}", sock.display())), wrx, tx));
        let mut rx = timestamped(src_rx);
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
