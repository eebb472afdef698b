//! `MemcachedClient`: the memcached core as Python sees it. Keys are made and checked and
//! values encoded while attached to the interpreter; every round trip, and compression, runs
//! detached (the GIL released), with only bytes crossing.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString};

use super::aio::{self, Make, OFF_IO_FROM, none, off_loop, promise};
use super::errors::ServerDown;
use super::keys::{OnInvalid, make_key_checked};
use super::stats::client_stats;
use crate::codec;
use crate::memcached::client::{Client, Config, Item, ServerSpec, Stored};
use crate::memcached::conn::{Address, Timeouts};
use crate::memcached::protocol::Store;
use crate::memcached::ring::{Distribution, KeyHash};

static PICKLE_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static PICKLE_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn seconds(s: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("{what} must be a non-negative number of seconds")))
}

/// How values become bytes, and back.
struct Codec {
    pickle_protocol: i32,
    min_compress_len: usize,
    compress_level: u32,
}

impl Codec {
    /// pylibmc's layout: exact bytes, str and int types are stored as they are (ints as
    /// digits, so the server's incr works); everything else, bools included, is pickled (a bool
    /// then reads back as a bool here and in pylibmc alike).
    fn encode(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<(u32, Vec<u8>)> {
        if let Ok(b) = value.cast_exact::<PyBytes>() {
            return Ok((codec::FLAG_BYTES, b.as_bytes().to_vec()));
        }
        if let Ok(s) = value.cast_exact::<PyString>()
            && let Ok(text) = s.to_str()
        {
            return Ok((codec::FLAG_TEXT, text.as_bytes().to_vec()));
        }
        if let Ok(i) = value.cast_exact::<PyInt>() {
            let digits = match i.extract::<i64>() {
                Ok(n) => n.to_string(),
                Err(_) => i.str()?.to_str()?.to_owned(),
            };
            return Ok((codec::FLAG_LONG, digits.into_bytes()));
        }
        let dumps = PICKLE_DUMPS.import(py, "pickle", "dumps")?;
        let pickled = dumps.call1((value, self.pickle_protocol))?;
        let pickled = pickled.cast::<PyBytes>()?;
        Ok((codec::FLAG_PICKLE, pickled.as_bytes().to_vec()))
    }

    /// Whether `data` is to be compressed before it is stored.
    fn compresses(&self, data: &[u8]) -> bool {
        self.min_compress_len > 0 && data.len() >= self.min_compress_len
    }

    fn decode<'py>(py: Python<'py>, flags: u32, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        match flags & codec::TYPE_MASK {
            codec::FLAG_PICKLE => PICKLE_LOADS.import(py, "pickle", "loads")?.call1((PyBytes::new(py, data),)),
            codec::FLAG_INTEGER | codec::FLAG_LONG => {
                let text = std::str::from_utf8(data).map_err(|_| PyValueError::new_err("a stored int is not ASCII"))?;
                let text = text.trim();
                match text.parse::<i64>() {
                    Ok(n) => Ok(n.into_pyobject(py)?.into_any()),
                    Err(_) => py.get_type::<PyInt>().call1((text,)),
                }
            }
            codec::FLAG_TEXT => Ok(PyString::from_bytes(py, data)?.into_any()),
            // Raw bytes, and flags no client we know writes: hand the bytes over as pylibmc does.
            _ => Ok(PyBytes::new(py, data).into_any()),
        }
    }
}

/// Compress for the wire (runs detached).
fn pack(codec: &Codec, (flags, data): (u32, Vec<u8>)) -> (u32, Vec<u8>) {
    let (data, flags) = codec::maybe_compress(data, flags, codec.min_compress_len, codec.compress_level);
    (flags, data)
}

fn unpack(item: Item) -> Result<(u32, Vec<u8>), crate::error::Error> {
    let (data, flags) = codec::inflate_if_needed(item.data, item.flags)?;
    Ok((flags, data))
}

/// A memcached client shared by every backend instance of one configuration.
#[pyclass(frozen, subclass, weakref, name = "MemcachedClient", module = "django_rustcache._core")]
pub struct PyMemcachedClient {
    client: Arc<Client>,
    codec: Arc<Codec>,
    behaviors: Py<PyDict>,
}

impl PyMemcachedClient {
    fn key(
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        make_key_checked(py, prefix, version, key, OnInvalid::Raise)
    }

