//! The redis client's async calls: the same commands, routes, deadlines, retry rule and
//! failure accounting as the blocking ones, over multiplexed connections (a few per server,
//! shared by every call in flight) on the process's I/O runtime.

use std::sync::Arc;
use std::time::Instant;

use redis::{FromRedisValue, Value};

use super::client::{Client, Counter, INCR_IF_EXISTS, RENAME_IF_EXISTS, Route, counter, missing};
use super::conn::{Framing, Login, MAX_REPLY_BYTES, classify, handshake};
use super::pool::Pool;
use crate::error::{Error, ErrorKind};
use crate::net::Counters;
use crate::net::aio::{self, Mux, Wire, within};

/// RESP as the multiplexed connections read it: whole replies cut at their ends (lengths
/// bounded as they are announced), each parsed by the `redis` crate.
pub struct RedisWire;

/// Where the framing stopped in the bytes not yet taken.
#[derive(Default)]
pub struct Scan {
    framing: Framing,
    scanned: usize,
}

impl Wire for RedisWire {
    type Frame = Value;
    /// How many replies the request's commands give.
    type Expect = usize;
    type Scan = Scan;

    fn next_frame(scan: &mut Scan, buf: &[u8]) -> Result<Option<(Value, usize)>, Error> {
        let mut base = 0;
        loop {
            let from = base + scan.scanned;
            let found = scan
                .framing
                .advance(&buf[from..])
                .map_err(|what| Error::new(ErrorKind::TooLarge, format!("redis: the server announced {what}")))?;
            let Some(n) = found else {
                scan.scanned = buf.len() - base;
                if scan.scanned > MAX_REPLY_BYTES {
                    return Err(Error::new(
                        ErrorKind::TooLarge,
                        format!("redis: a reply larger than {MAX_REPLY_BYTES} bytes"),
                    ));
                }
                return Ok(None);
            };
            let end = from + n;
            scan.scanned = 0;
            let value = redis::parse_redis_value(&buf[base..end])
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("redis: an unparsable reply: {e}")))?;
            // RESP3 pushes are not replies (we speak RESP2, but a proxy might not).
            if matches!(value, Value::Push { .. }) {
                base = end;
                continue;
            }
            return Ok(Some((value, end)));
        }
    }

    fn is_last(expect: &usize, _frame: &Value, seen: usize) -> bool {
        seen + 1 >= *expect
    }
}

/// A reply as `T`: an error reply is the server's error, a reply of another shape a protocol
/// error.
fn typed<T: FromRedisValue>(label: &str, value: Value) -> Result<T, Error> {
    if let Value::ServerError(e) = value {
        return Err(classify(label, &e.into()));
    }
    redis::from_redis_value(value).map_err(|e| Error::new(ErrorKind::Protocol, format!("{label}: {e}")))
}

/// The first error reply among `values`, as ours.
fn no_error_reply(label: &str, values: &[Value]) -> Result<(), Error> {
    match values.iter().find_map(|v| if let Value::ServerError(e) = v { Some(e.clone()) } else { None }) {
        Some(e) => Err(classify(label, &e.into())),
        None => Ok(()),
    }
}

impl Pool {
    /// A new multiplexed connection, logged in, before `deadline` (and within the connect
    /// timeout).
    async fn connect_mux(&self, deadline: Instant) -> Result<Mux<RedisWire>, Error> {
        let deadline = deadline.min(Instant::now() + self.config().connect_timeout);
        let label = self.label();
        let stream = aio::connect(self.addr(), self.tls(), deadline, &label).await?;
        let mux = Mux::start(stream, &label, &aio::runtime()?);
        let (username, password) = self.credentials();
        let login = Login { username, password, db: self.db(), client_name: self.config().client_name.as_deref() };
        if let Some(pipe) = handshake(&login) {
            let count = pipe.cmd_iter().count();
            let replies = within(deadline, &label, "login", mux.call(pipe.get_packed_pipeline(), count)).await?;
            no_error_reply(&label, &replies)?;
        }
        Ok(mux)
    }

