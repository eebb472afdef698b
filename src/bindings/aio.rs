//! How an async call reaches Python: the caller gets an asyncio future of its running loop
//! and the core a [`Promise`] for it; the call runs without the GIL (its request written at
//! once when a connection is ready, its reply read on an I/O thread); the promise's outcome is
//! made into Python objects (unpickled) on the loop's own thread.
//!
//! Outcomes travel to their loop through a small queue per loop and a wake-up: by default a
//! socket pair whose reading end the loop watches (`loop.add_reader`), so an I/O thread hands
//! over an outcome without taking the GIL; outcomes that finish while the loop is busy go over
//! together, one wake-up for all of them. A loop without `add_reader` gets its outcomes through
//! `loop.call_soon_threadsafe` instead. The queue is made on a loop's first call and forgotten
//! with the loop: a second `asyncio.run()`, or loops in several threads, each get their own,
//! and nothing else is bound to a loop (connections serve every loop). A future whose caller
//! gave up (cancelled) is skipped; outcomes for a loop that closed are dropped.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyNotImplementedError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyWeakrefReference;

use crate::error::Error;

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static WEAK_KEYS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What a finished call becomes on the loop's thread (with the GIL): its result.
pub type Make = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

struct Done {
    future: Held,
    outcome: Result<Make, Error>,
}

/// A Python object the core keeps for later: weakly wherever it can be, so that nothing of
/// ours keeps a future (and through it its loop, the loop's socket pair and its queue) alive
/// once its caller has let go of it: a loop closed with calls in flight is freed with all that
/// is its own.
enum Held {
    Weak(Py<PyWeakrefReference>),
    Strong(Py<PyAny>),
}

impl Held {
    fn new(obj: &Bound<'_, PyAny>) -> Self {
        match PyWeakrefReference::new(obj) {
            Ok(weak) => Held::Weak(weak.unbind()),
            Err(_) => Held::Strong(obj.clone().unbind()),
        }
    }

    /// The object, unless it is gone.
    fn get<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        match self {
            Held::Weak(weak) => weak.bind(py).upgrade(),
            Held::Strong(obj) => Some(obj.bind(py).clone()),
        }
    }
}

/// How a loop is told that outcomes wait for it.
enum Signal {
    /// A byte on a socket pair the loop watches.
    Fd { read: UnixStream, write: UnixStream },
    /// `loop.call_soon_threadsafe` (takes the GIL).
    Threadsafe(Held),
}

/// One loop's queue of outcomes.
struct Queue {
    done: Mutex<Vec<Done>>,
    signal: Signal,
}

impl Queue {
    fn push(self: &Arc<Self>, done: Done) {
        let first = {
            let mut queue = self.done.lock();
            queue.push(done);
            queue.len() == 1
        };
        // Whoever finds the queue empty wakes the loop; the outcomes that arrive before it runs
        // go with the same wake-up.
        if !first {
            return;
        }
        match &self.signal {
            Signal::Fd { write, .. } => {
                // A full pipe already holds a wake-up; a closed loop is gone.
                let _ = (&*write).write(&[1]);
            }
            Signal::Threadsafe(event_loop) => Python::attach(|py| {
                // A loop that is gone, or closed (it refuses), takes its futures with it.
                let Some(event_loop) = event_loop.get(py) else { return };
                let scheduled = Py::new(py, Drain { queue: self.clone() })
                    .and_then(|drain| event_loop.call_method1(intern!(py, "call_soon_threadsafe"), (drain,)));
                drop(scheduled);
            }),
        }
    }

    /// Settle every future whose outcome arrived (on the loop's thread).
    fn drain(&self, py: Python<'_>) {
        if let Signal::Fd { read, .. } = &self.signal {
            let mut sink = [0u8; 256];
            while matches!((&*read).read(&mut sink), Ok(n) if n > 0) {}
        }
        let done = std::mem::take(&mut *self.done.lock());
        for Done { future, outcome } in done {
            // Gone (its caller let go of it) or cancelled while the call was out: nobody waits.
            let Some(future) = future.get(py) else { continue };
            let future = &future;
            if future.call_method0(intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true) {
                continue;
            }
            let settled = match outcome.map_err(PyErr::from).and_then(|make| make(py)) {
                Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
                Err(e) => future.call_method1(intern!(py, "set_exception"), (e.into_value(py),)),
            };
            if let Err(e) = settled {
                e.write_unraisable(py, Some(future));
            }
        }
    }
}

/// The loop's callback: settles the futures whose outcomes arrived.
#[pyclass(frozen, module = "django_rustcache._core")]
struct Drain {
    queue: Arc<Queue>,
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) {
        self.queue.drain(py);
    }
}

/// A loop's queue, as kept for the loop (in a weak-keyed dictionary, so it goes with it).
#[pyclass(frozen, module = "django_rustcache._core")]
struct LoopQueue {
    queue: Arc<Queue>,
}

thread_local! {
    /// The last loop this thread made a call on, and its queue.
    static LAST: RefCell<Option<(Py<PyWeakrefReference>, Arc<Queue>)>> = const { RefCell::new(None) };
}

