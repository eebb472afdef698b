//! The value codecs. Memcached: pylibmc's flags and layout. Redis: Django's RedisCache format (and django-redis's): an
//! exact `int` as its decimal digits (so INCR works on it and other clients read it), anything
//! else pickled or given to the configured serializer, then compressed if configured. Replies
//! of commands as given become Python values here too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyInt, PyList, PyString};
use redis::Value;

use super::aio::{OFF_IO_FROM, off_loop};
use crate::codec;
use crate::compress::{self, Compressor};
use crate::memcached::client::Item;
use crate::sign::{self, Opened, Signer};

static PICKLE_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static PICKLE_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `pickle.dumps(value, protocol)`.
pub fn pickle_dumps<'py>(py: Python<'py>, value: &Bound<'py, PyAny>, protocol: i32) -> PyResult<Bound<'py, PyAny>> {
    PICKLE_DUMPS.import(py, "pickle", "dumps")?.call1((value, protocol))
}

/// `pickle.loads(data)`.
pub fn pickle_loads<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    PICKLE_LOADS.import(py, "pickle", "loads")?.call1((data,))
}

/// Signed values (OPTIONS `SIGN`): every value but an int stored as digits is written with a
/// tag; one read without a tag that verifies is a miss, never decoded (in `migrate` mode an
/// untagged value is still read, so a cache written before signing stays warm).
pub struct Signing {
    signer: Signer,
    /// Values written are signed (`SIGN` on or `migrate`); without, only read ones are checked
    /// (a site that turned `SIGN` off still reads what it signed, and never decodes a forgery).
    writes: bool,
    accept_unsigned: bool,
    /// Values refused since the client was made.
    pub rejected: AtomicU64,
    /// When a refusal was last logged (Unix seconds): at most once a minute.
    logged_at: AtomicU64,
}

impl Signing {
    pub fn new(secrets: Option<Vec<Vec<u8>>>, writes: bool, accept_unsigned: bool) -> PyResult<Option<Self>> {
        let Some(secrets) = secrets else { return Ok(None) };
        let signer = Signer::new(&secrets)
            .ok_or_else(|| PyValueError::new_err("signing needs a secret (SECRET_KEY is empty)"))?;
        let (rejected, logged_at) = (AtomicU64::new(0), AtomicU64::new(0));
        Ok(Some(Self { signer, writes, accept_unsigned: accept_unsigned || !writes, rejected, logged_at }))
    }

    /// `data` as it is stored: signed when writes are.
    pub fn seal(&self, context: &[u8], data: Vec<u8>) -> Vec<u8> {
        if self.writes { self.signer.sign(context, &data) } else { data }
    }

    /// The bytes under a valid tag; untagged bytes when `untagged_ok` (digits) or in migrate
    /// mode; else None, counted and logged.
    pub fn open(&self, context: &[u8], data: Vec<u8>, untagged_ok: impl FnOnce(&[u8]) -> bool) -> Option<Vec<u8>> {
        match self.signer.open(context, data) {
            Opened::Signed(data) => return Some(data),
            Opened::Unsigned(data) if self.accept_unsigned || untagged_ok(&data) => return Some(data),
            Opened::Unsigned(_) | Opened::Forged => {}
        }
        let n = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.logged_at.load(Ordering::Relaxed);
        if now >= last + 60 && self.logged_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            Python::attach(|py| log_rejected(py, n));
        }
        None
    }
}

/// One warning on the `django_rustcache.signing` logger (a burst of refusals is said once).
fn log_rejected(py: Python<'_>, total: u64) {
    let said = py.import("logging").and_then(|logging| {
        logging.call_method1("getLogger", ("django_rustcache.signing",))?.call_method1(
            "warning",
            (
                "a cached value was refused: its signature is missing or does not verify (it was \
                 written by another client, tampered with, or signed with another SECRET_KEY); \
                 read as a miss, never decoded (%d refused so far by this client; said at most \
                 once a minute)",
                total,
            ),
        )
    });
    if let Err(e) = said {
        e.write_unraisable(py, None);
    }
}

