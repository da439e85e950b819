//! The access log (`access_log:` in the config): entries from the proxy's log phase and
//! from the kernel's expiry pass go through a bounded channel to a writer thread of their
//! own, which formats them and writes them buffered. Nothing waits for the writer: when
//! the channel is full an entry is dropped and counted (`xlb_access_log_dropped_total`,
//! and a warning at most every 10 s). SIGUSR1 reopens the file, as logrotate expects.

pub mod format;

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
pub use format::{Entry, Http, L4};
use tracing::warn;

use crate::config::access_log::{AccessLog as Config, Format};

/// How often the writer looks at a reopen request and at dropped lines when idle.
const TICK: Duration = Duration::from_secs(1);
/// The shortest time between two warnings about dropped lines.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Formatted bytes the writer holds before it writes them out.
const WRITE_BUFFER: usize = 64 * 1024;

/// The handle the proxy and the control loop log through.
pub struct AccessLog {
    tx: SyncSender<Entry>,
    shared: Arc<Shared>,
    config: Config,
}

#[derive(Default)]
struct Shared {
    dropped: AtomicU64,
    reopen: AtomicBool,
}

impl AccessLog {
    /// Opens the output (an error here stops the start) and starts the writer thread.
    pub fn start(config: &Config) -> anyhow::Result<Arc<Self>> {
        let out = Output::open(config.path.clone())?;
        let (tx, rx) = sync_channel(config.buffer);
        let shared = Arc::new(Shared::default());
        let writer = Writer { rx, out, format: config.format, shared: shared.clone() };
        thread::Builder::new().name("access-log".into()).spawn(move || writer.run()).context("starting the access log writer")?;
        Ok(Arc::new(Self { tx, shared, config: config.clone() }))
    }

    /// Queues `entry`; drops it (counted) if the writer is behind by a full buffer.
    pub fn log(&self, entry: Entry) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(entry) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether an L4 connection whose addresses hash to `hash` gets a line (`l4_sample`).
    pub fn samples_l4(&self, hash: u64) -> bool {
        let n = self.config.l4_sample;
        n != 0 && hash.is_multiple_of(u64::from(n))
    }

    /// The config it was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The file is closed and opened again by its path (after a rename by logrotate).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
    }

    /// Entries dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// Standard output, or a file opened for appending.
struct Output {
    path: Option<PathBuf>,
    w: BufWriter<Box<dyn Write + Send>>,
}

impl Output {
    fn open(path: Option<PathBuf>) -> anyhow::Result<Self> {
        let sink: Box<dyn Write + Send> = match &path {
            Some(p) => Box::new(append(p)?),
            None => Box::new(io::stdout()),
        };
        Ok(Self { path, w: BufWriter::with_capacity(WRITE_BUFFER, sink) })
    }
}

fn append(p: &Path) -> anyhow::Result<File> {
    OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("opening the access log {}", p.display()))
}

struct Writer {
    rx: Receiver<Entry>,
    out: Output,
    format: Format,
    shared: Arc<Shared>,
}

impl Writer {
    /// Until every sender is gone: whatever is queued is written, then flushed once the
    /// queue is empty, so a quiet log is never left in the buffer.
    fn run(mut self) {
        let mut line = String::with_capacity(512);
        let (mut reported, mut last_warning) = (0, None::<Instant>);
        let mut failing = false;
        loop {
            let first = match self.rx.recv_timeout(TICK) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            for entry in first.into_iter().chain(std::iter::from_fn(|| self.rx.try_recv().ok())) {
                line.clear();
                entry.write(self.format, &mut line);
                let r = self.out.w.write_all(line.as_bytes());
                failing = report_error(r, failing);
            }
            failing = report_error(self.out.w.flush(), failing);
            if self.shared.reopen.swap(false, Ordering::Relaxed) {
                self.reopen();
            }
            let dropped = self.shared.dropped.load(Ordering::Relaxed);
            if dropped > reported && last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                warn!(dropped = dropped - reported, total = dropped, "access log lines dropped: the writer was behind (access_log.buffer)");
                (reported, last_warning) = (dropped, Some(Instant::now()));
            }
        }
        let _ = self.out.w.flush();
    }

    fn reopen(&mut self) {
        let Some(path) = self.out.path.clone() else { return };
        match append(&path) {
            Ok(f) => {
                let _ = self.out.w.flush();
                self.out.w = BufWriter::with_capacity(WRITE_BUFFER, Box::new(f));
                tracing::info!(path = %path.display(), "access log reopened");
            }
            Err(e) => warn!("{e:#}; still writing to the file opened before"),
        }
    }
}

/// Warns on the first of a run of write errors; returns whether the last write failed.
fn report_error(r: io::Result<()>, failing: bool) -> bool {
    match r {
        Ok(()) => false,
        Err(e) => {
            if !failing {
                warn!("writing the access log: {e}");
            }
            true
        }
    }
}
