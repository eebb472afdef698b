//! `RedisClient`: the redis core as Python sees it, one class for every topology (a leader and
//! its replicas, Sentinel, client-side shards, Redis Cluster). Keys are made and checked and
//! values encoded while attached; each call crosses into Rust once and runs detached (the GIL
//! released once), the topology placing its keys. The sync methods are in `sync.rs`, their async
//! twins in `aio.rs`; this file makes the client and answers what is not a call.

mod aio;
mod on_loop;
mod sync;

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::args::{RedisArgs, TlsArgs, seconds, tls_settings};
use super::keys::make_key;
use super::stats::client_stats;
use super::values::{Encoded, RedisCodec, Signing};
use crate::compress::{Compressor, Format};
use crate::metrics::{self, Method, Metrics, Outcome, Started};
use crate::net::{Address, Tls, TlsSettings};
use crate::redis::client::Client;
use crate::redis::cluster::key_slot;
use crate::redis::near::{Coherence, Limits, Near, NearSettings};
use crate::redis::pool::{Pool, PoolConfig};
use crate::redis::ring::{Ring, RingKind};
use crate::redis::sentinel::{Role, Sentinel, SentinelConfig};
use crate::redis::topology::{Node, NodeRecipe, Topology};

/// A redis client shared by every backend instance of one configuration.
#[pyclass(frozen, subclass, weakref, name = "RedisClient", module = "django_rustcache._core")]
pub struct PyRedisClient {
    client: Arc<Client>,
    codec: Arc<RedisCodec>,
    /// The event loops' own connections (see `on_loop`).
    loop_conns: Arc<on_loop::RedisLoopConns>,
    /// The calls' metrics: this view's alias's (see `with_metrics`).
    metrics: Arc<Metrics>,
}

/// Made keys, and the keys as given.
type MadeKeys<'py> = (Vec<Vec<u8>>, Vec<Bound<'py, PyAny>>);

/// TLS configurations made once per distinct setting (the CA files are read once).
#[derive(Default)]
struct TlsMade(Vec<(TlsSettings, Tls)>);

impl TlsMade {
    fn get(&mut self, args: Option<TlsArgs>) -> PyResult<Option<Tls>> {
        let Some(args) = args else { return Ok(None) };
        let settings = tls_settings(args)?;
        if let Some((_, t)) = self.0.iter().find(|(s, _)| *s == settings) {
            return Ok(Some(t.clone()));
        }
        let t = Tls::new(&settings)?;
        self.0.push((settings, t.clone()));
        Ok(Some(t))
    }
}

fn codec(a: &mut RedisArgs) -> PyResult<RedisCodec> {
    let compressor = a
        .compressor
        .as_deref()
        .map(|name| {
            let format = Format::from_name(name).ok_or_else(|| {
                PyValueError::new_err(format!("unknown compressor {name:?}: zlib, gzip, lzma, lz4, zstd or bz2"))
            })?;
            Ok::<_, PyErr>(Compressor {
                format,
                level: a.compress_level.unwrap_or_else(|| format.default_level()),
                min_length: a.compress_min_len.unwrap_or(15),
            })
        })
        .transpose()?;
    let serializer = a.serializer.take();
    Ok(RedisCodec {
        pickle_protocol: a.pickle_protocol.filter(|p| *p >= 0).unwrap_or(5),
        inflate: compressor.is_some() || serializer.is_none(),
        serializer,
        ints_as_digits: a.ints_as_digits.unwrap_or(true),
        compressor,
        signing: Signing::new(a.sign_secrets.take(), a.sign_writes, a.sign_accept_unsigned)?,
    })
}

fn pool_config(a: &RedisArgs) -> PyResult<PoolConfig> {
    Ok(PoolConfig {
        connect_timeout: seconds(a.connect_timeout.unwrap_or(1.0), "connect_timeout")?,
        socket_timeout: seconds(a.socket_timeout.unwrap_or(3.0), "socket_timeout")?,
        max_connections: a.max_connections.unwrap_or(64).max(1),
        retry_timeout: seconds(a.retry_timeout.unwrap_or(1.0), "retry_timeout")?,
        client_name: a.client_name.clone(),
        readonly: false,
    })
}

