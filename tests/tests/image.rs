//! The container image (issue 18): `xlb:latest`, built as `cargo xtask image` builds it,
//! run with exactly the `docker run` arguments the README gives (`xlb_tests::image::run_args`:
//! host network, capabilities instead of `--privileged`, the Docker socket, the tests' BPF
//! file system at /sys/fs/bpf):
//!
//! - `the_image_serves_a_labelled_container`: an xlb-testd container labelled
//!   `xlb.service=web` (not published) is served through the host's address, by the kernel
//!   (L4, port 80) and by the proxy (HTTP, port 8081), to curl in a client namespace outside
//!   the host; xlb in its container has dropped what it needed only to start; `docker stop`
//!   ends it with exit code 0 and nothing left attached. The containers, the namespace and the
//!   link are removed (the image stays, as `cargo xtask image` leaves it).
//!
//! Needs root and Docker; builds a static release xlb into `target/xlb-static` (minutes the
//! first time). Run with `cargo test -p xlb-tests --test image -- --nocapture`.

use std::time::{Duration, Instant};

use xlb_tests::{
    Offload,
    docker::{self, Container},
    http,
    image::{self, IMAGE},
    outside::Outside,
    util::{cmd, try_run, wait_for},
    xlb::{BPFFS, ensure_bpffs},
};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;

/// `CapEff` of process `pid`.
fn cap_eff(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("a CapEff line");
    u64::from_str_radix(hex.trim(), 16).expect("a hex capability set")
}

#[test]
fn the_image_serves_a_labelled_container() {
    let _g = xlb_tests::serial();
    xlb_tests::preflight();
    docker::require_docker();
    ensure_bpffs();
    let started = Instant::now();
    image::build().unwrap_or_else(|e| panic!("building {IMAGE}: {e}"));
    let built = started.elapsed();

    let backend = Container::testd("web", &["--label", "xlb.service=web"]);
    let out = Outside::new(252, Offload::On);
    let l4 = format!("{}:80:web:8080", out.host_ip);
    let args = image::run_args(BPFFS);
    let xlb = Container::run("xlb", &args.iter().map(String::as_str).collect::<Vec<_>>(), IMAGE, &["run", "--iface", &out.host_if, &l4, "8081:web:8080/http"]);
    let ready = wait_for(Duration::from_secs(30), Duration::from_millis(200), || xlb.logs().contains(" ready").then_some(()));
    assert!(ready.is_some(), "xlb in its container did not become ready; logs:\n{}", xlb.logs());

    for url in [format!("http://{}/", out.host_ip), format!("http://{}:8081/", out.host_ip)] {
        let body = wait_for(Duration::from_secs(10), Duration::from_millis(200), || http::curl(Some(&out.client), &url).ok().filter(|b| b == "web"));
        assert!(body.is_some(), "curl {url}: {:?}\nxlb's logs:\n{}", http::curl(Some(&out.client), &url), xlb.logs());
    }
    let caps = cap_eff(&xlb.inspect("{{.State.Pid}}"));
    assert!(caps & 1 << CAP_NET_ADMIN != 0 && caps & (1 << CAP_SYS_ADMIN | 1 << CAP_PERFMON) == 0, "xlb's CapEff in the container: {caps:#x}");
    assert!(xlb.logs().contains("data plane pinned while running"), "the BPF file system mount is not used; logs:\n{}", xlb.logs());

    xlb.stop(10);
    let logs = xlb.logs();
    assert_eq!(xlb.inspect("{{.State.ExitCode}}"), "0", "xlb's exit code after docker stop; logs:\n{logs}");
    assert!(logs.contains("detaching programs"), "xlb did not detach; logs:\n{logs}");
    let link = try_run(&mut cmd("ip", ["-d", "link", "show", "dev", &out.host_if])).unwrap_or_else(|e| panic!("{e}"));
    assert!(!link.contains("xdp"), "an XDP program is left on {}:\n{link}", out.host_if);
    drop(backend);
    println!("IMAGE-FIGURE built {IMAGE} in {built:?}; served L4 and HTTP; CapEff {caps:#x}; docker stop: exit 0");
}
