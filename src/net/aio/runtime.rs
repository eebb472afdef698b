//! The process-wide I/O runtime (made again after a fork), its deadline watch, and `within`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::Notify;

use crate::error::{Error, ErrorKind};

/// The runtime of this process, its deadline watch, and the process they were made in.
static RUNTIME: Mutex<Option<(u32, &'static Runtime, &'static Watch)>> = Mutex::new(None);

/// How many I/O threads the runtime has: `DJANGO_RUSTCACHE_IO_THREADS` (1 to 8), else 1. One
/// thread carries thousands of calls in flight; the work per call is a few microseconds.
fn io_threads() -> usize {
    std::env::var("DJANGO_RUSTCACHE_IO_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(1, |n| n.clamp(1, 8))
}

/// The process's I/O runtime and deadline watch, made now if this process has none yet (the
/// first async call, or the first after a fork).
pub(super) fn io() -> Result<(Handle, &'static Watch), Error> {
    let mut slot = RUNTIME.lock();
    let pid = std::process::id();
    if let Some((made_in, rt, watch)) = *slot
        && made_in == pid
    {
        return Ok((rt.handle().clone(), watch));
    }
    let rt = Builder::new_multi_thread()
        .worker_threads(io_threads())
        .max_blocking_threads(8)
        .thread_name("django-rustcache-io")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start the I/O runtime: {e}")))?;
    // Kept for the life of the process (a parent's, in a child, is never dropped: see above).
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    let watch: &'static Watch =
        Box::leak(Box::new(Watch { conns: Mutex::new(Vec::new()), idle: AtomicBool::new(false), wake: Notify::new() }));
    rt.spawn(watch.run());
    *slot = Some((pid, rt, watch));
    Ok((rt.handle().clone(), watch))
}

/// The process's I/O runtime, made now if this process has none yet.
pub fn runtime() -> Result<Handle, Error> {
    io().map(|(handle, _)| handle)
}

/// `fut`, or a `Timeout` naming `label` and `what` once `deadline` passes.
pub async fn within<T>(
    deadline: Instant,
    label: &str,
    what: &str,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(deadline.into(), fut).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(ErrorKind::Timeout, format!("{label}: {what}: timed out"))),
    }
}

/// What the deadline watch asks of a connection: end it when its oldest request is past its
/// deadline (the server is not answering); whether anything still waits on it.
pub(super) trait Expire: Send + Sync {
    fn expire(&self, now: Instant) -> bool;
}

/// How often the deadline watch looks while requests are out: how late past its deadline a
/// request at worst fails. (One watch for every connection, instead of a timer per request:
/// a request costs no wake-up of an I/O thread until its reply.)
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// The deadline watch of one runtime.
pub(super) struct Watch {
    /// The connections watched (dropped ones fall out).
    conns: Mutex<Vec<std::sync::Weak<dyn Expire>>>,
    /// Set while the watch sleeps because nothing waits anywhere: the next request wakes it.
    idle: AtomicBool,
    wake: Notify,
}

impl Watch {
    pub(super) fn add(&self, conn: std::sync::Weak<dyn Expire>) {
        self.conns.lock().push(conn);
    }

    /// A request was queued: wake the watch if it sleeps.
    pub(super) fn waiting(&self) {
        if self.idle.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn any_waiting(&self, now: Instant) -> bool {
        let live: Vec<Arc<dyn Expire>> = {
            let mut conns = self.conns.lock();
            conns.retain(|w| w.strong_count() > 0);
            conns.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        live.iter().fold(false, |busy, conn| conn.expire(now) | busy)
    }

    /// While requests wait, look every [`WATCH_EVERY`]; asleep once nothing has waited for a
    /// second.
    async fn run(&self) {
        let mut busy_at = Instant::now();
        loop {
            let now = Instant::now();
            if self.any_waiting(now) {
                busy_at = now;
            } else if now.duration_since(busy_at) > Duration::from_secs(1) {
                self.idle.store(true, Ordering::SeqCst);
                // A request queued before the flag was seen is found by this look.
                if !self.any_waiting(Instant::now()) {
                    self.wake.notified().await;
                }
                self.idle.store(false, Ordering::SeqCst);
                busy_at = Instant::now();
                continue;
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }
}
