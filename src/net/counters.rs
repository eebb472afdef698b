//! The client-side counters every network client keeps, in one shape.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since the client was made (shared by every backend instance on the client).
#[derive(Debug, Default)]
pub struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    sets: AtomicU64,
    failures: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Keys found by reads.
    pub hits: u64,
    /// Keys not found.
    pub misses: u64,
    /// Values stored.
    pub sets: u64,
    /// Calls that failed on a server (unreachable, timed out, out of step).
    pub failures: u64,
}

impl Counters {
    /// Count lookups: `hits` found, `misses` not found.
    pub fn lookups(&self, hits: usize, misses: usize) {
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.misses.fetch_add(misses as u64, Ordering::Relaxed);
    }

    /// Count values stored.
    pub fn sets(&self, n: usize) {
        self.sets.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Count a call that failed on a server.
    pub fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ClientStats {
        ClientStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            sets: self.sets.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}
