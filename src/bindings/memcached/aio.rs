//! `MemcachedClient`'s async calls: each returns an asyncio future of the running loop (see
//! `bindings::aio`); the request is written at once when a connection is ready.

use pyo3::prelude::*;

use pyo3::exceptions::PyValueError;
use pyo3::types::{PyDict, PyList};

use super::on_loop::{GetCall, start_get, try_get, unpacked};
use super::{PyMemcachedClient, report_partial};
use crate::bindings::aio::{self, Make, OFF_IO_FROM, none, off_loop, promise};
use crate::bindings::values::{MemcachedCodec, pack};
use crate::memcached::client::Stored;
use crate::memcached::protocol::Store;
use crate::metrics::{Method, Outcome, Started};

impl PyMemcachedClient {
    /// `store_one`'s async twin: the value compressed (if it is to be) off the loop's thread.
    #[allow(clippy::too_many_arguments)]
    fn astore<'py>(
        &self,
        py: Python<'py>,
        method: Method,
        cmd: Store,
        key: String,
        value: &Bound<'py, PyAny>,
        exptime: i64,
        delete_on_refusal: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(method);
        let encoded = self
            .codec
            .encode(py, value)
            .inspect_err(|_| self.metrics.record(method, Outcome::Error, Started::default()))?;
        recording.metrics().bytes(key.len() + encoded.1.len(), 0);
        let (future, promise) = promise(py)?;
        let (client, codec) = (self.client.clone(), self.codec.clone());
        let go = move |(flags, data): (u32, Vec<u8>)| {
            let (again, made) = (client.clone(), key.clone());
            client.store_then(
                cmd,
                key.as_bytes(),
                flags,
                exptime,
                &data,
                Box::new(move |stored| {
                    recording.end(&stored, |s| Outcome::stored(*s == Stored::Yes));
                    match stored {
                        // Django: make sure the key does not keep its old value (memcached's 1 MB limit).
                        Ok(Stored::Refused(_)) if delete_on_refusal => again.delete_then(
                            made.as_bytes(),
                            Box::new(move |r| promise.keep(r.map(|_| aio::value(false)))),
                        ),
                        stored => promise.keep(stored.map(|s| aio::value(s == Stored::Yes))),
                    }
                }),
            );
        };
        if codec.compresses(&encoded.1) {
            let large = encoded.1.len() >= OFF_IO_FROM;
            off_loop(large, move || go(pack(&codec, encoded)));
        } else {
            go(pack(&codec, encoded));
        }
        Ok(future)
    }
}

