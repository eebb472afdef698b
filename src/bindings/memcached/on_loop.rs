//! The memcached client's loop connections (see `bindings::on_loop`): one `aget` at a time read
//! on the event loop's own thread.
//!
//! The usual way's `get` ([`start_get`]) is here too: the loop hands calls to it, and `aio.rs`
//! starts the calls the loop does not take with it.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::bindings::aio::{Make, OFF_IO_FROM, Promise, off_loop, promise_for, running_loop};
use crate::bindings::on_loop::{LoopConns, LoopSocket, Server, resolve};
use crate::bindings::values::{MemcachedCodec, unpack_found};
use crate::codec;
use crate::error::Error;
use crate::memcached::client::{Client, Item};
use crate::memcached::conn::Conn;
use crate::memcached::wire::{Answer, Expect, Frame};
use crate::metrics::{Outcome, Recording};
use crate::net::Stream;

/// A `get` on its way: its made key, what a miss answers, and its metrics.
pub(super) struct GetCall {
    pub key: String,
    pub default: Option<Py<PyAny>>,
    pub recording: Recording,
    pub codec: Arc<MemcachedCodec>,
}

/// One server of a client, as its loop connection sees it.
pub(super) struct MemcachedServer {
    client: Arc<Client>,
    si: usize,
    label: String,
}

/// The memcached client's loop connections, by server index.
pub(super) type MemcachedLoopConns = LoopConns<usize, MemcachedServer>;

/// Start `call` on the running loop's connection to the key's server: its future, or the call
/// back when the usual way must take it.
pub(super) fn try_get<'py>(
    conns: &MemcachedLoopConns,
    py: Python<'py>,
    client: &Arc<Client>,
    call: GetCall,
) -> PyResult<Result<Bound<'py, PyAny>, GetCall>> {
    let Ok(si) = client.route(call.key.as_bytes()) else { return Ok(Err(call)) };
    let Ok(event_loop) = running_loop(py) else { return Ok(Err(call)) };
    let server = || Arc::new(MemcachedServer { client: client.clone(), si, label: client.server_label(si) });
    conns.try_start(py, &event_loop, &si, server, call)
}

impl LoopSocket for Conn {
    fn stream(&mut self) -> &mut Stream {
        self.stream_mut()
    }
}

impl Server for MemcachedServer {
    type Conn = Conn;
    type Call = GetCall;
    type Reply = Vec<Frame>;
    /// The answer being read (`None` between calls).
    type Cut = Option<Answer>;
    /// One value (at most 1 GiB, as the parsers bound it) and its framing.
    const MAX_REPLY: usize = (1 << 30) + 64 * 1024;

    fn label(&self) -> &str {
        &self.label
    }

    fn take_idle(&self) -> Option<Conn> {
        self.client.take_idle(self.si)
    }

    fn open_idle(&self) {
        self.client.open_idle(self.si);
    }

    /// (The blocking pool counts no open connections: nothing to free.)
    fn forget(&self) {}

    fn current(&self, _: &Conn) -> bool {
        true
    }

    fn is_up(&self) -> bool {
        self.client.is_up(self.si)
    }

    fn timeout(&self) -> Duration {
        self.client.call_timeout()
    }

    fn request(&self, call: &GetCall) -> Result<Vec<u8>, Error> {
        self.client.get_request(call.key.as_bytes())
    }

    fn cut(&self, answer: &mut Option<Answer>, bytes: &[u8]) -> Result<Option<(Vec<Frame>, usize)>, Error> {
        let whole = answer.get_or_insert_with(|| Answer::new(Expect::Answers(1))).cut(bytes)?;
        if whole.is_some() {
            *answer = None;
        }
        Ok(whole)
    }

    fn succeeded(&self) {
        self.client.succeeded(self.si);
    }

    fn failed(&self, e: &Error, _: Option<&Conn>) {
        self.client.failed(self.si, e);
    }

    fn settle(&self, py: Python<'_>, future: &Bound<'_, PyAny>, call: GetCall, reply: Result<Vec<Frame>, Error>) {
        let found = reply.and_then(|frames| self.client.read_get(self.si, frames));
        let GetCall { key, default, recording, codec } = call;
        counted(recording, key.len(), &found);
        let result = match found {
            Ok(Some(item)) if inflates_off_loop(&[Some(&item)]) => match promise_for(py, future) {
                Ok(promise) => return keep_item(codec, Some(item), default, promise),
                Err(e) => Err(e),
            },
            Ok(item) => match unpack_found(&codec, item) {
                Ok(Some((flags, data))) => MemcachedCodec::decode(py, flags, &data).map(Bound::unbind),
                Ok(None) => Ok(default.unwrap_or_else(|| py.None())),
                Err(e) => Err(PyErr::from(e)),
            },
            Err(e) => Err(PyErr::from(e)),
        };
        resolve(py, future, result);
    }

    fn retry(&self, call: GetCall, promise: Promise) {
        start_get(&self.client, call, promise);
    }
}

/// Whether these items' compressed bytes are many enough to inflate on a blocking thread.
pub(super) fn inflates_off_loop(items: &[Option<&Item>]) -> bool {
    let compressed = items.iter().flatten().filter(|item| item.flags & codec::FLAG_ZLIB != 0);
    compressed.map(|item| item.data.len()).sum::<usize>() >= OFF_IO_FROM / 4
}

/// Items inflated where compressed, then `go` with them (the caller is on an I/O thread:
/// large compressed values go to a blocking thread).
pub(super) fn unpacked(
    codec: Arc<MemcachedCodec>,
    items: Vec<Option<Item>>,
    go: impl FnOnce(Result<Vec<Option<(u32, Vec<u8>)>>, Error>) + Send + 'static,
) {
    let large = inflates_off_loop(&items.iter().map(Option::as_ref).collect::<Vec<_>>());
    let work = move || go(items.into_iter().map(|item| unpack_found(&codec, item)).collect());
    if large { off_loop(true, work) } else { work() }
}

/// Settle `promise` with a `get`'s item (inflated first where compressed) or `default`.
fn keep_item(codec: Arc<MemcachedCodec>, item: Option<Item>, default: Option<Py<PyAny>>, promise: Promise) {
    unpacked(codec, vec![item], move |items| {
        let item = items.map(|mut items| items.pop().flatten());
        promise.keep(item.map(|item| {
            Box::new(move |py: Python<'_>| match item {
                Some((flags, data)) => MemcachedCodec::decode(py, flags, &data).map(Bound::unbind),
                None => Ok(default.unwrap_or_else(|| py.None())),
            }) as Make
        }));
    });
}

/// A `get` the usual way: the answer settles `promise`.
pub(super) fn start_get(client: &Arc<Client>, call: GetCall, promise: Promise) {
    let GetCall { key, default, recording, codec } = call;
    let sent = key.len();
    client.get_then(
        key.as_bytes(),
        Box::new(move |found| {
            counted(recording, sent, &found);
            match found {
                Ok(item) => keep_item(codec, item, default, promise),
                Err(e) => promise.keep(Err(e)),
            }
        }),
    );
}

/// A `get` ended with `found`: its outcome, key and bytes recorded.
fn counted(recording: Recording, sent: usize, found: &Result<Option<Item>, Error>) {
    if let Ok(item) = found {
        recording.metrics().bytes(sent, item.as_ref().map_or(0, |i| i.data.len()));
    }
    recording.end(found, |item| Outcome::found(item.is_some()));
}
