//! `RedisClient`: the redis core as Python sees it. Keys are made and checked and values
//! encoded while attached; every round trip runs detached (the GIL released).
//!
//! Values are stored as Django's RedisCache (and django-redis) store them: an exact `int` as its
//! decimal digits (so INCR works on it and other clients read it), anything else pickled.

use std::sync::Arc;
use std::time::Duration;

use pyo3::IntoPyObjectExt;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};
use redis::Value;

use super::aio::{self, Make, OFF_IO_FROM, none, off_loop, promise, spawn};
use super::keys::make_key;
use super::stats::client_stats;
use crate::compress::{self, Compressor, Format};
use crate::net::{Address, Tls, TlsSettings, Verify};
use crate::redis::client::{Client, Counter, Items, delete_across, get_many_across, set_many_across};
use crate::redis::pool::{Pool, PoolConfig};
use crate::redis::sentinel::{Role, Sentinel, SentinelConfig};

static PICKLE_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static PICKLE_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// One server's TLS settings as the Python layer gives them: (verify: "none" | "chain" |
/// "full", ca_certs, ca_path, ca_data, certfile, keyfile, tls13_only).
type TlsArgs = (String, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, bool);

fn tls_settings(args: TlsArgs) -> PyResult<TlsSettings> {
    let (verify, ca_certs, ca_path, ca_data, certfile, keyfile, tls13_only) = args;
    let verify = match verify.as_str() {
        "none" => Verify::Nothing,
        "chain" => Verify::Chain,
        "full" => Verify::ChainAndName,
        other => return Err(PyValueError::new_err(format!("tls verify {other:?}: none, chain or full"))),
    };
    Ok(TlsSettings {
        verify,
        ca_certs: ca_certs.map(Into::into),
        ca_path: ca_path.map(Into::into),
        ca_data,
        certfile: certfile.map(Into::into),
        keyfile: keyfile.map(Into::into),
        tls13_only,
    })
}

fn seconds(s: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("{what} must be a non-negative number of seconds")))
}

/// A value on its way to the server: serialized while attached, compressed (if it may be) once
/// detached.
struct Encoded {
    data: Vec<u8>,
    compressible: bool,
}

/// How values are written and read: ints as digits (unless a serializer of Django's kind takes
/// everything), the rest through pickle or a serializer's `dumps`/`loads`, then a compressor.
struct Codec {
    pickle_protocol: i32,
    /// `(dumps, loads)`; None means pickle.
    serializer: Option<(Py<PyAny>, Py<PyAny>)>,
    ints_as_digits: bool,
    compressor: Option<Compressor>,
    /// Inflate values whose header names a compression format: whenever a compressor is set, and
    /// with pickle (whose output never starts like a compressed stream).
    inflate: bool,
}

impl Codec {
    fn encode(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Encoded> {
        self.encode_as(py, value, self.ints_as_digits, self.pickle_protocol)
    }

    /// `encode`, with ints as digits only when `digits` (sorted-set members never are, in
    /// django-redis) and pickle's `protocol` (set members must be byte for byte django-redis's).
    fn encode_as(&self, py: Python<'_>, value: &Bound<'_, PyAny>, digits: bool, protocol: i32) -> PyResult<Encoded> {
        if digits && let Ok(i) = value.cast_exact::<PyInt>() {
            let data = match i.extract::<i64>() {
                Ok(n) => n.to_string().into_bytes(),
                Err(_) => i.str()?.to_str()?.as_bytes().to_vec(),
            };
            return Ok(Encoded { data, compressible: false });
        }
        let out = match &self.serializer {
            None => PICKLE_DUMPS.import(py, "pickle", "dumps")?.call1((value, protocol))?,
            Some((dumps, _)) => dumps.bind(py).call1((value,))?,
        };
        let data = if let Ok(b) = out.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(b) = out.cast::<PyByteArray>() {
            b.to_vec()
        } else if let Ok(s) = out.cast::<PyString>() {
            s.to_str()?.as_bytes().to_vec()
        } else {
            return Err(PyTypeError::new_err(format!("the serializer returned {}, not bytes", out.get_type().name()?)));
        };
        Ok(Encoded { data, compressible: true })
    }

    /// The bytes to store (detached: compression runs without the GIL).
    fn finish(&self, value: Encoded) -> Result<Vec<u8>, crate::error::Error> {
        match &self.compressor {
            Some(c) if value.compressible => c.compress(value.data),
            _ => Ok(value.data),
        }
    }

    /// Stored bytes inflated if they are compressed (detached).
    fn unpack(&self, data: Vec<u8>) -> Vec<u8> {
        if self.inflate { compress::decompress(&data).unwrap_or(data) } else { data }
    }

    /// django-redis's decode: `int(data)` if that works (Django's `RedisSerializer.loads` too),
    /// else the serializer's `loads`.
    fn decode<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        // A pickle (protocol 2 and up) starts with 0x80, which int() never accepts.
        if self.ints_as_digits && data.first() != Some(&0x80) {
            if let Some(n) = std::str::from_utf8(data).ok().and_then(|s| s.trim().parse::<i64>().ok()) {
                return Ok(n.into_pyobject(py)?.into_any());
            }
            match py.get_type::<PyInt>().call1((PyBytes::new(py, data),)) {
                Ok(n) => return Ok(n),
                Err(e) if e.is_instance_of::<PyValueError>(py) => {}
                Err(e) => return Err(e),
            }
        }
        match &self.serializer {
            None => PICKLE_LOADS.import(py, "pickle", "loads")?.call1((PyBytes::new(py, data),)),
            Some((_, loads)) => loads.bind(py).call1((PyBytes::new(py, data),)),
        }
    }
}

