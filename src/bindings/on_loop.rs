//! One call at a time on an event loop, with no thread between the loop and the server.
//!
//! The async calls' usual way (`bindings::aio`) writes the request on the caller's thread,
//! reads the reply on an I/O thread and hands it to the loop through a wake-up: with one call
//! at a time, that is two more thread switches than a blocking call. Here a loop borrows a
//! connection of a server's pool for good (its "loop connection"), watches its socket with
//! `loop.add_reader`, and reads the reply itself, on its own thread, when it arrives.
//!
//! It serves only what it can serve as well as the usual way, and hands everything else to it:
//! a call on the loop the connection was made for, while the connection carries no other call
//! (one call at a time: more at once go the usual way, whose connections carry many). A
//! connection is made only from one idle in the pool, never by waiting or connecting on the
//! loop's thread: where none is idle, one is opened into the pool off the loop (an async-only
//! site has no blocking calls to leave one there), for the next call to take.
//!
//! The one deadline per call holds: a watchdog (`loop.call_later`, armed for the first call and
//! re-armed only when it fires while a call is out) fails a call past its deadline, and drops the
//! connection. A connection found closed or reset when its reply was due (a server restart
//! between calls) sends the call the usual way, once, as the blocking clients retry a stale
//! pooled connection; other failures fail the call. A connection is dropped after any failure,
//! and its watch removed before its socket closes.
//!
//! What differs between the stores (which connection, how a reply is cut and read, how a call
//! goes the usual way) is a [`Server`]; the redis and memcached clients each have one.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyWeakrefReference};

use crate::bindings::aio::{Promise, off_loop, promise_for};
use crate::error::{Error, ErrorKind};
use crate::net::Stream;

/// A read buffer grown past this for a large reply is given up once the reply is read.
const TRIM_ABOVE: usize = 1024 * 1024;

/// A connection an event loop's thread can use: non-blocking, written and read without waiting.
pub(crate) trait LoopSocket: Send + 'static {
    /// The connection's socket.
    fn stream(&mut self) -> &mut Stream;

    /// Make the socket non-blocking; its descriptor, to watch.
    fn to_event_loop(&mut self) -> Result<RawFd, Error> {
        self.stream().set_nonblocking()?;
        Ok(self.stream().raw_fd())
    }

    /// Send a (small) request whole now, or fail.
    fn send_at_once(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream().send_arrived(bytes)
    }

    /// What has arrived, without waiting (`None`: nothing yet); a closed connection is an error.
    fn read_arrived(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        self.stream().read_arrived(buf)
    }
}

/// One server as a loop connection sees it.
pub(crate) trait Server: Send + Sync + Sized + 'static {
    type Conn: LoopSocket;
    /// A call on its way: what its answer becomes, and how it goes the usual way.
    type Call: Send + 'static;
    /// One call's whole reply.
    type Reply;
    /// How far the replies arrived so far are cut.
    type Cut: Default + Send;
    /// The most bytes one reply may take.
    const MAX_REPLY: usize;

    /// The server's label, for errors.
    fn label(&self) -> &str;
    /// An idle connection of the pool, if one is there now (never waits, never connects).
    fn take_idle(&self) -> Option<Self::Conn>;
    /// Open one connection into the pool's idle list (blocking: called off the loop).
    fn open_idle(&self);
    /// A connection taken from the pool is gone (its slot in the pool freed).
    fn forget(&self);
    /// Whether `conn` still belongs to this server (not to a master the sentinels replaced).
    fn current(&self, conn: &Self::Conn) -> bool;
    /// Whether calls may go to the server (it is not marked down).
    fn is_up(&self) -> bool;
    /// A call's deadline from when it is sent.
    fn timeout(&self) -> Duration;
    /// `call`'s request.
    fn request(&self, call: &Self::Call) -> Result<Vec<u8>, Error>;
    /// The next whole reply in `bytes` and the bytes it took, or `None` until it has arrived.
    fn cut(&self, cut: &mut Self::Cut, bytes: &[u8]) -> Result<Option<(Self::Reply, usize)>, Error>;
    /// A reply came: the server is fine.
    fn succeeded(&self);
    /// The connection failed with `e` (a connection-level failure counts against the server).
    fn failed(&self, e: &Error, conn: Option<&Self::Conn>);
    /// Settle `future` with `call`'s answer, made from `reply`, on the loop's thread.
    fn settle(&self, py: Python<'_>, future: &Bound<'_, PyAny>, call: Self::Call, reply: Result<Self::Reply, Error>);
    /// Send `call` the usual way; its answer keeps `promise`.
    fn retry(&self, call: Self::Call, promise: Promise);
}