    /// One exchange (`replies` replies to `packed`) on a multiplexed connection, within one
    /// deadline (a connection, connecting, sending, every reply). A connection made before the
    /// call that turns out dead is replaced and, when `idempotent`, the exchange runs once more.
    /// A deadline that passes closes the connection (its server is not answering): the other
    /// calls on it fail then too, rather than each waiting out its own deadline.
    pub async fn exchange(
        &self,
        counters: &Counters,
        idempotent: bool,
        packed: Vec<u8>,
        replies: usize,
    ) -> Result<Vec<Value>, Error> {
        let started = Instant::now();
        let deadline = started + self.config().socket_timeout;
        let mut used: Option<Arc<Mux<RedisWire>>> = None;
        let attempt = async {
            self.check_up()?;
            let mut packed = Some(packed);
            let mut retried = false;
            loop {
                let mux = self.slots().get(|| self.connect_mux(deadline)).await?;
                used = Some(mux.clone());
                let may_retry = idempotent && !retried && mux.made < started;
                let bytes = if may_retry { packed.clone() } else { packed.take() }.unwrap_or_default();
                match mux.call(bytes, replies).await {
                    Ok(values) => {
                        self.mark_up();
                        return Ok(values);
                    }
                    Err(e) => {
                        self.slots().forget(&mux);
                        if may_retry && e.kind() == ErrorKind::Io {
                            retried = true;
                            continue;
                        }
                        return Err(e);
                    }
                }
            }
        };
        let outcome = tokio::time::timeout_at(deadline.into(), attempt).await.unwrap_or_else(|_| {
            let e = Error::new(
                ErrorKind::Timeout,
                format!("{}: no reply within {:.1}s", self.label(), self.config().socket_timeout.as_secs_f64()),
            );
            if let Some(mux) = used {
                mux.kill(e.clone());
                self.slots().forget(&mux);
            }
            Err(e)
        });
        if let Err(e) = &outcome
            && e.is_connection_failure()
        {
            counters.failure();
            self.record_failure(e);
        }
        outcome
    }
}

impl Client {
    fn label_for(&self, write: bool) -> (usize, String) {
        let index = self.server_for(write);
        (index, self.pools()[index].label())
    }

    /// One command's reply, from the server for `route`.
    async fn one(&self, route: Route<'_>, idempotent: bool, cmd: &redis::Cmd) -> Result<(String, Value), Error> {
        let (index, label) = self.label_for(route.writes());
        let mut values = self.pools()[index].exchange(self.counters(), idempotent, cmd.get_packed_command(), 1).await?;
        Ok((label, values.pop().unwrap_or(Value::Nil)))
    }

    async fn query<T: FromRedisValue>(&self, route: Route<'_>, idempotent: bool, cmd: &redis::Cmd) -> Result<T, Error> {
        let (label, value) = self.one(route, idempotent, cmd).await?;
        typed(&label, value)
    }

    /// GET.
    pub async fn get_async(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let found: Option<Vec<u8>> =
            self.query(Route::Key { key, write: false }, true, redis::cmd("GET").arg(key)).await?;
        self.counters().lookups(usize::from(found.is_some()), usize::from(found.is_none()));
        Ok(found)
    }

    /// MGET; `None` for the keys not found.
    pub async fn get_many_async(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Option<Vec<u8>>> = self.query(Route::AnyReplica, true, redis::cmd("MGET").arg(keys)).await?;
        if found.len() != keys.len() {
            return Err(Error::new(ErrorKind::Protocol, "redis MGET: a reply of another length than the keys"));
        }
        let hits = found.iter().filter(|v| v.is_some()).count();
        self.counters().lookups(hits, found.len() - hits);
        Ok(found)
    }

    /// SET with an optional expiry and NX/XX; whether it was stored.
    pub async fn set_async(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<u64>,
        nx: bool,
        xx: bool,
    ) -> Result<bool, Error> {
        let cmd = Self::set_cmd(key, value, ttl, nx, xx);
        let stored: Option<String> = self.query(Route::Key { key, write: true }, !nx && !xx, &cmd).await?;
        self.counters().sets(usize::from(stored.is_some()));
        Ok(stored.is_some())
    }

