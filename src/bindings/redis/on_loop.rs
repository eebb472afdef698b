//! One `aget` at a time on an event loop, with no thread between the loop and the server.
//!
//! The async calls' usual way (`bindings::aio`) writes the request on the caller's thread,
//! reads the reply on an I/O thread and hands it to the loop through a wake-up: with one call
//! at a time, that is two more thread switches than a blocking `get`. Here a loop borrows a
//! connection of the key's pool for good (its "loop connection"), watches its socket with
//! `loop.add_reader`, and reads the reply itself, on its own thread, when it arrives.
//!
//! It serves only what it can serve as well as the usual way, and hands everything else to it:
//! a `get` whose pool has no replicas, outside a Redis Cluster, on the loop the connection was
//! made for, while the connection carries no other call (one call at a time: more at once go
//! the usual way, whose connections carry many). A connection is made only from one idle in the
//! pool (never waiting, never connecting on the loop's thread).
//!
//! The one deadline per call holds: a watchdog (`loop.call_later`, armed for the first call and
//! re-armed only when it fires while a call is out) fails a call past its deadline, and drops the
//! connection. A connection found closed or reset when its reply was due (a server restart
//! between calls) sends the call the usual way, once, as the blocking client retries a stale
//! pooled connection; other failures fail the call. A connection is dropped after any failure,
//! and its watch removed before its socket closes.
//!
//! The usual way's `get` ([`start_get`]) is here too: the loop hands calls to it, and `aio.rs`
//! starts the calls the loop does not take with it.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;

use crate::bindings::aio::{OFF_IO_FROM, Promise, promise_for, running_loop};
use crate::bindings::values::{RedisCodec, unpacked};
use crate::error::{Error, ErrorKind};
use crate::redis::client::Client;
use crate::redis::commands::{Command, Get};
use crate::redis::conn::Conn;
use crate::redis::topology::Node;
use crate::redis::wire::{Framing, MAX_REPLY_BYTES, classify};

/// A read buffer grown past this for a large reply is given up once the reply is read.
const TRIM_ABOVE: usize = 1024 * 1024;

/// How the answer of a `get` becomes Python (on the loop's thread), and how it goes the usual
/// way when the loop connection could not carry it.
pub(super) struct GetCall {
    pub key: Vec<u8>,
    pub default: Option<Py<PyAny>>,
    pub codec: Arc<RedisCodec>,
    pub client: Arc<Client>,
}

/// The loop connections, one per pool at most (by the pool's name), and how many calls went on
/// them.
#[derive(Default)]
pub(super) struct LoopConns(Mutex<HashMap<String, Arc<LoopConn>>>, AtomicU64);

pub(super) struct LoopConn {
    state: Mutex<State>,
}

struct State {
    node: Arc<Node>,
    /// The loop that watches the connection.
    event_loop: Py<PyWeakrefReference>,
    /// `None` once dropped (after a failure).
    conn: Option<Conn>,
    fd: RawFd,
    partial: Vec<u8>,
    framing: Framing,
    buf: Box<[u8]>,
    waiting: Option<Waiting>,
    /// When the watchdog armed last fires (`None`: none is armed).
    watchdog: Option<Instant>,
    /// The server's label, for errors.
    label: Arc<str>,
}

struct Waiting {
    future: Py<PyAny>,
    deadline: Instant,
    call: GetCall,
    /// The server's label, for errors.
    label: Arc<str>,
}