/// The loop connections, one per server at most (by `K`), how many calls went on them, and
/// the servers a connection is being opened for.
pub(crate) struct LoopConns<K, S: Server> {
    conns: Mutex<HashMap<K, Arc<LoopConn<S>>>>,
    calls: AtomicU64,
    opening: Arc<Mutex<HashSet<K>>>,
}

impl<K, S: Server> Default for LoopConns<K, S> {
    fn default() -> Self {
        Self { conns: Mutex::default(), calls: AtomicU64::new(0), opening: Arc::default() }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static, S: Server> LoopConns<K, S> {
    /// Start `call` on `event_loop`'s connection to `server` (known as `key`): its future, or
    /// the call back when the usual way must take it.
    pub(crate) fn try_start<'py>(
        &self,
        py: Python<'py>,
        event_loop: &Bound<'py, PyAny>,
        key: &K,
        server: impl FnOnce() -> Arc<S>,
        call: S::Call,
    ) -> PyResult<Result<Bound<'py, PyAny>, S::Call>> {
        let known = self.conns.lock().get(key).cloned();
        let conn = if let Some(conn) = known {
            match conn.usable(py, event_loop) {
                Usable::Yes => conn,
                Usable::Busy => return Ok(Err(call)),
                Usable::Gone => {
                    self.conns.lock().remove(key);
                    conn.drop_conn(py);
                    return Ok(Err(call));
                }
            }
        } else {
            let server = server();
            let Some(conn) = LoopConn::make(py, event_loop, &server) else {
                self.open_for_next(key, server);
                return Ok(Err(call));
            };
            let mut conns = self.conns.lock();
            if conns.contains_key(key) {
                // Another loop's thread made one meanwhile: it keeps it.
                drop(conns);
                conn.drop_conn(py);
                return Ok(Err(call));
            }
            conns.insert(key.clone(), conn.clone());
            drop(conns);
            conn
        };
        let started = conn.start(py, event_loop, call)?;
        if started.is_ok() {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        Ok(started)
    }

    /// No idle connection to take: open one into the pool off the loop's thread, unless one is
    /// being opened already or the server is marked down.
    fn open_for_next(&self, key: &K, server: Arc<S>) {
        if !server.is_up() || !self.opening.lock().insert(key.clone()) {
            return;
        }
        let (opening, key) = (self.opening.clone(), key.clone());
        off_loop(true, move || {
            server.open_idle();
            opening.lock().remove(&key);
        });
    }

    /// The calls read on a loop's own thread so far (`calls`), and the loop connections open
    /// now (`connections`).
    pub(crate) fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let open = self.conns.lock().values().filter(|c| c.state.lock().conn.is_some()).count();
        let d = PyDict::new(py);
        d.set_item("calls", self.calls.load(Ordering::Relaxed))?;
        d.set_item("connections", open)?;
        Ok(d)
    }
}

enum Usable {
    Yes,
    /// Another call is out on it, or it belongs to another loop that is still there.
    Busy,
    /// Dropped, its loop gone, or made for a master the sentinels replaced.
    Gone,
}

pub(crate) struct LoopConn<S: Server> {
    state: Mutex<State<S>>,
}

struct State<S: Server> {
    server: Arc<S>,
    /// The loop that watches the connection.
    event_loop: Py<PyWeakrefReference>,
    /// `None` once dropped (after a failure).
    conn: Option<S::Conn>,
    fd: RawFd,
    partial: Vec<u8>,
    cut: S::Cut,
    buf: Box<[u8]>,
    waiting: Option<Waiting<S>>,
    /// When the watchdog armed last fires (`None`: none is armed).
    watchdog: Option<Instant>,
}

