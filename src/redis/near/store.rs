//! The near cache's store: a process-local copy of what `get` read from redis, kept only while
//! the server's invalidation pushes are live (see `tracking.rs`), and dropped by them.
//!
//! Three rules make a local answer as fresh as the server's:
//! - **Nothing is served or kept while tracking is not live** (not yet subscribed, the
//!   invalidation connection lost): going down empties the store.
//! - **A fill keeps its answer only if nothing invalidated its key after the read began.** A
//!   read takes a [`Ticket`] (the invalidation sequence, and a mark on the key) before its
//!   request goes out; an invalidation of that key, or a flush, while the read is in flight
//!   makes the answer unkeepable.
//! - **Own writes drop the local copy when the server has answered** (the push that follows is
//!   then a no-op), so a process reads its own writes at once.
//!
//! Entries are bounded by count and by bytes (key, value and a fixed overhead each), least
//! recently used first out; an entry carries the server's TTL and is not served past it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;

/// What an entry costs beyond its key and value bytes (map slot, list links, bookkeeping).
const ENTRY_OVERHEAD: usize = 96;

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// The most entries held.
    pub max_entries: usize,
    /// The most bytes held (keys, values and each entry's overhead).
    pub max_bytes: usize,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A value held locally, as the server gave it.
    Value(Arc<[u8]>),
    /// The server had no such key, and nothing changed it since.
    Absent,
    /// Nothing held: ask the server.
    Unknown,
}

/// A read of the server in flight, for [`NearStore::fill`]: the invalidation sequence when it
/// began (`None`: tracking was not live, the answer is not kept).
#[derive(Debug)]
#[must_use = "a ticket is given back with fill() or drop_ticket()"]
pub struct Ticket(Option<u64>);

/// The counters of `stats()["near_cache"]`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NearStats {
    /// Lookups answered locally.
    pub hits: u64,
    /// Lookups that went to the server.
    pub misses: u64,
    /// Keys invalidated (by the server's pushes and by own writes).
    pub invalidations: u64,
    /// Times the whole store was emptied (tracking lost, FLUSHALL/FLUSHDB, a topology change).
    pub flushes: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now.
    pub bytes: u64,
}

struct Entry {
    /// `None`: the server had no such key.
    value: Option<Arc<[u8]>>,
    expires: Option<Instant>,
    size: usize,
}

/// A key being read from the server: how many reads, and the sequence of its last
/// invalidation while they were in flight.
struct Pending {
    readers: u32,
    invalidated: u64,
}

struct Inner {
    entries: LruCache<Vec<u8>, Entry>,
    bytes: usize,
    live: bool,
    /// Bumped by every invalidation and flush.
    seq: u64,
    /// The sequence of the last flush: a read that began before it keeps nothing.
    flushed: u64,
    pending: HashMap<Vec<u8>, Pending>,
}

/// The process-local store of one client (one per distinct settings in the process).
pub struct NearStore {
    limits: Limits,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
}

