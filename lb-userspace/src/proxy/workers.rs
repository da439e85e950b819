//! The proxy's workers: one thread per core, each with a current-thread tokio runtime,
//! as nginx's worker processes. Every listener has a socket per worker
//! (`SO_REUSEPORT`: the kernel spreads new connections over them), so a client
//! connection, its requests, and the pooled backend connections they use stay on one
//! thread: no work stealing, no wake-ups across cores. Each worker keeps its own
//! upstream pools ([`PerWorker`]).

use std::{
    cell::Cell,
    sync::{Arc, OnceLock},
    thread,
};

use tokio::runtime::Handle;

struct Workers {
    handles: Vec<Handle>,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// This thread's worker index; `None` outside the workers.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

fn workers() -> &'static Workers {
    WORKERS.get_or_init(|| {
        let handles = (0..count())
            .map(|i| {
                let (tx, rx) = std::sync::mpsc::channel();
                thread::Builder::new()
                    .name(format!("xlb-http-{i}"))
                    .spawn(move || {
                        INDEX.with(|c| c.set(Some(i)));
                        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the proxy worker's runtime");
                        let _ = tx.send(rt.handle().clone());
                        rt.block_on(std::future::pending::<()>());
                    })
                    .expect("a proxy worker thread");
                rx.recv().expect("the proxy worker's runtime handle")
            })
            .collect();
        Workers { handles }
    })
}

/// The workers' runtimes (started on first use).
pub fn handles() -> &'static [Handle] {
    &workers().handles
}

/// How many workers there are, or will be once started: one per core.
pub fn count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get()).max(1))
}

/// The calling thread's worker, 0 outside the workers.
pub fn current() -> usize {
    INDEX.with(|c| c.get()).unwrap_or(0)
}

/// One `T` per worker; [`PerWorker::get`] gives the calling worker's. Each has cache
/// lines of its own, so a worker writing its `T` never slows another reading its own.
pub struct PerWorker<T>(Arc<[Padded<T>]>);

/// Two cache lines (adjacent-line prefetch pairs them on x86).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Clone for PerWorker<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for PerWorker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.all()).finish()
    }
}

impl<T> PerWorker<T> {
    pub fn new(mut make: impl FnMut() -> T) -> Self {
        Self((0..count()).map(|_| Padded(make())).collect())
    }

    pub fn get(&self) -> &T {
        &self.0[current() % self.0.len()].0
    }

    /// Every worker's, for a reader that sums them.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|p| &p.0)
    }
}
