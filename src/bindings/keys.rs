//! Making and checking cache keys from Python arguments, so the hot path is one call.

use std::ffi::CString;
use std::fmt::Write as _;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyInt, PyString};

use crate::keys::{self, KeyProblems, MEMCACHE_MAX_KEY_LENGTH};

static CACHE_KEY_WARNING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Append `obj` as Django's `"%s" % obj` would render it.
fn push_text(out: &mut String, obj: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(s) = obj.cast_exact::<PyString>() {
        out.push_str(s.to_str()?);
    } else if let Some(n) = obj
        .cast_exact::<PyInt>()
        .ok()
        .and_then(|i| i.extract::<i64>().ok())
    {
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
    let mut out = String::new();
    if prefix.is_none() {
        push_text(&mut out, key)?;
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
    warn_if_invalid(py, &out)?;
    Ok(out)
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
    let category =
        CACHE_KEY_WARNING.import(py, "django.core.cache.backends.base", "CacheKeyWarning")?;
    let repr = PyString::new(py, key).repr()?;
    let repr = repr.to_str()?;
    let mut messages = Vec::with_capacity(2);
    if problems.too_long {
        messages.push(format!(
            "Cache key will cause errors if used with memcached: {repr} (longer than {MEMCACHE_MAX_KEY_LENGTH})"
        ));
    }
    if problems.bad_chars {
        messages.push(format!(
            "Cache key contains characters that will cause errors if used with memcached: {repr}"
        ));
    }
    for message in messages {
        // repr() escapes NUL, so the message never holds one.
        let message = CString::new(message)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        PyErr::warn(py, category, &message, 1)?;
    }
    Ok(())
}

/// Warn (`CacheKeyWarning`) about a made key that memcached would refuse, as Django's
/// `BaseCache.validate_key` does.
#[pyfunction]
pub fn check_key(py: Python<'_>, key: &str) -> PyResult<()> {
    warn_if_invalid(py, key)
}