/// A redis client shared by every backend instance of one configuration.
#[pyclass(frozen, subclass, weakref, name = "RedisClient", module = "django_rustcache._core")]
pub struct PyRedisClient {
    client: Arc<Client>,
    codec: Arc<Codec>,
}

/// A command argument as bytes: bytes as they are, str as UTF-8, numbers as their digits.
fn arg_bytes(arg: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = arg.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(s) = arg.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes().to_vec());
    }
    if arg.is_instance_of::<PyInt>() || arg.is_instance_of::<PyFloat>() {
        return Ok(arg.str()?.to_str()?.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "a redis command argument must be bytes, str or a number, not {}",
        arg.get_type().name()?
    )))
}

/// A reply as Python: nil None, integers int, bulk strings bytes, status lines str, arrays
/// lists, maps dicts.
fn reply(py: Python<'_>, value: Value) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        Value::Nil => py.None().into_bound(py),
        Value::Int(n) => n.into_pyobject(py)?.into_any(),
        Value::BulkString(b) => PyBytes::new(py, &b).into_any(),
        Value::SimpleString(s) => PyString::new(py, &s).into_any(),
        Value::Okay => PyString::new(py, "OK").into_any(),
        Value::Double(d) => d.into_pyobject(py)?.into_any(),
        Value::Boolean(b) => PyBool::new(py, b).to_owned().into_any(),
        Value::Array(items) | Value::Set(items) => {
            let out = PyList::empty(py);
            for item in items {
                out.append(reply(py, item)?)?;
            }
            out.into_any()
        }
        Value::Map(pairs) => {
            let out = PyDict::new(py);
            for (k, v) in pairs {
                out.set_item(reply(py, k)?, reply(py, v)?)?;
            }
            out.into_any()
        }
        other => PyString::new(py, &format!("{other:?}")).into_any(),
    })
}