/// The one node of a leader and its replicas, or of a Sentinel service.
fn single(servers: &[String], a: &RedisArgs, config: &PoolConfig, made: &mut TlsMade) -> PyResult<Node> {
    let (user, pass) = (a.username.as_deref(), a.password.as_deref());
    if a.sentinels.is_empty() {
        let mut pools = Vec::with_capacity(servers.len());
        for (i, url) in servers.iter().enumerate() {
            let tls = made.get(a.tls.get(i).cloned().flatten())?;
            pools.push(Pool::new(url, a.db, user, pass, tls, config.clone(), None)?);
        }
        return Ok(Node::new(pools)?);
    }
    let [url] = servers else {
        return Err(PyValueError::new_err("sentinels: one URL (the data nodes' credentials and db)"));
    };
    let sentinel = Sentinel::new(SentinelConfig {
        sentinels: a.sentinels.iter().map(|(host, port)| Address::Tcp(host.clone(), *port)).collect(),
        service: a.service.clone().unwrap_or_default(),
        username: a.sentinel_username.clone(),
        password: a.sentinel_password.clone(),
        tls: made.get(a.sentinel_tls.clone())?,
        connect_timeout: match a.sentinel_connect_timeout {
            Some(t) => seconds(t, "sentinel_connect_timeout")?,
            None => config.connect_timeout,
        },
    })?;
    let tls = made.get(a.tls.first().cloned().flatten())?;
    let mut pools =
        vec![Pool::new(url, a.db, user, pass, tls.clone(), config.clone(), Some((sentinel.clone(), Role::Master)))?];
    if a.replica_reads {
        pools.push(Pool::new(url, a.db, user, pass, tls, config.clone(), Some((sentinel, Role::Replica)))?);
    }
    Ok(Node::new(pools)?)
}

/// The part of a URL every cluster node is reached with: its scheme and credentials.
fn cluster_prefix(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    let (auth, hostport) = match authority.rsplit_once('@') {
        Some((auth, hostport)) => (format!("{auth}@"), hostport),
        None => (String::new(), authority),
    };
    (format!("{scheme}://{auth}"), hostport.to_owned())
}

fn topology(servers: &[String], a: &RedisArgs) -> PyResult<Topology> {
    if !a.tls.is_empty() && a.tls.len() != servers.len() {
        return Err(PyValueError::new_err("tls: one entry (or None) per server"));
    }
    let config = pool_config(a)?;
    let mut made = TlsMade::default();
    match a.topology.as_deref().unwrap_or("single") {
        "single" => Ok(Topology::single(single(servers, a, &config, &mut made)?)),
        "sharded" => {
            let kind = a.ring.as_deref().and_then(RingKind::from_name).ok_or_else(|| {
                PyValueError::new_err("ring: 'django-redis' or 'django-redis-cache' for a sharded topology")
            })?;
            if a.ring_names.len() != servers.len() {
                return Err(PyValueError::new_err("ring_names: one name per server"));
            }
            let ring = Ring::new(kind, &a.ring_names).ok_or_else(|| PyValueError::new_err("no server"))?;
            let mut nodes = Vec::with_capacity(servers.len());
            for (i, url) in servers.iter().enumerate() {
                let tls = a.tls.get(i).cloned().flatten();
                let one = RedisArgs { tls: vec![tls], sentinels: Vec::new(), ..a.clone_plain() };
                nodes.push(single(std::slice::from_ref(url), &one, &config, &mut made)?);
            }
            Ok(Topology::sharded(nodes, ring)?)
        }
        "cluster" => {
            let (prefix, _) = cluster_prefix(servers.first().map_or("", String::as_str));
            let seeds = servers.iter().map(|url| cluster_prefix(url).1).collect();
            let recipe = NodeRecipe {
                prefix,
                username: a.username.clone(),
                password: a.password.clone(),
                tls: made.get(a.tls.first().cloned().flatten())?,
                config: config.clone(),
                replica_reads: a.replica_reads,
            };
            Ok(Topology::cluster(seeds, recipe, config.socket_timeout)?)
        }
        other => Err(PyValueError::new_err(format!("topology {other:?}: single, sharded or cluster"))),
    }
}

