//! `RedisClient`'s async calls: each returns an asyncio future of the running loop (see
//! `bindings::aio`). One command starts at once (its request written on the caller's thread when
//! a connection is ready); a call made of several runs as a task, on the async runner.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::PyRedisClient;
use super::on_loop::{GetCall, counted, start_get, try_get};
use super::sync::int_of;
use crate::bindings::aio::{self, Make, none, off_loop, promise, ready, spawn};
use crate::bindings::args::arg_bytes;
use crate::bindings::values::{finish_async, finished, reply, unpacked};
use crate::error::Error;
use crate::metrics::{Method, Outcome, Recording};
use crate::redis::aio::{Async, Done};
use crate::redis::calls;
use crate::redis::client::Client;
use crate::redis::commands::{Delete, Exists, Expire, FlushDb, GetMany, Raw, Set, SetMany};
use crate::redis::near::{Begun, Found, GetFresh, GetFreshMany, Near, Ticket};
use std::sync::Arc;
use std::time::Instant;

/// What settles `promise` with a command's answer made into Python by `make`, the call recorded
/// with the outcome `outcome` gives its answer.
fn keep<T: Send + 'static>(
    promise: aio::Promise,
    recording: Recording,
    outcome: impl FnOnce(&T) -> Outcome + Send + 'static,
    make: impl FnOnce(T) -> Make + Send + 'static,
) -> Done<T> {
    Box::new(move |r| {
        recording.end(&r, outcome);
        promise.keep(r.map(make));
    })
}

/// The fill's ticket for an async read of `key`, without waiting: a server not subscribed yet is
/// subscribed on a blocking thread (this read keeps nothing).
fn near_ticket(client: &Arc<Client>, near: &Near, key: &[u8]) -> Result<Ticket, Error> {
    let topology = client.topology();
    if topology.needs_map() {
        return Ok(near.store().no_ticket());
    }
    match near.begin_now(topology, key)? {
        Begun::Ticket(ticket) => Ok(ticket),
        Begun::Subscribe => {
            let (client, key) = (client.clone(), key.to_vec());
            off_loop(true, move || {
                if let (Some(near), Ok(node)) = (client.near(), client.topology().node_of(&key)) {
                    let pool = &node.pools()[0];
                    // A refusal is kept by the near cache: the next call raises it.
                    let _ = near.subscribe(pool, pool.deadline());
                }
            });
            Ok(near.store().no_ticket())
        }
    }
}

