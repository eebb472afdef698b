//! A least-recently-used map with per-entry expiry and Django's cull rule.
//!
//! The store never drops a value itself while the caller holds its lock: every value it lets
//! go of (overwritten, deleted, expired, culled, cleared) is pushed onto a caller-supplied
//! `garbage` vector, so the caller can release the lock before running the values'
//! destructors (for Python objects a destructor is arbitrary code that may re-enter the cache).

use std::borrow::Borrow;
use std::hash::Hash;

use lru::LruCache;

/// When an entry stops being visible, as a wall-clock instant in seconds since the epoch
/// (Django's `time.time()` convention, so `_expire_info` reads the same as LocMemCache's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expiry {
    /// Never expires (Django's `timeout=None`).
    Never,
    /// Expires at this instant.
    At(f64),
    /// Already expired: Django's `timeout <= 0`, "do not store".
    Immediately,
}

impl Expiry {
    /// The expiry of a Django timeout in seconds, counted from `now`.
    pub fn after(timeout: Option<f64>, now: f64) -> Self {
        match timeout {
            None => Self::Never,
            Some(t) if t <= 0.0 || t.is_nan() => Self::Immediately,
            Some(t) => Self::At(now + t),
        }
    }
}

/// A stored value with its expiry (`None`: never).
#[derive(Debug)]
pub struct Entry<V> {
    /// The value.
    pub value: V,
    /// Seconds since the epoch at which the entry expires.
    pub expires: Option<f64>,
}

impl<V> Entry<V> {
    fn alive(&self, now: f64) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// Counters kept by the store since it was made (or since [`LruStore::reset_stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing, or an expired entry.
    pub misses: u64,
    /// Values stored (`set`, successful `add`, `incr`).
    pub sets: u64,
    /// Live entries removed to make room (culled).
    pub evictions: u64,
    /// Expired entries removed.
    pub expirations: u64,
}

/// The store. Not synchronised: the bindings wrap it in a mutex.
pub struct LruStore<V> {
    map: LruCache<String, Entry<V>>,
    stats: Stats,
}

impl<V> Default for LruStore<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> LruStore<V> {
    /// An empty store. The size limit is given with each write, not fixed here, because Django
    /// lets a backend's `_max_entries` change at run time.
    pub fn new() -> Self {
        Self { map: LruCache::unbounded(), stats: Stats::default() }
    }

    /// Number of entries, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Zero the counters.
    pub fn reset_stats(&mut self) {
        self.stats = Stats::default();
    }

