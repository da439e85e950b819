//! docker-compose projects with RAII cleanup, of the xlb-testd image.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    docker::{LABEL, OWNER_LABEL, Timed, build_image, docker, timed},
    util::{TempDir, cmd, have, run, try_run, unique_id},
};

/// Panics with a clear message unless `docker-compose` (v1) is installed.
pub fn require_compose() {
    assert!(have("docker-compose"), "`docker-compose` is not installed (this test needs it)");
    if let Err(e) = try_run(&mut cmd("docker-compose", ["version", "--short"])) {
        panic!("docker-compose does not run: {e}");
    }
}

/// A docker-compose project `xt<id>p` in a temporary directory; `docker-compose down` (and,
/// should that fail, `docker rm -f` of its containers and `docker network rm` of its network)
/// on drop, also when the test panics. Its containers and network carry [`LABEL`] and
/// [`OWNER_LABEL`], so leftovers of a killed test process are removed by the next run.
pub struct Compose {
    pub project: String,
    file: PathBuf,
    /// Variables the compose file substitutes.
    env: Vec<(String, String)>,
    // Dropped after `drop` ran `down` (fields drop after the Drop impl).
    _dir: Option<TempDir>,
}

impl Compose {
    /// A project with one service `service` of [`build_image`] running
    /// `xlb-testd --name @hostname --port 8080 --quiet` (each replica answers with its host
    /// name, i.e. its short container id), not published, with `env` in its environment.
    pub fn testd(service: &str, env: &[(&str, &str)]) -> Compose {
        let image = build_image();
        let owner = std::process::id();
        let mut env_yaml = String::new();
        for (k, v) in env {
            env_yaml.push_str(&format!("      {k}: \"{v}\"\n"));
        }
        let environment = if env.is_empty() { String::new() } else { format!("    environment:\n{env_yaml}") };
        let yaml = format!(
            "version: \"2.4\"\n\
             services:\n\
             \x20 {service}:\n\
             \x20   image: {image}\n\
             \x20   command: [\"--name\", \"@hostname\", \"--port\", \"8080\", \"--quiet\"]\n\
             {environment}\
             \x20   stop_grace_period: 10s\n\
             \x20   labels:\n\
             \x20     {LABEL}: \"\"\n\
             \x20     {OWNER_LABEL}: \"{owner}\"\n\
             networks:\n\
             \x20 default:\n\
             \x20   labels:\n\
             \x20     {LABEL}: \"\"\n\
             \x20     {OWNER_LABEL}: \"{owner}\"\n"
        );
        Compose::new(&yaml)
    }

    /// A project from a compose file's text.
    pub fn new(yaml: &str) -> Compose {
        require_compose();
        let dir = TempDir::new();
        let file = dir.path().join("docker-compose.yml");
        fs::write(&file, yaml).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        Compose { project: format!("xt{}p", unique_id()), file, env: Vec::new(), _dir: Some(dir) }
    }

    /// A project of the compose file in `dir` (which stays where it is: its relative paths
    /// are the directory's), with `env` in docker-compose's environment.
    pub fn at(dir: &Path, env: &[(&str, &str)]) -> Compose {
        require_compose();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Compose { project: format!("xt{}p", unique_id()), file: dir.join("docker-compose.yml"), env, _dir: None }
    }

    /// The compose file's path.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// `docker-compose -p PROJECT -f FILE ARGS...`
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut c = Command::new("docker-compose");
        c.arg("--no-ansi").args(["-p", &self.project, "-f"]).arg(&self.file).args(args);
        c.env("DOCKER_BUILDKIT", "0").env("COMPOSE_HTTP_TIMEOUT", "120").envs(self.env.iter().map(|(k, v)| (k, v)));
        try_run(&mut c)
    }

    /// `up -d --no-recreate --scale SERVICE=N ...`, timed (returns once the containers run,
    /// and the surplus ones are stopped and removed).
    #[track_caller]
    pub fn up(&self, scale: &[(&str, usize)]) -> Timed {
        let mut args = vec!["up".to_string(), "-d".into(), "--no-recreate".into()];
        for (svc, n) in scale {
            args.push("--scale".into());
            args.push(format!("{svc}={n}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        timed(&format!("docker-compose {}", args.join(" ")), || self.cli(&args))
    }

    /// Ids of the running containers of `service`, sorted.
    pub fn containers(&self, service: &str) -> Vec<String> {
        let out = run(docker().args([
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]));
        let set: BTreeSet<String> = out.split_whitespace().map(str::to_string).collect();
        set.into_iter().collect()
    }

    /// The project's default network (`PROJECT_default`).
    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    /// The host's bridge interface of the default network (`br-<id prefix>`).
    pub fn bridge(&self) -> String {
        let id = run(docker().args(["network", "inspect", "--format", "{{.Id}}", &self.network()]));
        format!("br-{}", &id.trim()[..12])
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if let Err(e) = self.cli(&["down", "-t", "1", "--remove-orphans"]) {
            eprintln!("xlb-tests: cleanup: {e}");
        }
        // Whatever `down` left (it may have failed half way).
        let filter = format!("label=com.docker.compose.project={}", self.project);
        if let Ok(out) = try_run(docker().args(["ps", "-aq", "--filter", &filter])) {
            for id in out.split_whitespace() {
                let _ = try_run(docker().args(["rm", "-f", id]));
            }
        }
        let net = self.network();
        if try_run(docker().args(["network", "inspect", &net])).is_ok()
            && let Err(e) = try_run(docker().args(["network", "rm", &net]))
        {
            eprintln!("xlb-tests: cleanup: {e}");
        }
    }
}

