use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use xlb::config::{Config, Source, Spec};

/// xlb: an XDP load balancer for Docker hosts.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to IFACE and balance the given services until SIGINT/SIGTERM; SIGHUP reloads.
    Run {
        /// Interface clients reach the VIPs on.
        #[arg(long)]
        iface: Option<String>,
        /// YAML config; see xlb.example.yaml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Level of the kernel programs' own log records (error, warn, info, debug, trace).
        #[arg(long, default_value = "info")]
        kernel_log: String,
        /// On SIGINT/SIGTERM, leave the data plane running (pinned under
        /// /sys/fs/bpf/xlb) for the next `xlb run` to adopt, instead of detaching it.
        #[arg(long)]
        keep_dataplane: bool,
        /// Where the BPF file system is mounted (kept data planes live in its xlb/).
        #[arg(long, default_value = xlb::dataplane::pin::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Socket-level balancing for local callers: auto, true or false (overrides
        /// dataplane.socket_lb.enabled).
        #[arg(long)]
        socket_lb: Option<xlb::config::Switch>,
        /// Services: [VIP:]PORT:TARGET[,TARGET...][:TARGETPORT][/tcp|/udp|/http].
        specs: Vec<Spec>,
    },
    /// Remove a data plane kept by `xlb run --keep-dataplane`: detach its programs,
    /// unpin its maps. Idempotent.
    Down {
        /// Only the one kept for this interface (in this network namespace); default: all.
        #[arg(long)]
        iface: Option<String>,
        /// Where the BPF file system is mounted.
        #[arg(long, default_value = xlb::dataplane::pin::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Validate a config file without touching the system.
    Check { config: PathBuf },
    /// Translate an nginx configuration (upstreams, servers, locations, host maps, header and
    /// cookie pinning), or HAProxy's (a FILE named *.cfg or *haproxy*), into xlb's YAML on
    /// stdout; what could not be translated is listed on stderr as FILE:LINE.
    Import { file: PathBuf },
    /// Show services, backends and counters of a running xlb (its admin.token, if set,
    /// from $XLB_ADMIN_TOKEN).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The running xlb's admin address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin: std::net::SocketAddr,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    let result = match cli.command {
        Command::Run { iface, config, kernel_log, keep_dataplane, bpffs, socket_lb, specs } => kernel_level(&kernel_log).and_then(|level| {
            let source = Source { file: config, specs, interface: iface, socket_lb };
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(xlb::run::run(source, level, keep_dataplane, &bpffs))
        }),
        Command::Down { iface, bpffs } => xlb::dataplane::pin::down(&bpffs, iface.as_deref()).map(|lines| lines.iter().for_each(|l| println!("{l}"))),
        Command::Check { config } => Config::load(&config).map(|c| check(&config, &c)),
        Command::Status { json, admin } => status(json, admin),
        Command::Import { file } => import(&file),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `xlb check`: the file is good; and whether this kernel can balance local callers at
/// the socket, which `dataplane.socket_lb.enabled: auto` turns on by.
fn check(path: &std::path::Path, c: &Config) {
    println!("{}: ok, {} services", path.display(), c.services.len());
    match xlb::dataplane::features::socket_lb() {
        Ok(()) => println!("socket-level balancing: this kernel has it (dataplane.socket_lb.enabled: {})", c.dataplane.socket_lb.enabled),
        Err(e) => println!("socket-level balancing: not available, local callers take the packet path: {e:#}"),
    }
}

fn status(json: bool, admin: std::net::SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let token = std::env::var(xlb::observe::admin::TOKEN_ENV).ok().filter(|t| !t.is_empty());
    let snapshot = runtime.block_on(xlb::observe::admin::fetch(admin, token.as_deref()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        print!("{}", snapshot.table());
    }
    Ok(())
}

fn import(file: &std::path::Path) -> anyhow::Result<()> {
    let imported = xlb::import::file(file)?;
    print!("{}", imported.yaml);
    for note in &imported.notes {
        eprintln!("{}", xlb::import::Report(file, note));
    }
    let services = imported.yaml.matches("\n  - name: ").count();
    eprintln!("xlb import: {services} service(s) written; {} directive(s) not translated, listed above", imported.notes.len());
    Ok(())
}

fn kernel_level(s: &str) -> anyhow::Result<aya_log::Level> {
    use aya_log::Level;
    Ok(match s {
        "error" => Level::Error,
        "warn" => Level::Warn,
        "info" => Level::Info,
        "debug" => Level::Debug,
        "trace" => Level::Trace,
        _ => anyhow::bail!("--kernel-log {s:?}: expected error, warn, info, debug or trace"),
    })
}