struct Waiting<S: Server> {
    /// Held weakly, as the usual way holds its futures: a loop closed with the call out must
    /// not be kept alive by the connection (the future holds its loop) until another loop asks.
    future: Py<PyWeakrefReference>,
    deadline: Instant,
    call: S::Call,
}

impl<S: Server> LoopConn<S> {
    /// A loop connection from an idle connection of `server`'s pool, watched by `event_loop`.
    fn make(py: Python<'_>, event_loop: &Bound<'_, PyAny>, server: &Arc<S>) -> Option<Arc<Self>> {
        let weak = PyWeakrefReference::new(event_loop).ok()?;
        let mut conn = server.take_idle()?;
        let Ok(fd) = conn.to_event_loop() else {
            drop(conn);
            server.forget();
            return None;
        };
        let made = Arc::new(Self {
            state: Mutex::new(State {
                server: server.clone(),
                event_loop: weak.unbind(),
                conn: Some(conn),
                fd,
                partial: Vec::new(),
                cut: S::Cut::default(),
                buf: vec![0u8; 16 * 1024].into_boxed_slice(),
                waiting: None,
                watchdog: None,
            }),
        });
        let watch = Readable { conn: made.clone() };
        if event_loop.call_method1(intern!(py, "add_reader"), (fd, watch)).is_err() {
            // A loop that cannot watch a socket (a proactor): the connection is not used.
            let mut state = made.state.lock();
            if let Some(conn) = state.conn.take() {
                drop(conn);
                server.forget();
            }
            return None;
        }
        Some(made)
    }