    fn store_one(
        &self,
        py: Python<'_>,
        cmd: Store,
        key: String,
        value: &Bound<'_, PyAny>,
        exptime: i64,
        delete_on_refusal: bool,
    ) -> PyResult<bool> {
        let encoded = self.codec.encode(py, value)?;
        let (client, codec) = (&self.client, &self.codec);
        let stored = py.detach(|| -> Result<Stored, crate::error::Error> {
            let (flags, data) = pack(codec, encoded);
            let stored = client.store(cmd, key.as_bytes(), flags, exptime, &data)?;
            if delete_on_refusal && matches!(stored, Stored::Refused(_)) {
                // Django: make sure the key does not keep its old value (memcached's 1 MB limit).
                client.delete(key.as_bytes())?;
            }
            Ok(stored)
        })?;
        Ok(stored == Stored::Yes)
    }
}

/// Made keys and encoded values of a mapping, and its keys as given.
type Entries = (Vec<Py<PyAny>>, Vec<(String, (u32, Vec<u8>))>);

impl PyMemcachedClient {
    /// A mapping's items as made keys and encoded values, with the keys as given.
    fn entries<'py>(
        &self,
        py: Python<'py>,
        mapping: &Bound<'py, PyAny>,
        prefix: Option<Bound<'py, PyAny>>,
        version: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Entries> {
        let none = py.None().into_bound(py);
        let prefix = prefix.unwrap_or_else(|| none.clone());
        let version = version.unwrap_or_else(|| none.clone());
        let mut originals = Vec::new();
        let mut entries = Vec::new();
        let items = match mapping.cast::<PyDict>() {
            Ok(d) => d.items(),
            Err(_) => mapping
                .call_method0("items")?
                .try_iter()?
                .collect::<PyResult<Vec<_>>>()
                .map(|v| PyList::new(py, v))??,
        };
        for item in items.iter() {
            let (k, v) = item.extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>()?;
            let made = Self::key(py, &prefix, &version, &k)?;
            entries.push((made, self.codec.encode(py, &v)?));
            originals.push(k.unbind());
        }
        Ok((originals, entries))
    }

    /// An incr's delta as a direction and a 64-bit magnitude.
    fn delta(delta: &Bound<'_, PyAny>) -> PyResult<(bool, u64)> {
        let delta: i128 = delta.extract().map_err(|_| PyTypeError::new_err("delta must be an int"))?;
        let magnitude =
            u64::try_from(delta.unsigned_abs()).map_err(|_| PyValueError::new_err("delta does not fit in 64 bits"))?;
        Ok((delta < 0, magnitude))
    }

    /// `store_one`'s async twin: the value compressed (if it is to be) off the loop's thread.
    #[allow(clippy::too_many_arguments)]
    fn astore<'py>(
        &self,
        py: Python<'py>,
        cmd: Store,
        key: String,
        value: &Bound<'py, PyAny>,
        exptime: i64,
        delete_on_refusal: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let encoded = self.codec.encode(py, value)?;
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
                Box::new(move |stored| match stored {
                    // Django: make sure the key does not keep its old value (memcached's 1 MB limit).
                    Ok(Stored::Refused(_)) if delete_on_refusal => again
                        .delete_then(made.as_bytes(), Box::new(move |r| promise.keep(r.map(|_| aio::value(false))))),
                    stored => promise.keep(stored.map(|s| aio::value(s == Stored::Yes))),
                }),
            );
        };
        if codec.compresses(&encoded.1) {
            let large = encoded.1.len() >= OFF_IO_FROM;
            off_loop(large, move || go(pack(&codec, encoded)));
        } else {
            go(encoded);
        }
        Ok(future)
    }
}

/// Items inflated where compressed, then `go` with them (the caller is on an I/O thread:
/// large compressed values go to a blocking thread).
fn unpacked(
    items: Vec<Option<Item>>,
    go: impl FnOnce(Result<Vec<Option<(u32, Vec<u8>)>>, crate::error::Error>) + Send + 'static,
) {
    let large = items
        .iter()
        .flatten()
        .filter(|item| item.flags & codec::FLAG_ZLIB != 0)
        .map(|item| item.data.len())
        .sum::<usize>()
        >= OFF_IO_FROM / 4;
    let work = move || go(items.into_iter().map(|item| item.map(unpack).transpose()).collect());
    if large { off_loop(true, work) } else { work() }
}

/// A multi-key call that went on without a failed server: its error goes to `on_failure` (the
/// backend's failure policy, which logs it) when the call is `partial`, or is raised.
fn report_partial(
    py: Python<'_>,
    partial: bool,
    on_failure: Option<&Bound<'_, PyAny>>,
    failure: Option<crate::error::Error>,
) -> PyResult<()> {
    let Some(e) = failure else { return Ok(()) };
    if !partial {
        return Err(e.into());
    }
    if let Some(on_failure) = on_failure {
        on_failure.call1((PyErr::from(e).into_value(py),))?;
    }
    Ok(())
}

