//! `MemcachedClient`: the memcached core as Python sees it. Keys are made and checked and
//! values encoded while attached to the interpreter; every round trip, and compression, runs
//! detached (the GIL released), with only bytes crossing. The sync methods are in `sync.rs`,
//! their async twins in `aio.rs`; this file makes the client and answers what is not a call.

mod aio;
mod on_loop;
mod sync;

use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList};

use crate::bindings::args::seconds;
use crate::bindings::errors::ServerDown;
use crate::bindings::keys::{OnInvalid, make_key_checked};
use crate::bindings::stats::client_stats;
use crate::bindings::values::{MemcachedCodec, Signing, pack};
use crate::memcached::client::{Client, Config, ServerSpec, Stored};
use crate::memcached::conn::{Address, Timeouts};
use crate::memcached::protocol::Store;
use crate::memcached::ring::{Distribution, KeyHash};
use crate::metrics::{self, Method, Metrics, Outcome, Started};

/// A memcached client shared by every backend instance of one configuration.
#[pyclass(frozen, subclass, weakref, name = "MemcachedClient", module = "django_rustcache._core")]
pub struct PyMemcachedClient {
    client: Arc<Client>,
    codec: Arc<MemcachedCodec>,
    behaviors: Py<PyDict>,
    /// The event loops' own connections (see `on_loop`).
    loop_conns: Arc<on_loop::MemcachedLoopConns>,
    /// The calls' metrics: this view's alias's (see `with_metrics`).
    metrics: Arc<Metrics>,
    /// OPTIONS `KEY_HASHING`: a key memcached would refuse takes its digest form.
    key_hashing: bool,
}

impl PyMemcachedClient {
    fn key(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        make_key_checked(py, prefix, version, key, if self.key_hashing { OnInvalid::Hash } else { OnInvalid::Raise })
    }

