//! The redis client's loop connections (see `bindings::on_loop`): one `aget` at a time read on
//! the event loop's own thread, for a key whose pool has no replicas, outside a Redis Cluster.
//!
//! The usual way's `get` ([`start_get`]) is here too: the loop hands calls to it, and `aio.rs`
//! starts the calls the loop does not take with it.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::bindings::aio::{OFF_IO_FROM, Promise, promise_for, running_loop};
use crate::bindings::on_loop::{LoopConns, LoopSocket, Server, resolve};
use crate::bindings::values::{RedisCodec, unpacked};
use crate::error::{Error, ErrorKind};
use crate::metrics::{Outcome, Recording};
use crate::net::Stream;
use crate::redis::client::Client;
use crate::redis::commands::{Command, Get};
use crate::redis::conn::Conn;
use crate::redis::topology::Node;
use crate::redis::wire::{Framing, MAX_REPLY_BYTES, classify};

/// A `get` on its way: its made key, what a miss answers, and its metrics.
pub(super) struct GetCall {
    pub key: Vec<u8>,
    pub default: Option<Py<PyAny>>,
    pub recording: Recording,
}

/// One pool (a single server) of a client, as its loop connection sees it.
pub(super) struct RedisServer {
    node: Arc<Node>,
    client: Arc<Client>,
    codec: Arc<RedisCodec>,
    label: String,
}

/// The redis client's loop connections, by pool name.
pub(super) type RedisLoopConns = LoopConns<String, RedisServer>;

/// Start `call` on the running loop's connection for the key's pool: its future, or the call
/// back when the usual way must take it.
pub(super) fn try_get<'py>(
    conns: &RedisLoopConns,
    py: Python<'py>,
    client: &Arc<Client>,
    codec: &Arc<RedisCodec>,
    call: GetCall,
) -> PyResult<Result<Bound<'py, PyAny>, GetCall>> {
    let topology = client.topology();
    if topology.is_cluster() {
        return Ok(Err(call));
    }
    let Ok(node) = topology.node_of(&call.key) else { return Ok(Err(call)) };
    let [pool] = node.pools() else { return Ok(Err(call)) };
    let Ok(event_loop) = running_loop(py) else { return Ok(Err(call)) };
    pool.refresh();
    let name = pool.name().to_owned();
    let label = pool.label().to_owned();
    let server = || Arc::new(RedisServer { node, client: client.clone(), codec: codec.clone(), label });
    conns.try_start(py, &event_loop, &name, server, call)
}

impl LoopSocket for Conn {
    fn stream(&mut self) -> &mut Stream {
        self.stream_mut()
    }
}

impl Server for RedisServer {
    type Conn = Conn;
    type Call = GetCall;
    type Reply = redis::Value;
    type Cut = Framing;
    const MAX_REPLY: usize = MAX_REPLY_BYTES;

    fn label(&self) -> &str {
        &self.label
    }

    fn take_idle(&self) -> Option<Conn> {
        self.node.pools()[0].take_idle().map(|loan| loan.conn)
    }

    fn open_idle(&self) {
        self.node.pools()[0].open_idle();
    }

    fn forget(&self) {
        self.node.pools()[0].forget();
    }

    fn current(&self, conn: &Conn) -> bool {
        conn.epoch == self.node.pools()[0].current_epoch()
    }

    fn is_up(&self) -> bool {
        self.node.pools()[0].is_up()
    }

    fn timeout(&self) -> Duration {
        self.node.pools()[0].config().socket_timeout
    }

    fn request(&self, call: &GetCall) -> Result<Vec<u8>, Error> {
        Ok(Get(call.key.clone()).request(&[0], false).packed)
    }

    fn cut(&self, framing: &mut Framing, bytes: &[u8]) -> Result<Option<(redis::Value, usize)>, Error> {
        let Some(end) = framing.whole(bytes, &self.label)? else { return Ok(None) };
        let value = redis::parse_redis_value(&bytes[..end])
            .map_err(|e| Error::new(ErrorKind::Protocol, format!("{}: {e}", self.label)))?;
        Ok(Some((value, end)))
    }

