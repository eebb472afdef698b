//! Call metrics, recorded in the cores, per cache alias: calls by method and outcome, keys
//! found and missed, a latency histogram per method (log-linear buckets: four per power of two,
//! so a bucket's width is at most a quarter of its lower bound), and the bytes of keys and
//! values sent and received.
//!
//! Recording takes no lock: every counter is a relaxed atomic. A snapshot reads them while
//! calls go on (each counter exact, the whole not one instant). The in-process store times one
//! call in [`SAMPLE_EVERY`] (a clock read costs a tenth of its hit); network calls time every
//! call (a round trip is a thousand times the clock).
//!
//! Each alias's metrics are made once per process ([`for_alias`]) and shared by every backend
//! instance of that alias (Django makes one per thread), whatever client they share.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::error::{Error, ErrorKind};

/// The calls metrics know by name; the rest are counted as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Method {
    Get,
    GetMany,
    HasKey,
    Set,
    SetMany,
    Add,
    Touch,
    Delete,
    DeleteMany,
    Incr,
    Clear,
    Ttl,
    Expire,
    Persist,
    /// `keys`, `iter_keys`, `delete_pattern`: a scan of the keyspace.
    Scan,
    Lock,
    /// The collection calls (hashes, sets, lists, sorted sets).
    Collection,
    /// A raw command.
    Execute,
    Other,
}

/// The methods' names, as exported (`method` label).
pub const METHODS: [&str; 19] = [
    "get",
    "get_many",
    "has_key",
    "set",
    "set_many",
    "add",
    "touch",
    "delete",
    "delete_many",
    "incr",
    "clear",
    "ttl",
    "expire",
    "persist",
    "scan",
    "lock",
    "collection",
    "execute",
    "other",
];

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    /// A read that found its key (for a multi-key read: found at least one).
    Hit,
    /// A read that found nothing.
    Miss,
    /// A write that stored.
    Stored,
    /// A write that did not (`add` on a present key, a value over the server's limit).
    NotStored,
    /// Any other call that completed.
    Ok,
    /// A deadline passed.
    Timeout,
    /// The connection failed (refused, reset, closed, TLS).
    Connection,
    /// The server was marked down: nothing was sent.
    ServerDown,
    /// The server answered with an error.
    ServerError,
    /// The server answered something the protocol does not allow, or too much.
    Protocol,
    /// A key refused before anything was sent.
    InvalidKey,
    /// Any other error.
    Error,
}

/// The outcomes' names, as exported (`outcome` label).
pub const OUTCOMES: [&str; 12] = [
    "hit",
    "miss",
    "stored",
    "not_stored",
    "ok",
    "error_timeout",
    "error_connection",
    "error_server_down",
    "error_server",
    "error_protocol",
    "error_invalid_key",
    "error",
];

impl Outcome {
    /// A failed call's outcome, by its error's kind.
    pub fn of_error(e: &Error) -> Self {
        match e.kind() {
            ErrorKind::Timeout => Self::Timeout,
            ErrorKind::Io | ErrorKind::Tls => Self::Connection,
            ErrorKind::ServerDown => Self::ServerDown,
            ErrorKind::Server | ErrorKind::NotNumeric | ErrorKind::NotFound => Self::ServerError,
            ErrorKind::Protocol | ErrorKind::TooLarge => Self::Protocol,
            ErrorKind::InvalidKey => Self::InvalidKey,
            _ => Self::Error,
        }
    }

    /// A read's outcome: found or not.
    pub fn found(found: bool) -> Self {
        if found { Self::Hit } else { Self::Miss }
    }

    /// A `delete`/`touch`'s outcome: it found its key (and acted) or not.
    pub fn acted(acted: bool) -> Self {
        if acted { Self::Ok } else { Self::Miss }
    }

    /// A write's outcome: stored or not.
    pub fn stored(stored: bool) -> Self {
        if stored { Self::Stored } else { Self::NotStored }
    }
}

/// Buckets per power of two.
const SUB: usize = 4;
/// Latencies below 2^38 ns (275 s) have a bucket of their own; longer ones share the last.
const BUCKETS: usize = 37 * SUB;

/// The bucket of a latency of `ns` nanoseconds.
fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros() as usize; // 2^e <= ns < 2^(e+1), e >= 2
    let sub = ((ns >> (e - 2)) & 3) as usize;
    ((e - 1) * SUB + sub).min(BUCKETS - 1)
}

