//! `RedisClient`'s blocking calls: keys made and values encoded while attached, then one
//! detached run of the command (or of a call made of several) on the blocking runner.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList};

use super::PyRedisClient;
use crate::bindings::args::arg_bytes;
use crate::bindings::keys::make_key;
use crate::bindings::values::RedisCodec;
use crate::bindings::values::reply;
use crate::error::Error;
use crate::redis::calls::{self, finish};
use crate::redis::client::Blocking;
use crate::redis::client::Client;
use crate::redis::commands::{Delete, Exists, Expire, FlushDb, Get, GetMany, Raw, Set, SetMany};
use crate::redis::near::{Found, GetFresh, GetFreshMany, Near};
use std::time::Instant;

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
            let value = value.map(|data| codec.unpack(data));
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
                let value = value.map(|data| codec.unpack(data));
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
    #[pyo3(signature = (*args, write=true, idempotent=false, node=None))]
    fn execute<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Bound<'py, PyAny>>,
        write: bool,
        idempotent: bool,
        node: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = args.iter().map(arg_bytes).collect::<PyResult<Vec<_>>>()?;
        let client = &self.client;
        let value =
            py.detach(|| finish(calls::execute(&Blocking(client), Raw::new(args, write, idempotent, node)?)))?;
        reply(py, value)
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
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let (client, codec) = (&self.client, &self.codec);
        let found = match client.near().filter(|near| near.covers(&key)) {
            Some(near) => match near.lookup(client.topology(), &key, Instant::now()) {
                Found::Value(data) => return codec.decode(py, &data),
                Found::Absent => None,
                Found::Unknown => py.detach(|| near_fill(client, codec, near, key))?,
            },
            None => py.detach(|| client.run(&Get(key)).map(|found| found.map(|data| codec.unpack(data))))?,
        };
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
        let (made, originals) = Self::made_keys(py, prefix, version, keys)?;
        let out = PyDict::new(py);
        if made.is_empty() {
            return Ok(out);
        }
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
                if keys.is_empty() { Vec::new() } else { py.detach(|| near_fill_many(client, codec, near, keys))? };
            let mut filled = filled.into_iter();
            for (original, local) in originals.iter().zip(found) {
                let data = match local {
                    Found::Value(data) => Some(codec.decode(py, &data)?),
                    Found::Absent => None,
                    Found::Unknown => match filled.next().flatten() {
                        Some(data) => Some(codec.decode(py, &data)?),
                        None => None,
                    },
                };
                if let Some(value) = data {
                    out.set_item(original, value)?;
                }
            }
            return Ok(out);
        }
        let values = py.detach(|| {
            client
                .run(&GetMany(made))
                .map(|values| values.into_iter().map(|v| v.map(|data| codec.unpack(data))).collect::<Vec<_>>())
        })?;
        for (original, value) in originals.iter().zip(values) {
            if let Some(data) = value {
                out.set_item(original, codec.decode(py, &data)?)?;
            }
        }
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
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let (client, codec) = (&self.client, &self.codec);
        let encoded = codec.encode(py, value)?;
        py.detach(|| {
            if timeout == Some(0) {
                return client.run(&Delete(vec![key])).map(|_| ());
            }
            let value = codec.finish(encoded)?;
            client.run(&Set { key, value, ttl: timeout, nx: false, xx: false }).map(|_| ())
        })?;
        Ok(())
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
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let (client, codec) = (&self.client, &self.codec);
        let encoded = codec.encode(py, value)?;
        Ok(py.detach(|| {
            let value = codec.finish(encoded)?;
            finish(calls::add(&Blocking(client), key, value, timeout, timeout == Some(0)))
        })?)
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
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let client = &self.client;
        Ok(py.detach(|| client.run(&Expire { key, seconds: timeout }))?)
    }

    fn delete(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let client = &self.client;
        Ok(py.detach(|| client.run(&Delete(vec![key])))? > 0)
    }

    fn has_key(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let client = &self.client;
        if let Some(near) = client.near().filter(|near| near.covers(&key)) {
            match near.lookup(client.topology(), &key, Instant::now()) {
                Found::Value(_) => return Ok(true),
                Found::Absent => return Ok(false),
                Found::Unknown => {}
            }
        }
        Ok(py.detach(|| client.run(&Exists(key)))?)
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
        let key = make_key(py, prefix, version, key)?.into_bytes();
        let client = &self.client;
        let digits = py.detach(|| finish(calls::increment(&Blocking(client), key, delta)))?;
        int_of(py, &digits)
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
        let (keys, values) = self.encode_items(py, mapping, prefix, version)?;
        if keys.is_empty() {
            return Ok(PyList::empty(py));
        }
        let (client, codec) = (&self.client, &self.codec);
        py.detach(|| {
            if timeout == Some(0) {
                return client.run(&Delete(keys)).map(|_| ());
            }
            let values = values.into_iter().map(|v| codec.finish(v)).collect::<Result<Vec<_>, Error>>()?;
            client.run(&SetMany { keys, values, ttl: timeout })
        })?;
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
        let (made, _) = Self::made_keys(py, prefix, version, keys)?;
        if made.is_empty() {
            return Ok(0);
        }
        let client = &self.client;
        Ok(py.detach(|| client.run(&Delete(made)))?)
    }

    /// RENAME one made key to another, the TTL kept: atomic on one node (one slot), else DUMP +
    /// RESTORE + DEL; ValueError when `source` is missing.
    fn rename(&self, py: Python<'_>, source: &str, target: &str) -> PyResult<()> {
        let client = &self.client;
        let (from, to) = (source.as_bytes().to_vec(), target.as_bytes().to_vec());
        Ok(py.detach(|| finish(calls::rename(&Blocking(client), from, to)))?)
    }

    /// FLUSHDB on every primary.
    fn clear(&self, py: Python<'_>) -> PyResult<bool> {
        let client = &self.client;
        py.detach(|| client.run(&FlushDb))?;
        Ok(true)
    }
}