impl PyRedisClient {
    /// An async `get_many` through the near cache: the keys it holds answered locally (all of
    /// them: a future already done), the others read with their TTLs and kept.
    fn aget_many_near<'py>(
        &self,
        py: Python<'py>,
        made: Vec<Vec<u8>>,
        originals: Vec<Bound<'py, PyAny>>,
        future: Bound<'py, PyAny>,
        promise: aio::Promise,
        recording: Recording,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(near) = self.client.near() else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("no near cache"));
        };
        let found = near.lookup_many(self.client.topology(), &made, Instant::now());
        let (asked, sent) = (made.len(), made.iter().map(Vec::len).sum::<usize>());
        let out = PyDict::new(py);
        let mut missed = Vec::new();
        let mut received = 0;
        for ((original, local), key) in originals.into_iter().zip(found).zip(made) {
            match local {
                Found::Value(data) => {
                    received += data.len();
                    out.set_item(original, self.codec.decode(py, &data)?)?;
                }
                Found::Absent => {}
                Found::Unknown => missed.push((original.unbind(), key)),
            }
        }
        let local_hits = out.len();
        if missed.is_empty() {
            counted_many(recording, &Ok(()), asked, local_hits, sent, received);
            drop(promise);
            future.call_method1("set_result", (out,))?;
            return Ok(future);
        }
        let mut tickets = Vec::with_capacity(missed.len());
        for (_, key) in &missed {
            match near_ticket(&self.client, near, key) {
                Ok(ticket) => tickets.push(ticket),
                Err(e) => {
                    for ((_, key), ticket) in missed.iter().zip(tickets) {
                        near.store().drop_ticket(key, ticket);
                    }
                    return Err(e.into());
                }
            }
        }
        let (originals, keys): (Vec<Py<PyAny>>, Vec<Vec<u8>>) = missed.into_iter().unzip();
        let (client, codec) = (self.client.clone(), self.codec.clone());
        let local = out.unbind();
        let read = GetFreshMany(keys.clone());
        self.client.start(
            read,
            Box::new(move |found| match found {
                Ok(found) => {
                    let hits = local_hits + found.iter().filter(|(v, _)| v.is_some()).count();
                    let received = received + found.iter().filter_map(|(v, _)| v.as_ref().map(Vec::len)).sum::<usize>();
                    counted_many(recording, &Ok(()), asked, hits, sent, received);
                    let ttls: Vec<_> = found.iter().map(|(_, ttl)| *ttl).collect();
                    let values = found.into_iter().map(|(value, _)| value).collect();
                    unpacked(&codec.clone(), values, move |values| {
                        if let Some(near) = client.near() {
                            for (((key, ticket), value), ttl) in keys.iter().zip(tickets).zip(&values).zip(ttls) {
                                near.fill(key, ticket, value.as_deref(), ttl);
                            }
                        }
                        promise.keep(Ok(Box::new(move |py: Python<'_>| {
                            let out = local.into_bound(py);
                            for (original, value) in originals.iter().zip(values) {
                                if let Some(data) = value {
                                    out.set_item(original, codec.decode(py, &data)?)?;
                                }
                            }
                            Ok(out.into_any().unbind())
                        })));
                    });
                }
                Err(e) => {
                    counted_many(recording, &Err(e.clone()), asked, 0, sent, 0);
                    if let Some(near) = client.near() {
                        for (key, ticket) in keys.iter().zip(tickets) {
                            near.store().drop_ticket(key, ticket);
                        }
                    }
                    promise.keep(Err(e));
                }
            }),
        );
        Ok(future)
    }

    /// An async `get` the near cache could not answer: GET+PTTL from the key's primary, kept
    /// unless the key was invalidated meanwhile.
    fn aget_fill<'py>(
        &self,
        py: Python<'py>,
        key: Vec<u8>,
        default: Option<Bound<'py, PyAny>>,
        recording: Recording,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(near) = self.client.near() else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("no near cache"));
        };
        let ticket = near_ticket(&self.client, near, &key)?;
        let (future, promise) = promise(py)?;
        let (client, codec) = (self.client.clone(), self.codec.clone());
        let default = default.map(Bound::unbind);
        let read = GetFresh(key.clone());
        self.client.start(
            read,
            Box::new(move |found| match found {
                Ok((value, ttl)) => {
                    counted(recording, key.len(), &Ok(value.as_ref()));
                    let values = vec![value];
                    unpacked(&codec.clone(), values, move |mut values| {
                        let value = values.pop().flatten();
                        if let Some(near) = client.near() {
                            near.fill(&key, ticket, value.as_deref(), ttl);
                        }
                        promise.keep(Ok(match value {
                            Some(data) => Box::new(move |py: Python<'_>| codec.decode(py, &data).map(Bound::unbind)),
                            None => Box::new(move |py: Python<'_>| Ok(default.unwrap_or_else(|| py.None()))),
                        }));
                    });
                }
                Err(e) => {
                    counted(recording, key.len(), &Err(e.clone()));
                    if let Some(near) = client.near() {
                        near.store().drop_ticket(&key, ticket);
                    }
                    promise.keep(Err(e));
                }
            }),
        );
        Ok(future)
    }
}

