//! The redis client's async calls: the same commands, routes, deadlines, retry rule and
//! failure accounting as the blocking ones, over multiplexed connections (a few per server,
//! shared by every call in flight) on the process's I/O runtime.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use redis::{FromRedisValue, Value};
use tokio::sync::oneshot;

use super::client::{Client, Counter, INCR_IF_EXISTS, RENAME_IF_EXISTS, counter, missing};
use super::conn::{Login, handshake, is_master};
use super::pool::{Pool, Target};
use super::sentinel::Role;
use super::wire::{RedisWire, classify, no_error_reply, read_only, typed};
use crate::error::{Error, ErrorKind};
use crate::net::Address;
use crate::net::aio::{self, Answer, Mux, within};

/// What gets an exchange's replies (or its error), with the pool of the server that answered.
pub type Then = Box<dyn FnOnce(&Pool, Result<Vec<Value>, Error>) + Send>;

/// What gets a call's result.
pub type Done<T> = Box<dyn FnOnce(Result<T, Error>) + Send>;

impl Pool {
    /// A new multiplexed connection, logged in, before `deadline` (and within the connect
    /// timeout). A Sentinel-managed pool that cannot reach the address it had asks the
    /// sentinels again, and tries the new answer once.
    async fn connect_mux(&self, deadline: Instant) -> Result<Mux<RedisWire>, Error> {
        let deadline = deadline.min(Instant::now() + self.config().connect_timeout);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (addr, epoch) = self.endpoint_async(deadline).await?;
            let (made, epoch) = match self.connect_mux_to(&addr, deadline).await {
                Err(e) if e.is_connection_failure() && self.sentinel().is_some() => {
                    self.suspect(&addr);
                    match self.endpoint_async(deadline).await {
                        Ok((again, epoch)) if again != addr => (self.connect_mux_to(&again, deadline).await, epoch),
                        _ => (Err(e), epoch),
                    }
                }
                other => (other, epoch),
            };
            // The sentinels named another master while this one was connecting: ask again.
            if made.is_ok() && epoch != self.current_epoch() && attempts < 3 {
                continue;
            }
            return made;
        }
    }

    async fn connect_mux_to(&self, addr: &Address, deadline: Instant) -> Result<Mux<RedisWire>, Error> {
        let named;
        let label = match self.target() {
            Target::Fixed(_) => self.label(),
            Target::Sentinel(..) => {
                named = if self.tls().is_some() { format!("redis {addr} (TLS)") } else { format!("redis {addr}") };
                &named
            }
        };
        let stream = aio::connect(addr, self.tls(), deadline, label).await?;
        let mut mux = Mux::start(stream, label)?;
        if matches!(self.target(), Target::Sentinel(..)) {
            mux.peer = Some(addr.clone());
        }
        let (username, password) = self.credentials();
        let login = Login {
            username,
            password,
            db: self.db(),
            client_name: self.config().client_name.as_deref(),
            master_only: self.master_only(),
            readonly: self.config().readonly,
        };
        if let Some(pipe) = handshake(&login) {
            let count = pipe.cmd_iter().count();
            let packed = Arc::new(pipe.get_packed_pipeline());
            let replies = within(deadline, label, "login", mux.call(packed, count, deadline)).await?;
            no_error_reply(label, &replies)?;
            if login.master_only {
                is_master(label, replies.last())?;
            }
        }
        Ok(mux)
    }

    /// [`Pool::endpoint`] without blocking the I/O thread: the sentinels' last answer when it
    /// stands, else they are asked on a blocking thread.
    async fn endpoint_async(&self, deadline: Instant) -> Result<(Address, u64), Error> {
        match self.target() {
            Target::Fixed(addr) => Ok((addr.clone(), 0)),
            Target::Sentinel(s, role) => {
                if let Some(addr) = s.cached(*role) {
                    return Ok(addr);
                }
                let (s, role) = (s.clone(), *role);
                tokio::task::spawn_blocking(move || match role {
                    Role::Master => s.master(deadline),
                    Role::Replica => s.replica(deadline),
                })
                .await
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "redis sentinel: the lookup was cancelled")))
            }
        }
    }

    /// One exchange when no connection was ready: connect (or wait for room) first, all before
    /// `deadline`. A connection made before `started` that turns out dead is replaced and,
    /// when `idempotent`, the exchange runs once more on a new one. With the outcome, the
    /// address of the server it was last sent to, when the pool keeps it.
    async fn exchange(
        &self,
        idempotent: bool,
        started: Instant,
        packed: Arc<Vec<u8>>,
        replies: usize,
        deadline: Instant,
    ) -> (Result<Vec<Value>, Error>, Option<Address>) {
        let peer = Mutex::new(None);
        let attempt = async {
            let mut retried = false;
            let mut redirected = false;
            loop {
                let mux = self.slots().get(|| self.connect_mux(deadline)).await?;
                peer.lock().clone_from(&mux.peer);
                match mux.call(packed.clone(), replies, deadline).await {
                    Ok(values) if !redirected && self.master_only() && read_only(&values) => {
                        // A demoted master refused: nothing was applied; once more on the new one.
                        redirected = true;
                        self.demoted(mux.peer.as_ref());
                    }
                    Ok(values) => {
                        self.mark_up();
                        return Ok(values);
                    }
                    Err(e) => {
                        self.slots().forget(&mux);
                        if idempotent && !retried && mux.made < started && e.kind() == ErrorKind::Io {
                            retried = true;
                            continue;
                        }
                        return Err(e);
                    }
                }
            }
        };
        let outcome = tokio::time::timeout_at(deadline.into(), attempt).await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("{}: no reply within {:.1}s", self.label(), self.config().socket_timeout.as_secs_f64()),
            ))
        });
        (outcome, peer.into_inner())
    }
}

