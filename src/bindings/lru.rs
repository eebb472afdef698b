//! `LruStore`: the in-process store of `LRUObjectCache`, holding live Python objects (or
//! pickled copies of them) behind one mutex.
//!
//! Rules kept throughout: no Python code runs while the lock is held (pickling, unpickling,
//! `__add__`, `__hash__`, `__del__` all run outside it), and values the store lets go of are
//! dropped only after the lock is released, because a destructor may use the cache again.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList};

use super::keys::{make_key, warn_if_invalid};
use super::values::{pickle_dumps, pickle_loads};
use crate::lru::{Expiry, LruStore};
use crate::metrics::{self, Method, Metrics, Outcome};

type Store = LruStore<Py<PyAny>>;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Django's timeout (already resolved from `DEFAULT_TIMEOUT`) as an expiry.
fn expiry(timeout: &Bound<'_, PyAny>, now: f64) -> PyResult<Expiry> {
    if timeout.is_none() {
        return Ok(Expiry::Never);
    }
    Ok(Expiry::after(Some(timeout.extract::<f64>()?), now))
}

fn not_found(key: &str) -> PyErr {
    PyValueError::new_err(format!("Key '{key}' not found"))
}

/// `a + b` for two exact ints that fit in 64 bits: plain arithmetic that runs no Python code,
/// so it may run under the lock.
fn add_small_ints<'py>(a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> Option<i64> {
    let a = a.cast_exact::<PyInt>().ok()?.extract::<i64>().ok()?;
    let b = b.cast_exact::<PyInt>().ok()?.extract::<i64>().ok()?;
    a.checked_add(b)
}

/// The store. One per LOCATION (and storage mode) per process; Django's per-thread backend
/// instances share it.
#[pyclass(frozen, name = "LruStore", module = "django_rustcache._core")]
pub struct PyLruStore {
    inner: Arc<Mutex<Store>>,
    /// `Some(protocol)`: values are stored as pickles (LocMemCache's isolation).
    pickle_protocol: Option<i32>,
    /// The calls' metrics: this view's alias's (see `with_metrics`).
    metrics: Arc<Metrics>,
}

impl PyLruStore {
    /// Take the lock. A thread that has to wait does so detached from the interpreter, so the
    /// holder (or the garbage collector) is never blocked on this thread.
    fn lock(&self, py: Python<'_>) -> MutexGuard<'_, Store> {
        if let Some(guard) = self.inner.try_lock() {
            return guard;
        }
        py.detach(|| self.inner.lock())
    }

    fn encode(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.pickle_protocol {
            None => Ok(value.clone().unbind()),
            // LocMemCache's isolation: a pickled copy.
            Some(protocol) => Ok(pickle_dumps(py, value, protocol)?.unbind()),
        }
    }

    fn decode<'py>(&self, py: Python<'py>, stored: Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match self.pickle_protocol {
            None => Ok(stored.into_bound(py)),
            Some(_) => pickle_loads(py, stored.bind(py)),
        }
    }

    /// `incr`'s addition: see `incr`.
    fn add_to<'py>(&self, py: Python<'py>, key: &str, delta: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        for _ in 0..MAX_INCR_ATTEMPTS {
            let mut garbage = Vec::new();
            let mut store = self.lock(py);
            let Some(entry) = store.entry_mut(key, now(), &mut garbage) else {
                drop(store);
                drop(garbage);
                return Err(not_found(key));
            };
            if self.pickle_protocol.is_none()
                && let Some(sum) = add_small_ints(entry.value.bind(py), delta)
            {
                let sum = sum.into_pyobject(py)?.into_any();
                garbage.push(std::mem::replace(&mut entry.value, sum.clone().unbind()));
                drop(store);
                drop(garbage);
                return Ok(sum);
            }
            let current = entry.value.clone_ref(py);
            drop(store);
            drop(garbage);

            let sum = self.decode(py, current.clone_ref(py))?.add(delta)?;
            let encoded = self.encode(py, &sum)?;

            let mut garbage = Vec::new();
            let mut store = self.lock(py);
            match store.entry_mut(key, now(), &mut garbage) {
                None => {
                    drop(store);
                    return Err(not_found(key));
                }
                Some(entry) if entry.value.is(&current) => {
                    garbage.push(std::mem::replace(&mut entry.value, encoded));
                    drop(store);
                    return Ok(sum);
                }
                // Another thread changed the value while we were adding: start again.
                Some(_) => {}
            }
        }
        Err(PyRuntimeError::new_err(format!(
            "incr('{key}') gave up after {MAX_INCR_ATTEMPTS} attempts: the value changed during every addition \
             (does its __add__ write the same key?)"
        )))
    }
}

/// How often `incr` starts again when the value changed while it was adding (another thread,
/// or an `__add__` that writes the same key) before it gives up.
const MAX_INCR_ATTEMPTS: usize = 1000;

#[pymethods]
impl PyLruStore {
    #[new]
    #[pyo3(signature = (pickle_protocol=None))]
    fn new(pickle_protocol: Option<i32>) -> Self {
        let metrics = metrics::unlisted("django_rustcache.lru.LRUObjectCache");
        Self { inner: Arc::new(Mutex::new(Store::new())), pickle_protocol, metrics }
    }