    /// `SET k v [EX ttl]` for every item, in one pipeline.
    pub async fn set_many_async(&self, items: &[(&[u8], &[u8])], ttl: Option<u64>) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (k, v) in items {
            let cmd = pipe.cmd("SET").arg(*k).arg(*v);
            if let Some(ttl) = ttl {
                cmd.arg("EX").arg(ttl);
            }
        }
        let (index, label) = self.label_for(true);
        let values =
            self.pools()[index].exchange(self.counters(), true, pipe.get_packed_pipeline(), items.len()).await?;
        no_error_reply(&label, &values)?;
        self.counters().sets(items.len());
        Ok(())
    }

    /// DEL; how many keys were there.
    pub async fn delete_async(&self, keys: &[&[u8]]) -> Result<u64, Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.query(Route::Primary, true, redis::cmd("DEL").arg(keys)).await
    }

    /// EXISTS.
    pub async fn exists_async(&self, key: &[u8]) -> Result<bool, Error> {
        self.query(Route::Key { key, write: false }, true, redis::cmd("EXISTS").arg(key)).await
    }

    /// EXPIRE (seconds), or PERSIST with `None`; whether the key exists.
    pub async fn touch_async(&self, key: &[u8], seconds: Option<u64>) -> Result<bool, Error> {
        let route = Route::Key { key, write: true };
        let Some(seconds) = seconds else {
            // PERSIST answers 0 for a key without a TTL: ask for its existence in the same trip.
            let (index, label) = self.label_for(true);
            let mut pipe = redis::pipe();
            pipe.cmd("PERSIST").arg(key).cmd("EXISTS").arg(key);
            let mut values = self.pools()[index].exchange(self.counters(), true, pipe.get_packed_pipeline(), 2).await?;
            no_error_reply(&label, &values)?;
            return typed(&label, values.pop().unwrap_or(Value::Nil));
        };
        self.query(route, true, redis::cmd("EXPIRE").arg(key).arg(seconds)).await
    }

    /// INCRBY on an existing key only, atomically, its TTL kept (see [`Client::incr`]); past
    /// 64 bits or on a non-integer it goes on as the blocking call does, off the I/O threads
    /// (WATCH needs a connection of its own).
    pub async fn incr_async(self: &Arc<Self>, key: Vec<u8>, delta: i64) -> Result<Counter, Error> {
        let route = Route::Key { key: &key, write: true };
        let sha = self.incr_script().get_hash().to_owned();
        let mut reply = self.one(route, false, redis::cmd("EVALSHA").arg(&sha).arg(1).arg(&key).arg(delta)).await?;
        if let (_, Value::ServerError(e)) = &reply
            && e.code() == "NOSCRIPT"
        {
            let source = INCR_IF_EXISTS;
            reply = self.one(route, false, redis::cmd("EVAL").arg(source).arg(1).arg(&key).arg(delta)).await?;
        }
        match reply {
            (_, Value::BulkString(digits)) => Ok(counter(&digits)),
            (_, Value::ServerError(_)) => {
                let client = self.clone();
                tokio::task::spawn_blocking(move || client.incr_big(&key, delta))
                    .await
                    .map_err(|e| Error::new(ErrorKind::Io, format!("redis incr: {e}")))?
            }
            _ => Err(missing(&key)),
        }
    }

    /// RENAME `from` to `to` (atomic, the TTL kept); `NotFound` when `from` is missing.
    pub async fn rename_async(&self, from: &[u8], to: &[u8]) -> Result<(), Error> {
        let route = Route::Key { key: from, write: true };
        let sha = self.rename_script().get_hash().to_owned();
        let mut reply = self.one(route, false, redis::cmd("EVALSHA").arg(&sha).arg(2).arg(from).arg(to)).await?;
        if let (_, Value::ServerError(e)) = &reply
            && e.code() == "NOSCRIPT"
        {
            let source = RENAME_IF_EXISTS;
            reply = self.one(route, false, redis::cmd("EVAL").arg(source).arg(2).arg(from).arg(to)).await?;
        }
        match reply {
            (_, Value::Int(_)) => Ok(()),
            (label, Value::ServerError(e)) => Err(classify(&label, &e.into())),
            _ => Err(missing(from)),
        }
    }

    /// Any command, as given (see [`Client::execute`]).
    pub async fn execute_async(&self, args: &[Vec<u8>], write: bool, idempotent: bool) -> Result<Value, Error> {
        let cmd = Self::command(args)?;
        let route = if write { Route::Primary } else { Route::AnyReplica };
        let (label, value) = self.one(route, idempotent, &cmd).await?;
        if let Value::ServerError(e) = value {
            return Err(classify(&label, &e.into()));
        }
        Ok(value)
    }

    /// FLUSHDB.
    pub async fn clear_async(&self) -> Result<(), Error> {
        self.query(Route::Primary, true, &redis::cmd("FLUSHDB")).await
    }
}