impl Client {
    /// Start one exchange (`replies` replies to `packed`) on the server for a read or a write,
    /// within one deadline; `then` gets the replies. With a connection open, the request is
    /// written now, on the caller's thread, and `then` runs on an I/O thread when the reply is
    /// in; otherwise the exchange connects first, on the I/O runtime.
    pub fn start(self: &Arc<Self>, write: bool, idempotent: bool, packed: Vec<u8>, replies: usize, then: Then) {
        if self.is_asking() {
            // ASKING first, on the same connection; its +OK is not the caller's.
            let mut asked = redis::cmd("ASKING").get_packed_command();
            asked.extend_from_slice(&packed);
            let then: Then = Box::new(move |pool, r| {
                then(
                    pool,
                    r.and_then(|values| {
                        let mut rest = values.into_iter();
                        let asked = rest.next().unwrap_or(Value::Nil);
                        no_error_reply(pool.label(), &[asked])?;
                        Ok(rest.collect())
                    }),
                );
            });
            return self.dispatch(write, idempotent, asked, replies + 1, then);
        }
        self.dispatch(write, idempotent, packed, replies, then);
    }

    fn dispatch(self: &Arc<Self>, write: bool, idempotent: bool, packed: Vec<u8>, replies: usize, then: Then) {
        let index = self.server_for(write);
        let pool = &self.pools()[index];
        pool.refresh();
        let started = Instant::now();
        let deadline = started + pool.config().socket_timeout;
        if let Err(e) = pool.check_up() {
            return then(pool, Err(e));
        }
        let packed = Arc::new(packed);
        if let Some(mux) = pool.slots().ready() {
            let retry = idempotent && mux.made < started;
            let (client, conn, request) = (self.clone(), mux.clone(), packed.clone());
            mux.send(
                packed,
                replies,
                deadline,
                Box::new(move |answer| client.settle(index, &conn, answer, (request, retry), replies, deadline, then)),
            );
            return;
        }
        self.spawn_exchange(index, idempotent, started, packed, replies, deadline, then);
    }

