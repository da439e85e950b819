//! Test support: inspect responses shaped like the daemon's, and a real daemon's containers.
use std::{
    collections::HashSet,
    net::IpAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use bollard::models::ContainerInspectResponse;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::discovery::update::{DockerWatch, Update};

/// One network a fake container is attached to.
pub struct Net<'a> {
    pub name: &'a str,
    pub ip: &'a str,
    pub gw: &'a str,
    pub ip6: &'a str,
    pub gw6: &'a str,
    pub aliases: &'a [&'a str],
}

pub fn net<'a>(name: &'a str, ip: &'a str, gw: &'a str) -> Net<'a> {
    Net { name, ip, gw, ip6: "", gw6: "", aliases: &[] }
}

/// An inspect response shaped like Docker 20.10's.
pub fn container(name: &str, labels: &[(&str, &str)], nets: &[Net], exposed: &[&str], state: Value) -> ContainerInspectResponse {
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

pub fn simple(name: &str, labels: &[(&str, &str)]) -> ContainerInspectResponse {
    container(name, labels, &[net("bridge", "172.17.0.2", "172.17.0.1")], &[], json!({}))
}

pub fn watch(name: &str) -> DockerWatch {
    DockerWatch { service: "svc".into(), name: name.into(), project: None, network: None, port: None }
}

pub fn host() -> HashSet<IpAddr> {
    ["172.17.0.1".parse().unwrap(), "192.0.2.2".parse().unwrap()].into()
}

// Against the real daemon.

pub const IMAGE: &str = "xlb-disc-test:scratch";

pub fn docker_cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).env("DOCKER_BUILDKIT", "0").output().map_err(|e| format!("docker {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub async fn docker_async(args: Vec<String>) -> Result<String, String> {
    tokio::task::spawn_blocking(move || docker_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

/// A `FROM scratch` image whose entrypoint is a static binary that listens on 8080
/// (built once per test process).
pub fn build_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_image_now);
}

pub fn build_image_now() {
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
pub struct TestContainer {
    pub name: String,
}

impl TestContainer {
    pub fn run(name: &str, labels: &[String]) -> TestContainer {
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

    pub fn bridge_ip(&self) -> IpAddr {
        let ip = docker_cli(&["inspect", "--format", "{{.NetworkSettings.Networks.bridge.IPAddress}}", &self.name]).unwrap();
        ip.parse().unwrap_or_else(|_| panic!("{}: no bridge address ({ip:?})", self.name))
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = docker_cli(&["rm", "-f", &self.name]);
    }
}

/// The source's updates, each with its arrival time, whatever the test is doing meanwhile.
pub fn timestamped(mut src_rx: mpsc::Receiver<Update>) -> mpsc::UnboundedReceiver<(Instant, Update)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(u) = src_rx.recv().await {
            let _ = tx.send((Instant::now(), u));
        }
    });
    rx
}

/// The next update (with its arrival time) that satisfies `pred`, within `limit`.
pub async fn next_update(
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

/// The host-wide lock of the integration tests (`xlb_tests::serial`), for a test that
/// changes the Docker engine for everyone (swarm mode): held until dropped.
pub struct EngineLock {
    _file: std::fs::File,
}

impl EngineLock {
    pub fn take() -> EngineLock {
        use std::os::fd::AsRawFd as _;
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open("/run/xlb-tests.lock").expect("opening /run/xlb-tests.lock");
        // SAFETY: flock on a descriptor we own; blocks until the other test process is done.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0, "flock /run/xlb-tests.lock");
        EngineLock { _file: f }
    }
}