    /// Remove `key` if it has expired; true if a live entry is left under it.
    fn live<Q>(&mut self, key: &Q, now: f64, garbage: &mut Vec<V>) -> bool
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.map.peek(key) {
            None => false,
            Some(e) if e.alive(now) => true,
            Some(_) => {
                if let Some(e) = self.map.pop(key) {
                    garbage.push(e.value);
                    self.stats.expirations += 1;
                }
                false
            }
        }
    }

    /// Look `key` up and mark it most recently used. Counts a hit or a miss.
    pub fn get<Q>(&mut self, key: &Q, now: f64, garbage: &mut Vec<V>) -> Option<&V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.live(key, now, garbage) {
            self.stats.hits += 1;
            self.map.get(key).map(|e| &e.value)
        } else {
            self.stats.misses += 1;
            None
        }
    }

    /// The live entry under `key`, marked most recently used; counts nothing. For
    /// read-modify-write operations (`incr`).
    pub fn entry_mut<Q>(&mut self, key: &Q, now: f64, garbage: &mut Vec<V>) -> Option<&mut Entry<V>>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.live(key, now, garbage) { self.map.get_mut(key) } else { None }
    }

    /// Whether a live entry is under `key`, without changing its recency.
    pub fn contains<Q>(&mut self, key: &Q, now: f64, garbage: &mut Vec<V>) -> bool
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.live(key, now, garbage)
    }

    /// The expiry of the live entry under `key` (`Some(None)`: never), without promoting it.
    pub fn expiry<Q>(&self, key: &Q, now: f64) -> Option<Option<f64>>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.peek(key).filter(|e| e.alive(now)).map(|e| e.expires)
    }

    /// Store `value` under `key`, most recently used. When a new key finds the store full
    /// (`len >= max_entries`), it culls first (see [`LruStore::cull`]). An `Immediately`
    /// expiry stores nothing and removes what was there, as Django's `timeout=0` does.
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &mut self,
        key: String,
        value: V,
        expiry: Expiry,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
        garbage: &mut Vec<V>,
    ) {
        let expires = match expiry {
            Expiry::Never => None,
            Expiry::At(at) => Some(at),
            Expiry::Immediately => {
                if let Some(e) = self.map.pop(&key) {
                    garbage.push(e.value);
                }
                garbage.push(value);
                return;
            }
        };
        self.stats.sets += 1;
        if let Some(e) = self.map.get_mut(&key) {
            garbage.push(std::mem::replace(&mut e.value, value));
            e.expires = expires;
            return;
        }
        if self.map.len() as i64 >= max_entries {
            self.cull(now, max_entries, cull_frequency, garbage);
        }
        self.map.put(key, Entry { value, expires });
    }

    /// Store `value` only if no live entry is under `key`; true if it was stored (or, with
    /// an `Immediately` expiry, would have been).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        key: String,
        value: V,
        expiry: Expiry,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
        garbage: &mut Vec<V>,
    ) -> bool {
        if self.live(key.as_str(), now, garbage) {
            garbage.push(value);
            return false;
        }
        self.set(key, value, expiry, now, max_entries, cull_frequency, garbage);
        true
    }

    /// Give the live entry under `key` a new expiry, without promoting it; true if there was
    /// one. An `Immediately` expiry removes it.
    pub fn touch<Q>(&mut self, key: &Q, expiry: Expiry, now: f64, garbage: &mut Vec<V>) -> bool
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.live(key, now, garbage) {
            return false;
        }
        match expiry {
            Expiry::Immediately => {
                if let Some(e) = self.map.pop(key) {
                    garbage.push(e.value);
                }
            }
            Expiry::Never | Expiry::At(_) => {
                if let Some(e) = self.map.peek_mut(key) {
                    e.expires = match expiry {
                        Expiry::At(at) => Some(at),
                        _ => None,
                    };
                }
            }
        }
        true
    }

    /// Remove `key`; true if a live entry was there.
    pub fn delete<Q>(&mut self, key: &Q, now: f64, garbage: &mut Vec<V>) -> bool
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.map.pop(key) {
            Some(e) => {
                let alive = e.alive(now);
                garbage.push(e.value);
                alive
            }
            None => false,
        }
    }

    /// Move the live entry under `from` to `to`, keeping its expiry; true if there was one.
    /// Whatever was under `to` is replaced.
    pub fn rename(
        &mut self,
        from: &str,
        to: String,
        now: f64,
        max_entries: i64,
        cull_frequency: i64,
        garbage: &mut Vec<V>,
    ) -> bool {
        if !self.live(from, now, garbage) {
            return false;
        }
        let Some(entry) = self.map.pop(from) else {
            return false;
        };
        let expiry = entry.expires.map_or(Expiry::Never, Expiry::At);
        self.set(to, entry.value, expiry, now, max_entries, cull_frequency, garbage);
        true
    }

    /// Remove every entry.
    pub fn clear(&mut self, garbage: &mut Vec<V>) {
        garbage.reserve(self.map.len());
        while let Some((_, e)) = self.map.pop_lru() {
            garbage.push(e.value);
        }
    }

    /// Django's cull: with `cull_frequency == 0` empty the store; otherwise remove
    /// `len / cull_frequency` entries, least recently used first. Expired entries are removed
    /// first, and when that alone brings the store under `max_entries` nothing live is culled.
    /// Unlike Django, it always removes at least enough to make room for one more entry, so
    /// `max_entries` holds even when it shrinks at run time or is below `cull_frequency`.
    pub fn cull(&mut self, now: f64, max_entries: i64, cull_frequency: i64, garbage: &mut Vec<V>) {
        if cull_frequency == 0 {
            let before = self.stats.evictions;
            let n = self.map.len() as u64;
            self.clear(garbage);
            self.stats.evictions = before + n;
            return;
        }
        self.purge_expired(now, garbage);
        let len = self.map.len() as i64;
        if len < max_entries {
            return;
        }
        // A negative frequency culls nothing in Django (its count comes out negative).
        let djangos = if cull_frequency > 0 { len / cull_frequency } else { 0 };
        let count = djangos.max(len + 1 - max_entries.max(0)).min(len);
        for _ in 0..count {
            match self.map.pop_lru() {
                Some((_, e)) => {
                    garbage.push(e.value);
                    self.stats.evictions += 1;
                }
                None => break,
            }
        }
    }

    /// The live entries whose key `matches`, most recently used first, without promoting
    /// them: `skip` of them passed over, then at most `limit`; and how many matched in all.
    pub fn scan(
        &self,
        now: f64,
        matches: impl Fn(&str) -> bool,
        skip: usize,
        limit: usize,
    ) -> (Vec<(&str, &Entry<V>)>, usize) {
        let mut found = Vec::new();
        let mut total = 0;
        for (key, entry) in &self.map {
            if entry.alive(now) && matches(key) {
                if total >= skip && found.len() < limit {
                    found.push((key.as_str(), entry));
                }
                total += 1;
            }
        }
        (found, total)
    }

    /// Remove every expired entry.
    pub fn purge_expired(&mut self, now: f64, garbage: &mut Vec<V>) {
        let dead: Vec<String> = self.map.iter().filter(|(_, e)| !e.alive(now)).map(|(k, _)| k.clone()).collect();
        for key in dead {
            if let Some(e) = self.map.pop(&key) {
                garbage.push(e.value);
                self.stats.expirations += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_lists_live_matching_entries_most_recent_first_without_promoting() {
        let mut s: LruStore<i32> = LruStore::new();
        let mut g = Vec::new();
        for (k, expiry) in [
            ("a1", Expiry::Never),
            ("b1", Expiry::Never),
            ("a2", Expiry::At(0.5)),
            ("a3", Expiry::Never),
            ("a4", Expiry::Never),
        ] {
            s.set(k.to_owned(), 1, expiry, 0.0, 100, 3, &mut g);
        }
        let (found, matched) = s.scan(1.0, |k| k.starts_with('a'), 1, 10);
        assert_eq!(found.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["a3", "a1"]);
        assert_eq!(matched, 3);
        let (found, _) = s.scan(1.0, |_| true, 0, 2);
        assert_eq!(found.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["a4", "a3"]);
        // Scanning did not promote: "a1" is still the least recently used.
        let (found, _) = s.scan(1.0, |_| true, 3, 10);
        assert_eq!(found.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["a1"]);
    }

    const BIG: i64 = 1_000_000;

    fn put(s: &mut LruStore<u32>, k: &str, v: u32, max: i64, freq: i64) {
        let mut g = Vec::new();
        s.set(k.to_string(), v, Expiry::Never, 0.0, max, freq, &mut g);
    }

    fn has(s: &mut LruStore<u32>, k: &str) -> bool {
        s.contains(k, 0.0, &mut Vec::new())
    }

    #[test]
    fn get_promotes_and_has_key_does_not() {
        let mut s = LruStore::new();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            put(&mut s, k, i as u32, 3, 3);
        }
        // "a" is the oldest; reading it makes "b" the oldest.
        assert_eq!(s.get("a", 0.0, &mut Vec::new()), Some(&0));
        assert!(has(&mut s, "b"));
        put(&mut s, "d", 3, 3, 3); // full: culls 3 / 3 = 1 entry, the least recently used
        assert!(!has(&mut s, "b"));
        assert!(has(&mut s, "a") && has(&mut s, "c") && has(&mut s, "d"));
        assert_eq!(s.stats().evictions, 1);
    }

    #[test]
    fn djangos_cull_counts() {
        // tests/cache/tests.py: 49 writes at MAX_ENTRIES=30 leave 29 (frequency 3) or 19 (0).
        for (freq, left) in [(3, 29), (0, 19)] {
            let mut s = LruStore::new();
            for i in 1..50 {
                put(&mut s, &format!("cull{i}"), i, 30, freq);
            }
            assert_eq!(s.len(), left, "frequency {freq}");
        }
    }

    #[test]
    fn max_entries_is_never_exceeded() {
        let mut s = LruStore::new();
        for i in 0..10_000 {
            put(&mut s, &i.to_string(), i, 100, 3);
            assert!(s.len() <= 100);
        }
    }

    #[test]
    fn overwrite_keeps_size_and_hands_back_old_value() {
        let mut s = LruStore::new();
        put(&mut s, "k", 1, BIG, 3);
        let mut g = Vec::new();
        s.set("k".into(), 2, Expiry::Never, 0.0, BIG, 3, &mut g);
        assert_eq!(g, vec![1]);
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("k", 0.0, &mut g), Some(&2));
    }

    #[test]
    fn expiry_and_zero_timeout() {
        let mut s = LruStore::new();
        let mut g = Vec::new();
        s.set("k".into(), 1, Expiry::after(Some(10.0), 100.0), 100.0, BIG, 3, &mut g);
        assert_eq!(s.get("k", 109.9, &mut g), Some(&1));
        assert_eq!(s.get("k", 110.0, &mut g), None);
        assert_eq!(s.stats().expirations, 1);
        assert_eq!(g, vec![1]);
        // timeout <= 0 removes what was there and stores nothing
        put(&mut s, "z", 5, BIG, 3);
        s.set("z".into(), 6, Expiry::after(Some(0.0), 0.0), 0.0, BIG, 3, &mut g);
        assert!(!has(&mut s, "z"));
        assert!(s.add("z".into(), 7, Expiry::Immediately, 0.0, BIG, 3, &mut g));
        assert!(!has(&mut s, "z"));
    }

    #[test]
    fn add_only_when_absent_or_expired() {
        let mut s = LruStore::new();
        let mut g = Vec::new();
        assert!(s.add("k".into(), 1, Expiry::At(5.0), 0.0, BIG, 3, &mut g));
        assert!(!s.add("k".into(), 2, Expiry::Never, 1.0, BIG, 3, &mut g));
        assert_eq!(g, vec![2]);
        assert!(s.add("k".into(), 3, Expiry::Never, 6.0, BIG, 3, &mut g));
        assert_eq!(s.get("k", 7.0, &mut g), Some(&3));
    }

    #[test]
    fn touch_delete_rename() {
        let mut s = LruStore::new();
        let mut g = Vec::new();
        s.set("k".into(), 1, Expiry::At(5.0), 0.0, BIG, 3, &mut g);
        assert!(s.touch("k", Expiry::Never, 1.0, &mut g));
        assert_eq!(s.expiry("k", 100.0), Some(None));
        assert!(!s.touch("missing", Expiry::Never, 1.0, &mut g));
        assert!(s.rename("k", "k2".into(), 100.0, BIG, 3, &mut g));
        assert!(!has(&mut s, "k"));
        assert!(s.delete("k2", 100.0, &mut g));
        assert!(!s.delete("k2", 100.0, &mut g));
        assert!(!s.touch("gone", Expiry::Never, 0.0, &mut g));
    }

    #[test]
    fn expired_entries_go_before_live_ones() {
        let mut s = LruStore::new();
        let mut g = Vec::new();
        s.set("old".into(), 0, Expiry::At(1.0), 0.0, 3, 3, &mut g);
        s.set("a".into(), 1, Expiry::Never, 0.0, 3, 3, &mut g);
        s.set("b".into(), 2, Expiry::Never, 0.0, 3, 3, &mut g);
        // Full at 3; "old" has expired, so removing it makes room and nothing live is culled.
        s.set("c".into(), 3, Expiry::Never, 2.0, 3, 3, &mut g);
        assert_eq!(s.len(), 3);
        assert_eq!(s.stats().evictions, 0);
        assert_eq!(s.stats().expirations, 1);
    }

    #[test]
    fn shrinking_max_entries_is_honoured_at_once() {
        let mut s = LruStore::new();
        for i in 0..20 {
            put(&mut s, &i.to_string(), i, 1000, 3);
        }
        put(&mut s, "new", 99, 10, 3);
        assert_eq!(s.len(), 10);
        // A limit below the frequency still holds (Django would cull 2 / 3 = 0 entries).
        let mut s = LruStore::new();
        for i in 0..10 {
            put(&mut s, &i.to_string(), i, 2, 3);
            assert!(s.len() <= 2);
        }
    }

    #[test]
    fn negative_max_entries_still_stores() {
        // Django's test_cull_delete_when_store_empty sets _max_entries = -1.
        let mut s = LruStore::new();
        put(&mut s, "k", 1, -1, 3);
        assert!(has(&mut s, "k"));
    }
}