#[pymethods]
impl PyRedisClient {
    /// Run one command as given and return its reply (None, int, bytes, str, list, dict).
    /// ``write`` picks the leader (else a replica may answer); ``idempotent`` lets a stale pooled
    /// connection be retried on a new one.
    #[pyo3(signature = (*args, write=true, idempotent=false))]
    fn execute<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Bound<'py, PyAny>>,
        write: bool,
        idempotent: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = args.iter().map(arg_bytes).collect::<PyResult<Vec<_>>>()?;
        let client = &self.client;
        let value = py.detach(|| client.execute(&args, write, idempotent))?;
        reply(py, value)
    }

    /// Decode stored bytes as ``get`` does (inflated if compressed, then deserialized).
    fn loads<'py>(&self, py: Python<'py>, data: Vec<u8>) -> PyResult<Bound<'py, PyAny>> {
        let codec = &self.codec;
        let data = py.detach(|| codec.unpack(data));
        codec.decode(py, &data)
    }

    /// Encode a value as ``set`` stores it (serialized, then compressed if configured); with
    /// ``ints_as_digits=False``, an int is serialized like any other value; ``pickle_protocol``
    /// overrides the client's (when values are pickled).
    #[pyo3(signature = (value, ints_as_digits=true, pickle_protocol=None))]
    fn dumps<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
        ints_as_digits: bool,
        pickle_protocol: Option<i32>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let codec = &self.codec;
        let protocol = pickle_protocol.filter(|p| *p >= 0).unwrap_or(codec.pickle_protocol);
        let encoded = codec.encode_as(py, value, codec.ints_as_digits && ints_as_digits, protocol)?;
        Ok(PyBytes::new(py, &py.detach(|| codec.finish(encoded))?))
    }

    /// `servers`: URLs, the leader first (``redis://``, ``unix://``); `db`, `username` and
    /// `password` override what the URLs say.
    #[new]
    #[pyo3(signature = (
        servers, *, db=None, username=None, password=None, connect_timeout=1.0, socket_timeout=3.0,
        max_connections=64, retry_timeout=1.0, client_name=None, pickle_protocol=None, serializer=None, ints_as_digits=true, compressor=None,
        compress_level=None, compress_min_len=15, tls=Vec::new(), sentinels=Vec::new(), service=None,
        replica_reads=false, sentinel_username=None, sentinel_password=None, sentinel_tls=None,
        sentinel_connect_timeout=None, readonly_replicas=false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        servers: Vec<String>,
        db: Option<i64>,
        username: Option<String>,
        password: Option<String>,
        connect_timeout: f64,
        socket_timeout: f64,
        max_connections: usize,
        retry_timeout: f64,
        client_name: Option<String>,
        pickle_protocol: Option<i32>,
        serializer: Option<(Py<PyAny>, Py<PyAny>)>,
        ints_as_digits: bool,
        compressor: Option<&str>,
        compress_level: Option<i32>,
        compress_min_len: usize,
        tls: Vec<Option<TlsArgs>>,
        sentinels: Vec<(String, u16)>,
        service: Option<String>,
        replica_reads: bool,
        sentinel_username: Option<String>,
        sentinel_password: Option<String>,
        sentinel_tls: Option<TlsArgs>,
        sentinel_connect_timeout: Option<f64>,
        readonly_replicas: bool,
    ) -> PyResult<Self> {
        let compressor = compressor
            .map(|name| {
                let format = Format::from_name(name).ok_or_else(|| {
                    PyValueError::new_err(format!("unknown compressor {name:?}: zlib, gzip, lzma, lz4, zstd or bz2"))
                })?;
                Ok::<_, PyErr>(Compressor {
                    format,
                    level: compress_level.unwrap_or_else(|| format.default_level()),
                    min_length: compress_min_len,
                })
            })
            .transpose()?;
        let codec = Codec {
            pickle_protocol: pickle_protocol.filter(|p| *p >= 0).unwrap_or(5),
            inflate: compressor.is_some() || serializer.is_none(),
            serializer,
            ints_as_digits,
            compressor,
        };
        let config = PoolConfig {
            connect_timeout: seconds(connect_timeout, "connect_timeout")?,
            socket_timeout: seconds(socket_timeout, "socket_timeout")?,
            max_connections: max_connections.max(1),
            retry_timeout: seconds(retry_timeout, "retry_timeout")?,
            client_name,
            readonly: false,
        };
        if !tls.is_empty() && tls.len() != servers.len() {
            return Err(PyValueError::new_err("tls: one entry (or None) per server"));
        }
        // One configuration per distinct setting: the CA files are read once.
        let mut made: Vec<(TlsSettings, Tls)> = Vec::new();
        let mut pools = Vec::with_capacity(servers.len());
        for (i, url) in servers.iter().enumerate() {
            let server_tls = match tls.get(i).cloned().flatten() {
                None => None,
                Some(args) => {
                    let settings = tls_settings(args)?;
                    if let Some((_, t)) = made.iter().find(|(s, _)| *s == settings) {
                        Some(t.clone())
                    } else {
                        let t = Tls::new(&settings)?;
                        made.push((settings, t.clone()));
                        Some(t)
                    }
                }
            };
            if sentinels.is_empty() {
                // A Redis Cluster replica serves reads only after READONLY.
                let config = PoolConfig { readonly: readonly_replicas && i > 0, ..config.clone() };
                pools.push(Pool::new(url, db, username.as_deref(), password.as_deref(), server_tls, config, None)?);
                continue;
            }
            if servers.len() != 1 {
                return Err(PyValueError::new_err("sentinels: one URL (the data nodes' credentials and db)"));
            }
            let sentinel = Sentinel::new(SentinelConfig {
                sentinels: sentinels.iter().map(|(host, port)| Address::Tcp(host.clone(), *port)).collect(),
                service: service.clone().unwrap_or_default(),
                username: sentinel_username.clone(),
                password: sentinel_password.clone(),
                tls: sentinel_tls.clone().map(tls_settings).transpose()?.map(|t| Tls::new(&t)).transpose()?,
                connect_timeout: match sentinel_connect_timeout {
                    Some(t) => seconds(t, "sentinel_connect_timeout")?,
                    None => config.connect_timeout,
                },
            })?;
            let (user, pass) = (username.as_deref(), password.as_deref());
            let master = Some((sentinel.clone(), Role::Master));
            pools.push(Pool::new(url, db, user, pass, server_tls.clone(), config.clone(), master)?);
            if replica_reads {
                let replica = Some((sentinel, Role::Replica));
                pools.push(Pool::new(url, db, user, pass, server_tls, config.clone(), replica)?);
            }
        }
        Ok(Self { client: Arc::new(Client::new(pools)?), codec: Arc::new(codec) })
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
        let key = make_key(py, prefix, version, key)?;
        let (client, codec) = (&self.client, &self.codec);
        match py.detach(|| client.get(key.as_bytes()).map(|found| found.map(|data| codec.unpack(data))))? {
            Some(data) => codec.decode(py, &data),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    /// The found keys (as given) and their values: one MGET. (``partial`` and ``on_failure`` are
    /// accepted for the backends' shared signature: one MGET either answers or fails as a whole.)
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
        let mut originals = Vec::new();
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            made.push(make_key(py, prefix, version, &key)?);
            originals.push(key);
        }
        let (client, codec) = (&self.client, &self.codec);
        let values = py.detach(|| {
            let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
            client
                .get_many(&refs)
                .map(|values| values.into_iter().map(|v| v.map(|data| codec.unpack(data))).collect::<Vec<_>>())
        })?;
        let out = PyDict::new(py);
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
        let key = make_key(py, prefix, version, key)?;
        let (client, codec) = (&self.client, &self.codec);
        let encoded = codec.encode(py, value)?;
        py.detach(|| {
            if timeout == Some(0) {
                client.delete(&[key.as_bytes()]).map(|_| ())
            } else {
                client.set(key.as_bytes(), &codec.finish(encoded)?, timeout, false, false).map(|_| ())
            }
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
        let key = make_key(py, prefix, version, key)?;
        let (client, codec) = (&self.client, &self.codec);
        let encoded = codec.encode(py, value)?;
        Ok(py.detach(|| {
            let data = codec.finish(encoded)?;
            if timeout == Some(0) {
                let stored = client.set(key.as_bytes(), &data, None, true, false)?;
                if stored {
                    client.delete(&[key.as_bytes()])?;
                }
                Ok::<bool, crate::error::Error>(stored)
            } else {
                client.set(key.as_bytes(), &data, timeout, true, false)
            }
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
        let key = make_key(py, prefix, version, key)?;
        let client = &self.client;
        Ok(py.detach(|| match timeout {
            None => client.persist(key.as_bytes()),
            Some(t) => client.expire(key.as_bytes(), t),
        })?)
    }

    fn delete(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let key = make_key(py, prefix, version, key)?;
        let client = &self.client;
        Ok(py.detach(|| client.delete(&[key.as_bytes()]))? > 0)
    }

    fn has_key(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let key = make_key(py, prefix, version, key)?;
        let client = &self.client;
        Ok(py.detach(|| client.exists(key.as_bytes()))?)
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
        let key = make_key(py, prefix, version, key)?;
        let client = &self.client;
        match py.detach(|| client.incr(key.as_bytes(), delta))? {
            Counter::Small(n) => Ok(n.into_pyobject(py)?.into_any()),
            Counter::Big(digits) => py.get_type::<PyInt>().call1((digits,)),
        }
    }

    /// Store every item with one pipeline; a timeout of 0 deletes them. Returns [] as Django's
    /// RedisCache does.
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
        let items = self.encode_items(py, mapping, prefix, version)?;
        let (client, codec) = (&self.client, &self.codec);
        py.detach(|| {
            if timeout == Some(0) {
                let keys: Vec<&[u8]> = items.iter().map(|(k, _)| k.as_bytes()).collect();
                client.delete(&keys).map(|_| ())
            } else {
                let items = items
                    .into_iter()
                    .map(|(k, v)| Ok((k, codec.finish(v)?)))
                    .collect::<Result<Vec<_>, crate::error::Error>>()?;
                let refs: Vec<(&[u8], &[u8])> = items.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())).collect();
                client.set_many(&refs, timeout)
            }
        })?;
        Ok(PyList::empty(py))
    }

    /// One DEL for every key.
    fn delete_many(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        keys: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            made.push(make_key(py, prefix, version, &key?)?);
        }
        let client = &self.client;
        py.detach(|| {
            let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
            client.delete(&refs)
        })?;
        Ok(())
    }

    /// RENAME one made key to another, atomically (the TTL kept); ValueError when `source` is
    /// missing.
    fn rename(&self, py: Python<'_>, source: &str, target: &str) -> PyResult<()> {
        let client = &self.client;
        Ok(py.detach(|| client.rename(source.as_bytes(), target.as_bytes()))?)
    }

    /// FLUSHDB on the leader.
    fn clear(&self, py: Python<'_>) -> PyResult<bool> {
        let client = &self.client;
        py.detach(|| client.clear())?;
        Ok(true)
    }

    // --- async: each returns an asyncio future of the running loop (see `bindings::aio`) ----

    /// ``execute``'s async twin.
    #[pyo3(signature = (*args, write=true, idempotent=false))]
    fn aexecute<'py>(
        &self,
        py: Python<'py>,
        args: Vec<Bound<'py, PyAny>>,
        write: bool,
        idempotent: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = args.iter().map(arg_bytes).collect::<PyResult<Vec<_>>>()?;
        let (future, promise) = promise(py)?;
        self.client.execute_then(
            &args,
            write,
            idempotent,
            Box::new(move |found| {
                promise.keep(found.map(|v| Box::new(move |py: Python<'_>| reply(py, v).map(Bound::unbind)) as Make));
            }),
        );
        Ok(future)
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
        let key = make_key(py, prefix, version, key)?;
        let (future, promise) = promise(py)?;
        let codec = self.codec.clone();
        let default = default.map(Bound::unbind);
        self.client.get_then(
            key.as_bytes(),
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

    /// MGET of the keys (a pipeline of GETs with `per_key`: a Redis Cluster node).
    #[pyo3(signature = (prefix, version, keys, partial=false, on_failure=None, per_key=false))]
    #[allow(clippy::too_many_arguments)]
    fn aget_many<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
        partial: bool,
        on_failure: Option<Bound<'py, PyAny>>,
        per_key: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = (partial, on_failure);
        let mut originals = Vec::new();
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            made.push(make_key(py, prefix, version, &key)?);
            originals.push(key.unbind());
        }
        let (future, promise) = promise(py)?;
        let codec = self.codec.clone();
        let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
        self.client.get_many_then(
            &refs,
            per_key,
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
        let key = make_key(py, prefix, version, key)?;
        let encoded = self.codec.encode(py, value)?;
        let (future, promise) = promise(py)?;
        let client = self.client.clone();
        if timeout == Some(0) {
            client.delete_then(&[key.as_bytes()], Box::new(move |r| promise.keep(r.map(|_| none()))));
            return Ok(future);
        }
        finished(&self.codec, vec![encoded], move |data| match data {
            Ok(data) => client.set_then(
                key.as_bytes(),
                &data[0],
                timeout,
                false,
                false,
                Box::new(move |r| promise.keep(r.map(|_| none()))),
            ),
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
        let key = make_key(py, prefix, version, key)?;
        let encoded = self.codec.encode(py, value)?;
        let (future, promise) = promise(py)?;
        let client = self.client.clone();
        finished(&self.codec, vec![encoded], move |data| {
            let data = match data {
                Ok(data) => data,
                Err(e) => return promise.keep(Err(e)),
            };
            // A timeout of 0: whether it would have been stored, and nothing kept.
            let ttl = if timeout == Some(0) { None } else { timeout };
            let (again, made) = (client.clone(), key.clone());
            client.set_then(
                made.as_bytes(),
                &data[0],
                ttl,
                true,
                false,
                Box::new(move |stored| match stored {
                    Ok(true) if timeout == Some(0) => again
                        .delete_then(&[key.as_bytes()], Box::new(move |r| promise.keep(r.map(|_| aio::value(true))))),
                    stored => promise.keep(stored.map(aio::value)),
                }),
            );
        });
        Ok(future)
    }

    fn atouch<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        timeout: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?;
        let client = self.client.clone();
        spawn(py, async move { Ok(aio::value(client.touch_async(key.as_bytes(), timeout).await?)) })
    }

    fn adelete<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?;
        let (future, promise) = promise(py)?;
        self.client.delete_then(&[key.as_bytes()], Box::new(move |r| promise.keep(r.map(|n| aio::value(n > 0)))));
        Ok(future)
    }

    fn ahas_key<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = make_key(py, prefix, version, key)?;
        let (future, promise) = promise(py)?;
        self.client.exists_then(key.as_bytes(), Box::new(move |r| promise.keep(r.map(aio::value))));
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
        let key = make_key(py, prefix, version, key)?;
        let client = self.client.clone();
        spawn(py, async move {
            let counter = client.incr_async(key.into_bytes(), delta).await?;
            Ok(Box::new(move |py: Python<'_>| match counter {
                Counter::Small(n) => n.into_py_any(py),
                Counter::Big(digits) => Ok(py.get_type::<PyInt>().call1((digits,))?.unbind()),
            }) as Make)
        })
    }

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
        let (keys, values): (Vec<String>, Vec<Encoded>) =
            self.encode_items(py, mapping, prefix, version)?.into_iter().unzip();
        let (future, promise) = promise(py)?;
        let client = self.client.clone();
        let empty_list = || Box::new(|py: Python<'_>| Ok(PyList::empty(py).into_any().unbind())) as Make;
        if timeout == Some(0) {
            let refs: Vec<&[u8]> = keys.iter().map(String::as_bytes).collect();
            client.delete_then(&refs, Box::new(move |r| promise.keep(r.map(|_| empty_list()))));
            return Ok(future);
        }
        finished(&self.codec, values, move |data| match data {
            Ok(data) => {
                let items: Vec<(&[u8], &[u8])> =
                    keys.iter().zip(&data).map(|(k, v)| (k.as_bytes(), v.as_slice())).collect();
                client.set_many_then(&items, timeout, Box::new(move |r| promise.keep(r.map(|()| empty_list()))));
            }
            Err(e) => promise.keep(Err(e)),
        });
        Ok(future)
    }

    /// One DEL for every key (a pipeline of one-key DELs with `per_key`: a Redis Cluster node);
    /// how many were there.
    #[pyo3(signature = (prefix, version, keys, per_key=false))]
    fn adelete_many<'py>(
        &self,
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
        per_key: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut made = Vec::new();
        for key in keys.try_iter()? {
            made.push(make_key(py, prefix, version, &key?)?);
        }
        let (future, promise) = promise(py)?;
        let refs: Vec<&[u8]> = made.iter().map(String::as_bytes).collect();
        let done: crate::redis::aio::Done<u64> = Box::new(move |r| promise.keep(r.map(aio::value)));
        if per_key {
            self.client.delete_each_then(&refs, done);
        } else {
            self.client.delete_then(&refs, done);
        }
        Ok(future)
    }

    fn arename<'py>(&self, py: Python<'py>, source: &str, target: &str) -> PyResult<Bound<'py, PyAny>> {
        let (source, target) = (source.to_owned(), target.to_owned());
        let client = self.client.clone();
        spawn(py, async move {
            client.rename_async(source.as_bytes(), target.as_bytes()).await?;
            Ok(none())
        })
    }

    fn aclear<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        spawn(py, async move {
            client.clear_async().await?;
            Ok(aio::value(true))
        })
    }

    /// Each server's pool: address, health (up, errors, last_error), idle and open connections.
    fn servers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for pool in self.client.pools() {
            let state = pool.state();
            let d = PyDict::new(py);
            d.set_item("address", state.address)?;
            d.set_item("up", state.up)?;
            d.set_item("errors", state.errors)?;
            d.set_item("last_error", state.last_error)?;
            d.set_item("idle_connections", state.idle)?;
            d.set_item("open_connections", state.open)?;
            d.set_item("async_connections", pool.slots().open())?;
            if let Some((sentinel, _)) = pool.sentinel() {
                d.set_item("service", sentinel.service())?;
                d.set_item("master", sentinel.known_master().map(|a| a.to_string()))?;
                d.set_item("master_changes", sentinel.switches())?;
            }
            out.append(d)?;
        }
        Ok(out)
    }

    /// Client-side counters: hits, misses, sets, failures.
    fn client_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        client_stats(py, self.client.client_stats())
    }

    /// The index of the server a read (or a write) goes to.
    #[pyo3(signature = (write=false))]
    fn server_for(&self, write: bool) -> usize {
        self.client.server_for(write)
    }

    /// The same client (servers, connections, format) with every command preceded by ASKING:
    /// for the one call a Redis Cluster node sent elsewhere with ASK.
    fn asking(&self) -> Self {
        Self { client: Arc::new(self.client.asking()), codec: self.codec.clone() }
    }
}

