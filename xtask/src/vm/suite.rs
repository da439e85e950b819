//! The test suites a guest runs.
use clap::ValueEnum;

/// The test binaries run in the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Suite {
    /// `xdp_fixtures`: packet fixtures through BPF_PROG_TEST_RUN.
    Fixtures,
    /// `topology`: xlb and xlb-testd in a namespace topology (HTTP, UDP, IPv6, reloads).
    Topology,
    /// `eastwest`: socket-level balancing of local callers in a cgroup v2 child (the guest
    /// has no Docker: its containers' test is left to the host).
    Eastwest,
}

impl Suite {
    pub const ALL: [Suite; 3] = [Suite::Fixtures, Suite::Topology, Suite::Eastwest];

    pub fn name(self) -> &'static str {
        match self {
            Suite::Fixtures => "fixtures",
            Suite::Topology => "topology",
            Suite::Eastwest => "eastwest",
        }
    }

    /// Arguments the test binary always gets: the topology tests share the guest's root
    /// namespace and take a lock anyway; each fixture test has a namespace of its own, so they
    /// run in parallel, as `cargo xtask test` runs them. The SYN flood (a million test runs)
    /// is left to the host: under QEMU's emulation it would take many minutes, and the
    /// half-open table it exercises is in every other TCP fixture.
    pub fn harness_args(self) -> &'static str {
        match self {
            Suite::Fixtures => "--skip syn_flood::",
            Suite::Topology => "--test-threads=1",
            Suite::Eastwest => "--test-threads=1 --skip docker_callers",
        }
    }

    /// The oldest kernel (major, minor) the suite itself can run on, when that is newer than
    /// what xlb needs, and why.
    pub fn needs(self) -> Option<((u32, u32), &'static str)> {
        match self {
            // Older kernels refuse an xdp_md context in the test run (EINVAL), and the
            // fixtures set ingress_ifindex so that bpf_fib_lookup sees fx0.
            Suite::Fixtures => Some((
                (5, 14),
                "BPF_PROG_TEST_RUN with an xdp_md context needs 5.14",
            )),
            Suite::Topology | Suite::Eastwest => None,
        }
    }

    /// Cargo package and integration test target.
    pub fn target(self) -> (&'static str, &'static str) {
        match self {
            Suite::Fixtures => ("lb-userspace", "xdp_fixtures"),
            Suite::Topology => ("xlb-tests", "topology"),
            Suite::Eastwest => ("xlb-tests", "eastwest"),
        }
    }
}