    fn usable(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> Usable {
        let (watcher, busy) = {
            let state = self.state.lock();
            let Some(conn) = state.conn.as_ref() else { return Usable::Gone };
            if !state.server.current(conn) {
                return Usable::Gone;
            }
            (state.event_loop.clone_ref(py), state.waiting.is_some())
        };
        match watcher.bind(py).upgrade() {
            Some(watcher) if watcher.is(event_loop) => {
                if busy {
                    Usable::Busy
                } else {
                    Usable::Yes
                }
            }
            // A loop closed (asyncio.run returned) but not yet collected is as good as gone.
            Some(watcher) => {
                let closed = watcher.call_method0(intern!(py, "is_closed")).and_then(|c| c.is_truthy());
                if closed.unwrap_or(false) { Usable::Gone } else { Usable::Busy }
            }
            None => Usable::Gone,
        }
    }

    /// Send `call`'s request and wait for its reply on the loop.
    ///
    /// (No Python code runs while the state's lock is held here or below: Python may hand the
    /// GIL to another thread, whose loop may be asking this connection whether it is usable.)
    fn start<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        event_loop: &Bound<'py, PyAny>,
        call: S::Call,
    ) -> PyResult<Result<Bound<'py, PyAny>, S::Call>> {
        let future = event_loop.call_method0(intern!(py, "create_future"))?;
        // (Made before the lock: making it may run the garbage collector.)
        let Ok(weak) = PyWeakrefReference::new(&future).map(Bound::unbind) else { return Ok(Err(call)) };
        let mut state = self.state.lock();
        let server = state.server.clone();
        if !server.is_up() {
            return Ok(Err(call));
        }
        let Ok(request) = server.request(&call) else { return Ok(Err(call)) };
        let timeout = server.timeout();
        let Some(conn) = state.conn.as_mut() else { return Ok(Err(call)) };
        if conn.send_at_once(&request).is_err() {
            // Nothing answered yet: the usual way runs it (on a connection of its own).
            let closing = state.detach(py);
            drop(state);
            close(py, closing);
            return Ok(Err(call));
        }
        let deadline = Instant::now() + timeout;
        state.waiting = Some(Waiting { future: weak, deadline, call });
        let arm = state.watchdog.is_none();
        if arm {
            state.watchdog = Some(deadline);
        }
        drop(state);
        if arm {
            let dog = Watchdog { conn: self.clone() };
            event_loop.call_method1(intern!(py, "call_later"), (timeout.as_secs_f64(), dog))?;
        }
        // The reply may be in already (a server on this CPU runs as soon as it is woken): then
        // the future is done before it is awaited, and the loop takes no turn for it.
        self.readable(py);
        Ok(Ok(future))
    }

    /// The socket is readable: read what arrived; settle the call whose reply is whole.
    fn readable(&self, py: Python<'_>) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let server = state.server.clone();
        // Out of the state while it reads (put back unless it failed).
        let Some(mut conn) = state.conn.take() else { return };
        let mut failure = None;
        loop {
            match conn.read_arrived(&mut state.buf) {
                Ok(Some(n)) => {
                    if state.partial.len() + n > S::MAX_REPLY {
                        failure = Some(Error::new(
                            ErrorKind::TooLarge,
                            format!("{}: a reply larger than {} bytes", server.label(), S::MAX_REPLY),
                        ));
                        break;
                    }
                    state.partial.extend_from_slice(&state.buf[..n]);
                    if n < state.buf.len() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let reply = match failure {
            Some(_) => None,
            None => match server.cut(&mut state.cut, &state.partial) {
                Ok(Some((reply, used))) => {
                    state.partial.drain(..used);
                    Some(reply)
                }
                Ok(None) => None,
                Err(e) => {
                    failure = Some(e);
                    None
                }
            },
        };
        if let Some(e) = failure {
            // Closed or reset before any of the reply: a stale connection (a restart since it
            // was last used); the usual way runs the call once more.
            let went_stale = e.kind() == ErrorKind::Io && state.partial.is_empty();
            let waiting = state.waiting.take();
            if !went_stale && waiting.is_some() {
                server.failed(&e, Some(&conn));
            }
            state.conn = Some(conn);
            let closing = state.detach(py);
            drop(guard);
            close(py, closing);
            let Some(waiting) = waiting else { return };
            if went_stale {
                return retry(py, &*server, waiting);
            }
            return settle(py, &*server, waiting, Err(e));
        }
        state.conn = Some(conn);
        let Some(reply) = reply else { return };
        if state.partial.is_empty() && state.partial.capacity() > TRIM_ABOVE {
            // A large reply's buffer is not kept for the small ones after it.
            state.partial = Vec::new();
        }
        let Some(waiting) = state.waiting.take() else {
            // A reply nobody asked for: the connection is out of step.
            let closing = state.detach(py);
            drop(guard);
            close(py, closing);
            return;
        };
        drop(guard);
        server.succeeded();
        settle(py, &*server, waiting, Ok(reply));
    }

    /// The watchdog fired: fail a call past its deadline; re-arm for one still out.
    fn watch(self: &Arc<Self>, py: Python<'_>) {
        let mut state = self.state.lock();
        state.watchdog = None;
        let Some(deadline) = state.waiting.as_ref().map(|w| w.deadline) else { return };
        let now = Instant::now();
        if now < deadline {
            let event_loop = state.event_loop.clone_ref(py);
            state.watchdog = Some(deadline);
            drop(state);
            let delay = (deadline - now).as_secs_f64();
            let dog = Watchdog { conn: self.clone() };
            let armed = event_loop
                .bind(py)
                .upgrade()
                .is_some_and(|l| l.call_method1(intern!(py, "call_later"), (delay, dog)).is_ok());
            if !armed {
                self.state.lock().watchdog = None;
            }
            return;
        }
        let Some(waiting) = state.waiting.take() else { return };
        let server = state.server.clone();
        let e = Error::new(ErrorKind::Timeout, format!("{}: no complete reply: timed out", server.label()));
        server.failed(&e, state.conn.as_ref());
        let closing = state.detach(py);
        drop(state);
        close(py, closing);
        settle(py, &*server, waiting, Err(e));
    }

    /// Stop watching the connection and close it (its slot in the pool freed).
    fn drop_conn(&self, py: Python<'_>) {
        let closing = self.state.lock().detach(py);
        close(py, closing);
    }
}

/// A loop connection nobody can reach any more (its loop closed, its client gone) is closed
/// here: its slot in the pool is freed. (Nothing watches it then: the loop's watch held it.)
impl<S: Server> Drop for State<S> {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.server.forget();
        }
    }
}

