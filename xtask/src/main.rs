//! Developer tasks for xlb, run as `cargo xtask <task>` (see `.cargo/config.toml`).
//!
//! The kernel programs need a BPF linker, `rust-src` and, for the tests, root, a few network
//! tools and a Docker daemon; keeping those steps here makes a fresh machine and CI
//! reproducible from the repository alone.
mod apt;
mod bench;
mod build;
mod cmd;
mod counted;
mod docker;
mod fuzz;
mod image;
mod layers;
mod linker;
mod run;
mod setup;
mod sizes;
mod source;
mod test;
mod toolchain;
mod vm;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xlb developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need; idempotent (apt and dockerd need root).
    Setup,
    /// Build the `xlb` binary, kernel programs embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `xlb run ARGS` as root.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `xlb run`, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build, then run every test of the workspace (needs root and a Docker daemon).
    Test {
        /// Arguments for the test binaries (filters, `--nocapture`, ...), after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Benchmark xlb against direct access, nginx and HAProxy in network namespaces
    /// (root); results in bench/results/.
    Bench(bench::Options),
    /// Build the Docker image `xlb:latest`: FROM scratch, a static xlb (kernel programs
    /// embedded); prints how to run it. Also `xlb-testd:latest`, the backend of examples/.
    Image,
    /// Run the data plane tests on other kernels (Debian packages) under QEMU.
    Vm(vm::Options),
    /// Run the libFuzzer targets of fuzz/ (config, Docker labels, HTTP guard, header
    /// rewriting, route matching), each for --seconds.
    Fuzz(fuzz::Options),
    /// Check the imports between source files (no cycle, lb-userspace's rooms one way) and
    /// their sizes (files over 500 lines, functions over 80, without a `// long:` note).
    Layers,
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Build { release } => build::build(release).map(drop),
        Task::Run { release, args } => run::run(release, &args),
        Task::Test { args } => test::test(&args),
        Task::Bench(options) => bench::bench(&options),
        Task::Image => image::image(),
        Task::Vm(options) => vm::vm(&options),
        Task::Fuzz(options) => fuzz::fuzz(&options),
        Task::Layers => layers::layers(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` keeps the whole context chain on one line.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