    fn succeeded(&self) {
        self.node.pools()[0].mark_up();
    }

    fn failed(&self, e: &Error, conn: Option<&Conn>) {
        if e.is_connection_failure() {
            self.client.counters().failure();
            self.node.pools()[0].record_failure(e, conn.map(|c| &c.peer));
        }
    }

    fn settle(&self, py: Python<'_>, future: &Bound<'_, PyAny>, call: GetCall, reply: Result<redis::Value, Error>) {
        let GetCall { key, default, recording } = call;
        let sent = key.len();
        let get = Get(key);
        let found = reply.and_then(|value| match value {
            redis::Value::ServerError(e) => Err(classify(&self.label, &e.into())),
            value => {
                let mut out = None;
                get.read(&[0], false, vec![value], &mut out, &self.label)?;
                get.count(&out, self.client.counters());
                Ok(out)
            }
        });
        counted(recording, sent, &found.as_ref().map(Option::as_ref).map_err(Clone::clone));
        let codec = &self.codec;
        let result = match found {
            Ok(Some(data)) if codec.inflate && data.len() >= OFF_IO_FROM => {
                // A large compressed value is inflated off the loop, as the usual way does.
                match promise_for(py, future) {
                    Ok(promise) => return keep_value(codec, data, default, promise),
                    Err(e) => Err(e),
                }
            }
            Ok(Some(data)) => match codec.unpack(data) {
                Some(data) => codec.decode(py, &data).map(Bound::unbind),
                None => Ok(default.unwrap_or_else(|| py.None())),
            },
            Ok(None) => Ok(default.unwrap_or_else(|| py.None())),
            Err(e) => Err(PyErr::from(e)),
        };
        resolve(py, future, result);
    }

    fn retry(&self, call: GetCall, promise: Promise) {
        start_get(&self.client, &self.codec, call, promise);
    }
}

/// A `get` the usual way: the answer settles `promise`.
pub(super) fn start_get(client: &Arc<Client>, codec: &Arc<RedisCodec>, call: GetCall, promise: Promise) {
    let GetCall { key, default, recording } = call;
    let (codec, sent) = (codec.clone(), key.len());
    client.start(
        Get(key),
        Box::new(move |found| {
            counted(recording, sent, &found.as_ref().map(Option::as_ref).map_err(Clone::clone));
            match found {
                Ok(Some(data)) => keep_value(&codec, data, default, promise),
                Ok(None) => {
                    promise.keep(Ok(Box::new(move |py: Python<'_>| Ok(default.unwrap_or_else(|| py.None())))));
                }
                Err(e) => promise.keep(Err(e)),
            }
        }),
    );
}

/// Settle `promise` with a stored value: inflated where compressed (a large one off the loop
/// and off the I/O threads), unpickled on the loop's thread.
pub(super) fn keep_value(codec: &Arc<RedisCodec>, data: Vec<u8>, default: Option<Py<PyAny>>, promise: Promise) {
    let codec = codec.clone();
    unpacked(&codec.clone(), vec![Some(data)], move |mut values| {
        let data = values.pop().flatten();
        promise.keep(Ok(Box::new(move |py: Python<'_>| match data {
            Some(data) => codec.decode(py, &data).map(Bound::unbind),
            // (refused: its signature did not verify)
            None => Ok(default.unwrap_or_else(|| py.None())),
        })));
    });
}

/// A `get` ended with `found` (`sent` bytes of key): its outcome, key and bytes recorded.
pub(super) fn counted(recording: Recording, sent: usize, found: &Result<Option<&Vec<u8>>, Error>) {
    if let Ok(value) = found {
        recording.metrics().bytes(sent, value.map_or(0, Vec::len));
    }
    recording.end(found, |value| Outcome::found(value.is_some()));
}
