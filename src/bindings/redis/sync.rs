//! `RedisClient`'s blocking calls: keys made and values encoded while attached, then one
//! detached run of the command (or of a call made of several) on the blocking runner.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList};

use super::PyRedisClient;
use crate::bindings::args::arg_bytes;
use crate::bindings::values::RedisCodec;
use crate::bindings::values::reply;
use crate::error::Error;
use crate::redis::calls::{self, finish};
use crate::redis::client::Blocking;
use crate::redis::client::Client;
use crate::redis::commands::{Delete, Exists, Expire, FlushDb, Get, GetMany, Raw, Set, SetMany};
use crate::redis::near::{Found, GetFresh, GetFreshMany, Near};
use std::time::Instant;

use crate::metrics::{Method, Outcome};

/// Digits as a Python int (exact at any size).
pub(super) fn int_of<'py>(py: Python<'py>, digits: &str) -> PyResult<Bound<'py, PyAny>> {
    match digits.parse::<i64>() {
        Ok(n) => Ok(n.into_pyobject(py)?.into_any()),
        Err(_) => py.get_type::<PyInt>().call1((digits,)),
    }
}

/// A `get` the near cache could not answer: read the value and its TTL from the key's primary,
/// and keep them unless the key was invalidated meanwhile. Blocking (called detached).
pub(super) fn near_fill(
    client: &Client,
    codec: &RedisCodec,
    near: &Near,
    key: Vec<u8>,
) -> Result<Option<Vec<u8>>, Error> {
    let topology = client.topology();
    if topology.needs_map() {
        client.refresh(false)?;
    }
    let deadline = topology.node_of(&key)?.pools()[0].deadline();
    let ticket = near.begin(topology, &key, deadline)?;
    let read = GetFresh(key);
    match client.run(&read) {
        Ok((value, ttl)) => {
            let value = value.and_then(|data| codec.unpack(data));
            near.fill(&read.0, ticket, value.as_deref(), ttl);
            Ok(value)
        }
        Err(e) => {
            near.store().drop_ticket(&read.0, ticket);
            Err(e)
        }
    }
}

/// A `get_many`'s keys the near cache could not answer: each value and TTL from its primary,
/// kept unless invalidated meanwhile. Blocking (called detached).
pub(super) fn near_fill_many(
    client: &Client,
    codec: &RedisCodec,
    near: &Near,
    keys: Vec<Vec<u8>>,
) -> Result<Vec<Option<Vec<u8>>>, Error> {
    let topology = client.topology();
    if topology.needs_map() {
        client.refresh(false)?;
    }
    let mut tickets = Vec::with_capacity(keys.len());
    for key in &keys {
        let deadline = topology.node_of(key)?.pools()[0].deadline();
        match near.begin(topology, key, deadline) {
            Ok(ticket) => tickets.push(ticket),
            Err(e) => {
                for (key, ticket) in keys.iter().zip(tickets) {
                    near.store().drop_ticket(key, ticket);
                }
                return Err(e);
            }
        }
    }
    let read = GetFreshMany(keys);
    match client.run(&read) {
        Ok(found) => Ok(read
            .0
            .iter()
            .zip(tickets)
            .zip(found)
            .map(|((key, ticket), (value, ttl))| {
                let value = value.and_then(|data| codec.unpack(data));
                near.fill(key, ticket, value.as_deref(), ttl);
                value
            })
            .collect()),
        Err(e) => {
            for (key, ticket) in read.0.iter().zip(tickets) {
                near.store().drop_ticket(key, ticket);
            }
            Err(e)
        }
    }
}

