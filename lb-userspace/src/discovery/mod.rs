//! Where backends come from besides the config file: Docker (`docker/`) and DNS
//! (`dns.rs`). Each source runs as a task and reports, per xlb service, the complete
//! current set it sees; `Registry` keeps the latest set of each source.

use std::collections::HashMap;

use tokio::sync::{mpsc, watch};

use crate::config::Config;

pub mod dns;
pub mod docker;
mod update;

pub use update::{Discovered, DnsWatch, DockerWatch, SourceKind, TlsLabels, Update};

/// The latest set of every (service, source).
#[derive(Debug, Default)]
pub struct Registry {
    sets: HashMap<(String, SourceKind), Vec<Discovered>>,
}

impl Registry {
    /// Records an update; says whether anything changed.
    pub fn apply(&mut self, u: Update) -> bool {
        let key = (u.service, u.source);
        if self.sets.get(&key) == Some(&u.backends) {
            return false;
        }
        self.sets.insert(key, u.backends);
        true
    }

    /// A service's discovered backends: Docker's when it has any, else DNS's (a SPEC
    /// name resolves to containers first, then to DNS records).
    pub fn backends(&self, service: &str) -> &[Discovered] {
        let get = |k| self.sets.get(&(service.to_owned(), k)).map(Vec::as_slice).unwrap_or_default();
        match get(SourceKind::Docker) {
            [] => get(SourceKind::Dns),
            docker => docker,
        }
    }

    /// Forgets services no longer configured.
    pub fn retain(&mut self, services: &[&str]) {
        self.sets.retain(|(s, _), _| services.contains(&s.as_str()));
    }
}

/// The discovery source tasks, each started the first time a service needs it: xlb
/// does not talk to Docker, or resolve names, unless the config asks it to.
pub struct Sources {
    docker: Source<DockerWatch>,
    dns: Source<DnsWatch>,
}

impl Sources {
    /// Sources that report to `tx`.
    pub fn new(tx: mpsc::Sender<Update>) -> Self {
        Self { docker: Source::spawn_when_needed(docker::run, tx.clone()), dns: Source::spawn_when_needed(dns::run, tx) }
    }

    /// Tells the sources what the services of `config` look for.
    pub fn watch(&mut self, config: &Config) {
        let docker = config
            .services
            .iter()
            .filter_map(|s| {
                let d = s.docker.as_ref()?;
                Some(DockerWatch { service: s.name.clone(), name: d.name.clone(), project: d.project.clone(), network: d.network.clone(), port: d.port })
            })
            .collect();
        let dns = config
            .services
            .iter()
            .filter_map(|s| {
                let d = s.dns.as_ref()?;
                Some(DnsWatch { service: s.name.clone(), name: d.name.clone(), port: d.port, interval: d.interval, server: d.server })
            })
            .collect();
        self.docker.set(docker);
        self.dns.set(dns);
    }
}

/// Spawns a source task with the receiving end of its watches.
type Start<W> = Box<dyn FnOnce(watch::Receiver<Vec<W>>)>;

/// One source task and the watches it was handed.
struct Source<W> {
    start: Option<Start<W>>,
    watches: Option<watch::Sender<Vec<W>>>,
}

impl<W: Send + Sync + PartialEq + 'static> Source<W> {
    fn spawn_when_needed<F, Fut>(run: F, tx: mpsc::Sender<Update>) -> Self
    where
        F: FnOnce(watch::Receiver<Vec<W>>, mpsc::Sender<Update>) -> Fut + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self { start: Some(Box::new(move |rx| drop(tokio::spawn(run(rx, tx))))), watches: None }
    }

    fn set(&mut self, watches: Vec<W>) {
        match &self.watches {
            Some(tx) => {
                tx.send_if_modified(|w| {
                    let changed = *w != watches;
                    *w = watches;
                    changed
                });
            }
            None if watches.is_empty() => {}
            None => {
                let (tx, rx) = watch::channel(watches);
                if let Some(start) = self.start.take() {
                    start(rx);
                }
                self.watches = Some(tx);
            }
        }
    }
}