/// A loop connection taken out of its state, to be closed outside the state's lock.
struct Closing<S: Server> {
    conn: S::Conn,
    fd: RawFd,
    event_loop: Py<PyWeakrefReference>,
    server: Arc<S>,
}

impl<S: Server> State<S> {
    fn detach(&mut self, py: Python<'_>) -> Option<Closing<S>> {
        let conn = self.conn.take()?;
        self.partial.clear();
        self.cut = S::Cut::default();
        Some(Closing { conn, fd: self.fd, event_loop: self.event_loop.clone_ref(py), server: self.server.clone() })
    }
}

/// Stop the loop watching the connection, then close it: the watch goes before the socket
/// closes (its number may be reused at once); its slot in the pool is freed.
fn close<S: Server>(py: Python<'_>, closing: Option<Closing<S>>) {
    let Some(Closing { conn, fd, event_loop, server }) = closing else { return };
    if let Some(event_loop) = event_loop.bind(py).upgrade() {
        let closed = event_loop.call_method0(intern!(py, "is_closed")).and_then(|c| c.is_truthy()).unwrap_or(true);
        if !closed {
            let _ = event_loop.call_method1(intern!(py, "remove_reader"), (fd,));
        }
    }
    drop(conn);
    server.forget();
}

/// Settle the waiting call's future with its reply (or failure), unless it was cancelled.
fn settle<S: Server>(py: Python<'_>, server: &S, waiting: Waiting<S>, reply: Result<S::Reply, Error>) {
    // A future nobody holds any more (its loop closed, its caller gone) wants no answer.
    let Some(future) = waiting.future.bind(py).upgrade() else { return };
    if future.call_method0(intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true) {
        return;
    }
    server.settle(py, &future, waiting.call, reply);
}

/// Send the waiting call the usual way; its future is settled from there.
fn retry<S: Server>(py: Python<'_>, server: &S, waiting: Waiting<S>) {
    let Some(future) = waiting.future.bind(py).upgrade() else { return };
    match promise_for(py, &future) {
        Ok(promise) => server.retry(waiting.call, promise),
        Err(e) => {
            let _ = future.call_method1(intern!(py, "set_exception"), (e.into_value(py),));
        }
    }
}

/// Set `future`'s result (or exception); a failure to is reported as unraisable.
pub(crate) fn resolve(py: Python<'_>, future: &Bound<'_, PyAny>, result: PyResult<Py<PyAny>>) {
    let settled = match result {
        Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
        Err(e) => future.call_method1(intern!(py, "set_exception"), (e.into_value(py),)),
    };
    if let Err(e) = settled {
        e.write_unraisable(py, Some(future));
    }
}

/// What the loop's callbacks reach: a loop connection of any store.
trait Watched: Send + Sync {
    fn readable(&self, py: Python<'_>);
    fn watch(self: Arc<Self>, py: Python<'_>);
}

impl<S: Server> Watched for LoopConn<S> {
    fn readable(&self, py: Python<'_>) {
        LoopConn::readable(self, py);
    }

    fn watch(self: Arc<Self>, py: Python<'_>) {
        LoopConn::watch(&self, py);
    }
}

/// The loop's callback for a readable loop connection.
#[pyclass(frozen, module = "django_rustcache._core")]
struct Readable {
    conn: Arc<dyn Watched>,
}

#[pymethods]
impl Readable {
    fn __call__(&self, py: Python<'_>) {
        self.conn.readable(py);
    }
}

/// The loop's timer for a loop connection's calls' deadline.
#[pyclass(frozen, module = "django_rustcache._core")]
struct Watchdog {
    conn: Arc<dyn Watched>,
}

#[pymethods]
impl Watchdog {
    fn __call__(&self, py: Python<'_>) {
        self.conn.clone().watch(py);
    }
}
