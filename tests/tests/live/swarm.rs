//! h. A Docker Swarm service's tasks as backends, scaled and updated under the load.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use xlb_tests::{
    Offload,
    docker::{self, LABEL, OWNER_LABEL, docker_cli},
    outside::Outside,
    util::{TempFile, cmd, try_run, unique_id, wait_for},
};

use crate::common::{
    PORT, SUBNET, TESTD_PORT, assert_zero_failures, figure, ms, service_label, setup, start_xlb, status_addresses, steady_load, wait_vip_serves,
};

/// The swarm-scoped bridge network's subnet and gateway (the bridge's address on the host).
const SWARM_SUBNET: &str = "10.200.244.0/24";
const SWARM_GATEWAY: &str = "10.200.244.1";
/// Bound of one `docker service` command that waits for the service to converge.
const CONVERGE_SECS: &str = "60";

/// Swarm mode on this engine (entered with `docker swarm init` if it was off), a
/// swarm-scoped bridge network for the tasks, and the test's service. Dropping it removes
/// the service and the networks, and leaves swarm mode if this guard entered it.
struct Swarm {
    entered: bool,
    /// `docker_gwbridge` existed before (swarm init creates it).
    had_gwbridge: bool,
    /// The config-only network holding the bridge's subnet and name.
    config: String,
    network: String,
    /// The host's bridge of `network`: xlb's other interface.
    bridge: String,
    service: String,
}

impl Swarm {
    fn new() -> Swarm {
        let id = unique_id();
        let state = docker_cli(&["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"]).unwrap_or_else(|e| panic!("docker info: {e}"));
        let entered = match state.trim() {
            "inactive false" => true,
            "active true" => false,
            s => panic!("this test needs a Docker engine out of swarm mode, or a swarm manager; its swarm state is {s:?}"),
        };
        let had_gwbridge = docker_cli(&["network", "inspect", "docker_gwbridge"]).is_ok();
        let s = Swarm {
            entered,
            had_gwbridge,
            config: format!("xt{id}swc"),
            network: format!("xt{id}swn"),
            bridge: format!("xt{id}swb"),
            service: format!("xt{id}sws"),
        };
        if entered {
            docker_cli(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).unwrap_or_else(|e| panic!("docker swarm init: {e}"));
        }
        let owner = format!("{OWNER_LABEL}={}", std::process::id());
        let bridge_name = format!("com.docker.network.bridge.name={}", s.bridge);
        let labels = ["--label", LABEL, "--label", &owner];
        let config =
            [&["network", "create", "--config-only", "--subnet", SWARM_SUBNET, "--gateway", SWARM_GATEWAY, "-o", &bridge_name][..], &labels, &[&s.config]];
        docker_cli(&config.concat()).unwrap_or_else(|e| panic!("creating the config-only network: {e}"));
        // No labels here: Docker refuses any setting on a network made from a config network.
        docker_cli(&["network", "create", "-d", "bridge", "--scope", "swarm", "--config-from", &s.config, &s.network])
            .unwrap_or_else(|e| panic!("creating the swarm-scoped bridge network: {e}"));
        s
    }

    /// `docker ARGS...` bounded by [`CONVERGE_SECS`]; panics with its output if it fails.
    #[track_caller]
    fn cli(&self, args: &[&str]) {
        if let Err(e) = try_run(&mut cmd("timeout", [CONVERGE_SECS, "docker"].iter().chain(args))) {
            panic!("{e}");
        }
    }

    /// The running tasks on this engine: (xlb-testd's answer name = the container's short
    /// id, its address on the swarm bridge), sorted; `None` while a running task has no
    /// address on the bridge yet (its network is attached just after it starts).
    fn tasks(&self) -> Option<Vec<(String, Ipv4Addr)>> {
        let filter = format!("label=com.docker.swarm.service.name={}", self.service);
        let ids = docker_cli(&["ps", "-q", "--filter", &filter]).unwrap_or_else(|e| panic!("docker ps: {e}"));
        let format = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", self.network);
        let mut tasks: Vec<(String, Ipv4Addr)> =
            ids.split_whitespace().map(|id| Some((id.to_owned(), docker::inspect(id, &format).parse().ok()?))).collect::<Option<_>>()?;
        tasks.sort();
        Some(tasks)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = docker_cli(&["service", "rm", &self.service]);
        let filter = format!("label=com.docker.swarm.service.name={}", self.service);
        let gone = || docker_cli(&["ps", "-aq", "--filter", &filter]).ok().filter(|o| o.trim().is_empty());
        if wait_for(Duration::from_secs(30), Duration::from_millis(200), gone).is_none() {
            eprintln!("swarm test: the tasks of {} are still there after 30 s", self.service);
        }
        let _ = docker_cli(&["network", "rm", &self.network]);
        // The swarm network goes asynchronously; its config network is in use until then.
        let config_gone = wait_for(Duration::from_secs(20), Duration::from_millis(200), || docker_cli(&["network", "rm", &self.config]).ok());
        if config_gone.is_none() {
            eprintln!("swarm test: could not remove network {}", self.config);
        }
        if self.entered {
            if let Err(e) = docker_cli(&["swarm", "leave", "--force"]) {
                eprintln!("swarm test: docker swarm leave --force: {e}");
            }
            if !self.had_gwbridge {
                let _ = docker_cli(&["network", "rm", "docker_gwbridge"]);
            }
        }
    }
}