#[pymethods]
impl PyMemcachedClient {
    #[pyo3(signature = (prefix, version, key, default=None))]
    fn aget<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::Get);
        let key = self.key_for(py, Method::Get, recording.started(), prefix, version, key)?;
        let call = GetCall { key, default: default.map(Bound::unbind), recording, codec: self.codec.clone() };
        // One call at a time on this loop: read on the loop's own thread (see `on_loop`).
        let call = match try_get(&self.loop_conns, py, &self.client, call)? {
            Ok(future) => return Ok(future),
            Err(call) => call,
        };
        let (future, promise) = promise(py)?;
        start_get(&self.client, call, promise);
        Ok(future)
    }

    /// ``has_key``'s async twin.
    fn ahas_key<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::HasKey);
        let key = self.key_for(py, Method::HasKey, recording.started(), prefix, version, key)?;
        let (future, promise) = promise(py)?;
        self.client.get_then(
            key.as_bytes(),
            Box::new(move |found| {
                let found = found.map(|item| item.is_some());
                recording.end(&found, |f| Outcome::found(*f));
                promise.keep(found.map(aio::value));
            }),
        );
        Ok(future)
    }

    #[pyo3(signature = (prefix, version, keys, partial=false, on_failure=None))]
    fn aget_multi<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
        partial: bool,
        on_failure: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::GetMany);
        let mut originals = Vec::new();
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            made.push(self.key_for(py, Method::GetMany, recording.started(), prefix, version, &key)?);
            originals.push(key.unbind());
        }
        let sent = made.iter().map(String::len).sum::<usize>();
        let (future, promise) = promise(py)?;
        let on_failure = on_failure.map(Bound::unbind);
        let (metrics, codec) = (self.metrics.clone(), self.codec.clone());
        let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
        self.client.get_many_then(
            &refs,
            Box::new(move |found| {
                recording.end(&found, |(items, errors)| match errors.first() {
                    Some(e) if items.iter().all(Option::is_none) => Outcome::of_error(e),
                    _ => Outcome::found(items.iter().any(Option::is_some)),
                });
                if let Ok((items, _)) = &found {
                    let hits = items.iter().filter(|i| i.is_some()).count();
                    metrics.keys(hits, items.len() - hits);
                    metrics.bytes(sent, items.iter().flatten().map(|i| i.data.len()).sum());
                }
                match found {
                    Ok((items, errors)) => unpacked(codec, items, move |items| {
                        promise.keep(items.map(|items| {
                            Box::new(move |py: Python<'_>| {
                                report_partial(
                                    py,
                                    partial,
                                    on_failure.as_ref().map(|f| f.bind(py)),
                                    errors.into_iter().next(),
                                )?;
                                let out = PyDict::new(py);
                                for (original, item) in originals.iter().zip(items) {
                                    if let Some((flags, data)) = item {
                                        out.set_item(original, MemcachedCodec::decode(py, flags, &data)?)?;
                                    }
                                }
                                Ok(out.into_any().unbind())
                            }) as Make
                        }));
                    }),
                    Err(e) => promise.keep(Err(e)),
                }
            }),
        );
        Ok(future)
    }

    fn aset<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
        exptime: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = self.key_for(py, Method::Set, Started::default(), prefix, version, key)?;
        self.astore(py, Method::Set, Store::Set, key, value, exptime, true)
    }

    fn aadd<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
        exptime: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = self.key_for(py, Method::Add, Started::default(), prefix, version, key)?;
        self.astore(py, Method::Add, Store::Add, key, value, exptime, false)
    }

    fn areplace<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
        exptime: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = self.key_for(py, Method::Other, Started::default(), prefix, version, key)?;
        self.astore(py, Method::Other, Store::Replace, key, value, exptime, false)
    }

    #[pyo3(signature = (mapping, exptime=0, prefix=None, version=None, partial=false, on_failure=None))]
    #[allow(clippy::too_many_arguments)] // Django's set_many arguments plus the shared failure-policy pair
    fn aset_multi<'py>(
        &self,
        py: Python<'py>,
        mapping: &Bound<'py, PyAny>,
        exptime: i64,
        prefix: Option<Bound<'py, PyAny>>,
        version: Option<Bound<'py, PyAny>>,
        partial: bool,
        on_failure: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::SetMany);
        let (originals, entries) = self
            .entries(py, mapping, prefix, version)
            .inspect_err(|_| self.metrics.record(Method::SetMany, Outcome::InvalidKey, recording.started()))?;
        recording.metrics().bytes(entries.iter().map(|(k, (_, d))| k.len() + d.len()).sum(), 0);
        let (future, promise) = promise(py)?;
        let (client, codec) = (self.client.clone(), self.codec.clone());
        let on_failure = on_failure.map(Bound::unbind);
        let large = entries.iter().map(|(_, (_, d))| d.len()).sum::<usize>() >= OFF_IO_FROM;
        let compress = entries.iter().any(|(_, (_, d))| codec.compresses(d));
        let work = move || {
            let packed: Vec<(String, (u32, Vec<u8>))> =
                entries.into_iter().map(|(k, e)| (k, pack(&codec, e))).collect();
            let items: Vec<(&[u8], u32, &[u8])> =
                packed.iter().map(|(k, (f, d))| (k.as_bytes(), *f, d.as_slice())).collect();
            let again = client.clone();
            let keys: Vec<String> = packed.iter().map(|(k, _)| k.clone()).collect();
            client.set_many_then(
                &items,
                exptime,
                Box::new(move |results| {
                    recording.end(&results, |results| match results.iter().find_map(|r| r.as_ref().err()) {
                        Some(e) => Outcome::of_error(e),
                        None => Outcome::stored(results.iter().all(|r| matches!(r, Ok(Stored::Yes)))),
                    });
                    let results = match results {
                        Ok(results) => results,
                        Err(e) => return promise.keep(Err(e)),
                    };
                    let failure = results.iter().find_map(|r| r.as_ref().err().cloned());
                    if !partial && let Some(e) = failure {
                        return promise.keep(Err(e));
                    }
                    let stored: Vec<bool> = results.iter().map(|r| matches!(r, Ok(Stored::Yes))).collect();
                    let finish = move |r: Result<(), crate::error::Error>| {
                        promise.keep(r.map(|()| {
                            Box::new(move |py: Python<'_>| {
                                report_partial(py, partial, on_failure.as_ref().map(|f| f.bind(py)), failure)?;
                                let failed = PyList::empty(py);
                                for (original, ok) in originals.iter().zip(stored) {
                                    if !ok {
                                        failed.append(original)?;
                                    }
                                }
                                Ok(failed.into_any().unbind())
                            }) as Make
                        }));
                    };
                    // A refused item also loses its old value, as with `set`.
                    let refused: Vec<&[u8]> = keys
                        .iter()
                        .zip(&results)
                        .filter(|(_, r)| matches!(r, Ok(Stored::Refused(_))))
                        .map(|(k, _)| k.as_bytes())
                        .collect();
                    if refused.is_empty() {
                        return finish(Ok(()));
                    }
                    again.delete_many_then(
                        &refused,
                        Box::new(move |errors| finish(errors.and_then(|e| e.into_iter().next().map_or(Ok(()), Err)))),
                    );
                }),
            );
        };
        if compress {
            off_loop(large, work);
        } else {
            work();
        }
        Ok(future)
    }

    fn adelete<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::Delete);
        let key = self.key_for(py, Method::Delete, recording.started(), prefix, version, key)?;
        let (future, promise) = promise(py)?;
        self.client.delete_then(
            key.as_bytes(),
            Box::new(move |r| {
                recording.end(&r, |d| Outcome::acted(*d));
                promise.keep(r.map(aio::value));
            }),
        );
        Ok(future)
    }

    fn adelete_multi<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::DeleteMany);
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            made.push(self.key_for(py, Method::DeleteMany, recording.started(), prefix, version, &key?)?);
        }
        let (future, promise) = promise(py)?;
        let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
        self.client.delete_many_then(
            &refs,
            Box::new(move |errors| {
                recording.end(&errors, |errors| errors.first().map_or(Outcome::Ok, Outcome::of_error));
                promise.keep(errors.and_then(|e| e.into_iter().next().map_or(Ok(()), Err)).map(|()| none()));
            }),
        );
        Ok(future)
    }

    fn aincr<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        delta: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::Incr);
        let key = self.key_for(py, Method::Incr, recording.started(), prefix, version, key)?;
        let (decr, magnitude) = Self::delta(delta)?;
        let (future, promise) = promise(py)?;
        let made = key.clone();
        self.client.incr_then(
            key.as_bytes(),
            magnitude,
            decr,
            Box::new(move |r| {
                recording.end(&r, |n| Outcome::acted(n.is_some()));
                promise.keep(r.map(|found| {
                    Box::new(move |py: Python<'_>| match found {
                        Some(n) => n.into_pyobject(py).map(|n| n.into_any().unbind()).map_err(Into::into),
                        None => Err(PyValueError::new_err(format!("Key '{made}' not found"))),
                    }) as Make
                }));
            }),
        );
        Ok(future)
    }

    fn atouch<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        exptime: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::Touch);
        let key = self.key_for(py, Method::Touch, recording.started(), prefix, version, key)?;
        let (future, promise) = promise(py)?;
        self.client.touch_then(
            key.as_bytes(),
            exptime,
            Box::new(move |r| {
                recording.end(&r, |t| Outcome::acted(*t));
                promise.keep(r.map(aio::value));
            }),
        );
        Ok(future)
    }

    fn aflush_all<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::Clear);
        let (future, promise) = promise(py)?;
        self.client.clear_then(Box::new(move |errors| {
            recording.end(&errors, |errors| errors.first().map_or(Outcome::Ok, Outcome::of_error));
            promise.keep(errors.and_then(|e| e.into_iter().next().map_or(Ok(()), Err)).map(|()| none()));
        }));
        Ok(future)
    }
}