impl NearStore {
    /// An empty store, not live (it serves nothing until tracking says so).
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                bytes: 0,
                live: false,
                seq: 0,
                flushed: 0,
                pending: HashMap::new(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves nothing half-done that a flush does
        // not mend: recover and empty the store.
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                Self::flush_locked(&mut guard);
                self.inner.clear_poison();
                guard
            }
        }
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether tracking is live (entries may be served and kept).
    pub fn is_live(&self) -> bool {
        self.lock().live
    }

    /// Tracking went live (after its subscription was answered) or was lost. Either way the
    /// store starts empty: what it held may have missed an invalidation.
    pub fn set_live(&self, live: bool) {
        let mut inner = self.lock();
        if inner.live || !inner.entries.is_empty() {
            Self::flush_locked(&mut inner);
            self.flushes.fetch_add(1, Ordering::Relaxed);
        } else {
            inner.seq += 1;
            inner.flushed = inner.seq;
        }
        inner.live = live;
    }

    /// The local answer for `key`, counted as a hit or a miss.
    pub fn lookup(&self, key: &[u8], now: Instant) -> Found {
        let mut inner = self.lock();
        let found = match inner.entries.get(key) {
            Some(e) if e.expires.is_none_or(|at| at > now) => match &e.value {
                Some(v) => Found::Value(Arc::clone(v)),
                None => Found::Absent,
            },
            Some(_) => {
                if let Some(e) = inner.entries.pop(key) {
                    inner.bytes -= e.size;
                }
                Found::Unknown
            }
            None => Found::Unknown,
        };
        drop(inner);
        let counter = if found == Found::Unknown { &self.misses } else { &self.hits };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Count a lookup that could not be answered locally (its server's tracking not live).
    pub fn lookup_counted_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// A ticket whose read keeps nothing (its server's tracking is not live).
    pub fn no_ticket(&self) -> Ticket {
        Ticket(None)
    }

    /// Begin a read of `key` from the server (before its request goes out).
    pub fn ticket(&self, key: &[u8]) -> Ticket {
        let mut inner = self.lock();
        if !inner.live {
            return Ticket(None);
        }
        let seq = inner.seq;
        inner.pending.entry(key.to_vec()).or_insert(Pending { readers: 0, invalidated: 0 }).readers += 1;
        Ticket(Some(seq))
    }

    /// End a read begun with `ticket`: keep its answer (`None`: the key was absent; `ttl`: what
    /// is left of the key's life, `None` for none) unless the key was invalidated, or the store
    /// flushed, since the ticket was taken.
    pub fn fill(&self, key: &[u8], ticket: Ticket, value: Option<&[u8]>, ttl: Option<Duration>, now: Instant) {
        let mut inner = self.lock();
        let Some(began) = Self::release(&mut inner, key, ticket) else { return };
        if !inner.live || inner.flushed > began {
            return;
        }
        let size = key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD;
        if size > self.limits.max_bytes || self.limits.max_entries == 0 || ttl.is_some_and(|t| t.is_zero()) {
            return;
        }
        let entry = Entry { value: value.map(Arc::from), expires: ttl.map(|t| now + t), size };
        if let Some(old) = inner.entries.put(key.to_vec(), entry) {
            inner.bytes -= old.size;
        }
        inner.bytes += size;
        while inner.entries.len() > self.limits.max_entries || inner.bytes > self.limits.max_bytes {
            match inner.entries.pop_lru() {
                Some((_, e)) => inner.bytes -= e.size,
                None => break,
            }
        }
    }

    /// End a read begun with `ticket` that has no answer to keep (it failed).
    pub fn drop_ticket(&self, key: &[u8], ticket: Ticket) {
        let mut inner = self.lock();
        let _ = Self::release(&mut inner, key, ticket);
    }

    /// The ticket's sequence if its answer may still be kept.
    fn release(inner: &mut Inner, key: &[u8], ticket: Ticket) -> Option<u64> {
        let began = ticket.0?;
        let invalidated = match inner.pending.get_mut(key) {
            Some(p) => {
                p.readers -= 1;
                let at = p.invalidated;
                if p.readers == 0 {
                    inner.pending.remove(key);
                }
                at
            }
            None => 0,
        };
        (invalidated <= began).then_some(began)
    }

    /// Drop `keys`' local copies, and make the reads of them in flight keep nothing.
    pub fn invalidate<K: AsRef<[u8]>>(&self, keys: impl IntoIterator<Item = K>) {
        let mut inner = self.lock();
        let mut n = 0;
        for key in keys {
            let key = key.as_ref();
            n += 1;
            inner.seq += 1;
            let seq = inner.seq;
            if let Some(p) = inner.pending.get_mut(key) {
                p.invalidated = seq;
            }
            if let Some(e) = inner.entries.pop(key) {
                inner.bytes -= e.size;
            }
        }
        drop(inner);
        self.invalidations.fetch_add(n, Ordering::Relaxed);
    }

    /// Empty the store (FLUSHALL/FLUSHDB, a node changed, a write whose keys are unknown): the
    /// reads in flight keep nothing.
    pub fn flush(&self) {
        let mut inner = self.lock();
        Self::flush_locked(&mut inner);
        drop(inner);
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    fn flush_locked(inner: &mut Inner) {
        inner.entries.clear();
        inner.bytes = 0;
        inner.seq += 1;
        inner.flushed = inner.seq;
    }

    /// The counters, and what is held now.
    pub fn stats(&self) -> NearStats {
        let inner = self.lock();
        let (entries, bytes) = (inner.entries.len() as u64, inner.bytes as u64);
        drop(inner);
        NearStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }

    /// Zero the counters (not what is held).
    pub fn reset_stats(&self) {
        for c in [&self.hits, &self.misses, &self.invalidations, &self.flushes] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Limits = Limits { max_entries: 100, max_bytes: 1 << 20 };

    fn live(limits: Limits) -> NearStore {
        let store = NearStore::new(limits);
        store.set_live(true);
        store
    }

    fn read(store: &NearStore, key: &[u8], value: Option<&[u8]>, now: Instant) {
        let ticket = store.ticket(key);
        store.fill(key, ticket, value, None, now);
    }

    #[test]
    fn a_filled_value_and_a_filled_absence_are_served() {
        let (store, now) = (live(ROOMY), Instant::now());
        assert_eq!(store.lookup(b"k", now), Found::Unknown);
        read(&store, b"k", Some(b"v"), now);
        read(&store, b"gone", None, now);
        assert_eq!(store.lookup(b"k", now), Found::Value(Arc::from(&b"v"[..])));
        assert_eq!(store.lookup(b"gone", now), Found::Absent);
        let stats = store.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 2));
    }

    #[test]
    fn nothing_is_kept_or_served_while_not_live() {
        let (store, now) = (NearStore::new(ROOMY), Instant::now());
        read(&store, b"k", Some(b"v"), now);
        assert_eq!(store.lookup(b"k", now), Found::Unknown);
        store.set_live(true);
        read(&store, b"k", Some(b"v"), now);
        store.set_live(false);
        assert_eq!(store.lookup(b"k", now), Found::Unknown, "going down empties the store");
        assert_eq!(store.stats().entries, 0);
    }

    #[test]
    fn a_read_that_raced_an_invalidation_keeps_nothing() {
        let (store, now) = (live(ROOMY), Instant::now());
        let ticket = store.ticket(b"k");
        store.invalidate([b"k"]); // the write landed while the read was in flight
        store.fill(b"k", ticket, Some(b"old"), None, now);
        assert_eq!(store.lookup(b"k", now), Found::Unknown);
        // Another key's invalidation does not spoil the read.
        let ticket = store.ticket(b"k");
        store.invalidate([b"other"]);
        store.fill(b"k", ticket, Some(b"new"), None, now);
        assert_eq!(store.lookup(b"k", now), Found::Value(Arc::from(&b"new"[..])));
    }

    #[test]
    fn two_reads_of_one_key_each_answer_for_themselves() {
        let (store, now) = (live(ROOMY), Instant::now());
        let first = store.ticket(b"k");
        store.invalidate([b"k"]);
        let second = store.ticket(b"k"); // began after the invalidation: its answer is current
        store.fill(b"k", first, Some(b"old"), None, now);
        assert_eq!(store.lookup(b"k", now), Found::Unknown);
        store.fill(b"k", second, Some(b"new"), None, now);
        assert_eq!(store.lookup(b"k", now), Found::Value(Arc::from(&b"new"[..])));
    }

    #[test]
    fn a_flush_or_a_lost_subscription_spoils_reads_in_flight() {
        let (store, now) = (live(ROOMY), Instant::now());
        let ticket = store.ticket(b"k");
        store.flush();
        store.fill(b"k", ticket, Some(b"v"), None, now);
        assert_eq!(store.lookup(b"k", now), Found::Unknown);
        let ticket = store.ticket(b"k");
        store.set_live(false);
        store.set_live(true);
        store.fill(b"k", ticket, Some(b"v"), None, now);
        assert_eq!(store.lookup(b"k", now), Found::Unknown);
    }

    #[test]
    fn a_failed_read_gives_its_ticket_back() {
        let (store, now) = (live(ROOMY), Instant::now());
        let ticket = store.ticket(b"k");
        store.drop_ticket(b"k", ticket);
        assert!(store.lock().pending.is_empty());
        read(&store, b"k", Some(b"v"), now);
        assert!(store.lock().pending.is_empty());
    }

    #[test]
    fn the_servers_ttl_is_honoured() {
        let (store, now) = (live(ROOMY), Instant::now());
        let ticket = store.ticket(b"k");
        store.fill(b"k", ticket, Some(b"v"), Some(Duration::from_millis(50)), now);
        assert!(matches!(store.lookup(b"k", now + Duration::from_millis(49)), Found::Value(_)));
        assert_eq!(store.lookup(b"k", now + Duration::from_millis(50)), Found::Unknown);
        assert_eq!(store.stats().entries, 0, "an expired entry is dropped when met");
    }

    #[test]
    fn entry_and_byte_bounds_hold_least_recently_used_first_out() {
        let now = Instant::now();
        let store = live(Limits { max_entries: 3, max_bytes: 1 << 20 });
        for key in [b"a", b"b", b"c"] {
            read(&store, key, Some(b"v"), now);
        }
        let _ = store.lookup(b"a", now); // a is now the most recently used
        read(&store, b"d", Some(b"v"), now);
        assert_eq!(store.lookup(b"b", now), Found::Unknown);
        assert!(matches!(store.lookup(b"a", now), Found::Value(_)));
        assert_eq!(store.stats().entries, 3);

        let size = 1 + 100 + ENTRY_OVERHEAD;
        let store = live(Limits { max_entries: 100, max_bytes: 2 * size });
        for key in [b"x", b"y", b"z"] {
            read(&store, key, Some(&[0; 100]), now);
        }
        let stats = store.stats();
        assert_eq!((stats.entries, stats.bytes), (2, 2 * size as u64));
        assert_eq!(store.lookup(b"x", now), Found::Unknown);
        // A value larger than the whole budget is not kept (and evicts nothing).
        read(&store, b"huge", Some(&[0; 1000]), now);
        assert_eq!(store.stats().entries, 2);
    }

    #[test]
    fn an_invalidation_drops_the_copy_and_is_counted() {
        let (store, now) = (live(ROOMY), Instant::now());
        read(&store, b"k", Some(b"v"), now);
        store.invalidate([&b"k"[..], &b"never-held"[..]]);
        assert_eq!(store.lookup(b"k", now), Found::Unknown);
        let stats = store.stats();
        assert_eq!((stats.invalidations, stats.entries, stats.bytes), (2, 0, 0));
    }
}