impl RedisArgs {
    /// The settings of one server of a sharded topology (no serializer: the codec is the
    /// client's).
    fn clone_plain(&self) -> Self {
        Self {
            topology: None,
            ring: None,
            ring_names: Vec::new(),
            db: self.db,
            username: self.username.clone(),
            password: self.password.clone(),
            connect_timeout: self.connect_timeout,
            socket_timeout: self.socket_timeout,
            max_connections: self.max_connections,
            retry_timeout: self.retry_timeout,
            client_name: self.client_name.clone(),
            pickle_protocol: None,
            serializer: None,
            ints_as_digits: None,
            compressor: None,
            compress_level: None,
            compress_min_len: None,
            tls: Vec::new(),
            sentinels: Vec::new(),
            service: None,
            replica_reads: self.replica_reads,
            sentinel_username: None,
            sentinel_password: None,
            sentinel_tls: None,
            sentinel_connect_timeout: None,
            near_max_entries: None,
            near_max_bytes: None,
            near_prefix: None,
            near_max_staleness: None,
            sign_secrets: None,
            sign_writes: false,
            sign_accept_unsigned: false,
        }
    }
}

/// Redis Cluster's hash slot of a key (CRC16 of the key, or of its first non-empty `{tag}`).
#[pyfunction]
pub fn cluster_key_slot(key: &Bound<'_, PyAny>) -> PyResult<u16> {
    Ok(key_slot(&super::args::arg_bytes(key)?))
}

/// The server (by position) a predecessor's ring puts a made key on: `kind` is
/// `django-redis` or `django-redis-cache`, `names` the servers as that ring names them.
#[pyclass(frozen, name = "HashRing", module = "django_rustcache._core")]
pub struct PyHashRing(Ring);

#[pymethods]
impl PyHashRing {
    #[new]
    fn new(kind: &str, names: Vec<String>) -> PyResult<Self> {
        let kind = RingKind::from_name(kind)
            .ok_or_else(|| PyValueError::new_err(format!("ring {kind:?}: django-redis or django-redis-cache")))?;
        Ok(Self(Ring::new(kind, &names).ok_or_else(|| PyValueError::new_err("a ring needs servers"))?))
    }

    /// The index of the server that holds `key`.
    fn index(&self, key: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.0.index(&super::args::arg_bytes(key)?))
    }
}

/// With `view_of` in the options: a view of that client (its connections, health, near cache
/// and codec), its calls counted in `metrics_for`'s alias (see `with_metrics`).
fn view_from(options: Option<&Bound<'_, PyDict>>) -> PyResult<Option<PyRedisClient>> {
    let Some(options) = options else { return Ok(None) };
    let Some(of) = options.get_item("view_of")? else { return Ok(None) };
    let of: PyRef<'_, PyRedisClient> = of.extract()?;
    let metrics = match options.get_item("metrics_for")? {
        Some(given) => {
            let (alias, backend, named, enabled): (String, String, bool, bool) = given.extract()?;
            let m = metrics::for_alias(&alias, &backend, named);
            m.set_enabled(enabled);
            m
        }
        None => of.metrics.clone(),
    };
    Ok(Some(PyRedisClient {
        client: of.client.clone(),
        codec: of.codec.clone(),
        loop_conns: of.loop_conns.clone(),
        metrics,
    }))
}

/// The near cache the options ask for (`near_max_entries` and `near_max_bytes` turn it on).
fn near(a: &RedisArgs) -> PyResult<Option<Near>> {
    let (Some(max_entries), Some(max_bytes)) = (a.near_max_entries, a.near_max_bytes) else {
        if a.near_max_entries.is_some() || a.near_max_bytes.is_some() || a.near_max_staleness.is_some() {
            return Err(PyValueError::new_err("near cache: near_max_entries and near_max_bytes go together"));
        }
        return Ok(None);
    };
    let coherence = match a.near_max_staleness {
        Some(s) => Coherence::MaxStaleness(seconds(s, "near_max_staleness")?),
        None => Coherence::Tracking(a.near_prefix.clone()),
    };
    Ok(Some(Near::new(NearSettings { limits: Limits { max_entries, max_bytes }, coherence })))
}

