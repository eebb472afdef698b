//! The metrics (`crate::metrics`) as Python sees them: one alias's snapshot as a dict, every
//! alias's for the exporters.

use std::time::UNIX_EPOCH;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::metrics::{self, Metrics, lower};

/// Seconds from nanoseconds.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A view of a client made by the client's own class (so a Python subclass's methods stay on
/// its views), its calls counted in `alias`'s metrics: the class's constructor takes `view_of`
/// and `metrics_for`.
pub fn view_with_metrics<'py>(
    client: &Bound<'py, PyAny>,
    alias: String,
    backend: String,
    named: bool,
    enabled: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(client.py());
    kwargs.set_item("view_of", client)?;
    kwargs.set_item("metrics_for", (alias, backend, named, enabled))?;
    client.get_type().call((), Some(&kwargs))
}

/// One alias's metrics: `alias`, `backend`, `enabled`, `since` (a Unix time), `calls`
/// (method -> outcome -> calls), `keys_found`, `keys_missed`, `bytes_sent`, `bytes_received`,
/// and `latency` (method -> `count`, `sum_seconds`, `p50_seconds`, `p99_seconds`, `buckets`: a
/// list of `(upper bound in seconds, calls)` for the buckets that hold any, in order).
pub fn snapshot<'py>(py: Python<'py>, m: &Metrics) -> PyResult<Bound<'py, PyDict>> {
    let s = m.snapshot();
    let out = PyDict::new(py);
    out.set_item("alias", &m.alias)?;
    out.set_item("backend", &m.backend)?;
    out.set_item("enabled", m.enabled())?;
    out.set_item("since", s.since.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()))?;
    let calls = PyDict::new(py);
    for (method, outcome, n) in s.calls {
        let row = if let Some(row) = calls.get_item(method)? {
            row.cast_into::<PyDict>()?
        } else {
            let row = PyDict::new(py);
            calls.set_item(method, &row)?;
            row
        };
        row.set_item(outcome, n)?;
    }
    out.set_item("calls", calls)?;
    out.set_item("keys_found", s.keys_found)?;
    out.set_item("keys_missed", s.keys_missed)?;
    out.set_item("bytes_sent", s.bytes_sent)?;
    out.set_item("bytes_received", s.bytes_received)?;
    let latency = PyDict::new(py);
    for l in s.latency {
        let d = PyDict::new(py);
        d.set_item("count", l.count)?;
        d.set_item("sum_seconds", seconds(l.sum_ns))?;
        d.set_item("p50_seconds", seconds(l.quantile(0.5)))?;
        d.set_item("p99_seconds", seconds(l.quantile(0.99)))?;
        let buckets = PyList::empty(py);
        for (i, n) in &l.buckets {
            buckets.append((seconds(lower(i + 1)), n))?;
        }
        d.set_item("buckets", buckets)?;
        latency.set_item(l.method, d)?;
    }
    out.set_item("latency", latency)?;
    Ok(out)
}

/// Every alias's metrics alive in this process (see `snapshot` for each one's shape): those of
/// `settings.CACHES`' aliases first, then those of backends made by hand.
#[pyfunction]
pub fn metrics_snapshots(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let out = PyList::empty(py);
    for m in metrics::all() {
        out.append(snapshot(py, &m)?)?;
    }
    Ok(out)
}

/// The method and outcome names metrics use, and the latency buckets' upper bounds (seconds).
#[pyfunction]
pub fn metrics_labels(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("methods", metrics::METHODS.to_vec())?;
    out.set_item("outcomes", metrics::OUTCOMES.to_vec())?;
    Ok(out)
}

/// Zero every alias's metrics (a forked child starts from zero).
#[pyfunction]
pub fn reset_all_metrics() {
    metrics::reset_all();
}
