//! `RedisClient`'s async calls: each returns an asyncio future of the running loop (see
//! `bindings::aio`). One command starts at once (its request written on the caller's thread when
//! a connection is ready); a call made of several runs as a task, on the async runner.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::PyRedisClient;
use super::sync::int_of;
use crate::bindings::aio::{self, Make, none, promise, spawn};
use crate::bindings::args::arg_bytes;
use crate::bindings::keys::make_key;
use crate::bindings::values::{finish_async, finished, reply, unpacked};
use crate::redis::aio::{Async, Done};
use crate::redis::calls;
use crate::redis::commands::{Delete, Exists, Expire, FlushDb, Get, GetMany, Raw, Set, SetMany};

/// What settles `promise` with a command's answer made into Python by `make`.
fn keep<T: Send + 'static>(promise: aio::Promise, make: impl FnOnce(T) -> Make + Send + 'static) -> Done<T> {
    Box::new(move |r| promise.keep(r.map(make)))
}

#[pymethods]
impl PyRedisClient {
    /// ``execute``'s async twin.
    #[pyo3(signature = (*args, write=true, idempotent=false, node=None))]
    fn aexecute<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Bound<'py, PyAny>>,
        write: bool,
        idempotent: bool,
        node: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = args.iter().map(arg_bytes).collect::<PyResult<Vec<_>>>()?;
        let raw = Raw::new(args, write, idempotent, node)?;
        let runner = Async(self.client.clone());
        spawn(py, async move {
            let value = calls::execute(&runner, raw).await?;
            Ok(Box::new(move |py: Python<'_>| reply(py, value).map(Bound::unbind)) as Make)
        })
    }

    #[pyo3(signature = (prefix, version, key, default=None))]
    fn aget<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let (future, promise) = promise(py)?;
        let codec = self.codec.clone();
        let default = default.map(Bound::unbind);
        self.client.start(
            Get(key),
            Box::new(move |found| match found {
                Ok(Some(data)) => unpacked(&codec.clone(), vec![Some(data)], move |mut values| {
                    let data = values.pop().flatten().unwrap_or_default();
                    promise.keep(Ok(Box::new(move |py: Python<'_>| codec.decode(py, &data).map(Bound::unbind))));
                }),
                Ok(None) => promise.keep(Ok(Box::new(move |py: Python<'_>| Ok(default.unwrap_or_else(|| py.None()))))),
                Err(e) => promise.keep(Err(e)),
            }),
        );
        Ok(future)
    }

    /// ``get_many``'s async twin.
    #[pyo3(signature = (prefix, version, keys, partial=false, on_failure=None))]
    fn aget_many<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
        partial: bool,
        on_failure: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = (partial, on_failure);
        let (made, originals) = Self::made_keys(py, prefix, version, keys)?;
        let (future, promise) = promise(py)?;
        if made.is_empty() {
            promise.keep(Ok(Box::new(|py: Python<'_>| Ok(PyDict::new(py).into_any().unbind()))));
            return Ok(future);
        }
        let originals: Vec<Py<PyAny>> = originals.into_iter().map(Bound::unbind).collect();
        let codec = self.codec.clone();
        self.client.start(
            GetMany(made),
            Box::new(move |found| match found {
                Ok(found) => unpacked(&codec.clone(), found, move |values| {
                    promise.keep(Ok(Box::new(move |py: Python<'_>| {
                        let out = PyDict::new(py);
                        for (original, value) in originals.iter().zip(values) {
                            if let Some(data) = value {
                                out.set_item(original, codec.decode(py, &data)?)?;
                            }
                        }
                        Ok(out.into_any().unbind())
                    })));
                }),
                Err(e) => promise.keep(Err(e)),
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
        timeout: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let encoded = self.codec.encode(py, value)?;
        let (future, promise) = promise(py)?;
        let client = self.client.clone();
        if timeout == Some(0) {
            client.start(Delete(vec![key]), keep(promise, |_| none()));
            return Ok(future);
        }
        finished(&self.codec, vec![encoded], move |data| match data {
            Ok(mut data) => {
                let value = data.pop().unwrap_or_default();
                client.start(Set { key, value, ttl: timeout, nx: false, xx: false }, keep(promise, |_| none()));
            }
            Err(e) => promise.keep(Err(e)),
        });
        Ok(future)
    }

    fn aadd<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
        timeout: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let encoded = self.codec.encode(py, value)?;
        let (runner, codec) = (Async(self.client.clone()), self.codec.clone());
        spawn(py, async move {
            let value = finish_async(codec, encoded).await?;
            Ok(aio::value(calls::add(&runner, key, value, timeout, timeout == Some(0)).await?))
        })
    }

    fn atouch<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        timeout: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let (future, promise) = promise(py)?;
        self.client.start(Expire { key, seconds: timeout }, keep(promise, aio::value));
        Ok(future)
    }

    fn adelete<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let (future, promise) = promise(py)?;
        self.client.start(Delete(vec![key]), keep(promise, |n| aio::value(n > 0)));
        Ok(future)
    }

    fn ahas_key<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let (future, promise) = promise(py)?;
        self.client.start(Exists(key), keep(promise, aio::value));
        Ok(future)
    }

    fn aincr<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        delta: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let runner = Async(self.client.clone());
        spawn(py, async move {
            let digits = calls::increment(&runner, key, delta).await?;
            Ok(Box::new(move |py: Python<'_>| int_of(py, &digits).map(Bound::unbind)) as Make)
        })
    }

    /// ``set_many``'s async twin.
    #[pyo3(signature = (mapping, timeout, prefix=None, version=None, partial=false, on_failure=None))]
    #[allow(clippy::too_many_arguments)] // Django's set_many arguments plus the shared failure-policy pair
    fn aset_many<'py>(
        &self,
        py: Python<'py>,
        mapping: &Bound<'py, PyAny>,
        timeout: Option<u64>,
        prefix: Option<Bound<'py, PyAny>>,
        version: Option<Bound<'py, PyAny>>,
        partial: bool,
        on_failure: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = (partial, on_failure);
        let (keys, values) = self.encode_items(py, mapping, prefix, version)?;
        let (future, promise) = promise(py)?;
        let empty_list = || Box::new(|py: Python<'_>| Ok(PyList::empty(py).into_any().unbind())) as Make;
        if keys.is_empty() {
            promise.keep(Ok(empty_list()));
            return Ok(future);
        }
        let client = self.client.clone();
        if timeout == Some(0) {
            client.start(Delete(keys), keep(promise, move |_| empty_list()));
            return Ok(future);
        }
        finished(&self.codec, values, move |data| match data {
            Ok(values) => client.start(SetMany { keys, values, ttl: timeout }, keep(promise, move |()| empty_list())),
            Err(e) => promise.keep(Err(e)),
        });
        Ok(future)
    }

    /// ``delete_many``'s async twin: how many keys were there.
    fn adelete_many<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (made, _) = Self::made_keys(py, prefix, version, keys)?;
        let (future, promise) = promise(py)?;
        if made.is_empty() {
            promise.keep(Ok(aio::value(0u64)));
            return Ok(future);
        }
        self.client.start(Delete(made), keep(promise, aio::value));
        Ok(future)
    }

    fn arename<'py>(&self, py: Python<'py>, source: &str, target: &str) -> PyResult<Bound<'py, PyAny>> {
        let (from, to) = (source.as_bytes().to_vec(), target.as_bytes().to_vec());
        let runner = Async(self.client.clone());
        spawn(py, async move {
            calls::rename(&runner, from, to).await?;
            Ok(none())
        })
    }

    fn aclear<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (future, promise) = promise(py)?;
        self.client.start(FlushDb, keep(promise, |()| aio::value(true)));
        Ok(future)
    }
}