/// A swarm service (`docker service create`, 2 replicas of xlb-testd on a swarm-scoped
/// bridge network, `--label xlb.service=...` on the service object) followed by xlb's Docker
/// discovery through the kernel data plane, while the client load runs: scaled 2 → 3 → 1, a
/// rolling update starting the new task first, scaled to 2, a rolling update stopping the old
/// task first. After each step xlb's set is exactly the running tasks, each new task serves;
/// no request of the load fails (a stopped task gets SIGTERM: xlb drains it on the `kill`
/// event, xlb-testd serves through its lame-duck period).
#[test]
// long: one scenario over one load, its steps in order.
fn swarm_service_scaled_and_updated() {
    let _g = setup();
    let image = docker::build_image();
    let svc_label = service_label();
    let swarm = Swarm::new();
    let out = Outside::new(SUBNET, Offload::On);
    let service_label_arg = format!("xlb.service={svc_label}");
    // Owned like the other tests' containers (the image's label alone would make the tasks
    // look like leftovers to another process's cleanup).
    let owner = format!("{OWNER_LABEL}={}", std::process::id());
    let port = TESTD_PORT.to_string();
    #[rustfmt::skip]
    swarm.cli(&[
        "service", "create", "--detach=false", "--quiet", "--no-resolve-image", "--name", &swarm.service, "--replicas", "2",
        "--network", &swarm.network, "--label", &service_label_arg, "--container-label", &owner,
        "--stop-grace-period", "10s", "--update-monitor", "1s", image, "--name", "@hostname", "--port", &port,
    ]);
    let name = "live-swarm";
    let config = TempFile::new(
        ".yaml",
        &format!("services:\n  - name: {name}\n    vip: \"{}\"\n    port: {PORT}\n    docker: {{ name: {svc_label}, port: {TESTD_PORT} }}\n", out.host_ip),
    );
    let mut xlb = start_xlb(&out, vec![], Some(config.path()), &swarm.bridge);
    let names = |tasks: &[(String, Ipv4Addr)]| tasks.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let addresses = |tasks: &[(String, Ipv4Addr)]| {
        let mut a: Vec<String> = tasks.iter().map(|(_, ip)| format!("{ip}:{TESTD_PORT}")).collect();
        a.sort();
        a
    };
    let created = wait_for(Duration::from_secs(20), Duration::from_millis(200), || swarm.tasks().filter(|t| t.len() == 2));
    let mut tasks = created.unwrap_or_else(|| panic!("tasks after docker service create: {:?}", swarm.tasks()));
    wait_vip_serves(&out, &xlb, &names(&tasks));

    let load = steady_load(&out);
    let scale = |n: u32| vec!["service".to_owned(), "scale".into(), "--detach=false".into(), format!("{}={n}", swarm.service)];
    let update = |order: &str| ["service", "update", "--detach=false", "--force", "--update-order", order, &swarm.service].map(str::to_owned).to_vec();
    let steps = [
        ("scale to 3", scale(3), 3),
        ("scale to 1", scale(1), 1),
        ("rolling update, start-first", update("start-first"), 1),
        ("scale to 2", scale(2), 2),
        ("rolling update, stop-first", update("stop-first"), 2),
    ];
    for (what, args, want) in steps {
        let before = tasks;
        let called = Instant::now();
        swarm.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let took = called.elapsed();
        // Converged; a task being stopped may still be in its lame-duck period.
        let settled = wait_for(Duration::from_secs(20), Duration::from_millis(200), || swarm.tasks().filter(|t| t.len() == want));
        ensure!(settled.is_some(), &xlb, None, "{what}: running tasks {:?}, want {want}", swarm.tasks());
        tasks = settled.unwrap_or_default();
        let new: Vec<String> = names(&tasks).into_iter().filter(|n| !before.iter().any(|(b, _)| b == n)).collect();
        let served = load.wait_served_since(&new, called, Duration::from_secs(10));
        ensure!(served.is_ok(), &xlb, None, "{what}: a new task: {}", served.unwrap_err());
        let want_addrs = addresses(&tasks);
        let listed = wait_for(Duration::from_secs(10), Duration::from_millis(100), || status_addresses(&xlb, name).filter(|l| *l == want_addrs));
        ensure!(listed.is_some(), &xlb, None, "{what}: xlb's status lists {:?}, want the running tasks {want_addrs:?}", status_addresses(&xlb, name));
        figure("swarm", &format!("{what}: docker service took {} ms; tasks {:?} -> {:?}", ms(took), names(&before), names(&tasks)));
    }
    let report = load.stop();
    assert_zero_failures(&report, &xlb, "swarm service scaled and updated");
    xlb.stop().unwrap_or_else(|e| panic!("{e}"));
    drop(swarm);
}