/// The least latency (ns) of bucket `i`; bucket `i` holds latencies below `lower(i + 1)`.
pub fn lower(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let (e, sub) = (i / SUB + 1, (i % SUB) as u64);
    (SUB as u64 + sub) << (e - 2)
}

/// One method's latencies.
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

/// The in-process store times one call in this many.
pub const SAMPLE_EVERY: u32 = 16;

thread_local! {
    static TICKS: Cell<u32> = const { Cell::new(0) };
}

/// One alias's metrics.
pub struct Metrics {
    /// The cache alias (`settings.CACHES`' key), and the backend's class path.
    pub alias: String,
    pub backend: String,
    enabled: AtomicBool,
    calls: [[AtomicU64; OUTCOMES.len()]; METHODS.len()],
    keys_found: AtomicU64,
    keys_missed: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    latency: [Histogram; METHODS.len()],
    /// Unix time (ns) the counts start from.
    since: AtomicU64,
}

/// Now, as Unix time in nanoseconds.
fn unix_ns() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)
}

/// A call being recorded: when it started (`None`: not timed).
#[derive(Debug, Clone, Copy, Default)]
pub struct Started(Option<Instant>);

impl Metrics {
    fn new(alias: &str, backend: &str) -> Self {
        Self {
            alias: alias.to_owned(),
            backend: backend.to_owned(),
            enabled: AtomicBool::new(true),
            calls: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            keys_found: AtomicU64::new(0),
            keys_missed: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            latency: std::array::from_fn(|_| Histogram::default()),
            since: AtomicU64::new(unix_ns()),
        }
    }

    /// Turn recording on or off (off: every record is one branch).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether calls are recorded.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A network call starts: timed.
    #[inline]
    pub fn start(&self) -> Started {
        Started(self.enabled().then(Instant::now))
    }

    /// An in-process call starts: timed one time in [`SAMPLE_EVERY`].
    #[inline]
    pub fn start_sampled(&self) -> Started {
        if !self.enabled() {
            return Started(None);
        }
        let tick = TICKS.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n
        });
        Started(tick.is_multiple_of(SAMPLE_EVERY).then(Instant::now))
    }

    /// A call ended with `outcome`.
    #[inline]
    pub fn record(&self, method: Method, outcome: Outcome, started: Started) {
        if !self.enabled() {
            return;
        }
        self.calls[method as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(at) = started.0 {
            let ns = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let h = &self.latency[method as usize];
            h.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
            h.sum_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// A call ended with `result`: its outcome by `ok` when it succeeded, by its error's kind
    /// when it failed.
    #[inline]
    pub fn record_result<T>(
        &self,
        method: Method,
        started: Started,
        result: &Result<T, Error>,
        ok: impl FnOnce(&T) -> Outcome,
    ) {
        let outcome = match result {
            Ok(v) => ok(v),
            Err(e) => Outcome::of_error(e),
        };
        self.record(method, outcome, started);
    }

    /// Keys a multi-key read found and missed (a `get`'s key is counted by its outcome).
    #[inline]
    pub fn keys(&self, found: usize, missed: usize) {
        if self.enabled() {
            self.keys_found.fetch_add(found as u64, Ordering::Relaxed);
            self.keys_missed.fetch_add(missed as u64, Ordering::Relaxed);
        }
    }

    /// Bytes of keys and values sent, and of values received.
    #[inline]
    pub fn bytes(&self, sent: usize, received: usize) {
        if self.enabled() {
            self.bytes_sent.fetch_add(sent as u64, Ordering::Relaxed);
            self.bytes_received.fetch_add(received as u64, Ordering::Relaxed);
        }
    }

    /// Zero everything (what is recorded meanwhile may land on either side).
    pub fn reset(&self) {
        for row in &self.calls {
            for c in row {
                c.store(0, Ordering::Relaxed);
            }
        }
        for c in [&self.keys_found, &self.keys_missed, &self.bytes_sent, &self.bytes_received] {
            c.store(0, Ordering::Relaxed);
        }
        for h in &self.latency {
            for b in &h.buckets {
                b.store(0, Ordering::Relaxed);
            }
            h.sum_ns.store(0, Ordering::Relaxed);
        }
        self.since.store(unix_ns(), Ordering::Relaxed);
    }

    /// What is recorded now.
    pub fn snapshot(&self) -> Snapshot {
        let mut calls = Vec::new();
        for (m, row) in self.calls.iter().enumerate() {
            for (o, c) in row.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    calls.push((METHODS[m], OUTCOMES[o], n));
                }
            }
        }
        let mut latency = Vec::new();
        for (m, h) in self.latency.iter().enumerate() {
            let buckets: Vec<(usize, u64)> = h
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| (i, b.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect();
            if !buckets.is_empty() {
                let count = buckets.iter().map(|(_, n)| n).sum();
                latency.push(Latency { method: METHODS[m], count, sum_ns: h.sum_ns.load(Ordering::Relaxed), buckets });
            }
        }
        // A one-key read's key is its call's outcome (counted once, not twice, on the hot path).
        let get = &self.calls[Method::Get as usize];
        Snapshot {
            calls,
            keys_found: self.keys_found.load(Ordering::Relaxed) + get[Outcome::Hit as usize].load(Ordering::Relaxed),
            keys_missed: self.keys_missed.load(Ordering::Relaxed) + get[Outcome::Miss as usize].load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            latency,
            since: std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.since.load(Ordering::Relaxed)),
        }
    }
}