#[pymethods]
impl PyMemcachedClient {
    /// `servers`: `(host, port, weight)` tuples; port 0 means `host` is a unix socket path.
    #[new]
    #[pyo3(signature = (
        servers, *, distribution="modula", hash="default", connect_timeout=1.0, send_timeout=3.0,
        receive_timeout=3.0, retry_timeout=2.0, window_on_any_failure=false, remove_failed=0, dead_timeout=10.0, max_idle=32,
        min_compress_len=0, compress_level=6, pickle_protocol=None, behaviors=None, binary=false,
        username=None, password=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        servers: Vec<(String, u16, u32)>,
        distribution: &str,
        hash: &str,
        connect_timeout: f64,
        send_timeout: f64,
        receive_timeout: f64,
        retry_timeout: f64,
        window_on_any_failure: bool,
        remove_failed: u32,
        dead_timeout: f64,
        max_idle: usize,
        min_compress_len: usize,
        compress_level: u32,
        pickle_protocol: Option<i32>,
        behaviors: Option<Bound<'_, PyDict>>,
        binary: bool,
        username: Option<String>,
        password: Option<String>,
    ) -> PyResult<Self> {
        let credentials = match (username, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err(PyValueError::new_err("SASL needs both a username and a password")),
        };
        let distribution = match distribution {
            "modula" => Distribution::Modula,
            "ketama" | "consistent" | "consistent_ketama" => Distribution::Ketama,
            "ketama_weighted" | "consistent_weighted" => Distribution::KetamaWeighted,
            other => {
                return Err(PyValueError::new_err(format!("unknown distribution {other:?}")));
            }
        };
        let hash = match hash {
            "default" | "one_at_a_time" => KeyHash::OneAtATime,
            "md5" => KeyHash::Md5,
            other => {
                return Err(PyValueError::new_err(format!("unsupported hash {other:?} (use 'default' or 'md5')")));
            }
        };
        if compress_level > 9 {
            return Err(PyValueError::new_err("compress_level must be between 0 and 9"));
        }
        let servers = servers
            .into_iter()
            .map(|(host, port, weight)| ServerSpec {
                addr: if port == 0 { Address::Unix(host.into()) } else { Address::Tcp(host, port) },
                weight: weight.max(1),
            })
            .collect();
        let config = Config {
            servers,
            distribution,
            hash,
            timeouts: Timeouts {
                connect: seconds(connect_timeout, "connect_timeout")?,
                // One deadline per call covers the send and the whole reply.
                call: seconds(send_timeout, "send_timeout")?.max(seconds(receive_timeout, "receive_timeout")?),
            },
            retry_timeout: seconds(retry_timeout, "retry_timeout")?,
            window_on_any_failure,
            remove_failed,
            dead_timeout: seconds(dead_timeout, "dead_timeout")?,
            max_idle,
            binary: binary || credentials.is_some(),
            credentials,
        };
        let pickle_protocol = pickle_protocol.filter(|p| *p >= 0).unwrap_or(5);
        Ok(Self {
            client: Arc::new(Client::new(config)?),
            codec: Arc::new(Codec { pickle_protocol, min_compress_len, compress_level }),
            behaviors: behaviors.map_or_else(|| PyDict::new(py).unbind(), Bound::unbind),
        })
    }

    /// The behaviors this client was configured with (pylibmc's ``Client.behaviors``).
    #[getter]
    fn behaviors<'py>(&self, py: Python<'py>) -> Bound<'py, PyDict> {
        self.behaviors.bind(py).clone()
    }

    /// Whether the binary protocol is spoken (asked for, or needed for SASL).
    #[getter]
    fn binary(&self) -> bool {
        self.client.config().binary
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
        let key = Self::key(py, prefix, version, key)?;
        let client = &self.client;
        let found = py.detach(|| client.get(key.as_bytes())?.map(unpack).transpose())?;
        match found {
            Some((flags, data)) => Codec::decode(py, flags, &data),
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
                out.set_item(original, Codec::decode(py, flags, &data)?)?;
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

    // --- async: each returns an asyncio future of the running loop (see `bindings::aio`) ----

    #[pyo3(signature = (prefix, version, key, default=None))]
    fn aget<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = Self::key(py, prefix, version, key)?;
        let (future, promise) = promise(py)?;
        let default = default.map(Bound::unbind);
        self.client.get_then(
            key.as_bytes(),
            Box::new(move |found| match found {
                Ok(item) => unpacked(vec![item], move |items| {
                    let item = items.map(|mut items| items.pop().flatten());
                    promise.keep(item.map(|item| {
                        Box::new(move |py: Python<'_>| match item {
                            Some((flags, data)) => Codec::decode(py, flags, &data).map(Bound::unbind),
                            None => Ok(default.unwrap_or_else(|| py.None())),
                        }) as Make
                    }));
                }),
                Err(e) => promise.keep(Err(e)),
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
        let mut originals = Vec::new();
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            made.push(Self::key(py, prefix, version, &key)?);
            originals.push(key.unbind());
        }
        let (future, promise) = promise(py)?;
        let on_failure = on_failure.map(Bound::unbind);
        let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
        self.client.get_many_then(
            &refs,
            Box::new(move |found| match found {
                Ok((items, errors)) => unpacked(items, move |items| {
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
                                    out.set_item(original, Codec::decode(py, flags, &data)?)?;
                                }
                            }
                            Ok(out.into_any().unbind())
                        }) as Make
                    }));
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
        exptime: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = Self::key(py, prefix, version, key)?;
        self.astore(py, Store::Set, key, value, exptime, true)
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
        let key = Self::key(py, prefix, version, key)?;
        self.astore(py, Store::Add, key, value, exptime, false)
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
        let key = Self::key(py, prefix, version, key)?;
        self.astore(py, Store::Replace, key, value, exptime, false)
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
        let (originals, entries) = self.entries(py, mapping, prefix, version)?;
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
        let key = Self::key(py, prefix, version, key)?;
        let (future, promise) = promise(py)?;
        self.client.delete_then(key.as_bytes(), Box::new(move |r| promise.keep(r.map(aio::value))));
        Ok(future)
    }

    fn adelete_multi<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            made.push(Self::key(py, prefix, version, &key?)?);
        }
        let (future, promise) = promise(py)?;
        let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
        self.client.delete_many_then(
            &refs,
            Box::new(move |errors| {
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
        let key = Self::key(py, prefix, version, key)?;
        let (decr, magnitude) = Self::delta(delta)?;
        let (future, promise) = promise(py)?;
        let made = key.clone();
        self.client.incr_then(
            key.as_bytes(),
            magnitude,
            decr,
            Box::new(move |r| {
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
        let key = Self::key(py, prefix, version, key)?;
        let (future, promise) = promise(py)?;
        self.client.touch_then(key.as_bytes(), exptime, Box::new(move |r| promise.keep(r.map(aio::value))));
        Ok(future)
    }

    fn aflush_all<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (future, promise) = promise(py)?;
        self.client.clear_then(Box::new(move |errors| {
            promise.keep(errors.and_then(|e| e.into_iter().next().map_or(Ok(()), Err)).map(|()| none()));
        }));
        Ok(future)
    }

    /// `flush_all` on every server.
    fn flush_all(&self, py: Python<'_>) -> PyResult<()> {
        let client = &self.client;
        match py.detach(|| client.clear())?.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Drop every pooled connection (they are made again on demand).
    fn disconnect_all(&self) {
        self.client.disconnect_all();
    }

    /// `{address: version}`; a server that fails maps to None.
    fn versions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let client = &self.client;
        let versions = py.detach(|| client.versions())?;
        let out = PyDict::new(py);
        for (addr, v) in versions {
            out.set_item(addr, v.ok())?;
        }
        Ok(out)
    }

    /// `{address: {stat: value}}` from each server's `stats`; a server that fails maps to None.
    fn server_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let client = &self.client;
        let stats = py.detach(|| client.stats())?;
        let out = PyDict::new(py);
        for (addr, s) in stats {
            match s {
                Ok(pairs) => {
                    let d = PyDict::new(py);
                    for (k, v) in pairs {
                        d.set_item(k, v)?;
                    }
                    out.set_item(addr, d)?;
                }
                Err(_) => out.set_item(addr, py.None())?,
            }
        }
        Ok(out)
    }

    /// Each server's health: address, up, removed, errors, last_error, idle connections.
    fn servers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for s in self.client.servers() {
            let d = PyDict::new(py);
            d.set_item("address", s.address)?;
            d.set_item("up", PyBool::new(py, s.up))?;
            d.set_item("removed", s.removed)?;
            d.set_item("errors", s.errors)?;
            d.set_item("last_error", s.last_error)?;
            d.set_item("idle_connections", s.idle)?;
            d.set_item("async_connections", s.async_connections)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Client-side counters: hits, misses, sets, failures.
    fn client_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        client_stats(py, self.client.client_stats())
    }

    /// Which configured server (index) a made key goes to.
    fn server_index(&self, key: &str) -> PyResult<usize> {
        self.client.route(key.as_bytes()).map_err(|e| ServerDown::new_err(e.to_string()))
    }
}
