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
    use super::*;
    use crate::discovery::docker::{
        labels::{LABEL_PORT, LABEL_SERVICE},
        testing::simple,
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
}