impl PyRedisClient {
    /// `mapping`'s items as made keys and encoded values.
    fn encode_items<'py>(
        &self,
        py: Python<'py>,
        mapping: &Bound<'py, PyAny>,
        prefix: Option<Bound<'py, PyAny>>,
        version: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<(String, Encoded)>> {
        let mapping = match mapping.cast::<PyDict>() {
            Ok(d) => d.clone(),
            Err(_) => PyDict::from_sequence(&mapping.call_method0("items")?)?,
        };
        let none = py.None().into_bound(py);
        let prefix = prefix.unwrap_or_else(|| none.clone());
        let version = version.unwrap_or_else(|| none.clone());
        let mut items = Vec::with_capacity(mapping.len());
        for (k, v) in mapping.iter() {
            items.push((make_key(py, &prefix, &version, &k)?, self.codec.encode(py, &v)?));
        }
        Ok(items)
    }
}

/// The bytes to store for `values`, then `go` with them: compressed (where they are to be) off
/// the loop's thread and without the GIL, on a blocking thread when large; at once when nothing
/// is to be compressed.
fn finished(
    codec: &Arc<Codec>,
    values: Vec<Encoded>,
    go: impl FnOnce(Result<Vec<Vec<u8>>, crate::error::Error>) + Send + 'static,
) {
    let compresses =
        |v: &Encoded| codec.compressor.as_ref().is_some_and(|c| v.compressible && v.data.len() >= c.min_length);
    if !values.iter().any(compresses) {
        return go(Ok(values.into_iter().map(|v| v.data).collect()));
    }
    let large = values.iter().map(|v| v.data.len()).sum::<usize>() >= OFF_IO_FROM;
    let codec = codec.clone();
    off_loop(large, move || go(values.into_iter().map(|v| codec.finish(v)).collect()));
}

