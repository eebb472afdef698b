//! How an async call reaches Python: the caller gets an asyncio future of its running loop;
//! the call runs on the process's I/O runtime without the GIL; its outcome comes back through
//! the loop's `call_soon_threadsafe` and is made into Python objects (unpickled) there, on the
//! loop's own thread.
//!
//! Outcomes finished while the loop is busy wait in one queue and go over together: one
//! `call_soon_threadsafe` per loop for all of them. Nothing here is bound to one loop: each
//! future carries its loop, so a second `asyncio.run()`, or loops in several threads, work
//! alike. A future whose caller gave up (cancelled) is skipped; a loop that closed meanwhile
//! drops what was on its way.

use std::future::Future;

use parking_lot::Mutex;
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::error::Error;
use crate::net::aio::runtime;

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What a finished call becomes on the loop's thread (with the GIL): its result.
pub type Make = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// A finished call on its way to its future.
struct Done {
    future: Py<PyAny>,
    event_loop: Py<PyAny>,
    outcome: Result<Make, Error>,
}

/// Finished calls not yet handed to their loops.
static OUTBOX: Mutex<Vec<Done>> = Mutex::new(Vec::new());

/// Outcomes for one loop, run by it (`call_soon_threadsafe(batch)`).
#[pyclass(frozen, module = "django_rustcache._core")]
struct Batch {
    done: Mutex<Vec<Done>>,
}

#[pymethods]
impl Batch {
    fn __call__(&self, py: Python<'_>) {
        let done = std::mem::take(&mut *self.done.lock());
        for Done { future, outcome, .. } in done {
            let future = future.bind(py);
            // Cancelled (or otherwise settled) while the call was out: nobody waits for it.
            if future.call_method0("done").and_then(|d| d.is_truthy()).unwrap_or(true) {
                continue;
            }
            let settled = match outcome.map_err(PyErr::from).and_then(|make| make(py)) {
                Ok(value) => future.call_method1("set_result", (value,)),
                Err(e) => future.call_method1("set_exception", (e.into_value(py),)),
            };
            if let Err(e) = settled {
                e.write_unraisable(py, Some(future));
            }
        }
    }
}

/// Hand every finished call to its loop. A loop that is closed refuses: what was for it is
/// dropped (its futures are gone with it).
fn flush(py: Python<'_>) {
    let done = std::mem::take(&mut *OUTBOX.lock());
    let mut by_loop: Vec<(Py<PyAny>, Vec<Done>)> = Vec::new();
    for d in done {
        match by_loop.iter_mut().find(|(l, _)| l.is(&d.event_loop)) {
            Some((_, list)) => list.push(d),
            None => by_loop.push((d.event_loop.clone_ref(py), vec![d])),
        }
    }
    for (event_loop, done) in by_loop {
        let scheduled = Py::new(py, Batch { done: Mutex::new(done) })
            .and_then(|batch| event_loop.bind(py).call_method1("call_soon_threadsafe", (batch,)));
        drop(scheduled);
    }
}

fn deliver(done: Done) {
    let first = {
        let mut outbox = OUTBOX.lock();
        outbox.push(done);
        outbox.len() == 1
    };
    // Whoever finds the queue empty hands it over; the calls that finish while it waits for the
    // GIL join the same batch.
    if first {
        Python::attach(flush);
    }
}

/// Start `call` on the I/O runtime; the returned asyncio future (of the running loop) gets
/// its outcome. Raises RuntimeError outside a running loop, as asyncio does.
pub fn spawn<F>(py: Python<'_>, call: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = Result<Make, Error>> + Send + 'static,
{
    let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
    let future = event_loop.call_method0("create_future")?;
    let handle = runtime()?;
    let (fut, lp) = (future.clone().unbind(), event_loop.unbind());
    handle.spawn(async move {
        let outcome = call.await;
        deliver(Done { future: fut, event_loop: lp, outcome });
    });
    Ok(future)
}

/// A result that is already a Python object's worth of plain data.
pub fn value<T>(v: T) -> Make
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    Box::new(move |py| v.into_py_any(py))
}
