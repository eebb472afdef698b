//! Making and checking cache keys from Python arguments, so the hot path is one call.

use std::ffi::CString;
use std::fmt::Write as _;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyInt, PyString};

use crate::keys::{self, KeyProblems, MEMCACHE_MAX_KEY_LENGTH};

static CACHE_KEY_WARNING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static INVALID_CACHE_KEY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Whether `text` matches a glob `pattern` as redis's MATCH reads one (`*`, `?`, `[a-z]`,
/// `[^a]`, `\\` escaping).
#[pyfunction]
pub fn glob_match(pattern: &str, text: &str) -> bool {
    keys::glob_match(pattern, text)
}

/// What to do about a key memcached would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvalid {
    /// Warn with `CacheKeyWarning`, as Django's in-process backends do.
    Warn,
    /// Raise `InvalidCacheKey`, as Django's memcached backends do.
    Raise,
    /// Use the key's digest form instead (memcached's `KEY_HASHING`).
    Hash,
}

/// Append `obj` as Django's `"%s" % obj` would render it (bytes as `b'...'`, as Django's
/// `make_key` writes them, so a warm switch finds the entries its predecessor stored).
fn push_text(out: &mut String, obj: &Bound<'_, PyAny>) -> PyResult<()> {
    push_key_text(out, obj, false)
}

/// Append `obj` as text; with `bytes_as_text`, bytes as the UTF-8 text they hold (a key a
/// custom `KEY_FUNCTION` made, or a server gave back) instead of their `str()`.
fn push_key_text(out: &mut String, obj: &Bound<'_, PyAny>, bytes_as_text: bool) -> PyResult<()> {
    if let Ok(s) = obj.cast_exact::<PyString>() {
        out.push_str(s.to_str()?);
    } else if bytes_as_text && let Ok(b) = obj.cast_exact::<PyBytes>() {
        // A key as a server gave it back (SCAN): its text, not the repr of the bytes.
        let text = std::str::from_utf8(b.as_bytes())
            .map_err(|_| PyValueError::new_err(format!("the key {b:?} is not UTF-8 text")))?;
        out.push_str(text);
    } else if let Some(n) = obj.cast_exact::<PyInt>().ok().and_then(|i| i.extract::<i64>().ok()) {
        // Writing to a String cannot fail.
        let _ = write!(out, "{n}");
    } else {
        out.push_str(obj.str()?.to_str()?);
    }
    Ok(())
}

/// The cache key for Python's (`prefix`, `version`, `key`). With `prefix` None, `key` is a key
/// some custom `KEY_FUNCTION` already made. Either way it is checked by memcached's rules and
/// warned about the way Django's `BaseCache.validate_key` does.
pub fn make_key(
    py: Python<'_>,
    prefix: &Bound<'_, PyAny>,
    version: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
) -> PyResult<String> {
    make_key_checked(py, prefix, version, key, OnInvalid::Warn)
}

/// [`make_key`], choosing between Django's warning and its `InvalidCacheKey`.
pub fn make_key_checked(
    py: Python<'_>,
    prefix: &Bound<'_, PyAny>,
    version: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
    on_invalid: OnInvalid,
) -> PyResult<String> {
    let mut out = String::new();
    if prefix.is_none() {
        push_key_text(&mut out, key, true)?;
    } else {
        let mut v = String::new();
        push_text(&mut v, version)?;
        if let Ok(p) = prefix.cast_exact::<PyString>()
            && let Ok(k) = key.cast_exact::<PyString>()
        {
            keys::make_default(&mut out, p.to_str()?, &v, k.to_str()?);
        } else {
            push_text(&mut out, prefix)?;
            out.push(':');
            out.push_str(&v);
            out.push(':');
            push_text(&mut out, key)?;
        }
    }
    let mut problems = keys::check(&out);
    // Memcached counts bytes where Django counts characters: refuse what the server would.
    if on_invalid != OnInvalid::Warn && out.len() > MEMCACHE_MAX_KEY_LENGTH {
        problems.too_long = true;
    }
    if !problems.is_ok() {
        match on_invalid {
            OnInvalid::Warn => warn_invalid(py, &out, problems)?,
            OnInvalid::Raise => return Err(invalid_key_error(py, &out, problems)),
            OnInvalid::Hash => return Ok(keys::digest_form(&out)),
        }
    }
    Ok(out)
}

fn messages(py: Python<'_>, key: &str, problems: KeyProblems) -> PyResult<Vec<String>> {
    let repr = PyString::new(py, key).repr()?;
    let repr = repr.to_str()?;
    let mut messages = Vec::with_capacity(2);
    if problems.too_long {
        messages.push(format!(
            "Cache key will cause errors if used with memcached: {repr} (longer than {MEMCACHE_MAX_KEY_LENGTH})"
        ));
    }
    if problems.bad_chars {
        messages.push(format!("Cache key contains characters that will cause errors if used with memcached: {repr}"));
    }
    Ok(messages)
}

/// Django's `InvalidCacheKey` for a key memcached would refuse (the first problem, as
/// Django's memcached `validate_key` reports it).
#[cold]
pub fn invalid_key_error(py: Python<'_>, key: &str, problems: KeyProblems) -> PyErr {
    let message = match messages(py, key, problems) {
        Ok(m) => m.into_iter().next().unwrap_or_default(),
        Err(e) => return e,
    };
    match INVALID_CACHE_KEY.import(py, "django.core.cache.backends.base", "InvalidCacheKey") {
        Ok(cls) => match cls.call1((message,)) {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// Emit Django's `CacheKeyWarning`s for a key memcached would refuse.
pub fn warn_if_invalid(py: Python<'_>, key: &str) -> PyResult<()> {
    let problems = keys::check(key);
    if problems.is_ok() {
        return Ok(());
    }
    warn_invalid(py, key, problems)
}

#[cold]
fn warn_invalid(py: Python<'_>, key: &str, problems: KeyProblems) -> PyResult<()> {
    let category = CACHE_KEY_WARNING.import(py, "django.core.cache.backends.base", "CacheKeyWarning")?;
    for message in messages(py, key, problems)? {
        // repr() escapes NUL, so the message never holds one.
        let message = CString::new(message).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        PyErr::warn(py, category, &message, 1)?;
    }
    Ok(())
}

/// Warn (`CacheKeyWarning`) about a made key that memcached would refuse, as Django's
/// `BaseCache.validate_key` does; with `raise_error`, raise `InvalidCacheKey` instead, as its
/// memcached backends do.
#[pyfunction]
#[pyo3(signature = (key, raise_error=false))]
pub fn check_key(py: Python<'_>, key: &str, raise_error: bool) -> PyResult<()> {
    let problems = keys::check(key);
    if problems.is_ok() {
        return Ok(());
    }
    if raise_error { Err(invalid_key_error(py, key, problems)) } else { warn_invalid(py, key, problems) }
}