/// A value on its way to the server: serialized while attached, compressed (if it may be) once
/// detached.
pub struct Encoded {
    data: Vec<u8>,
    compressible: bool,
}

/// How values are written and read: ints as digits (unless a serializer of Django's kind takes
/// everything), the rest through pickle or a serializer's `dumps`/`loads`, then a compressor.
pub struct RedisCodec {
    pub pickle_protocol: i32,
    /// `(dumps, loads)`; None means pickle.
    pub serializer: Option<(Py<PyAny>, Py<PyAny>)>,
    pub ints_as_digits: bool,
    pub compressor: Option<Compressor>,
    /// Inflate values whose header names a compression format: whenever a compressor is set, and
    /// with pickle (whose output never starts like a compressed stream).
    pub inflate: bool,
    pub signing: Option<Signing>,
}

impl RedisCodec {
    pub fn encode(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Encoded> {
        self.encode_as(py, value, self.ints_as_digits, self.pickle_protocol)
    }

    /// `encode`, with ints as digits only when `digits` (sorted-set members never are, in
    /// django-redis) and pickle's `protocol` (set members must be byte for byte django-redis's).
    pub fn encode_as(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        digits: bool,
        protocol: i32,
    ) -> PyResult<Encoded> {
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

    /// The bytes to store (detached: compression and signing run without the GIL). An int as
    /// digits is neither compressed nor signed (INCR needs its digits).
    pub fn finish(&self, value: Encoded) -> Result<Vec<u8>, crate::error::Error> {
        let data = match &self.compressor {
            Some(c) if value.compressible => c.compress(value.data)?,
            _ => value.data,
        };
        Ok(match &self.signing {
            Some(signing) if value.compressible => signing.seal(b"", data),
            _ => data,
        })
    }

    /// Stored bytes, their signature checked (with `SIGN`) and inflated if compressed
    /// (detached); None for a value refused (a miss).
    pub fn unpack(&self, data: Vec<u8>) -> Option<Vec<u8>> {
        let data = match &self.signing {
            Some(signing) => signing.open(b"", data, |d| self.ints_as_digits && sign::is_digits(d))?,
            // (signed, and no secret to check it with: never decoded)
            None if data.starts_with(sign::MAGIC) => return None,
            None => data,
        };
        Some(if self.inflate { compress::decompress(&data).unwrap_or(data) } else { data })
    }

    /// Whether `finish` has work to do beyond handing the bytes over.
    fn transforms(&self, value: &Encoded) -> bool {
        value.compressible
            && (self.signing.as_ref().is_some_and(|s| s.writes)
                || self.compressor.as_ref().is_some_and(|c| value.data.len() >= c.min_length))
    }

    /// django-redis's decode: `int(data)` if that works (Django's `RedisSerializer.loads` too),
    /// else the serializer's `loads`.
    pub fn decode<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
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

/// A reply as Python: nil None, integers int, bulk strings bytes, status lines str, arrays
/// lists, maps dicts.
pub fn reply(py: Python<'_>, value: Value) -> PyResult<Bound<'_, PyAny>> {
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

/// The bytes to store for `values`, then `go` with them: compressed (where they are to be) off
/// the loop's thread and without the GIL, on a blocking thread when large; at once when nothing
/// is to be compressed.
pub fn finished(
    codec: &Arc<RedisCodec>,
    values: Vec<Encoded>,
    go: impl FnOnce(Result<Vec<Vec<u8>>, crate::error::Error>) + Send + 'static,
) {
    if !values.iter().any(|v| codec.transforms(v)) {
        return go(Ok(values.into_iter().map(|v| v.data).collect()));
    }
    let large = values.iter().map(|v| v.data.len()).sum::<usize>() >= OFF_IO_FROM;
    let codec = codec.clone();
    off_loop(large, move || go(values.into_iter().map(|v| codec.finish(v)).collect()));
}

/// Stored bytes inflated where compressed, then `go` with them (the caller is on an I/O thread:
/// large values go to a blocking thread).
pub fn unpacked(
    codec: &Arc<RedisCodec>,
    values: Vec<Option<Vec<u8>>>,
    go: impl FnOnce(Vec<Option<Vec<u8>>>) + Send + 'static,
) {
    let large = codec.inflate && values.iter().flatten().map(Vec::len).sum::<usize>() >= OFF_IO_FROM;
    let codec = codec.clone();
    let work = move || go(values.into_iter().map(|v| v.and_then(|data| codec.unpack(data))).collect());
    if large { off_loop(true, work) } else { work() }
}

/// The bytes to store for one value, from a task: compressed (where it is to be) on a blocking
/// thread when large.
pub async fn finish_async(codec: Arc<RedisCodec>, value: Encoded) -> Result<Vec<u8>, crate::error::Error> {
    if !codec.transforms(&value) || value.data.len() < OFF_IO_FROM {
        return codec.finish(value);
    }
    tokio::task::spawn_blocking(move || codec.finish(value))
        .await
        .unwrap_or_else(|e| Err(crate::error::Error::new(crate::error::ErrorKind::Io, format!("compression: {e}"))))
}

/// How values become bytes, and back.
pub struct MemcachedCodec {
    pub pickle_protocol: i32,
    pub min_compress_len: usize,
    pub compress_level: u32,
    pub signing: Option<Signing>,
}

impl MemcachedCodec {
    /// pylibmc's layout: exact bytes, str and int types are stored as they are (ints as
    /// digits, so the server's incr works); everything else, bools included, is pickled (a bool
    /// then reads back as a bool here and in pylibmc alike).
    pub fn encode(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<(u32, Vec<u8>)> {
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
    pub fn compresses(&self, data: &[u8]) -> bool {
        self.min_compress_len > 0 && data.len() >= self.min_compress_len
    }

    pub fn decode<'py>(py: Python<'py>, flags: u32, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
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

/// Compress, then sign, for the wire (runs detached). The tag covers the flags too: a signed
/// value given another type flag does not verify. An int as digits is not signed (the server's
/// incr needs them).
pub fn pack(codec: &MemcachedCodec, (flags, data): (u32, Vec<u8>)) -> (u32, Vec<u8>) {
    let (data, flags) = codec::maybe_compress(data, flags, codec.min_compress_len, codec.compress_level);
    match &codec.signing {
        Some(signing) if !is_int_flag(flags) => (flags, signing.seal(&flags.to_be_bytes(), data)),
        _ => (flags, data),
    }
}

fn is_int_flag(flags: u32) -> bool {
    matches!(flags & codec::TYPE_MASK, codec::FLAG_INTEGER | codec::FLAG_LONG)
}

/// An item read: its signature checked (with `SIGN`; None when refused, a miss), then
/// inflated if compressed (detached).
pub fn unpack(codec: &MemcachedCodec, item: Item) -> Result<Option<(u32, Vec<u8>)>, crate::error::Error> {
    let Item { flags, data, .. } = item;
    let data = match &codec.signing {
        Some(signing) => {
            let Some(data) = signing.open(&flags.to_be_bytes(), data, |d| is_int_flag(flags) && sign::is_digits(d))
            else {
                return Ok(None);
            };
            data
        }
        None if data.starts_with(sign::MAGIC) => return Ok(None),
        None => data,
    };
    let (data, flags) = codec::inflate_if_needed(data, flags)?;
    Ok(Some((flags, data)))
}

/// `unpack` of an item, if one was found.
pub fn unpack_found(codec: &MemcachedCodec, item: Option<Item>) -> Result<Option<(u32, Vec<u8>)>, crate::error::Error> {
    item.map_or(Ok(None), |item| unpack(codec, item))
}
