//! `MemcachedClient`'s blocking calls: keys made and values encoded while attached, then one
//! detached exchange per call (every server of a multi-key call at once).

use pyo3::prelude::*;

use pyo3::exceptions::PyValueError;
use pyo3::types::{PyDict, PyList};

use super::{PyMemcachedClient, report_partial};
use crate::bindings::values::{MemcachedCodec, pack, unpack_found};
use crate::memcached::client::Stored;
use crate::memcached::protocol::Store;
use crate::metrics::{Method, Outcome};

#[pymethods]
impl PyMemcachedClient {
    #[pyo3(signature = (prefix, version, key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Get, started, prefix, version, key)?;
        let (client, codec) = (&self.client, &self.codec);
        let found = py.detach(|| unpack_found(codec, client.get(key.as_bytes())?));
        self.metrics.record_result(Method::Get, started, &found, |f| Outcome::found(f.is_some()));
        if let Ok(f) = &found {
            self.metrics.bytes(key.len(), f.as_ref().map_or(0, |(_, d)| d.len()));
        }
        match found? {
            Some((flags, data)) => MemcachedCodec::decode(py, flags, &data),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    /// Whether a value is stored under the key (a get whose value is not decoded).
    fn has_key(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::HasKey, started, prefix, version, key)?;
        let client = &self.client;
        let found = py.detach(|| client.get(key.as_bytes()).map(|item| item.is_some()));
        self.metrics.record_result(Method::HasKey, started, &found, |f| Outcome::found(*f));
        Ok(found?)
    }