/// Stored bytes inflated where compressed, then `go` with them (the caller is on an I/O thread:
/// large values go to a blocking thread).
fn unpacked(codec: &Arc<Codec>, values: Vec<Option<Vec<u8>>>, go: impl FnOnce(Vec<Option<Vec<u8>>>) + Send + 'static) {
    let large = codec.inflate && values.iter().flatten().map(Vec::len).sum::<usize>() >= OFF_IO_FROM;
    let codec = codec.clone();
    let work = move || go(values.into_iter().map(|v| v.map(|data| codec.unpack(data))).collect());
    if large { off_loop(true, work) } else { work() }
}

/// One shard's part of a call: its client and the keys (as given) that live on it.
type KeysPart<'py> = (PyRef<'py, PyRedisClient>, Vec<Bound<'py, PyAny>>);

/// The made keys of every part.
fn made_parts<'py>(
    py: Python<'py>,
    prefix: &Bound<'py, PyAny>,
    version: &Bound<'py, PyAny>,
    parts: &[KeysPart<'py>],
) -> PyResult<Vec<Vec<String>>> {
    parts.iter().map(|(_, keys)| keys.iter().map(|k| make_key(py, prefix, version, k)).collect()).collect()
}

/// `get_many` over shards at once: each `(client, keys)` part's MGET is sent before any reply
/// is read, so the servers work in parallel, on one deadline, with the GIL released. The found
/// keys (as given) and their values, merged. `per_key`: GETs, not MGET (Redis Cluster nodes).
#[pyfunction]
#[pyo3(signature = (prefix, version, parts, per_key=false))]
pub fn sharded_get_many<'py>(
    py: Python<'py>,
    prefix: &Bound<'py, PyAny>,
    version: &Bound<'py, PyAny>,
    parts: Vec<KeysPart<'py>>,
    per_key: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let made = made_parts(py, prefix, version, &parts)?;
    let cores: Vec<&PyRedisClient> = parts.iter().map(|(c, _)| &**c).collect();
    let values = py.detach(|| {
        let refs: Vec<(&Client, Vec<&[u8]>)> = cores
            .iter()
            .zip(&made)
            .map(|(c, keys)| (&*c.client, keys.iter().map(String::as_bytes).collect()))
            .collect();
        let found = get_many_across(&refs, per_key)?;
        Ok::<_, crate::error::Error>(
            found
                .into_iter()
                .zip(&cores)
                .map(|(values, c)| values.into_iter().map(|v| v.map(|data| c.codec.unpack(data))).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
        )
    })?;
    let out = PyDict::new(py);
    for ((client, keys), values) in parts.iter().zip(values) {
        for (key, value) in keys.iter().zip(values) {
            if let Some(data) = value {
                out.set_item(key, client.codec.decode(py, &data)?)?;
            }
        }
    }
    Ok(out)
}