    /// The same store, its calls recorded in `alias`'s metrics (`named`: an alias of
    /// `settings.CACHES`, whose metrics every view of that alias shares; else this view's own).
    fn with_metrics(&self, alias: &str, backend: &str, named: bool, enabled: bool) -> Self {
        let metrics = metrics::for_alias(alias, backend, named);
        metrics.set_enabled(enabled);
        Self { inner: self.inner.clone(), pickle_protocol: self.pickle_protocol, metrics }
    }

    /// This view's alias's metrics (see `bindings::metrics::snapshot` for the shape).
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::bindings::metrics::snapshot(py, &self.metrics)
    }

    /// Zero this view's alias's metrics.
    fn reset_metrics(&self) {
        self.metrics.reset();
    }

    /// The pickle protocol values are stored with, or None when live objects are stored.
    #[getter]
    fn pickle_protocol(&self) -> Option<i32> {
        self.pickle_protocol
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.lock(py).len()
    }

    /// Whether some thread holds the store's lock right now.
    fn locked(&self) -> bool {
        self.inner.is_locked()
    }

    #[pyo3(signature = (prefix, version, key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let started = self.metrics.start_sampled();
        let key = make_key(py, prefix, version, key)?;
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        let found = store.get(key.as_str(), now(), &mut garbage).map(|v| v.clone_ref(py));
        drop(store);
        drop(garbage);
        self.metrics.record(Method::Get, Outcome::found(found.is_some()), started);
        match found {
            Some(v) => self.decode(py, v),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn set(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<()> {
        let started = self.metrics.start_sampled();
        let key = make_key(py, prefix, version, key)?;
        let value = self.encode(py, value)?;
        let now = now();
        let expiry = expiry(timeout, now)?;
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        store.set(key, value, expiry, now, max_entries, cull_frequency, &mut garbage);
        drop(store);
        drop(garbage);
        self.metrics.record(Method::Set, Outcome::Stored, started);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<bool> {
        let started = self.metrics.start_sampled();
        let key = make_key(py, prefix, version, key)?;
        let value = self.encode(py, value)?;
        let now = now();
        let expiry = expiry(timeout, now)?;
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        let added = store.add(key, value, expiry, now, max_entries, cull_frequency, &mut garbage);
        drop(store);
        drop(garbage);
        self.metrics.record(Method::Add, Outcome::stored(added), started);
        Ok(added)
    }

    fn touch(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let started = self.metrics.start_sampled();
        let key = make_key(py, prefix, version, key)?;
        let now = now();
        let expiry = expiry(timeout, now)?;
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        let touched = store.touch(key.as_str(), expiry, now, &mut garbage);
        drop(store);
        drop(garbage);
        self.metrics.record(Method::Touch, Outcome::acted(touched), started);
        Ok(touched)
    }

    fn delete(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let started = self.metrics.start_sampled();
        let key = make_key(py, prefix, version, key)?;
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        let deleted = store.delete(key.as_str(), now(), &mut garbage);
        drop(store);
        drop(garbage);
        self.metrics.record(Method::Delete, Outcome::acted(deleted), started);
        Ok(deleted)
    }

    /// Whether a live entry is under the key. Does not change its recency.
    fn has_key(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let started = self.metrics.start_sampled();
        let key = make_key(py, prefix, version, key)?;
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        let found = store.contains(key.as_str(), now(), &mut garbage);
        drop(store);
        drop(garbage);
        self.metrics.record(Method::HasKey, Outcome::found(found), started);
        Ok(found)
    }

    /// Add `delta` to the value under the key, atomically, keeping its expiry; raise
    /// ValueError when there is none. Exact small ints are added under the lock; any other
    /// value is added outside it and swapped in only if nobody changed the entry meanwhile.
    fn incr<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        delta: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let started = self.metrics.start_sampled();
        let key = make_key(py, prefix, version, key)?;
        let sum = self.add_to(py, &key, delta);
        let outcome = match &sum {
            Ok(_) => Outcome::Ok,
            Err(e) if e.is_instance_of::<PyValueError>(py) => Outcome::Miss,
            Err(_) => Outcome::Error,
        };
        self.metrics.record(Method::Incr, outcome, started);
        sum
    }

    /// Look several keys up under one lock; a dict of the original keys that were found.
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let started = self.metrics.start_sampled();
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            let k = make_key(py, prefix, version, &key)?;
            made.push((key, k));
        }
        let now = now();
        let mut found = Vec::new();
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        for (i, (_, k)) in made.iter().enumerate() {
            if let Some(v) = store.get(k.as_str(), now, &mut garbage) {
                found.push((i, v.clone_ref(py)));
            }
        }
        drop(store);
        drop(garbage);
        self.metrics.record(Method::GetMany, Outcome::found(!found.is_empty()), started);
        self.metrics.keys(found.len(), made.len() - found.len());
        let out = PyDict::new(py);
        for (i, v) in found {
            out.set_item(&made[i].0, self.decode(py, v)?)?;
        }
        Ok(out)
    }

    /// Store every item of the mapping under one lock. Keys are made and values encoded
    /// first, so a bad key or an unpicklable value stores nothing. Returns the failed keys
    /// (always none).
    #[allow(clippy::too_many_arguments)]
    fn set_many<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
        timeout: &Bound<'py, PyAny>,
        max_entries: i64,
        cull_frequency: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let started = self.metrics.start_sampled();
        let mut items = Vec::new();
        let mut push = |k: Bound<'py, PyAny>, v: Bound<'py, PyAny>| -> PyResult<()> {
            items.push((make_key(py, prefix, version, &k)?, self.encode(py, &v)?));
            Ok(())
        };
        if let Ok(dict) = data.cast::<PyDict>() {
            for (k, v) in dict.iter() {
                push(k, v)?;
            }
        } else {
            for item in data.call_method0("items")?.try_iter()? {
                let (k, v) = item?.extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>()?;
                push(k, v)?;
            }
        }
        let now = now();
        let expiry = expiry(timeout, now)?;
        let mut garbage = Vec::with_capacity(items.len());
        let mut store = self.lock(py);
        for (k, v) in items {
            store.set(k, v, expiry, now, max_entries, cull_frequency, &mut garbage);
        }
        drop(store);
        drop(garbage);
        self.metrics.record(Method::SetMany, Outcome::Stored, started);
        Ok(PyList::empty(py))
    }

    fn delete_many(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        keys: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let started = self.metrics.start_sampled();
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            made.push(make_key(py, prefix, version, &key?)?);
        }
        let now = now();
        let mut garbage = Vec::with_capacity(made.len());
        let mut store = self.lock(py);
        for k in &made {
            store.delete(k.as_str(), now, &mut garbage);
        }
        drop(store);
        drop(garbage);
        self.metrics.record(Method::DeleteMany, Outcome::Ok, started);
        Ok(())
    }

    /// Move the live entry under made key `old` to made key `new`, keeping its expiry (for
    /// `incr_version`); false when there is none.
    fn rename(&self, py: Python<'_>, old: &str, new: &str, max_entries: i64, cull_frequency: i64) -> PyResult<bool> {
        warn_if_invalid(py, old)?;
        warn_if_invalid(py, new)?;
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        let moved = store.rename(old, new.to_owned(), now(), max_entries, cull_frequency, &mut garbage);
        drop(store);
        drop(garbage);
        Ok(moved)
    }

    fn clear(&self, py: Python<'_>) {
        let started = self.metrics.start_sampled();
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        store.clear(&mut garbage);
        drop(store);
        drop(garbage);
        self.metrics.record(Method::Clear, Outcome::Ok, started);
    }

    /// The expiry (seconds since the epoch, None for never) of the live entry under a made
    /// key; KeyError when there is none.
    fn expiry(&self, py: Python<'_>, key: &str) -> PyResult<Option<f64>> {
        let store = self.lock(py);
        let found = store.expiry(key, now());
        drop(store);
        found.ok_or_else(|| PyKeyError::new_err(key.to_owned()))
    }

    /// The live entries whose made key matches a glob `pattern` (redis's MATCH rules), most
    /// recently used first and not promoted: `skip` passed over, then at most `limit` as
    /// (made key, expiry or None, stored value); and how many matched in all. The values are
    /// as stored (pickled bytes when the store keeps pickles): nothing is unpickled.
    #[pyo3(signature = (pattern="*", skip=0, limit=100))]
    fn entries<'py>(
        &self,
        py: Python<'py>,
        pattern: &str,
        skip: usize,
        limit: usize,
    ) -> PyResult<(Bound<'py, PyList>, usize)> {
        let store = self.lock(py);
        let (found, matched) = store.scan(now(), |key| crate::keys::glob_match(pattern, key), skip, limit);
        let held: Vec<(String, Option<f64>, Py<PyAny>)> =
            found.into_iter().map(|(key, entry)| (key.to_owned(), entry.expires, entry.value.clone_ref(py))).collect();
        drop(store);
        Ok((PyList::new(py, held)?, matched))
    }

    /// Remove every expired entry now; returns how many entries are left.
    fn purge_expired(&self, py: Python<'_>) -> usize {
        let mut garbage = Vec::new();
        let mut store = self.lock(py);
        store.purge_expired(now(), &mut garbage);
        let left = store.len();
        drop(store);
        drop(garbage);
        left
    }

    /// The counters, and `size`: the number of entries held.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = self.lock(py);
        let s = store.stats();
        let size = store.len();
        drop(store);
        let out = PyDict::new(py);
        out.set_item("hits", s.hits)?;
        out.set_item("misses", s.misses)?;
        out.set_item("sets", s.sets)?;
        out.set_item("evictions", s.evictions)?;
        out.set_item("expirations", s.expirations)?;
        out.set_item("size", size)?;
        Ok(out)
    }

    fn reset_stats(&self, py: Python<'_>) {
        self.lock(py).reset_stats();
    }
}