#[pymethods]
impl PyRedisClient {
    /// Run one command as given and return its reply (None, int, bytes, str, list, dict).
    /// ``write`` picks a primary (else a replica may answer); ``idempotent`` lets a stale pooled
    /// connection be retried on a new one; ``node`` sends it to that node (see ``nodes()``).
    #[pyo3(signature = (*args, write=true, idempotent=false, node=None, op=None))]
    fn execute<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Bound<'py, PyAny>>,
        write: bool,
        idempotent: bool,
        node: Option<usize>,
        op: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let started = self.metrics.start();
        let args = args.iter().map(arg_bytes).collect::<PyResult<Vec<_>>>()?;
        let op_method = Self::op(op, args.first().map(Vec::as_slice));
        let sent = args.iter().map(Vec::len).sum();
        let client = &self.client;
        let value = py.detach(|| finish(calls::execute(&Blocking(client), Raw::new(args, write, idempotent, node)?)));
        self.metrics.record_result(op_method, started, &value, |_| Outcome::Ok);
        self.metrics.bytes(sent, 0);
        reply(py, value?)
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
        let key = self.key_for(py, Method::Get, prefix, version, key)?;
        let (client, codec) = (&self.client, &self.codec);
        let sent = key.len();
        let near = client.near().filter(|near| near.covers(&key));
        // A local hit is timed one time in several (the clock would cost a tenth of it).
        let started = if near.is_some() { self.metrics.start_sampled() } else { self.metrics.start() };
        let found = match near {
            Some(near) => match near.lookup(client.topology(), &key, Instant::now()) {
                Found::Value(data) => {
                    self.metrics.record(Method::Get, Outcome::Hit, started);
                    self.metrics.bytes(sent, data.len());
                    return codec.decode(py, &data);
                }
                Found::Absent => Ok(None),
                Found::Unknown => py.detach(|| near_fill(client, codec, near, key)),
            },
            None => py.detach(|| client.run(&Get(key)).map(|found| found.and_then(|data| codec.unpack(data)))),
        };
        self.metrics.record_result(Method::Get, started, &found, |f| Outcome::found(f.is_some()));
        let found = found?;
        self.metrics.bytes(sent, found.as_ref().map_or(0, Vec::len));
        match found {
            Some(data) => codec.decode(py, &data),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    /// The found keys (as given) and their values: one MGET per node, every node at once.
    /// (``partial`` and ``on_failure`` are accepted for the backends' shared signature: the call
    /// answers or fails as a whole.)
    #[pyo3(signature = (prefix, version, keys, partial=false, on_failure=None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
        partial: bool,
        on_failure: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let _ = (partial, on_failure);
        let started = self.metrics.start();
        let (made, originals) = Self::made_keys(py, prefix, version, keys)
            .inspect_err(|_| self.metrics.record(Method::GetMany, Outcome::InvalidKey, started))?;
        let out = PyDict::new(py);
        if made.is_empty() {
            return Ok(out);
        }
        let sent = made.iter().map(Vec::len).sum::<usize>();
        let (client, codec) = (&self.client, &self.codec);
        if let Some(near) = client.near() {
            let found = near.lookup_many(client.topology(), &made, Instant::now());
            // The keys it could not answer, in order: their values come back in that order.
            let keys: Vec<Vec<u8>> = found
                .iter()
                .zip(&made)
                .filter(|(f, _)| matches!(f, Found::Unknown))
                .map(|(_, key)| key.clone())
                .collect();
            let filled =
                if keys.is_empty() { Ok(Vec::new()) } else { py.detach(|| near_fill_many(client, codec, near, keys)) };
            if let Err(e) = &filled {
                self.metrics.record(Method::GetMany, Outcome::of_error(e), started);
            }
            let mut filled = filled?.into_iter();
            let mut received = 0;
            for (original, local) in originals.iter().zip(found) {
                match local {
                    Found::Value(data) => {
                        received += data.len();
                        out.set_item(original, codec.decode(py, &data)?)?;
                    }
                    Found::Absent => {}
                    Found::Unknown => {
                        if let Some(data) = filled.next().flatten() {
                            received += data.len();
                            out.set_item(original, codec.decode(py, &data)?)?;
                        }
                    }
                }
            }
            self.count_many(started, made.len(), out.len(), sent, received);
            return Ok(out);
        }
        let asked = made.len();
        let values = py.detach(|| {
            client
                .run(&GetMany(made))
                .map(|values| values.into_iter().map(|v| v.and_then(|data| codec.unpack(data))).collect::<Vec<_>>())
        });
        if let Err(e) = &values {
            self.metrics.record(Method::GetMany, Outcome::of_error(e), started);
        }
        let mut received = 0;
        for (original, value) in originals.iter().zip(values?) {
            if let Some(data) = value {
                received += data.len();
                out.set_item(original, codec.decode(py, &data)?)?;
            }
        }
        self.count_many(started, asked, out.len(), sent, received);
        Ok(out)
    }