    /// `key`, a key refused counted as `method`'s outcome.
    fn key_for(
        &self,
        py: Python<'_>,
        method: Method,
        started: Started,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<String> {
        self.key(py, prefix, version, key).inspect_err(|_| self.metrics.record(method, Outcome::InvalidKey, started))
    }

    #[allow(clippy::too_many_arguments)]
    fn store_one(
        &self,
        py: Python<'_>,
        method: Method,
        started: Started,
        cmd: Store,
        key: String,
        value: &Bound<'_, PyAny>,
        exptime: i64,
        delete_on_refusal: bool,
    ) -> PyResult<bool> {
        let encoded =
            self.codec.encode(py, value).inspect_err(|_| self.metrics.record(method, Outcome::Error, started))?;
        let sent = key.len() + encoded.1.len();
        let (client, codec) = (&self.client, &self.codec);
        let stored = py.detach(|| -> Result<Stored, crate::error::Error> {
            let (flags, data) = pack(codec, encoded);
            let stored = client.store(cmd, key.as_bytes(), flags, exptime, &data)?;
            if delete_on_refusal && matches!(stored, Stored::Refused(_)) {
                // Django: make sure the key does not keep its old value (memcached's 1 MB limit).
                client.delete(key.as_bytes())?;
            }
            Ok(stored)
        });
        self.metrics.record_result(method, started, &stored, |s| Outcome::stored(*s == Stored::Yes));
        self.metrics.bytes(sent, 0);
        Ok(stored? == Stored::Yes)
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
            let made = self.key(py, &prefix, &version, &k)?;
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
}

/// A multi-key call that went on without a failed server: its error goes to `on_failure` (the
/// backend's failure policy, which logs it) when the call is `partial`, or is raised.
pub(super) fn report_partial(
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
    /// With `view_of` (see `with_metrics`), a view of that client: the rest is not read.
    #[new]
    #[pyo3(signature = (
        servers=None, *, distribution="modula", hash="default", connect_timeout=1.0, send_timeout=3.0,
        receive_timeout=3.0, retry_timeout=2.0, window_on_any_failure=false, remove_failed=0, dead_timeout=10.0, max_idle=32,
        min_compress_len=0, compress_level=6, pickle_protocol=None, behaviors=None, binary=false,
        username=None, password=None, view_of=None, metrics_for=None, sign_secrets=None, sign_writes=false,
        sign_accept_unsigned=false, key_hashing=false
    ))]
    #[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
    fn new(
        py: Python<'_>,
        servers: Option<Vec<(String, u16, u32)>>,
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
        view_of: Option<PyRef<'_, Self>>,
        metrics_for: Option<(String, String, bool, bool)>,
        sign_secrets: Option<Vec<Vec<u8>>>,
        sign_writes: bool,
        sign_accept_unsigned: bool,
        key_hashing: bool,
    ) -> PyResult<Self> {
        if let Some(of) = view_of {
            let metrics = match metrics_for {
                Some((alias, backend, named, enabled)) => {
                    let m = metrics::for_alias(&alias, &backend, named);
                    m.set_enabled(enabled);
                    m
                }
                None => of.metrics.clone(),
            };
            return Ok(Self {
                client: of.client.clone(),
                codec: of.codec.clone(),
                behaviors: of.behaviors.clone_ref(py),
                loop_conns: of.loop_conns.clone(),
                metrics,
                key_hashing: of.key_hashing,
            });
        }
        let Some(servers) = servers else { return Err(PyValueError::new_err("no servers given")) };
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
            codec: Arc::new(MemcachedCodec {
                pickle_protocol,
                min_compress_len,
                compress_level,
                signing: Signing::new(sign_secrets, sign_writes, sign_accept_unsigned)?,
            }),
            behaviors: behaviors.map_or_else(|| PyDict::new(py).unbind(), Bound::unbind),
            loop_conns: Arc::default(),
            metrics: metrics::unlisted("django_rustcache.memcached.MemcachedCache"),
            key_hashing,
        })
    }

    /// The same client (its connections, servers' health and counters), its calls recorded in
    /// `alias`'s metrics (`named`: an alias of `settings.CACHES`, whose metrics every view of
    /// that alias shares; else this view's own), of the same Python class as this one.
    fn with_metrics<'py>(
        slf: &Bound<'py, Self>,
        alias: String,
        backend: String,
        named: bool,
        enabled: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::bindings::metrics::view_with_metrics(slf.as_any(), alias, backend, named, enabled)
    }

    /// This view's alias's metrics (see `bindings::metrics::snapshot` for the shape).
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::bindings::metrics::snapshot(py, &self.metrics)
    }

    /// Zero this view's alias's metrics.
    fn reset_metrics(&self) {
        self.metrics.reset();
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

    /// pylibmc's `get_stats()`: `[(b"host:port (i)", {stat: b"value"}), ...]` in server order
    /// (a unix socket is `path:0`, as libmemcached names it); a server that fails raises.
    fn get_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let client = &self.client;
        let stats = py.detach(|| client.stats())?;
        let out = PyList::empty(py);
        for (index, (addr, pairs)) in stats.into_iter().enumerate() {
            let d = PyDict::new(py);
            for (k, v) in pairs? {
                d.set_item(k, PyBytes::new(py, v.as_bytes()))?;
            }
            let name = pylibmc_server_name(&addr);
            out.append((PyBytes::new(py, format!("{name} ({index})").as_bytes()), d))?;
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
            d.set_item("went_down", s.went_down)?;
            d.set_item("came_back", s.came_back)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Client-side counters: hits, misses, sets, failures.
    /// Values refused since the client was made: signed values whose tag did not verify, and
    /// (with signing on, outside migrate mode) values without one.
    fn refused_values(&self) -> u64 {
        self.codec.signing.as_ref().map_or(0, |s| s.rejected.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn client_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        client_stats(py, self.client.client_stats())
    }

    /// The calls read on an event loop's own thread (one `aget` at a time) since the client was
    /// made, and the loops' connections open now.
    fn loop_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.loop_conns.stats(py)
    }

    /// Which configured server (index) a made key goes to.
    fn server_index(&self, key: &str) -> PyResult<usize> {
        self.client.route(key.as_bytes()).map_err(|e| ServerDown::new_err(e.to_string()))
    }
}

/// A server as libmemcached names it in pylibmc's `get_stats()`: `host:port`, a unix socket
/// `path:0`, an IPv6 host without its brackets.
fn pylibmc_server_name(addr: &str) -> String {
    if let Some(path) = addr.strip_prefix("unix:") {
        return format!("{path}:0");
    }
    match addr.strip_prefix('[').and_then(|rest| rest.split_once("]:")) {
        Some((host, port)) => format!("{host}:{port}"),
        None => addr.to_string(),
    }
}