    /// The found keys (as given) and their values. Servers that fail are raised as
    /// `ServerDown` unless `partial` is set; then their keys read as misses, and `on_failure`
    /// (the backend's failure policy) is given the first server's error.
    #[pyo3(signature = (prefix, version, keys, partial=false, on_failure=None))]
    fn get_multi<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
        partial: bool,
        on_failure: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let started = self.metrics.start();
        let mut originals = Vec::new();
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            made.push(self.key_for(py, Method::GetMany, started, prefix, version, &key)?);
            originals.push(key);
        }
        let (client, codec) = (&self.client, &self.codec);
        let found = py.detach(|| -> Result<_, crate::error::Error> {
            let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
            let (items, errors) = client.get_many(&refs)?;
            let items = items.into_iter().map(|item| unpack_found(codec, item)).collect::<Result<Vec<_>, _>>()?;
            Ok((items, errors))
        });
        self.metrics.record_result(Method::GetMany, started, &found, |(items, errors)| match errors.first() {
            Some(e) if items.iter().all(Option::is_none) => Outcome::of_error(e),
            _ => Outcome::found(items.iter().any(Option::is_some)),
        });
        let (found, errors) = found?;
        let hits = found.iter().filter(|f| f.is_some()).count();
        self.metrics.keys(hits, found.len() - hits);
        let received = found.iter().flatten().map(|(_, d)| d.len()).sum();
        self.metrics.bytes(made.iter().map(String::len).sum(), received);
        report_partial(py, partial, on_failure.as_ref(), errors.into_iter().next())?;
        let out = PyDict::new(py);
        for (original, item) in originals.iter().zip(found) {
            if let Some((flags, data)) = item {
                out.set_item(original, MemcachedCodec::decode(py, flags, &data)?)?;
            }
        }
        Ok(out)
    }

    /// Store unconditionally; on a refusal (too large) the old value is deleted, as Django
    /// does. Whether it was stored.
    fn set(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        exptime: i64,
    ) -> PyResult<bool> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Set, started, prefix, version, key)?;
        self.store_one(py, Method::Set, started, Store::Set, key, value, exptime, true)
    }

    /// Store only if nothing is stored under the key.
    fn add(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        exptime: i64,
    ) -> PyResult<bool> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Add, started, prefix, version, key)?;
        self.store_one(py, Method::Add, started, Store::Add, key, value, exptime, false)
    }

    /// Store only if something is stored under the key.
    fn replace(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        exptime: i64,
    ) -> PyResult<bool> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Other, started, prefix, version, key)?;
        self.store_one(py, Method::Other, started, Store::Replace, key, value, exptime, false)
    }

    /// Store every item, pipelined per server; returns the keys (as given) that were not
    /// stored. A refused item also loses its old value, as with `set`. A server that fails is
    /// raised as `ServerDown` unless `partial` is set; then its keys are among those returned,
    /// and `on_failure` (the backend's failure policy) is given the first server's error.
    #[pyo3(signature = (mapping, exptime=0, prefix=None, version=None, partial=false, on_failure=None))]
    #[allow(clippy::too_many_arguments)] // Django's set_many arguments plus the shared failure-policy pair
    fn set_multi<'py>(
        &self,
        py: Python<'py>,
        mapping: &Bound<'py, PyAny>,
        exptime: i64,
        prefix: Option<Bound<'py, PyAny>>,
        version: Option<Bound<'py, PyAny>>,
        partial: bool,
        on_failure: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let started = self.metrics.start();
        let (originals, entries) = self
            .entries(py, mapping, prefix, version)
            .inspect_err(|_| self.metrics.record(Method::SetMany, Outcome::InvalidKey, started))?;
        let sent = entries.iter().map(|(k, (_, d))| k.len() + d.len()).sum();
        let (client, codec) = (&self.client, &self.codec);
        let outcome = py.detach(|| -> Result<(Vec<bool>, Option<crate::error::Error>), crate::error::Error> {
            let packed: Vec<(String, (u32, Vec<u8>))> = entries.into_iter().map(|(k, e)| (k, pack(codec, e))).collect();
            let items: Vec<(&[u8], u32, &[u8])> =
                packed.iter().map(|(k, (f, d))| (k.as_bytes(), *f, d.as_slice())).collect();
            let results = client.set_many(&items, exptime)?;
            let failure = results.iter().find_map(|r| r.as_ref().err().cloned());
            if !partial && let Some(e) = failure {
                return Err(e);
            }
            let refused: Vec<&[u8]> = items
                .iter()
                .zip(&results)
                .filter(|(_, r)| matches!(r, Ok(Stored::Refused(_))))
                .map(|((k, _, _), _)| *k)
                .collect();
            if !refused.is_empty() {
                client.delete_many(&refused)?;
            }
            Ok((results.iter().map(|r| matches!(r, Ok(Stored::Yes))).collect(), failure))
        });
        self.metrics.record_result(Method::SetMany, started, &outcome, |(stored, _)| {
            Outcome::stored(stored.iter().all(|s| *s))
        });
        self.metrics.bytes(sent, 0);
        let outcome = outcome?;
        let (outcome, failure) = outcome;
        report_partial(py, partial, on_failure.as_ref(), failure)?;
        let failed = PyList::empty(py);
        for (original, ok) in originals.iter().zip(outcome) {
            if !ok {
                failed.append(original)?;
            }
        }
        Ok(failed)
    }

    /// Delete; whether the key was there.
    fn delete(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Delete, started, prefix, version, key)?;
        let client = &self.client;
        let deleted = py.detach(|| client.delete(key.as_bytes()));
        self.metrics.record_result(Method::Delete, started, &deleted, |d| Outcome::acted(*d));
        Ok(deleted?)
    }

    /// Delete every key, pipelined per server.
    fn delete_multi(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        keys: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let started = self.metrics.start();
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            made.push(self.key_for(py, Method::DeleteMany, started, prefix, version, &key?)?);
        }
        let client = &self.client;
        let errors = py.detach(|| {
            let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
            client.delete_many(&refs)
        });
        self.metrics.record_result(Method::DeleteMany, started, &errors, |errors| {
            errors.first().map_or(Outcome::Ok, Outcome::of_error)
        });
        match errors?.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Add `delta` (negative: subtract) on the server, atomically. ValueError when the key is
    /// missing (Django's contract), TypeError when its value is not a number.
    fn incr(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        delta: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Incr, started, prefix, version, key)?;
        let (decr, magnitude) = Self::delta(delta)?;
        let client = &self.client;
        let sum = py.detach(|| client.incr(key.as_bytes(), magnitude, decr));
        self.metrics.record_result(Method::Incr, started, &sum, |n| Outcome::acted(n.is_some()));
        match sum? {
            Some(n) => Ok(n),
            None => Err(PyValueError::new_err(format!("Key '{key}' not found"))),
        }
    }

    /// Give the key a new expiry; whether it was there.
    fn touch(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        exptime: i64,
    ) -> PyResult<bool> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Touch, started, prefix, version, key)?;
        let client = &self.client;
        let touched = py.detach(|| client.touch(key.as_bytes(), exptime));
        self.metrics.record_result(Method::Touch, started, &touched, |t| Outcome::acted(*t));
        Ok(touched?)
    }

    /// `flush_all` on every server.
    fn flush_all(&self, py: Python<'_>) -> PyResult<()> {
        let started = self.metrics.start();
        let client = &self.client;
        let errors = py.detach(|| client.clear());
        self.metrics.record_result(Method::Clear, started, &errors, |errors| {
            errors.first().map_or(Outcome::Ok, Outcome::of_error)
        });
        match errors?.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
