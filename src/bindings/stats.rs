//! The client-side counters as Python sees them, one shape for every network backend.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::net::ClientStats;

/// `{"hits", "misses", "sets", "failures"}`.
pub fn client_stats(py: Python<'_>, s: ClientStats) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("hits", s.hits)?;
    out.set_item("misses", s.misses)?;
    out.set_item("sets", s.sets)?;
    out.set_item("failures", s.failures)?;
    Ok(out)
}