#[pymethods]
impl PyRedisClient {
    /// `servers`: URLs (``redis://``, ``unix://``); the options are keywords (see `_core.pyi`).
    /// With `view_of` (see `with_metrics`), a view of that client: the rest is not read.
    #[new]
    #[pyo3(signature = (servers=None, **options))]
    fn new(servers: Option<Vec<String>>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        if let Some(view) = view_from(options)? {
            return Ok(view);
        }
        let Some(servers) = servers else { return Err(PyValueError::new_err("no servers given")) };
        let mut args = RedisArgs::parse(options)?;
        let codec = codec(&mut args)?;
        let topology = topology(&servers, &args)?;
        let near = near(&args)?;
        Ok(Self {
            client: Arc::new(Client::with_near(topology, near)),
            codec: Arc::new(codec),
            loop_conns: Arc::default(),
            metrics: metrics::unlisted("django_rustcache.redis.RedisCache"),
        })
    }

    /// The same client (its connections, servers' health, near cache and counters), its calls
    /// recorded in `alias`'s metrics (`named`: an alias of `settings.CACHES`, whose metrics
    /// every view of that alias shares; else this view's own).
    /// Made by the instance's own class, so a Python subclass's methods stay on its views.
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

    /// Decode stored bytes as ``get`` does (inflated if compressed, then deserialized).
    fn loads<'py>(&self, py: Python<'py>, data: Vec<u8>) -> PyResult<Bound<'py, PyAny>> {
        let codec = &self.codec;
        match py.detach(|| codec.unpack(data)) {
            Some(data) => codec.decode(py, &data),
            None => {
                Err(PyValueError::new_err("a stored value was refused: its signature is missing or does not verify"))
            }
        }
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

    /// Each server's pool: address, health (up, errors, last_error), idle and open connections.
    fn servers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (node, i) in self.client.topology().pools() {
            let pool = &node.pools()[i];
            let state = pool.state();
            let d = PyDict::new(py);
            d.set_item("address", state.address)?;
            d.set_item("up", state.up)?;
            d.set_item("errors", state.errors)?;
            d.set_item("last_error", state.last_error)?;
            d.set_item("idle_connections", state.idle)?;
            d.set_item("open_connections", state.open)?;
            d.set_item("async_connections", pool.slots().open())?;
            d.set_item("waiting", state.waiting)?;
            d.set_item("went_down", state.went_down)?;
            d.set_item("came_back", state.came_back)?;
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

    /// The near cache's counters (hits, misses, invalidations, flushes) and what it holds
    /// (entries, bytes); None without a near cache.
    fn near_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(near) = self.client.near() else { return Ok(None) };
        let s = near.store().stats();
        let d = PyDict::new(py);
        for (name, value) in [
            ("hits", s.hits),
            ("misses", s.misses),
            ("invalidations", s.invalidations),
            ("flushes", s.flushes),
            ("entries", s.entries),
            ("bytes", s.bytes),
        ] {
            d.set_item(name, value)?;
        }
        Ok(Some(d))
    }

    /// Zero the near cache's counters.
    fn reset_near_stats(&self) {
        if let Some(near) = self.client.near() {
            near.store().reset_stats();
        }
    }

    /// The index of the server a read (or a write) of the first node goes to.
    #[pyo3(signature = (write=false))]
    fn server_for(&self, write: bool) -> usize {
        self.client.topology().server_for(write)
    }

    /// The nodes a call over every node visits (SCAN, ``execute(..., node=i)``): the one node,
    /// every shard, or every cluster primary serving slots now (the slot map read first).
    fn nodes(&self, py: Python<'_>) -> PyResult<Vec<usize>> {
        let client = &self.client;
        py.detach(|| if client.topology().needs_map() { client.refresh(false) } else { Ok(()) })?;
        Ok(client.topology().nodes())
    }

    /// The node (see ``nodes()``) of a made key's primary: where a command on it and on keys
    /// stored beside it goes with ``execute(..., node=)``.
    fn node_of(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<usize> {
        let key = super::args::arg_bytes(key)?;
        let client = &self.client;
        py.detach(|| if client.topology().needs_map() { client.refresh(false) } else { Ok(()) })?;
        Ok(client.topology().node_index(&key)?)
    }

    /// Whether this is a Redis Cluster.
    #[getter]
    fn cluster(&self) -> bool {
        self.client.topology().is_cluster()
    }

    /// The made keys, by position, in groups that one command may take together (one node;
    /// on a cluster, one slot).
    fn groups(&self, keys: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<Vec<usize>>> {
        let keys = keys.iter().map(super::args::arg_bytes).collect::<PyResult<Vec<_>>>()?;
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        Ok(self.client.topology().groups(&refs))
    }
}

impl PyRedisClient {
    /// A made key; a key refused counted as `method`'s outcome.
    fn key_for(
        &self,
        py: Python<'_>,
        method: Method,
        prefix: &Bound<'_, PyAny>,
        version: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<u8>> {
        match make_key(py, prefix, version, key) {
            Ok(key) => Ok(key.into_bytes()),
            Err(e) => {
                self.metrics.record(method, Outcome::InvalidKey, Started::default());
                Err(e)
            }
        }
    }

    /// `value` encoded for `method`; a value that cannot be (unpicklable) counted as its error.
    fn encode_for(&self, py: Python<'_>, method: Method, value: &Bound<'_, PyAny>) -> PyResult<Encoded> {
        self.codec.encode(py, value).inspect_err(|_| self.metrics.record(method, Outcome::Error, Started::default()))
    }

    /// A multi-key read of `asked` keys found `found`: its outcome, keys and bytes recorded.
    fn count_many(&self, started: Started, asked: usize, found: usize, sent: usize, received: usize) {
        self.metrics.record(Method::GetMany, Outcome::found(found > 0), started);
        self.metrics.keys(found, asked - found);
        self.metrics.bytes(sent, received);
    }

    /// The method a raw command is counted as: `op` when the backend names it, else by the
    /// command (`TTL` as `ttl`, `HSET` as `collection`...), else `execute`.
    fn op(op: Option<&str>, command: Option<&[u8]>) -> Method {
        if let Some(op) = op {
            return match op {
                "ttl" | "pttl" => Method::Ttl,
                "expire" | "pexpire" | "expire_at" | "pexpire_at" => Method::Expire,
                "persist" => Method::Persist,
                "keys" | "iter_keys" | "delete_pattern" => Method::Scan,
                "lock" => Method::Lock,
                _ => Method::Other,
            };
        }
        let Some(command) = command else { return Method::Execute };
        let upper = command.to_ascii_uppercase();
        match upper.as_slice() {
            b"TTL" | b"PTTL" => Method::Ttl,
            b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT" => Method::Expire,
            b"PERSIST" => Method::Persist,
            b"SCAN" | b"KEYS" | b"UNLINK" => Method::Scan,
            [b'H' | b'S' | b'L' | b'Z', ..] if upper.as_slice() != b"SET" => Method::Collection,
            _ => Method::Execute,
        }
    }

    /// `mapping`'s items as made keys and encoded values.
    fn encode_items<'py>(
        &self,
        py: Python<'py>,
        mapping: &Bound<'py, PyAny>,
        prefix: Option<Bound<'py, PyAny>>,
        version: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Vec<Vec<u8>>, Vec<Encoded>)> {
        let mapping = match mapping.cast::<PyDict>() {
            Ok(d) => d.clone(),
            Err(_) => PyDict::from_sequence(&mapping.call_method0("items")?)?,
        };
        let none = py.None().into_bound(py);
        let prefix = prefix.unwrap_or_else(|| none.clone());
        let version = version.unwrap_or_else(|| none.clone());
        let mut keys = Vec::with_capacity(mapping.len());
        let mut values = Vec::with_capacity(mapping.len());
        for (k, v) in mapping.iter() {
            keys.push(make_key(py, &prefix, &version, &k)?.into_bytes());
            values.push(self.codec.encode(py, &v)?);
        }
        Ok((keys, values))
    }

    /// The made keys of `keys`, and the keys as given.
    fn made_keys<'py>(
        py: Python<'py>,
        prefix: &Bound<'py, PyAny>,
        version: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<MadeKeys<'py>> {
        let mut made = Vec::new();
        let mut originals = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            made.push(make_key(py, prefix, version, &key)?.into_bytes());
            originals.push(key);
        }
        Ok((made, originals))
    }
}