impl LoopConns {
    /// Start `call` on the running loop's connection for the key's pool: its future, or `None`
    /// when the usual way must take it.
    pub(super) fn try_get<'py>(&self, py: Python<'py>, call: GetCall) -> PyResult<Result<Bound<'py, PyAny>, GetCall>> {
        let topology = call.client.topology();
        if topology.is_cluster() {
            return Ok(Err(call));
        }
        let Ok(node) = topology.node_of(&call.key) else { return Ok(Err(call)) };
        let [pool] = node.pools() else { return Ok(Err(call)) };
        let Ok(event_loop) = running_loop(py) else { return Ok(Err(call)) };
        let name = pool.name();
        pool.refresh();
        let known = self.0.lock().get(name).cloned();
        let conn = if let Some(conn) = known {
            match conn.usable(py, &event_loop, pool.current_epoch()) {
                Usable::Yes => conn,
                Usable::Busy => return Ok(Err(call)),
                Usable::Gone => {
                    self.0.lock().remove(name);
                    conn.drop_conn(py);
                    return Ok(Err(call));
                }
            }
        } else {
            let Some(conn) = LoopConn::make(py, &event_loop, &node) else { return Ok(Err(call)) };
            let mut conns = self.0.lock();
            if conns.contains_key(name) {
                // Another loop's thread made one meanwhile: it keeps it.
                drop(conns);
                conn.drop_conn(py);
                return Ok(Err(call));
            }
            conns.insert(name.to_owned(), conn.clone());
            drop(conns);
            conn
        };
        let started = conn.start(py, &event_loop, call)?;
        if started.is_ok() {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
        Ok(started)
    }

    /// Calls read on a loop's own thread so far, and the loop connections open now.
    pub(super) fn stats(&self) -> (u64, usize) {
        let open = self.0.lock().values().filter(|c| c.state.lock().conn.is_some()).count();
        (self.1.load(Ordering::Relaxed), open)
    }
}

enum Usable {
    Yes,
    /// Another call is out on it, or it belongs to another loop that is still there.
    Busy,
    /// Dropped, its loop gone, or made for a master the sentinels replaced.
    Gone,
}

impl LoopConn {
    /// A loop connection from an idle connection of `node`'s pool, watched by `event_loop`.
    fn make(py: Python<'_>, event_loop: &Bound<'_, PyAny>, node: &Arc<Node>) -> Option<Arc<Self>> {
        let pool = &node.pools()[0];
        let weak = PyWeakrefReference::new(event_loop).ok()?;
        let loan = pool.take_idle()?;
        let mut conn = loan.conn;
        let Ok(fd) = conn.to_event_loop() else {
            drop(conn);
            pool.forget();
            return None;
        };
        let made = Arc::new(Self {
            state: Mutex::new(State {
                node: node.clone(),
                event_loop: weak.unbind(),
                conn: Some(conn),
                fd,
                partial: Vec::new(),
                framing: Framing::default(),
                buf: vec![0u8; 16 * 1024].into_boxed_slice(),
                waiting: None,
                watchdog: None,
                label: Arc::from(pool.label()),
            }),
        });
        let watch = Readable { conn: made.clone() };
        if event_loop.call_method1(intern!(py, "add_reader"), (fd, watch)).is_err() {
            // A loop that cannot watch a socket (a proactor): the connection is not used.
            let mut state = made.state.lock();
            if let Some(conn) = state.conn.take() {
                drop(conn);
                pool.forget();
            }
            return None;
        }
        Some(made)
    }