    /// Django's set: a timeout of 0 deletes the key; None never expires.
    fn set(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: Option<u64>,
    ) -> PyResult<()> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Set, prefix, version, key)?;
        let (client, codec) = (&self.client, &self.codec);
        let encoded = self.encode_for(py, Method::Set, value)?;
        let mut sent = key.len();
        let done = py.detach(|| {
            if timeout == Some(0) {
                return client.run(&Delete(vec![key])).map(|_| ());
            }
            let value = codec.finish(encoded)?;
            sent += value.len();
            client.run(&Set { key, value, ttl: timeout, nx: false, xx: false }).map(|_| ())
        });
        self.metrics.record_result(Method::Set, started, &done, |()| Outcome::Stored);
        self.metrics.bytes(sent, 0);
        Ok(done?)
    }

    /// Django's add: store only if absent; with a timeout of 0, report whether it would have
    /// been stored and keep nothing.
    fn add(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        timeout: Option<u64>,
    ) -> PyResult<bool> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Add, prefix, version, key)?;
        let (client, codec) = (&self.client, &self.codec);
        let encoded = self.encode_for(py, Method::Add, value)?;
        let added = py.detach(|| {
            let value = codec.finish(encoded)?;
            finish(calls::add(&Blocking(client), key, value, timeout, timeout == Some(0)))
        });
        self.metrics.record_result(Method::Add, started, &added, |a| Outcome::stored(*a));
        Ok(added?)
    }

    /// EXPIRE, or PERSIST for None; whether the key exists.
    fn touch(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        timeout: Option<u64>,
    ) -> PyResult<bool> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Touch, prefix, version, key)?;
        let client = &self.client;
        let touched = py.detach(|| client.run(&Expire { key, seconds: timeout }));
        self.metrics.record_result(Method::Touch, started, &touched, |t| Outcome::acted(*t));
        Ok(touched?)
    }

    fn delete(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Delete, prefix, version, key)?;
        let client = &self.client;
        let deleted = py.detach(|| client.run(&Delete(vec![key])));
        self.metrics.record_result(Method::Delete, started, &deleted, |n| Outcome::acted(*n > 0));
        Ok(deleted? > 0)
    }

    fn has_key(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let key = self.key_for(py, Method::HasKey, prefix, version, key)?;
        let client = &self.client;
        if let Some(near) = client.near().filter(|near| near.covers(&key)) {
            let started = self.metrics.start_sampled();
            match near.lookup(client.topology(), &key, Instant::now()) {
                Found::Value(_) => {
                    self.metrics.record(Method::HasKey, Outcome::Hit, started);
                    return Ok(true);
                }
                Found::Absent => {
                    self.metrics.record(Method::HasKey, Outcome::Miss, started);
                    return Ok(false);
                }
                Found::Unknown => {}
            }
        }
        let started = self.metrics.start();
        let found = py.detach(|| client.run(&Exists(key)));
        self.metrics.record_result(Method::HasKey, started, &found, |f| Outcome::found(*f));
        Ok(found?)
    }

    /// Atomic INCRBY on an existing key (its TTL kept); ValueError when it is missing, TypeError
    /// when its value is not an integer. Past 64 bits it goes on atomically with WATCH/MULTI.
    fn incr<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        delta: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let started = self.metrics.start();
        let key = self.key_for(py, Method::Incr, prefix, version, key)?;
        let client = &self.client;
        let digits = py.detach(|| finish(calls::increment(&Blocking(client), key, delta)));
        self.metrics.record_result(Method::Incr, started, &digits, |_| Outcome::Ok);
        int_of(py, &digits?)
    }

    /// Store every item: one pipeline per node, every node at once; a timeout of 0 deletes them.
    /// Returns [] as Django's RedisCache does.
    #[pyo3(signature = (mapping, timeout, prefix=None, version=None, partial=false, on_failure=None))]
    #[allow(clippy::too_many_arguments)] // Django's set_many arguments plus the shared failure-policy pair
    fn set_many<'py>(
        &self,
        py: Python<'py>,
        mapping: &Bound<'py, PyAny>,
        timeout: Option<u64>,
        prefix: Option<Bound<'py, PyAny>>,
        version: Option<Bound<'py, PyAny>>,
        partial: bool,
        on_failure: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let _ = (partial, on_failure);
        let started = self.metrics.start();
        let (keys, values) = self
            .encode_items(py, mapping, prefix, version)
            .inspect_err(|_| self.metrics.record(Method::SetMany, Outcome::InvalidKey, started))?;
        if keys.is_empty() {
            return Ok(PyList::empty(py));
        }
        let (client, codec) = (&self.client, &self.codec);
        let mut sent = keys.iter().map(Vec::len).sum::<usize>();
        let done = py.detach(|| {
            if timeout == Some(0) {
                return client.run(&Delete(keys)).map(|_| ());
            }
            let values = values.into_iter().map(|v| codec.finish(v)).collect::<Result<Vec<_>, Error>>()?;
            sent += values.iter().map(Vec::len).sum::<usize>();
            client.run(&SetMany { keys, values, ttl: timeout })
        });
        self.metrics.record_result(Method::SetMany, started, &done, |()| Outcome::Stored);
        self.metrics.bytes(sent, 0);
        done?;
        Ok(PyList::empty(py))
    }

    /// DEL of every key (per node, every node at once); how many were there.
    fn delete_many(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        keys: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let started = self.metrics.start();
        let (made, _) = Self::made_keys(py, prefix, version, keys)
            .inspect_err(|_| self.metrics.record(Method::DeleteMany, Outcome::InvalidKey, started))?;
        if made.is_empty() {
            return Ok(0);
        }
        let client = &self.client;
        let deleted = py.detach(|| client.run(&Delete(made)));
        self.metrics.record_result(Method::DeleteMany, started, &deleted, |_| Outcome::Ok);
        Ok(deleted?)
    }

    /// RENAME one made key to another, the TTL kept: atomic on one node (one slot), else DUMP +
    /// RESTORE + DEL; ValueError when `source` is missing.
    fn rename(&self, py: Python<'_>, source: &str, target: &str) -> PyResult<()> {
        let started = self.metrics.start();
        let client = &self.client;
        let (from, to) = (source.as_bytes().to_vec(), target.as_bytes().to_vec());
        let moved = py.detach(|| finish(calls::rename(&Blocking(client), from, to)));
        self.metrics.record_result(Method::Other, started, &moved, |()| Outcome::Ok);
        Ok(moved?)
    }

    /// FLUSHDB on every primary.
    fn clear(&self, py: Python<'_>) -> PyResult<bool> {
        let started = self.metrics.start();
        let client = &self.client;
        let done = py.detach(|| client.run(&FlushDb));
        self.metrics.record_result(Method::Clear, started, &done, |()| Outcome::Ok);
        done?;
        Ok(true)
    }
}
