//! `MemcachedClient`'s blocking calls: keys made and values encoded while attached, then one
//! detached exchange per call (every server of a multi-key call at once).

use pyo3::prelude::*;

use pyo3::exceptions::PyValueError;
use pyo3::types::{PyDict, PyList};

use super::{PyMemcachedClient, report_partial};
use crate::bindings::values::{MemcachedCodec, pack, unpack};
use crate::memcached::client::Stored;
use crate::memcached::protocol::Store;

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
        let key = Self::key(py, prefix, version, key)?;
        let client = &self.client;
        let found = py.detach(|| client.get(key.as_bytes())?.map(unpack).transpose())?;
        match found {
            Some((flags, data)) => MemcachedCodec::decode(py, flags, &data),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
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
        let mut originals = Vec::new();
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            made.push(Self::key(py, prefix, version, &key)?);
            originals.push(key);
        }
        let client = &self.client;
        let (found, errors) = py.detach(|| -> Result<_, crate::error::Error> {
            let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
            let (items, errors) = client.get_many(&refs)?;
            let items = items.into_iter().map(|item| item.map(unpack).transpose()).collect::<Result<Vec<_>, _>>()?;
            Ok((items, errors))
        })?;
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
        let key = Self::key(py, prefix, version, key)?;
        self.store_one(py, Store::Set, key, value, exptime, true)
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
        let key = Self::key(py, prefix, version, key)?;
        self.store_one(py, Store::Add, key, value, exptime, false)
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
        let key = Self::key(py, prefix, version, key)?;
        self.store_one(py, Store::Replace, key, value, exptime, false)
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
        let (originals, entries) = self.entries(py, mapping, prefix, version)?;
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
        })?;
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
        let key = Self::key(py, prefix, version, key)?;
        let client = &self.client;
        Ok(py.detach(|| client.delete(key.as_bytes()))?)
    }

    /// Delete every key, pipelined per server.
    fn delete_multi(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        keys: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            made.push(Self::key(py, prefix, version, &key?)?);
        }
        let client = &self.client;
        let errors = py.detach(|| {
            let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
            client.delete_many(&refs)
        })?;
        match errors.into_iter().next() {
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
        let key = Self::key(py, prefix, version, key)?;
        let (decr, magnitude) = Self::delta(delta)?;
        let client = &self.client;
        match py.detach(|| client.incr(key.as_bytes(), magnitude, decr))? {
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
        let key = Self::key(py, prefix, version, key)?;
        let client = &self.client;
        Ok(py.detach(|| client.touch(key.as_bytes(), exptime))?)
    }

    /// `flush_all` on every server.
    fn flush_all(&self, py: Python<'_>) -> PyResult<()> {
        let client = &self.client;
        match py.detach(|| client.clear())?.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}