/// A call being recorded that ends elsewhere (an async call, on an I/O thread or the loop's).
pub struct Recording {
    metrics: Arc<Metrics>,
    method: Method,
    started: Started,
}

impl Metrics {
    /// A network call of `method` starts, to end with [`Recording::end`].
    #[inline]
    pub fn begin(self: &Arc<Self>, method: Method) -> Recording {
        Recording { metrics: self.clone(), method, started: self.start() }
    }
}

impl Recording {
    /// The call ended with `result` (its outcome by `ok` when it succeeded).
    #[inline]
    pub fn end<T>(self, result: &Result<T, Error>, ok: impl FnOnce(&T) -> Outcome) {
        self.metrics.record_result(self.method, self.started, result, ok);
    }

    /// The call ended with `outcome`.
    #[inline]
    pub fn end_as(self, outcome: Outcome) {
        self.metrics.record(self.method, outcome, self.started);
    }

    /// When the call started (for a failure recorded before it went out).
    pub fn started(&self) -> Started {
        self.started
    }

    /// The metrics recorded into (for keys and bytes).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// One method's latencies in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latency {
    pub method: &'static str,
    /// Calls timed.
    pub count: u64,
    pub sum_ns: u64,
    /// `(bucket, calls)` for the buckets that hold any; bucket `i` is `[lower(i), lower(i + 1))`.
    pub buckets: Vec<(usize, u64)>,
}

impl Latency {
    /// The latency (ns) below which `q` (0..=1) of the timed calls fell: the upper bound of the
    /// bucket that holds that rank.
    pub fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for &(i, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return lower(i + 1);
            }
        }
        self.buckets.last().map_or(0, |&(i, _)| lower(i + 1))
    }
}

/// A snapshot of one alias's metrics.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `(method, outcome, calls)`, nonzero only.
    pub calls: Vec<(&'static str, &'static str, u64)>,
    pub keys_found: u64,
    pub keys_missed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Per method that was timed.
    pub latency: Vec<Latency>,
    /// Since when (the first recording's setup, or the last reset).
    pub since: std::time::SystemTime,
}

/// Every alias's metrics in this process. Those of an alias from `settings.CACHES` stay for
/// the process's life; those of a backend made by hand go with it.
/// One alias's metrics, held weakly, and strongly too for a named alias.
type Entry = (Weak<Metrics>, Option<Arc<Metrics>>);

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The metrics of `alias` (made on first use; `backend` is its class path). With `named`
/// false (a backend made by hand, not from `settings.CACHES`), they are this backend's own and
/// go with it.
pub fn for_alias(alias: &str, backend: &str, named: bool) -> Arc<Metrics> {
    let mut registry = REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    registry.retain(|(weak, _)| weak.strong_count() > 0);
    if named
        && let Some(found) =
            registry.iter().filter_map(|(_, kept)| kept.as_ref()).find(|m| m.alias == alias && m.backend == backend)
    {
        return found.clone();
    }
    let made = Arc::new(Metrics::new(alias, backend));
    registry.push((Arc::downgrade(&made), named.then(|| made.clone())));
    made
}