    fn usable(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>, epoch: u64) -> Usable {
        let (watcher, busy) = {
            let state = self.state.lock();
            let Some(conn) = state.conn.as_ref() else { return Usable::Gone };
            if conn.epoch != epoch {
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
        call: GetCall,
    ) -> PyResult<Result<Bound<'py, PyAny>, GetCall>> {
        let future = event_loop.call_method0(intern!(py, "create_future"))?;
        let mut state = self.state.lock();
        let pool = &state.node.pools()[0];
        if pool.check_up().is_err() {
            return Ok(Err(call));
        }
        let request = Get(call.key.clone()).request(&[0], false);
        let timeout = pool.config().socket_timeout;
        let Some(conn) = state.conn.as_mut() else { return Ok(Err(call)) };
        if conn.send_at_once(&request.packed).is_err() {
            // Nothing answered yet: the usual way runs it (on a connection of its own).
            let closing = state.detach(py);
            drop(state);
            close(py, closing);
            return Ok(Err(call));
        }
        let deadline = Instant::now() + timeout;
        let label = state.label.clone();
        state.waiting = Some(Waiting { future: future.clone().unbind(), deadline, call, label });
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
    fn readable(self: &Arc<Self>, py: Python<'_>) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        // Out of the state while it reads (put back unless it failed).
        let Some(mut conn) = state.conn.take() else { return };
        let mut failure = None;
        loop {
            match conn.read_arrived(&mut state.buf) {
                Ok(Some(n)) => {
                    if state.partial.len() + n > MAX_REPLY_BYTES {
                        failure = Some(Error::new(
                            ErrorKind::TooLarge,
                            format!("{}: a reply larger than {MAX_REPLY_BYTES} bytes", conn.label()),
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
            None => match next_reply(state, conn.label()) {
                Ok(reply) => reply,
                Err(e) => {
                    failure = Some(e);
                    None
                }
            },
        };
        let peer = conn.peer.clone();
        state.conn = Some(conn);
        if let Some(e) = failure {
            // Closed or reset before any of the reply: a stale connection (a restart since it
            // was last used); the usual way runs the call once more.
            let went_stale = e.kind() == ErrorKind::Io && state.partial.is_empty();
            let waiting = state.waiting.take();
            let closing = state.detach(py);
            let pool_owner = state.node.clone();
            drop(guard);
            close(py, closing);
            let Some(waiting) = waiting else { return };
            if went_stale {
                return retry(py, waiting);
            }
            if e.is_connection_failure() {
                waiting.call.client.counters().failure();
                pool_owner.pools()[0].record_failure(&e, Some(&peer));
            }
            return settle(py, waiting, Err(e));
        }
        let Some(value) = reply else { return };
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
        state.node.pools()[0].mark_up();
        drop(guard);
        settle(py, waiting, Ok(value));
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
        let pool_owner = state.node.clone();
        let pool = &pool_owner.pools()[0];
        let label = state.label.clone();
        let peer = state.conn.as_ref().map(|c| c.peer.clone());
        let closing = state.detach(py);
        drop(state);
        close(py, closing);
        let e = Error::new(ErrorKind::Timeout, format!("{label}: no complete reply: timed out"));
        waiting.call.client.counters().failure();
        pool.record_failure(&e, peer.as_ref());
        settle(py, waiting, Err(e));
    }

    /// Stop watching the connection and close it (its slot in the pool freed).
    fn drop_conn(&self, py: Python<'_>) {
        let closing = self.state.lock().detach(py);
        close(py, closing);
    }
}

/// A loop connection nobody can reach any more (its loop closed, its client gone) is closed
/// here: its slot in the pool is freed. (Nothing watches it then: the loop's watch held it.)
impl Drop for State {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.node.pools()[0].forget();
        }
    }
}

/// A loop connection taken out of its state, to be closed outside the state's lock.
struct Closing {
    conn: Conn,
    fd: RawFd,
    event_loop: Py<PyWeakrefReference>,
    node: Arc<Node>,
}

impl State {
    fn detach(&mut self, py: Python<'_>) -> Option<Closing> {
        let conn = self.conn.take()?;
        self.partial.clear();
        self.framing = Framing::default();
        Some(Closing { conn, fd: self.fd, event_loop: self.event_loop.clone_ref(py), node: self.node.clone() })
    }
}

/// Stop the loop watching the connection, then close it: the watch goes before the socket
/// closes (its number may be reused at once); its slot in the pool is freed.
fn close(py: Python<'_>, closing: Option<Closing>) {
    let Some(Closing { conn, fd, event_loop, node }) = closing else { return };
    if let Some(event_loop) = event_loop.bind(py).upgrade() {
        let closed = event_loop.call_method0(intern!(py, "is_closed")).and_then(|c| c.is_truthy()).unwrap_or(true);
        if !closed {
            let _ = event_loop.call_method1(intern!(py, "remove_reader"), (fd,));
        }
    }
    drop(conn);
    node.pools()[0].forget();
}

/// The next whole reply in `partial`, taken out of it.
fn next_reply(state: &mut State, label: &str) -> Result<Option<redis::Value>, Error> {
    let Some(end) = state.framing.whole(&state.partial, label)? else { return Ok(None) };
    let value = redis::parse_redis_value(&state.partial[..end])
        .map_err(|e| Error::new(ErrorKind::Protocol, format!("{label}: {e}")))?;
    state.partial.drain(..end);
    Ok(Some(value))
}

/// Settle the waiting call's future with its reply (or failure), unless it was cancelled.
fn settle(py: Python<'_>, waiting: Waiting, reply: Result<redis::Value, Error>) {
    let future = waiting.future.bind(py);
    if future.call_method0(intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true) {
        return;
    }
    let (call, label) = (waiting.call, waiting.label);
    let get = Get(call.key);
    let found = reply.and_then(|value| match value {
        redis::Value::ServerError(e) => Err(classify(&label, &e.into())),
        value => {
            let mut out = None;
            get.read(&[0], false, vec![value], &mut out, &label)?;
            get.count(&out, call.client.counters());
            Ok(out)
        }
    });
    let codec = call.codec;
    let result = match found {
        Ok(Some(data)) if codec.inflate && data.len() >= OFF_IO_FROM => {
            // A large compressed value is inflated off the loop, as the usual way does.
            match promise_for(py, future) {
                Ok(promise) => return keep_value(&codec, data, promise),
                Err(e) => Err(e),
            }
        }
        Ok(Some(data)) => codec.decode(py, &codec.unpack(data)).map(Bound::unbind),
        Ok(None) => Ok(call.default.unwrap_or_else(|| py.None())),
        Err(e) => Err(PyErr::from(e)),
    };
    let settled = match result {
        Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
        Err(e) => future.call_method1(intern!(py, "set_exception"), (e.into_value(py),)),
    };
    if let Err(e) = settled {
        e.write_unraisable(py, Some(future));
    }
}

/// Send the waiting call the usual way; its future is settled from there.
fn retry(py: Python<'_>, waiting: Waiting) {
    let future = waiting.future.bind(py);
    let promise: Promise = match promise_for(py, future) {
        Ok(promise) => promise,
        Err(e) => {
            let _ = future.call_method1(intern!(py, "set_exception"), (e.into_value(py),));
            return;
        }
    };
    start_get(&waiting.call.client, &waiting.call.codec, waiting.call.key, waiting.call.default, promise);
}

/// The loop's callback for a readable loop connection.
#[pyclass(frozen, module = "django_rustcache._core")]
struct Readable {
    conn: Arc<LoopConn>,
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
    conn: Arc<LoopConn>,
}

#[pymethods]
impl Watchdog {
    fn __call__(&self, py: Python<'_>) {
        self.conn.watch(py);
    }
}

/// A `get` the usual way: the answer settles `promise`.
pub(super) fn start_get(
    client: &Arc<Client>,
    codec: &Arc<RedisCodec>,
    key: Vec<u8>,
    default: Option<Py<PyAny>>,
    promise: Promise,
) {
    let codec = codec.clone();
    client.start(
        Get(key),
        Box::new(move |found| match found {
            Ok(Some(data)) => keep_value(&codec, data, promise),
            Ok(None) => promise.keep(Ok(Box::new(move |py: Python<'_>| Ok(default.unwrap_or_else(|| py.None()))))),
            Err(e) => promise.keep(Err(e)),
        }),
    );
}

/// Settle `promise` with a stored value: inflated where compressed (a large one off the loop
/// and off the I/O threads), unpickled on the loop's thread.
pub(super) fn keep_value(codec: &Arc<RedisCodec>, data: Vec<u8>, promise: Promise) {
    let codec = codec.clone();
    unpacked(&codec.clone(), vec![Some(data)], move |mut values| {
        let data = values.pop().flatten().unwrap_or_default();
        promise.keep(Ok(Box::new(move |py: Python<'_>| codec.decode(py, &data).map(Bound::unbind))));
    });
}
