//! Swarm tasks: the containers a swarm service runs on this engine.
//!
//! A task's container carries the `com.docker.swarm.*` labels and the service's
//! `--container-label`s; the labels given to the service itself (`docker service create
//! --label`, where users put them, as for Traefik) live on the service object, which only a
//! manager can read. [`ServiceLabels`] fetches them once per service and puts them under the
//! container's own, so that everything else reads one set of labels.
use std::collections::HashMap;

use anyhow::Context as _;
use bollard::{Docker, errors::Error as DockerError, models::ContainerInspectResponse};

use super::labels::label;

/// The id of the swarm service a task's container belongs to.
pub const SWARM_SERVICE_ID: &str = "com.docker.swarm.service.id";
/// Its name: a watch naming the swarm service matches its tasks.
pub const SWARM_SERVICE_NAME: &str = "com.docker.swarm.service.name";

/// The swarm service of a task's container (`None`: not a task).
pub fn service_id(c: &ContainerInspectResponse) -> Option<&str> {
    label(c, SWARM_SERVICE_ID)
}

/// Adds `service`'s labels to the container's; a container label wins over the service's.
pub fn merge(c: &mut ContainerInspectResponse, service: &HashMap<String, String>) {
    let labels = c.config.get_or_insert_default().labels.get_or_insert_default();
    for (k, v) in service {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// The labels of the swarm services seen, by service id.
#[derive(Debug, Default)]
pub struct ServiceLabels {
    by_id: HashMap<String, HashMap<String, String>>,
    /// The engine said it is no manager (logged once).
    not_manager: bool,
}

impl ServiceLabels {
    /// Adds the labels of its service to a task's container (fetched once per service);
    /// leaves other containers as they are.
    pub async fn add_to(&mut self, docker: &Docker, c: &mut ContainerInspectResponse) -> anyhow::Result<()> {
        let Some(id) = service_id(c).map(str::to_owned) else { return Ok(()) };
        if !self.by_id.contains_key(&id) {
            let labels = self.fetch(docker, &id).await?;
            self.by_id.insert(id.clone(), labels);
        }
        merge(c, &self.by_id[&id]);
        Ok(())
    }

    /// The service changed or went: its labels are fetched again when next needed.
    pub fn forget(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    /// Forgets every service (they may have changed while the daemon was away).
    pub fn clear(&mut self) {
        self.by_id.clear();
    }

    async fn fetch(&mut self, docker: &Docker, id: &str) -> anyhow::Result<HashMap<String, String>> {
        match docker.inspect_service(id, None).await {
            Ok(s) => Ok(s.spec.and_then(|s| s.labels).unwrap_or_default()),
            // Removed meanwhile: its tasks are going too.
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(HashMap::new()),
            // A worker node cannot read services: only the tasks' container labels count.
            Err(DockerError::DockerResponseServerError { status_code: 503, message }) => {
                if !std::mem::replace(&mut self.not_manager, true) {
                    tracing::warn!(
                        reason = %message,
                        "this Docker engine is no swarm manager: a service's --label cannot be read here, only its tasks' --container-label"
                    );
                }
                Ok(HashMap::new())
            }
            Err(e) => Err(e).with_context(|| format!("inspecting swarm service {id}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::discovery::{
        docker::{
            labels::{LABEL_PORT, LABEL_SERVICE, LABEL_WEIGHT},
            run,
            testing::{EngineLock, IMAGE, build_image, docker_async, docker_cli, next_update, simple, timestamped},
        },
        update::{DockerWatch, Update},
    };

    #[test]
    fn container_labels_win_over_the_service_labels() {
        let mut c = simple("web.1.abc", &[(SWARM_SERVICE_ID, "s1"), (LABEL_PORT, "9000")]);
        assert_eq!(service_id(&c), Some("s1"));
        let service = HashMap::from([(LABEL_SERVICE.to_owned(), "web".to_owned()), (LABEL_PORT.to_owned(), "8080".to_owned())]);
        merge(&mut c, &service);
        assert_eq!(label(&c, LABEL_SERVICE), Some("web"));
        assert_eq!(label(&c, LABEL_PORT), Some("9000"));
        assert_eq!(service_id(&simple("plain", &[])), None);
    }

    /// Swarm mode on the engine (entered if it was off), a swarm-scoped bridge network made
    /// from a config-only one, and the test's service: all undone on drop.
    struct TestSwarm {
        entered: bool,
        had_gwbridge: bool,
        service: String,
        network: String,
        config: String,
    }

    impl TestSwarm {
        fn new(prefix: &str) -> TestSwarm {
            let state = docker_cli(&["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"]).unwrap();
            let entered = match state.as_str() {
                "inactive false" => true,
                "active true" => false,
                s => panic!("this test needs an engine out of swarm mode or a swarm manager, not {s:?}"),
            };
            let had_gwbridge = docker_cli(&["network", "inspect", "docker_gwbridge"]).is_ok();
            // Made first: if a step below fails, dropping it undoes the ones before.
            let s = TestSwarm { entered, had_gwbridge, service: format!("{prefix}s"), network: format!("{prefix}n"), config: format!("{prefix}c") };
            if entered {
                docker_cli(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).unwrap();
            }
            docker_cli(&["network", "create", "--config-only", "--subnet", "10.200.243.0/24", "--label", "xlb-tests", &s.config]).unwrap();
            docker_cli(&["network", "create", "-d", "bridge", "--scope", "swarm", "--config-from", &s.config, &s.network]).unwrap();
            s
        }

        /// The service's running tasks' container names, sorted.
        fn tasks(&self) -> Vec<String> {
            let filter = format!("label={SWARM_SERVICE_NAME}={}", self.service);
            let mut v: Vec<String> = docker_cli(&["ps", "--filter", &filter, "--format", "{{.Names}}"]).unwrap().lines().map(str::to_owned).collect();
            v.sort();
            v
        }
    }

    impl Drop for TestSwarm {
        fn drop(&mut self) {
            let _ = docker_cli(&["service", "rm", &self.service]);
            let filter = format!("label={SWARM_SERVICE_NAME}={}", self.service);
            let deadline = Instant::now() + Duration::from_secs(30);
            while docker_cli(&["ps", "-aq", "--filter", &filter]).is_ok_and(|o| !o.is_empty()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = docker_cli(&["network", "rm", &self.network]);
            // The swarm network goes asynchronously; until then its config network is in use.
            while docker_cli(&["network", "rm", &self.config]).is_err() && Instant::now() < deadline + Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(200));
            }
            if self.entered {
                let _ = docker_cli(&["swarm", "leave", "--force"]);
                if !self.had_gwbridge {
                    let _ = docker_cli(&["network", "rm", "docker_gwbridge"]);
                }
            }
        }
    }

    fn names(u: &Update) -> Vec<String> {
        u.backends.iter().map(|d| d.name.clone()).collect()
    }

    /// The set xlb would serve follows a swarm service through `docker service` commands:
    /// the service's `--label`s apply to its tasks (a `--container-label` wins), a label
    /// changed on the service reaches the tasks without a restart, scaling and rolling
    /// updates give the running tasks, and a task being stopped is draining before it goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // long: one scenario against the real engine, its steps in order.
    async fn follows_a_swarm_service_scaled_and_updated() {
        if let Err(e) = docker_cli(&["info", "--format", "{{.ServerVersion}}"]) {
            panic!("this test needs a running Docker engine, and it is not reachable: {e}");
        }
        let _lock = EngineLock::take();
        build_image();
        let prefix = format!("xt-swarm-{}", std::process::id());
        let swarm = TestSwarm::new(&prefix);
        let svc = format!("{prefix}-web");
        let (label, weight) = (format!("{LABEL_SERVICE}={svc}"), format!("{LABEL_WEIGHT}=3"));
        let owner = format!("xlb-tests.owner={}", std::process::id());
        #[rustfmt::skip]
        docker_cli(&[
            "service", "create", "--detach=false", "--quiet", "--no-resolve-image", "--name", &swarm.service, "--replicas", "2",
            "--network", &swarm.network, "--label", &label, "--label", &weight, "--label", "xlb.port=9000",
            "--container-label", "xlb.weight=5", "--container-label", &owner, "--update-monitor", "1s", "--stop-grace-period", "2s", IMAGE,
        ])
        .unwrap();

        let w = DockerWatch { service: "web".into(), name: svc.clone(), project: None, network: None, port: None };
        let (_wtx, wrx) = watch::channel(vec![w]);
        let (tx, src_rx) = mpsc::channel(64);
        let task = tokio::spawn(run(wrx, tx));
        let mut rx = timestamped(src_rx);
        let wait = Duration::from_secs(20);
        let (_, u) = next_update(&mut rx, wait, "the two tasks", |u| u.backends.len() == 2).await;
        assert_eq!(names(&u), swarm.tasks());
        for d in &u.backends {
            assert_eq!((d.port, d.weight, d.origin.as_str()), (Some(9000), 5, format!("docker:{}", swarm.network).as_str()), "{d:?}");
            assert!(d.addr.to_string().starts_with("10.200.243."), "{d:?}");
        }

        // A label changed on the service only (its tasks keep running).
        docker_cli(&["service", "update", "--detach", "--quiet", "--label-add", "xlb.port=9001", &swarm.service]).unwrap();
        let (_, u) = next_update(&mut rx, wait, "the new port of the service", |u| u.backends.iter().all(|d| d.port == Some(9001))).await;
        assert_eq!(names(&u), swarm.tasks(), "the same tasks");

        let scale = |n: u32| vec!["service".into(), "scale".into(), "--detach=false".into(), format!("{}={n}", swarm.service)];
        docker_async(scale(3)).await.unwrap();
        let want = swarm.tasks();
        next_update(&mut rx, wait, "three tasks", |u| names(u) == want).await;

        let before = swarm.tasks();
        docker_async(scale(1)).await.unwrap();
        next_update(&mut rx, wait, "two tasks draining", |u| u.backends.iter().filter(|d| d.draining).count() == 2).await;
        let (_, u) = next_update(&mut rx, wait, "one task", |u| u.backends.len() == 1).await;
        assert!(before.contains(&u.backends[0].name) && !u.backends[0].draining, "{u:?}");

        for order in ["stop-first", "start-first"] {
            let old = swarm.tasks();
            let update = ["service", "update", "--detach=false", "--quiet", "--force", "--update-order", order, &swarm.service];
            docker_async(update.map(str::to_owned).to_vec()).await.unwrap();
            // Converged; with start-first the old task may still be in its grace period.
            let settled = Instant::now() + wait;
            let mut new = swarm.tasks();
            while new.len() != 1 && Instant::now() < settled {
                tokio::time::sleep(Duration::from_millis(200)).await;
                new = swarm.tasks();
            }
            assert!(new.len() == 1 && new != old, "{order}: tasks {old:?} -> {new:?}");
            let (_, u) = next_update(&mut rx, wait, "the old task draining", |u| u.backends.iter().any(|d| old.contains(&d.name) && d.draining)).await;
            println!("{order}: {:?}", u.backends.iter().map(|d| (&d.name, d.draining)).collect::<Vec<_>>());
            next_update(&mut rx, wait, "only the new task", |u| names(u) == new).await;
        }
        task.abort();
        drop(swarm);
    }
}