/// The queue of `event_loop`, made (and watched by the loop) on its first call.
fn queue_for(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Queue>> {
    let cached = LAST.with(|last| {
        last.borrow()
            .as_ref()
            .and_then(|(weak, queue)| weak.bind(py).upgrade().filter(|l| l.is(event_loop)).map(|_| queue.clone()))
    });
    if let Some(queue) = cached {
        return Ok(queue);
    }
    let Ok(weak) = PyWeakrefReference::new(event_loop) else {
        // A loop that cannot be weakly referenced keeps nothing of ours: each call gets a
        // queue of its own, woken with call_soon_threadsafe.
        return Ok(threadsafe(event_loop));
    };
    let weak_keys = WEAK_KEYS
        .get_or_try_init(py, || py.import("weakref")?.getattr("WeakKeyDictionary")?.call0().map(Bound::unbind))?;
    let weak_keys = weak_keys.bind(py);
    let known = weak_keys.call_method1(intern!(py, "get"), (event_loop,))?;
    let queue = if let Ok(known) = known.cast::<LoopQueue>() {
        known.get().queue.clone()
    } else {
        let queue = watched(py, event_loop)?;
        weak_keys.set_item(event_loop, LoopQueue { queue: queue.clone() })?;
        queue
    };
    LAST.with(|last| *last.borrow_mut() = Some((weak.unbind(), queue.clone())));
    Ok(queue)
}

/// A new queue for `event_loop`: a socket pair the loop watches, or its `call_soon_threadsafe`
/// when it cannot watch one.
fn watched(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Queue>> {
    let (read, write) = UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    let fd = read.as_raw_fd();
    let queue = Arc::new(Queue { done: Mutex::new(Vec::new()), signal: Signal::Fd { read, write } });
    match event_loop.call_method1(intern!(py, "add_reader"), (fd, Drain { queue: queue.clone() })) {
        Ok(_) => Ok(queue),
        Err(e) if e.is_instance_of::<PyNotImplementedError>(py) => Ok(threadsafe(event_loop)),
        Err(e) => Err(e),
    }
}

fn threadsafe(event_loop: &Bound<'_, PyAny>) -> Arc<Queue> {
    Arc::new(Queue { done: Mutex::new(Vec::new()), signal: Signal::Threadsafe(Held::new(event_loop)) })
}

/// The core's side of an asyncio future: keep it once, from any thread, without the GIL.
pub struct Promise {
    future: Held,
    queue: Arc<Queue>,
}

impl Promise {
    /// Hand the outcome to the future's loop.
    pub fn keep(self, outcome: Result<Make, Error>) {
        self.queue.push(Done { future: self.future, outcome });
    }
}

/// The running loop (RuntimeError outside one, as asyncio gives).
pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()
}

/// The promise that settles `future`, a future of the running loop made already.
pub fn promise_for(py: Python<'_>, future: &Bound<'_, PyAny>) -> PyResult<Promise> {
    let event_loop = running_loop(py)?;
    Ok(Promise { future: Held::new(future), queue: queue_for(py, &event_loop)? })
}

/// A new future of the running loop and the promise that settles it. RuntimeError outside a
/// running loop, as asyncio gives.
pub fn promise(py: Python<'_>) -> PyResult<(Bound<'_, PyAny>, Promise)> {
    let event_loop = running_loop(py)?;
    let queue = queue_for(py, &event_loop)?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let promise = Promise { future: Held::new(&future), queue };
    Ok((future, promise))
}

/// A future of the running loop that is done already, with `value`: awaiting it takes no turn
/// of the loop (a near-cache hit).
pub fn ready<'py>(py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let event_loop = GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    future.call_method1(intern!(py, "set_result"), (value,))?;
    Ok(future)
}

/// Run `call` on the I/O runtime; the returned future gets its outcome.
pub fn spawn<F>(py: Python<'_>, call: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = Result<Make, Error>> + Send + 'static,
{
    let (future, promise) = promise(py)?;
    let handle = crate::net::aio::runtime()?;
    handle.spawn(async move { promise.keep(call.await) });
    Ok(future)
}

/// Run `work` off the loop's thread, without the GIL: on a blocking thread when it is `large`
/// (compressing a big value would hold up every call on an I/O thread), else on an I/O thread.
/// Here, at once, only if the runtime cannot start.
pub fn off_loop(large: bool, work: impl FnOnce() + Send + 'static) {
    match crate::net::aio::runtime() {
        Ok(handle) if large => drop(handle.spawn_blocking(work)),
        Ok(handle) => drop(handle.spawn(async move { work() })),
        Err(_) => work(),
    }
}

/// Work on values past this size goes to a blocking thread, not an I/O thread.
pub const OFF_IO_FROM: usize = 256 * 1024;

/// A result that is plain data.
pub fn value<T>(v: T) -> Make
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    Box::new(move |py| v.into_py_any(py))
}

/// None, as a call's result.
pub fn none() -> Make {
    Box::new(|py: Python<'_>| Ok(py.None()))
}