#[pymethods]
impl PyRedisClient {
    /// ``execute``'s async twin.
    #[pyo3(signature = (*args, write=true, idempotent=false, node=None, op=None))]
    fn aexecute<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Bound<'py, PyAny>>,
        write: bool,
        idempotent: bool,
        node: Option<usize>,
        op: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = args.iter().map(arg_bytes).collect::<PyResult<Vec<_>>>()?;
        let recording = self.metrics.begin(Self::op(op, args.first().map(Vec::as_slice)));
        recording.metrics().bytes(args.iter().map(Vec::len).sum(), 0);
        let raw = Raw::new(args, write, idempotent, node)?;
        let runner = Async(self.client.clone());
        spawn(py, async move {
            let value = calls::execute(&runner, raw).await;
            recording.end(&value, |_| Outcome::Ok);
            let value = value?;
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
        let key = self.key_for(py, Method::Get, prefix, version, key)?;
        if let Some(near) = self.client.near().filter(|near| near.covers(&key)) {
            let started = self.metrics.start_sampled();
            match near.lookup(self.client.topology(), &key, Instant::now()) {
                Found::Value(data) => {
                    self.metrics.record(Method::Get, Outcome::Hit, started);
                    self.metrics.bytes(key.len(), data.len());
                    return ready(py, self.codec.decode(py, &data)?);
                }
                Found::Absent => {
                    self.metrics.record(Method::Get, Outcome::Miss, started);
                    self.metrics.bytes(key.len(), 0);
                    return ready(py, default.unwrap_or_else(|| py.None().into_bound(py)));
                }
                Found::Unknown => return self.aget_fill(py, key, default, self.metrics.begin(Method::Get)),
            }
        }
        let recording = self.metrics.begin(Method::Get);
        let call = GetCall { key, default: default.map(Bound::unbind), recording };
        // One call at a time on this loop: read on the loop's own thread (see `on_loop`).
        let call = match try_get(&self.loop_conns, py, &self.client, &self.codec, call)? {
            Ok(future) => return Ok(future),
            Err(call) => call,
        };
        let (future, promise) = promise(py)?;
        start_get(&self.client, &self.codec, call, promise);
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
        let recording = self.metrics.begin(Method::GetMany);
        let (made, originals) = Self::made_keys(py, prefix, version, keys)
            .inspect_err(|_| self.metrics.record(Method::GetMany, Outcome::InvalidKey, recording.started()))?;
        let (future, promise) = promise(py)?;
        if made.is_empty() {
            promise.keep(Ok(Box::new(|py: Python<'_>| Ok(PyDict::new(py).into_any().unbind()))));
            return Ok(future);
        }
        if self.client.near().is_some() {
            return self.aget_many_near(py, made, originals, future, promise, recording);
        }
        let originals: Vec<Py<PyAny>> = originals.into_iter().map(Bound::unbind).collect();
        let codec = self.codec.clone();
        let (asked, sent) = (made.len(), made.iter().map(Vec::len).sum::<usize>());
        self.client.start(
            GetMany(made),
            Box::new(move |found| match found {
                Ok(found) => {
                    let hits = found.iter().flatten().count();
                    counted_many(recording, &Ok(()), asked, hits, sent, found.iter().flatten().map(Vec::len).sum());
                    unpacked(&codec.clone(), found, move |values| {
                        promise.keep(Ok(Box::new(move |py: Python<'_>| {
                            let out = PyDict::new(py);
                            for (original, value) in originals.iter().zip(values) {
                                if let Some(data) = value {
                                    out.set_item(original, codec.decode(py, &data)?)?;
                                }
                            }
                            Ok(out.into_any().unbind())
                        })));
                    });
                }
                Err(e) => {
                    counted_many(recording, &Err(e.clone()), asked, 0, sent, 0);
                    promise.keep(Err(e));
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
        timeout: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::Set);
        let key = self.key_for(py, Method::Set, prefix, version, key)?;
        let encoded = self.encode_for(py, Method::Set, value)?;
        let (future, promise) = promise(py)?;
        let client = self.client.clone();
        if timeout == Some(0) {
            client.start(Delete(vec![key]), keep(promise, recording, |_| Outcome::Stored, |_| none()));
            return Ok(future);
        }
        finished(&self.codec, vec![encoded], move |data| match data {
            Ok(mut data) => {
                let value = data.pop().unwrap_or_default();
                recording.metrics().bytes(key.len() + value.len(), 0);
                let set = Set { key, value, ttl: timeout, nx: false, xx: false };
                client.start(set, keep(promise, recording, |_| Outcome::Stored, |_| none()));
            }
            Err(e) => {
                recording.end(&Err::<(), _>(e.clone()), |()| Outcome::Ok);
                promise.keep(Err(e));
            }
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
        let recording = self.metrics.begin(Method::Add);
        let key = self.key_for(py, Method::Add, prefix, version, key)?;
        let encoded = self.encode_for(py, Method::Add, value)?;
        let (runner, codec) = (Async(self.client.clone()), self.codec.clone());
        spawn(py, async move {
            let added = match finish_async(codec, encoded).await {
                Ok(value) => calls::add(&runner, key, value, timeout, timeout == Some(0)).await,
                Err(e) => Err(e),
            };
            recording.end(&added, |a| Outcome::stored(*a));
            Ok(aio::value(added?))
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
        let recording = self.metrics.begin(Method::Touch);
        let key = self.key_for(py, Method::Touch, prefix, version, key)?;
        let (future, promise) = promise(py)?;
        self.client
            .start(Expire { key, seconds: timeout }, keep(promise, recording, |t| Outcome::acted(*t), aio::value));
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
        let key = self.key_for(py, Method::Delete, prefix, version, key)?;
        let (future, promise) = promise(py)?;
        self.client
            .start(Delete(vec![key]), keep(promise, recording, |n| Outcome::acted(*n > 0), |n| aio::value(n > 0)));
        Ok(future)
    }

    fn ahas_key<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = self.key_for(py, Method::HasKey, prefix, version, key)?;
        if let Some(near) = self.client.near().filter(|near| near.covers(&key)) {
            let started = self.metrics.start_sampled();
            let found = match near.lookup(self.client.topology(), &key, Instant::now()) {
                Found::Value(_) => Some(true),
                Found::Absent => Some(false),
                Found::Unknown => None,
            };
            if let Some(found) = found {
                self.metrics.record(Method::HasKey, Outcome::found(found), started);
                return ready(py, found.into_pyobject(py)?.to_owned().into_any());
            }
        }
        let recording = self.metrics.begin(Method::HasKey);
        let (future, promise) = promise(py)?;
        self.client.start(Exists(key), keep(promise, recording, |f| Outcome::found(*f), aio::value));
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
        let recording = self.metrics.begin(Method::Incr);
        let key = self.key_for(py, Method::Incr, prefix, version, key)?;
        let runner = Async(self.client.clone());
        spawn(py, async move {
            let digits = calls::increment(&runner, key, delta).await;
            recording.end(&digits, |_| Outcome::Ok);
            let digits = digits?;
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
        let recording = self.metrics.begin(Method::SetMany);
        let (keys, values) = self
            .encode_items(py, mapping, prefix, version)
            .inspect_err(|_| self.metrics.record(Method::SetMany, Outcome::InvalidKey, recording.started()))?;
        let (future, promise) = promise(py)?;
        let empty_list = || Box::new(|py: Python<'_>| Ok(PyList::empty(py).into_any().unbind())) as Make;
        if keys.is_empty() {
            promise.keep(Ok(empty_list()));
            return Ok(future);
        }
        let client = self.client.clone();
        if timeout == Some(0) {
            client.start(Delete(keys), keep(promise, recording, |_| Outcome::Stored, move |_| empty_list()));
            return Ok(future);
        }
        finished(&self.codec, values, move |data| match data {
            Ok(values) => {
                let bytes = keys.iter().chain(&values).map(Vec::len).sum();
                recording.metrics().bytes(bytes, 0);
                let set = SetMany { keys, values, ttl: timeout };
                client.start(set, keep(promise, recording, |()| Outcome::Stored, move |()| empty_list()));
            }
            Err(e) => {
                recording.end(&Err::<(), _>(e.clone()), |()| Outcome::Ok);
                promise.keep(Err(e));
            }
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
        let recording = self.metrics.begin(Method::DeleteMany);
        let (made, _) = Self::made_keys(py, prefix, version, keys)
            .inspect_err(|_| self.metrics.record(Method::DeleteMany, Outcome::InvalidKey, recording.started()))?;
        let (future, promise) = promise(py)?;
        if made.is_empty() {
            promise.keep(Ok(aio::value(0u64)));
            return Ok(future);
        }
        self.client.start(Delete(made), keep(promise, recording, |_| Outcome::Ok, aio::value));
        Ok(future)
    }

    fn arename<'py>(&self, py: Python<'py>, source: &str, target: &str) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::Other);
        let (from, to) = (source.as_bytes().to_vec(), target.as_bytes().to_vec());
        let runner = Async(self.client.clone());
        spawn(py, async move {
            let moved = calls::rename(&runner, from, to).await;
            recording.end(&moved, |()| Outcome::Ok);
            moved?;
            Ok(none())
        })
    }

    fn aclear<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let recording = self.metrics.begin(Method::Clear);
        let (future, promise) = promise(py)?;
        self.client.start(FlushDb, keep(promise, recording, |()| Outcome::Ok, |()| aio::value(true)));
        Ok(future)
    }
}

/// A multi-key read of `asked` keys ended (`hits` found): its outcome, keys and bytes recorded.
fn counted_many(
    recording: Recording,
    ended: &Result<(), Error>,
    asked: usize,
    hits: usize,
    sent: usize,
    received: usize,
) {
    if ended.is_ok() {
        recording.metrics().keys(hits, asked - hits);
        recording.metrics().bytes(sent, received);
    }
    recording.end(ended, |()| Outcome::found(hits > 0));
}