/// `set_many` over shards at once (see [`sharded_get_many`]): each `(client, mapping)` part is
/// one pipeline; a timeout of 0 deletes the keys instead (one DEL per key with `per_key`).
#[pyfunction]
#[pyo3(signature = (prefix, version, parts, timeout, per_key=false))]
pub fn sharded_set_many<'py>(
    py: Python<'py>,
    prefix: &Bound<'py, PyAny>,
    version: &Bound<'py, PyAny>,
    parts: Vec<(PyRef<'py, PyRedisClient>, Bound<'py, PyDict>)>,
    timeout: Option<u64>,
    per_key: bool,
) -> PyResult<()> {
    let mut made = Vec::with_capacity(parts.len());
    for (client, mapping) in &parts {
        let mut items = Vec::with_capacity(mapping.len());
        for (k, v) in mapping.iter() {
            let key = make_key(py, prefix, version, &k)?;
            let value = if timeout == Some(0) { None } else { Some(client.codec.encode(py, &v)?) };
            items.push((key, value));
        }
        made.push(items);
    }
    let cores: Vec<&PyRedisClient> = parts.iter().map(|(c, _)| &**c).collect();
    py.detach(|| {
        if timeout == Some(0) {
            let refs: Vec<(&Client, Vec<&[u8]>)> = cores
                .iter()
                .zip(&made)
                .map(|(c, items)| (&*c.client, items.iter().map(|(k, _)| k.as_bytes()).collect()))
                .collect();
            return delete_across(&refs, per_key).map(|_| ());
        }
        let mut packed = Vec::with_capacity(made.len());
        for (c, items) in cores.iter().zip(made) {
            let items = items
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| c.codec.finish(v).map(|data| (k, data))))
                .collect::<Result<Vec<_>, crate::error::Error>>()?;
            packed.push(items);
        }
        let refs: Vec<(&Client, Items<'_>)> = cores
            .iter()
            .zip(&packed)
            .map(|(c, items)| (&*c.client, items.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())).collect()))
            .collect();
        set_many_across(&refs, timeout)
    })?;
    Ok(())
}

/// `delete_many` over shards at once (see [`sharded_get_many`]); how many keys were there.
#[pyfunction]
#[pyo3(signature = (prefix, version, parts, per_key=false))]
pub fn sharded_delete_many<'py>(
    py: Python<'py>,
    prefix: &Bound<'py, PyAny>,
    version: &Bound<'py, PyAny>,
    parts: Vec<KeysPart<'py>>,
    per_key: bool,
) -> PyResult<u64> {
    let made = made_parts(py, prefix, version, &parts)?;
    let cores: Vec<&PyRedisClient> = parts.iter().map(|(c, _)| &**c).collect();
    Ok(py.detach(|| {
        let refs: Vec<(&Client, Vec<&[u8]>)> = cores
            .iter()
            .zip(&made)
            .map(|(c, keys)| (&*c.client, keys.iter().map(String::as_bytes).collect()))
            .collect();
        delete_across(&refs, per_key)
    })?)
}