    /// An answer from a connection that was ready: a stale connection's failure runs the
    /// exchange once more (when `request` says it may be), on a new connection; so does a
    /// demoted master's READONLY (nothing was applied).
    #[allow(clippy::too_many_arguments)]
    fn settle(
        self: &Arc<Self>,
        index: usize,
        mux: &Arc<Mux<RedisWire>>,
        answer: Answer<RedisWire>,
        request: (Arc<Vec<u8>>, bool),
        replies: usize,
        deadline: Instant,
        then: Then,
    ) {
        let pool = &self.pools()[index];
        let (packed, retry) = request;
        match answer {
            Ok(values) if pool.master_only() && read_only(&values) => {
                pool.demoted(mux.peer.as_ref());
                self.spawn_exchange(index, false, Instant::now(), packed, replies, deadline, then);
            }
            Ok(values) => {
                pool.mark_up();
                then(pool, Ok(values));
            }
            Err(e) => {
                pool.slots().forget(mux);
                if e.kind() == ErrorKind::Io && retry {
                    return self.spawn_exchange(index, false, Instant::now(), packed, replies, deadline, then);
                }
                self.account(pool, &e, mux.peer.as_ref());
                then(pool, Err(e));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_exchange(
        self: &Arc<Self>,
        index: usize,
        idempotent: bool,
        started: Instant,
        packed: Arc<Vec<u8>>,
        replies: usize,
        deadline: Instant,
        then: Then,
    ) {
        let handle = match aio::runtime() {
            Ok(handle) => handle,
            Err(e) => return then(&self.pools()[index], Err(e)),
        };
        let client = self.clone();
        handle.spawn(async move {
            let pool = &client.pools()[index];
            let (result, peer) = pool.exchange(idempotent, started, packed, replies, deadline).await;
            if let Err(e) = &result {
                client.account(pool, e, peer.as_ref());
            }
            then(pool, result);
        });
    }

    /// A call failed on the connection (not on the server's answer): it counts, and the server
    /// is skipped for the retry window.
    fn account(&self, pool: &Pool, e: &Error, peer: Option<&Address>) {
        if e.is_connection_failure() {
            self.counters().failure();
            pool.record_failure(e, peer);
        }
    }

    /// One command's reply as `T`, to `done`.
    pub fn query_then<T: FromRedisValue + Send + 'static>(
        self: &Arc<Self>,
        write: bool,
        idempotent: bool,
        cmd: &redis::Cmd,
        done: Done<T>,
    ) {
        self.start(
            write,
            idempotent,
            cmd.get_packed_command(),
            1,
            Box::new(move |pool, r| done(r.and_then(|mut v| typed(pool.label(), v.pop().unwrap_or(Value::Nil))))),
        );
    }

    /// One exchange, awaited: the replies and the label of the server that answered.
    async fn exchange_on(
        self: &Arc<Self>,
        write: bool,
        idempotent: bool,
        packed: Vec<u8>,
        replies: usize,
    ) -> Result<(String, Vec<Value>), Error> {
        let (tx, rx) = oneshot::channel();
        self.start(
            write,
            idempotent,
            packed,
            replies,
            Box::new(move |pool, r| {
                let _ = tx.send(r.map(|v| (pool.label().to_owned(), v)));
            }),
        );
        rx.await.unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "redis: the I/O runtime stopped")))
    }

    async fn one(self: &Arc<Self>, write: bool, idempotent: bool, cmd: &redis::Cmd) -> Result<(String, Value), Error> {
        let (label, mut values) = self.exchange_on(write, idempotent, cmd.get_packed_command(), 1).await?;
        Ok((label, values.pop().unwrap_or(Value::Nil)))
    }

    /// GET; `None` when the key is missing.
    pub fn get_then(self: &Arc<Self>, key: &[u8], done: Done<Option<Vec<u8>>>) {
        let client = self.clone();
        self.query_then(
            false,
            true,
            redis::cmd("GET").arg(key),
            Box::new(move |found: Result<Option<Vec<u8>>, Error>| {
                if let Ok(f) = &found {
                    client.counters().lookups(usize::from(f.is_some()), usize::from(f.is_none()));
                }
                done(found);
            }),
        );
    }

    /// MGET; `None` for the keys not found. With `per_key` (a Redis Cluster node, where one MGET
    /// may not span hash slots), a pipeline of GETs instead.
    pub fn get_many_then(self: &Arc<Self>, keys: &[&[u8]], per_key: bool, done: Done<Vec<Option<Vec<u8>>>>) {
        if keys.is_empty() {
            return done(Ok(Vec::new()));
        }
        let (client, count) = (self.clone(), keys.len());
        let (packed, replies) = if per_key {
            let mut pipe = redis::pipe();
            for k in keys {
                pipe.cmd("GET").arg(*k);
            }
            (pipe.get_packed_pipeline(), count)
        } else {
            (redis::cmd("MGET").arg(keys).get_packed_command(), 1)
        };
        self.start(
            false,
            true,
            packed,
            replies,
            Box::new(move |pool, r| {
                let found = r.and_then(|mut values| {
                    no_error_reply(pool.label(), &values)?;
                    let reply = if per_key { Value::Array(values) } else { values.pop().unwrap_or(Value::Nil) };
                    typed::<Vec<Option<Vec<u8>>>>(pool.label(), reply)
                });
                let found = found.and_then(|f| {
                    if f.len() == count {
                        Ok(f)
                    } else {
                        Err(Error::new(ErrorKind::Protocol, "redis MGET: a reply of another length than the keys"))
                    }
                });
                if let Ok(f) = &found {
                    let hits = f.iter().filter(|v| v.is_some()).count();
                    client.counters().lookups(hits, f.len() - hits);
                }
                done(found);
            }),
        );
    }

    /// SET with an optional expiry and NX/XX; whether it was stored.
    pub fn set_then(
        self: &Arc<Self>,
        key: &[u8],
        value: &[u8],
        ttl: Option<u64>,
        nx: bool,
        xx: bool,
        done: Done<bool>,
    ) {
        let client = self.clone();
        // A plain SET may be repeated; SET NX/XX may not (the first may have applied).
        self.query_then(
            true,
            !nx && !xx,
            &Self::set_cmd(key, value, ttl, nx, xx),
            Box::new(move |stored: Result<Option<String>, Error>| {
                let stored = stored.map(|s| s.is_some());
                if let Ok(true) = stored {
                    client.counters().sets(1);
                }
                done(stored);
            }),
        );
    }

    /// `SET k v [EX ttl]` for every item, in one pipeline.
    pub fn set_many_then(self: &Arc<Self>, items: &[(&[u8], &[u8])], ttl: Option<u64>, done: Done<()>) {
        if items.is_empty() {
            return done(Ok(()));
        }
        let mut pipe = redis::pipe();
        for (k, v) in items {
            let cmd = pipe.cmd("SET").arg(*k).arg(*v);
            if let Some(ttl) = ttl {
                cmd.arg("EX").arg(ttl);
            }
        }
        let (client, count) = (self.clone(), items.len());
        self.start(
            true,
            true,
            pipe.get_packed_pipeline(),
            count,
            Box::new(move |pool, r| {
                let stored = r.and_then(|values| no_error_reply(pool.label(), &values));
                if stored.is_ok() {
                    client.counters().sets(count);
                }
                done(stored);
            }),
        );
    }

    /// DEL; how many keys were there.
    pub fn delete_then(self: &Arc<Self>, keys: &[&[u8]], done: Done<u64>) {
        if keys.is_empty() {
            return done(Ok(0));
        }
        self.query_then(true, true, redis::cmd("DEL").arg(keys), done);
    }

    /// A pipeline of one-key DELs (a Redis Cluster node, where one DEL may not span hash
    /// slots); how many keys were there.
    pub fn delete_each_then(self: &Arc<Self>, keys: &[&[u8]], done: Done<u64>) {
        if keys.is_empty() {
            return done(Ok(0));
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("DEL").arg(*k);
        }
        self.start(
            true,
            true,
            pipe.get_packed_pipeline(),
            keys.len(),
            Box::new(move |pool, r| {
                done(r.and_then(|values| {
                    no_error_reply(pool.label(), &values)?;
                    Ok(values.iter().map(|v| if let Value::Int(n) = v { (*n).max(0).unsigned_abs() } else { 0 }).sum())
                }));
            }),
        );
    }

    /// EXISTS.
    pub fn exists_then(self: &Arc<Self>, key: &[u8], done: Done<bool>) {
        self.query_then(false, true, redis::cmd("EXISTS").arg(key), done);
    }

    /// Any command, as given (see [`Client::execute`]).
    pub fn execute_then(self: &Arc<Self>, args: &[Vec<u8>], write: bool, idempotent: bool, done: Done<Value>) {
        let cmd = match Self::command(args) {
            Ok(cmd) => cmd,
            Err(e) => return done(Err(e)),
        };
        self.start(
            write,
            idempotent,
            cmd.get_packed_command(),
            1,
            Box::new(move |pool, r| {
                done(r.and_then(|mut values| match values.pop().unwrap_or(Value::Nil) {
                    Value::ServerError(e) => Err(classify(pool.label(), &e.into())),
                    value => Ok(value),
                }));
            }),
        );
    }

    /// EXPIRE (seconds), or PERSIST with `None`; whether the key exists.
    pub async fn touch_async(self: &Arc<Self>, key: &[u8], seconds: Option<u64>) -> Result<bool, Error> {
        let Some(seconds) = seconds else {
            // PERSIST answers 0 for a key without a TTL: ask for its existence in the same trip.
            let mut pipe = redis::pipe();
            pipe.cmd("PERSIST").arg(key).cmd("EXISTS").arg(key);
            let (label, mut values) = self.exchange_on(true, true, pipe.get_packed_pipeline(), 2).await?;
            no_error_reply(&label, &values)?;
            return typed(&label, values.pop().unwrap_or(Value::Nil));
        };
        let (label, value) = self.one(true, true, redis::cmd("EXPIRE").arg(key).arg(seconds)).await?;
        typed(&label, value)
    }

    /// INCRBY on an existing key only, atomically, its TTL kept (see [`Client::incr`]); past
    /// 64 bits or on a non-integer it goes on as the blocking call does, off the I/O threads
    /// (WATCH needs a connection of its own).
    pub async fn incr_async(self: &Arc<Self>, key: Vec<u8>, delta: i64) -> Result<Counter, Error> {
        let sha = self.incr_script().get_hash().to_owned();
        let mut reply = self.one(true, false, redis::cmd("EVALSHA").arg(&sha).arg(1).arg(&key).arg(delta)).await?;
        if let (_, Value::ServerError(e)) = &reply
            && e.code() == "NOSCRIPT"
        {
            reply = self.one(true, false, redis::cmd("EVAL").arg(INCR_IF_EXISTS).arg(1).arg(&key).arg(delta)).await?;
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
    pub async fn rename_async(self: &Arc<Self>, from: &[u8], to: &[u8]) -> Result<(), Error> {
        let sha = self.rename_script().get_hash().to_owned();
        let mut reply = self.one(true, false, redis::cmd("EVALSHA").arg(&sha).arg(2).arg(from).arg(to)).await?;
        if let (_, Value::ServerError(e)) = &reply
            && e.code() == "NOSCRIPT"
        {
            reply = self.one(true, false, redis::cmd("EVAL").arg(RENAME_IF_EXISTS).arg(2).arg(from).arg(to)).await?;
        }
        match reply {
            (_, Value::Int(_)) => Ok(()),
            (label, Value::ServerError(e)) => Err(classify(&label, &e.into())),
            _ => Err(missing(from)),
        }
    }

    /// FLUSHDB.
    pub async fn clear_async(self: &Arc<Self>) -> Result<(), Error> {
        let (label, value) = self.one(true, true, &redis::cmd("FLUSHDB")).await?;
        typed(&label, value)
    }
}

/// A callback's result, awaited.
pub async fn awaited<T: Send + 'static>(start: impl FnOnce(Done<T>)) -> Result<T, Error> {
    let (tx, rx) = oneshot::channel();
    start(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.await.unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "redis: the I/O runtime stopped")))
}
