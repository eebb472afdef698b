//! Arguments as the Python layer gives them, parsed once into the cores' types: durations,
//! TLS settings, command arguments, and every redis client option ([`RedisArgs`]).

use std::time::Duration;

use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyString};

use crate::net::{TlsSettings, Verify};

/// A duration given in seconds (a float), refused when negative or not finite.
pub fn seconds(s: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("{what} must be a non-negative number of seconds")))
}

/// One server's TLS settings as the Python layer gives them: (verify: "none" | "chain" |
/// "full", ca_certs, ca_path, ca_data, certfile, keyfile, tls13_only).
pub type TlsArgs = (String, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, bool);

pub fn tls_settings(args: TlsArgs) -> PyResult<TlsSettings> {
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

/// A command argument as bytes: bytes as they are, str as UTF-8, numbers as their digits.
pub fn arg_bytes(arg: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
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

/// Every option of a redis client, as keywords (see `_core.pyi`).
#[derive(Default)]
pub struct RedisArgs {
    /// `single` (a leader and its read replicas, or a Sentinel service), `sharded`, `cluster`.
    pub topology: Option<String>,
    /// The sharded topology's ring: `django-redis` or `django-redis-cache`.
    pub ring: Option<String>,
    /// The servers as that ring names them, in LOCATION order.
    pub ring_names: Vec<String>,
    pub db: Option<i64>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Option<f64>,
    pub socket_timeout: Option<f64>,
    pub max_connections: Option<usize>,
    pub retry_timeout: Option<f64>,
    pub client_name: Option<String>,
    pub pickle_protocol: Option<i32>,
    /// `(dumps, loads)`; None: pickle.
    pub serializer: Option<(Py<PyAny>, Py<PyAny>)>,
    pub ints_as_digits: Option<bool>,
    pub compressor: Option<String>,
    pub compress_level: Option<i32>,
    pub compress_min_len: Option<usize>,
    /// One entry (or None) per server.
    pub tls: Vec<Option<TlsArgs>>,
    pub sentinels: Vec<(String, u16)>,
    pub service: Option<String>,
    /// Reads go to replicas (a Sentinel service's, a cluster shard's).
    pub replica_reads: bool,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    pub sentinel_tls: Option<TlsArgs>,
    pub sentinel_connect_timeout: Option<f64>,
    /// The near cache's bounds (both given, or no near cache).
    pub near_max_entries: Option<usize>,
    pub near_max_bytes: Option<usize>,
    /// The key prefix the near cache tracks (None with the cache: every key).
    pub near_prefix: Option<Vec<u8>>,
    /// Seconds: age-bounded copies instead of tracking.
    pub near_max_staleness: Option<f64>,
    /// Signed values: the secrets (the current one first) values are checked with; None: none.
    pub sign_secrets: Option<Vec<Vec<u8>>>,
    /// Values written are signed (`SIGN` True or `"migrate"`).
    pub sign_writes: bool,
    /// Read values without a tag too (`SIGN: "migrate"`, or off).
    pub sign_accept_unsigned: bool,
}

/// The value of `name` in `options`, if given (and not None).
fn item<'py, T: FromPyObjectOwned<'py>>(options: &Bound<'py, PyDict>, name: &str) -> PyResult<Option<T>> {
    match options.get_item(name)? {
        Some(v) if !v.is_none() => match v.extract::<T>() {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                let e: PyErr = e.into();
                Err(PyTypeError::new_err(format!("{name}: {e}")))
            }
        },
        _ => Ok(None),
    }
}

impl RedisArgs {
    /// The options given as keywords; an unknown one is a TypeError naming it.
    pub fn parse(options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let Some(o) = options else { return Ok(Self::default()) };
        for key in o.keys() {
            let key: String = key.extract()?;
            if !FIELDS.contains(&key.as_str()) {
                return Err(PyTypeError::new_err(format!("RedisClient() got an unexpected keyword argument {key:?}")));
            }
        }
        Ok(Self {
            topology: item(o, "topology")?,
            ring: item(o, "ring")?,
            ring_names: item(o, "ring_names")?.unwrap_or_default(),
            db: item(o, "db")?,
            username: item(o, "username")?,
            password: item(o, "password")?,
            connect_timeout: item(o, "connect_timeout")?,
            socket_timeout: item(o, "socket_timeout")?,
            max_connections: item(o, "max_connections")?,
            retry_timeout: item(o, "retry_timeout")?,
            client_name: item(o, "client_name")?,
            pickle_protocol: item(o, "pickle_protocol")?,
            serializer: item(o, "serializer")?,
            ints_as_digits: item(o, "ints_as_digits")?,
            compressor: item(o, "compressor")?,
            compress_level: item(o, "compress_level")?,
            compress_min_len: item(o, "compress_min_len")?,
            tls: item(o, "tls")?.unwrap_or_default(),
            sentinels: item(o, "sentinels")?.unwrap_or_default(),
            service: item(o, "service")?,
            replica_reads: item(o, "replica_reads")?.unwrap_or(false),
            sentinel_username: item(o, "sentinel_username")?,
            sentinel_password: item(o, "sentinel_password")?,
            sentinel_tls: item(o, "sentinel_tls")?,
            sentinel_connect_timeout: item(o, "sentinel_connect_timeout")?,
            near_max_entries: item(o, "near_max_entries")?,
            near_max_bytes: item(o, "near_max_bytes")?,
            near_prefix: item(o, "near_prefix")?,
            near_max_staleness: item(o, "near_max_staleness")?,
            sign_secrets: item(o, "sign_secrets")?,
            sign_writes: item(o, "sign_writes")?.unwrap_or(false),
            sign_accept_unsigned: item(o, "sign_accept_unsigned")?.unwrap_or(false),
        })
    }
}

const FIELDS: &[&str] = &[
    "topology",
    "ring",
    "ring_names",
    "db",
    "username",
    "password",
    "connect_timeout",
    "socket_timeout",
    "max_connections",
    "retry_timeout",
    "client_name",
    "pickle_protocol",
    "serializer",
    "ints_as_digits",
    "compressor",
    "compress_level",
    "compress_min_len",
    "tls",
    "sentinels",
    "service",
    "replica_reads",
    "sentinel_username",
    "sentinel_password",
    "sentinel_tls",
    "sentinel_connect_timeout",
    "near_max_entries",
    "near_max_bytes",
    "near_prefix",
    "near_max_staleness",
    "sign_secrets",
    "sign_writes",
    "sign_accept_unsigned",
];