/// Metrics of no alias, never listed: a shared client's own, before a backend views it under
/// its alias (`with_metrics`).
pub fn unlisted(backend: &str) -> Arc<Metrics> {
    Arc::new(Metrics::new("", backend))
}

/// Every alias's metrics alive now, named ones first, in the order they were made.
pub fn all() -> Vec<Arc<Metrics>> {
    let registry = REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out: Vec<Arc<Metrics>> = registry.iter().filter_map(|(_, kept)| kept.clone()).collect();
    out.extend(registry.iter().filter(|(_, kept)| kept.is_none()).filter_map(|(weak, _)| weak.upgrade()));
    out
}

/// Zero every alias's metrics (a forked child starts from zero: its parent's calls are the
/// parent's).
pub fn reset_all() {
    // (Never waits: a lock held by a thread of the parent would never be released here.)
    let Ok(registry) = REGISTRY.try_lock() else { return };
    let alive: Vec<Arc<Metrics>> = registry.iter().filter_map(|(weak, _)| weak.upgrade()).collect();
    drop(registry);
    for m in alive {
        m.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_in_the_bucket_whose_bounds_hold_it() {
        for ns in (0..5000).chain([1 << 20, (1 << 20) + 1, 999_999_999, 1 << 36, (1 << 37) - 1]) {
            let i = bucket(ns);
            assert!(lower(i) <= ns && ns < lower(i + 1), "{ns} in bucket {i} [{}, {})", lower(i), lower(i + 1));
            // Log-linear: a bucket is at most a quarter of its lower bound wide.
            assert!(i < SUB || lower(i + 1) - lower(i) <= lower(i) / 4);
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn a_snapshot_holds_what_was_recorded_and_a_reset_clears_it() {
        let m = for_alias("test-snapshot", "x.Y", false);
        let t = Started(Some(Instant::now()));
        m.record(Method::Get, Outcome::Hit, t);
        m.record(Method::Get, Outcome::Hit, Started(None));
        m.record(Method::Get, Outcome::Miss, t);
        m.record(Method::Set, Outcome::of_error(&Error::new(ErrorKind::Timeout, "x")), t);
        m.keys(3, 1);
        m.bytes(10, 20);
        let s = m.snapshot();
        assert_eq!(s.calls, vec![("get", "hit", 2), ("get", "miss", 1), ("set", "error_timeout", 1)]);
        // The gets' keys (2 found, 1 missed) with those counted apart.
        assert_eq!((s.keys_found, s.keys_missed, s.bytes_sent, s.bytes_received), (5, 2, 10, 20));
        let get = s.latency.iter().find(|l| l.method == "get").unwrap();
        assert_eq!(get.count, 2); // one of the hits was not timed
        m.set_enabled(false);
        m.record(Method::Get, Outcome::Hit, t);
        assert_eq!(m.snapshot().calls.len(), 3);
        m.reset();
        let s = m.snapshot();
        assert!(s.calls.is_empty() && s.latency.is_empty() && s.keys_found == 0);
    }

    #[test]
    fn a_quantile_is_the_upper_bound_of_the_bucket_of_its_rank() {
        let l =
            Latency { method: "get", count: 100, sum_ns: 0, buckets: vec![(bucket(1000), 90), (bucket(50_000), 10)] };
        assert_eq!(l.quantile(0.5), lower(bucket(1000) + 1));
        assert_eq!(l.quantile(0.9), lower(bucket(1000) + 1));
        assert_eq!(l.quantile(0.99), lower(bucket(50_000) + 1));
    }

    #[test]
    fn a_named_alias_has_one_metrics_for_the_process_and_an_unnamed_one_its_own() {
        let a = for_alias("test-named", "x.Y", true);
        let b = for_alias("test-named", "x.Y", true);
        assert!(Arc::ptr_eq(&a, &b));
        let c = for_alias("test-named", "x.Y", false);
        assert!(!Arc::ptr_eq(&a, &c));
        let weak = Arc::downgrade(&c);
        drop(c);
        assert!(weak.upgrade().is_none());
        assert!(all().iter().any(|m| Arc::ptr_eq(m, &a)));
    }
}
