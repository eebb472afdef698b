//! The redis client: Django's topology (the first server takes every write; reads go to a
//! random one of the others, or to the first when it is alone), one pool per server, and the
//! commands a cache backend needs, each one round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use num_bigint::BigInt;
use redis::{ConnectionLike, Script, Value};

use super::conn::Conn;
use super::pool::{Loan, Pool};
use super::wire::{classify, is_read_only};
use crate::error::{Error, ErrorKind};
use crate::net::{ClientStats, Counters};

/// Add to a number only when the key exists, keeping its TTL (INCRBY keeps it): atomic on the
/// server, and a missing key is reported instead of created. The result is read back with GET:
/// returning INCRBY's integer would pass it through a Lua number (a double), which is inexact
/// past 2**53.
pub(crate) const INCR_IF_EXISTS: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return false end \
                              redis.call('INCRBY', KEYS[1], ARGV[1]) \
                              return redis.call('GET', KEYS[1])";

/// RENAME that reports a missing source key instead of failing with an error reply.
pub(crate) const RENAME_IF_EXISTS: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return false end \
                                redis.call('RENAME', KEYS[1], KEYS[2]) return 1";

/// Where a command goes. One interface for every topology: today a leader and its read
/// replicas; sharded, Sentinel and Cluster topologies map the same routes to their servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A command on one key: a write goes to the key's primary, a read may go to a replica.
    Key { key: &'a [u8], write: bool },
    /// A command that must run on the primary (FLUSHDB, SCAN of the whole db, scripts).
    Primary,
    /// A read that any server may answer.
    AnyReplica,
}

impl Route<'_> {
    pub(crate) fn writes(&self) -> bool {
        match self {
            Route::Key { write, .. } => *write,
            Route::Primary => true,
            Route::AnyReplica => false,
        }
    }
}

/// An exchange sent to one server whose replies are still to be read. Sending to every server
/// first and then reading each one's replies has all of them working at once: a call over
/// several shards costs about one round trip, on one deadline.
pub struct InFlight<'a> {
    client: &'a Client,
    pool: &'a Pool,
    packed: Vec<u8>,
    replies: usize,
    deadline: Instant,
    sent: Result<(Loan, redis::RedisResult<()>), Error>,
}

impl InFlight<'_> {
    /// Read the replies (every one, so the connection stays in step). A pooled connection that
    /// turned out stale runs the exchange again on a new one, within the same deadline.
    pub fn finish(self) -> Result<Vec<Value>, Error> {
        let (client, pool, deadline) = (self.client, self.pool, self.deadline);
        let (Loan { mut conn, pooled }, sent) = self.sent?;
        let (packed, replies) = (self.packed, self.replies);
        match sent.and_then(|()| conn.read_replies(0, replies)) {
            Ok(values) => {
                pool.put(conn);
                Ok(values)
            }
            Err(e) => {
                if let Some(err) = client.failed(pool, conn, pooled, true, &e) {
                    return Err(err);
                }
                let fresh = Loan { conn: pool.replace(deadline)?, pooled: false };
                client.run_on(pool, fresh, deadline, true, |c| c.req_packed_commands(&packed, 0, replies))
            }
        }
    }
}

/// The first error reply among `values`, as ours.
fn error_reply(pool: &Pool, values: &[Value]) -> Result<(), Error> {
    match values.iter().find_map(|v| if let Value::ServerError(e) = v { Some(e.clone()) } else { None }) {
        Some(e) => Err(classify(&format!("redis {}", pool.name()), &e.into())),
        None => Ok(()),
    }
}

/// The deadline of a call over `parts` that starts now: the first client's (the clients of
/// one cache share their settings).
fn shared_deadline<T>(parts: &[(&Client, T)]) -> Instant {
    parts.first().map_or_else(Instant::now, |(c, _)| c.pools[0].deadline())
}

/// Finish every exchange (even after one failed, so each connection is settled), then the
/// first failure is the answer.
fn finish_all(flights: Vec<InFlight<'_>>) -> Result<Vec<Vec<Value>>, Error> {
    let mut out = Vec::with_capacity(flights.len());
    let mut first_error = None;
    for flight in flights {
        let pool = flight.pool;
        match flight.finish().and_then(|values| error_reply(pool, &values).map(|()| values)) {
            Ok(values) => out.push(values),
            Err(e) => {
                first_error.get_or_insert(e);
                out.push(Vec::new());
            }
        }
    }
    first_error.map_or(Ok(out), Err)
}

/// MGET on several clients (shards) at once: `parts` pairs a client with its keys; the values
/// come back per part, `None` for a key not found. With `per_key` (a Redis Cluster node, where
/// one MGET may not span hash slots), a pipeline of GETs instead of one MGET.
pub fn get_many_across(parts: &[(&Client, Vec<&[u8]>)], per_key: bool) -> Result<Vec<Vec<Option<Vec<u8>>>>, Error> {
    let deadline = shared_deadline(parts);
    let flights = parts
        .iter()
        .filter(|(_, keys)| !keys.is_empty())
        .map(|(c, keys)| {
            if per_key {
                let mut pipe = redis::pipe();
                for k in keys {
                    pipe.cmd("GET").arg(*k);
                }
                c.send(false, pipe.get_packed_pipeline(), keys.len(), deadline)
            } else {
                c.send(false, redis::cmd("MGET").arg(keys).get_packed_command(), 1, deadline)
            }
        })
        .collect();
    let mut replies = finish_all(flights)?.into_iter();
    let mut out = Vec::with_capacity(parts.len());
    for (client, keys) in parts {
        if keys.is_empty() {
            out.push(Vec::new());
            continue;
        }
        let values = replies.next().unwrap_or_default();
        let reply = if per_key { Value::Array(values) } else { values.into_iter().next().unwrap_or(Value::Nil) };
        let found: Vec<Option<Vec<u8>>> =
            redis::from_redis_value(reply).map_err(|e| Error::new(ErrorKind::Protocol, format!("redis MGET: {e}")))?;
        if found.len() != keys.len() {
            return Err(Error::new(ErrorKind::Protocol, "redis MGET: a reply of another length than the keys"));
        }
        let hits = found.iter().filter(|v| v.is_some()).count();
        client.counters.lookups(hits, found.len() - hits);
        out.push(found);
    }
    Ok(out)
}

/// Items to store on one client: its `(key, value)` pairs.
pub type Items<'a> = Vec<(&'a [u8], &'a [u8])>;

/// `SET k v [EX ttl]` for every item, on several clients (shards) at once, one pipeline each.
pub fn set_many_across(parts: &[(&Client, Items<'_>)], ttl: Option<u64>) -> Result<(), Error> {
    let deadline = shared_deadline(parts);
    let flights = parts
        .iter()
        .filter(|(_, items)| !items.is_empty())
        .map(|(c, items)| {
            let mut pipe = redis::pipe();
            for (k, v) in items {
                let cmd = pipe.cmd("SET").arg(*k).arg(*v);
                if let Some(ttl) = ttl {
                    cmd.arg("EX").arg(ttl);
                }
            }
            c.send(true, pipe.get_packed_pipeline(), items.len(), deadline)
        })
        .collect();
    finish_all(flights)?;
    for (client, items) in parts {
        client.counters.sets(items.len());
    }
    Ok(())
}

/// DEL on several clients (shards) at once; how many keys were there in all. With `per_key` (a
/// Redis Cluster node), a pipeline of one-key DELs instead of one DEL.
pub fn delete_across(parts: &[(&Client, Vec<&[u8]>)], per_key: bool) -> Result<u64, Error> {
    let deadline = shared_deadline(parts);
    let flights = parts
        .iter()
        .filter(|(_, keys)| !keys.is_empty())
        .map(|(c, keys)| {
            if per_key {
                let mut pipe = redis::pipe();
                for k in keys {
                    pipe.cmd("DEL").arg(*k);
                }
                c.send(true, pipe.get_packed_pipeline(), keys.len(), deadline)
            } else {
                c.send(true, redis::cmd("DEL").arg(keys).get_packed_command(), 1, deadline)
            }
        })
        .collect();
    let mut total = 0u64;
    for reply in finish_all(flights)? {
        for value in reply {
            if let Value::Int(n) = value {
                total += n.max(0) as u64;
            }
        }
    }
    Ok(total)
}

/// The value an increment came to: exact at any size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counter {
    /// A value that fits in 64 bits.
    Small(i64),
    /// A larger one, as decimal digits.
    Big(String),
}

/// A redis client over a leader and its read replicas.
pub struct Client {
    pools: Arc<Vec<Pool>>,
    incr: Script,
    rename: Script,
    /// xorshift state for picking a replica
    pick: AtomicU64,
    counters: Arc<Counters>,
    /// Send ASKING before each command (a Redis Cluster slot being migrated to this node).
    asking: bool,
}

impl Client {
    /// A client over `pools`; the first is the leader.
    pub fn new(pools: Vec<Pool>) -> Result<Self, Error> {
        if pools.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no redis server configured"));
        }
        Ok(Self {
            pools: Arc::new(pools),
            incr: Script::new(INCR_IF_EXISTS),
            rename: Script::new(RENAME_IF_EXISTS),
            pick: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            counters: Arc::default(),
            asking: false,
        })
    }

    /// The same servers, connections and counters, each command preceded by ASKING: for the
    /// one call a Redis Cluster node sent elsewhere with ASK.
    #[must_use]
    pub fn asking(&self) -> Self {
        Self {
            pools: self.pools.clone(),
            incr: Script::new(INCR_IF_EXISTS),
            rename: Script::new(RENAME_IF_EXISTS),
            pick: AtomicU64::new(self.pick.load(Ordering::Relaxed)),
            counters: self.counters.clone(),
            asking: true,
        }
    }

    /// Whether commands go with ASKING.
    pub(crate) fn is_asking(&self) -> bool {
        self.asking
    }

    /// The client-side counters.
    pub fn client_stats(&self) -> ClientStats {
        self.counters.snapshot()
    }

    /// The pools, leader first.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The index of the server for a read or a write. A read goes to a random replica, or to
    /// the leader when that replica is in its retry window.
    pub fn server_for(&self, write: bool) -> usize {
        if write || self.pools.len() == 1 {
            return 0;
        }
        let mut x = self.pick.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.pick.store(x, Ordering::Relaxed);
        let replica = 1 + (x % (self.pools.len() as u64 - 1)) as usize;
        if self.pools[replica].is_up() { replica } else { 0 }
    }

    /// Run `f` on a connection to the server for `route`, all within one deadline (waiting for
    /// a connection, connecting, sending, the whole reply). A connection that fails is dropped,
    /// never pooled again; one that got an error reply is still in step and goes back. When a
    /// pooled connection turns out dead (the server restarted since) and the command is
    /// `idempotent`, it is run once more on a new connection, so a restart costs no error.
    pub fn run<T>(
        &self,
        route: Route<'_>,
        idempotent: bool,
        f: impl FnMut(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let pool = &self.pools[self.server_for(route.writes())];
        let deadline = pool.deadline();
        let loan = pool.take(deadline)?;
        self.run_on(pool, loan, deadline, idempotent, f)
    }

    fn run_on<T>(
        &self,
        pool: &Pool,
        loan: Loan,
        deadline: Instant,
        idempotent: bool,
        mut f: impl FnMut(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let Loan { mut conn, mut pooled } = loan;
        loop {
            conn.begin(deadline);
            let outcome = if self.asking {
                redis::cmd("ASKING").query::<()>(&mut conn).and_then(|()| f(&mut conn))
            } else {
                f(&mut conn)
            };
            match outcome {
                Ok(v) => {
                    pool.put(conn);
                    return Ok(v);
                }
                Err(e) => {
                    if let Some(err) = self.failed(pool, conn, pooled, idempotent, &e) {
                        return Err(err);
                    }
                    conn = pool.replace(deadline)?;
                    pooled = false;
                }
            }
        }
    }

    /// Settle a connection whose exchange ended in `e`: an error reply leaves it in step (it goes
    /// back); a failure of its own drops it and counts against the server. `None`: it was a
    /// pooled connection gone stale and the exchange may run again, on a new connection in the
    /// same slot.
    fn failed(
        &self,
        pool: &Pool,
        mut conn: Conn,
        pooled: bool,
        idempotent: bool,
        e: &redis::RedisError,
    ) -> Option<Error> {
        let Some(failure) = conn.take_failure() else {
            if pooled && pool.master_only() && is_read_only(e) {
                // A master demoted since the connection was pooled refused: nothing was
                // applied, and the sentinels know the new one. Once more, on a new connection.
                let peer = conn.peer.clone();
                drop(conn);
                pool.demoted(Some(&peer));
                return None;
            }
            let err = classify(conn.label(), e);
            if err.is_connection_failure() {
                // An unparsable reply: out of step.
                let peer = conn.peer.clone();
                drop(conn);
                pool.forget();
                self.counters.failure();
                pool.record_failure(&err, Some(&peer));
            } else {
                pool.put(conn);
            }
            return Some(err);
        };
        let peer = conn.peer.clone();
        let conn_unsent = conn.nothing_sent();
        drop(conn);
        // A pooled connection the server dropped: run the call again on a new one, when it may
        // run twice or when nothing of it reached the server.
        if pooled && failure.kind() == ErrorKind::Io && (idempotent || conn_unsent) {
            pool.drop_idle();
            return None;
        }
        pool.forget();
        if failure.is_connection_failure() {
            self.counters.failure();
            pool.record_failure(&failure, Some(&peer));
        }
        Some(failure)
    }

    /// Send an idempotent exchange (`replies` replies) to the server for a read or a write,
    /// before `deadline`, without waiting for its replies: see [`InFlight::finish`].
    pub fn send(&self, write: bool, packed: Vec<u8>, replies: usize, deadline: Instant) -> InFlight<'_> {
        let pool = &self.pools[self.server_for(write)];
        let sent = pool.take(deadline).map(|mut loan| {
            loan.conn.begin(deadline);
            let result = loan.conn.send(&packed);
            (loan, result)
        });
        InFlight { client: self, pool, packed, replies, deadline, sent }
    }

    /// The counters (for the async calls).
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The script behind [`Client::incr`].
    pub(crate) fn incr_script(&self) -> &Script {
        &self.incr
    }

    /// The script behind [`Client::rename`].
    pub(crate) fn rename_script(&self) -> &Script {
        &self.rename
    }

    /// `SET key value [EX ttl] [NX|XX]`.
    pub(crate) fn set_cmd(key: &[u8], value: &[u8], ttl: Option<u64>, nx: bool, xx: bool) -> redis::Cmd {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("EX").arg(ttl);
        }
        if nx {
            cmd.arg("NX");
        } else if xx {
            cmd.arg("XX");
        }
        cmd
    }

    /// A command as given: its name, then its arguments.
    pub(crate) fn command(args: &[Vec<u8>]) -> Result<redis::Cmd, Error> {
        let Some((name, rest)) = args.split_first() else {
            return Err(Error::new(ErrorKind::Config, "execute() needs a command"));
        };
        let mut cmd = redis::cmd(&String::from_utf8_lossy(name));
        for a in rest {
            cmd.arg(a.as_slice());
        }
        Ok(cmd)
    }

    /// GET.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let found: Option<Vec<u8>> =
            self.run(Route::Key { key, write: false }, true, |c| redis::cmd("GET").arg(key).query(c))?;
        self.counters.lookups(usize::from(found.is_some()), usize::from(found.is_none()));
        Ok(found)
    }

    /// MGET, in one round trip; `None` for the keys not found.
    pub fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<Option<Vec<u8>>> =
            self.run(Route::AnyReplica, true, |c| redis::cmd("MGET").arg(keys).query(c))?;
        let hits = found.iter().filter(|v| v.is_some()).count();
        self.counters.lookups(hits, found.len() - hits);
        Ok(found)
    }

    /// SET with an optional expiry in seconds and NX/XX; whether it was stored.
    pub fn set(&self, key: &[u8], value: &[u8], ttl: Option<u64>, nx: bool, xx: bool) -> Result<bool, Error> {
        let cmd = Self::set_cmd(key, value, ttl, nx, xx);
        // A plain SET may be repeated; SET NX/XX may not (the first may have applied).
        let stored =
            self.run(Route::Key { key, write: true }, !nx && !xx, |c| cmd.query::<Option<String>>(c))?.is_some();
        self.counters.sets(usize::from(stored));
        Ok(stored)
    }

    /// Store every item with one pipeline (one round trip): `SET k v [EX ttl]` each.
    pub fn set_many(&self, items: &[(&[u8], &[u8])], ttl: Option<u64>) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (k, v) in items {
            let cmd = pipe.cmd("SET").arg(*k).arg(*v);
            if let Some(ttl) = ttl {
                cmd.arg("EX").arg(ttl);
            }
            cmd.ignore();
        }
        self.run(Route::Primary, true, |c| pipe.query::<()>(c))?;
        self.counters.sets(items.len());
        Ok(())
    }

    /// DEL; how many keys were there.
    pub fn delete(&self, keys: &[&[u8]]) -> Result<u64, Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(Route::Primary, true, |c| redis::cmd("DEL").arg(keys).query(c))
    }

    /// EXISTS.
    pub fn exists(&self, key: &[u8]) -> Result<bool, Error> {
        self.run(Route::Key { key, write: false }, true, |c| redis::cmd("EXISTS").arg(key).query(c))
    }

    /// EXPIRE (seconds); whether the key exists.
    pub fn expire(&self, key: &[u8], seconds: u64) -> Result<bool, Error> {
        self.run(Route::Key { key, write: true }, true, |c| redis::cmd("EXPIRE").arg(key).arg(seconds).query(c))
    }

    /// PERSIST; whether the key exists. (PERSIST answers 0 for a key without a TTL, so the
    /// existence is asked in the same round trip.)
    pub fn persist(&self, key: &[u8]) -> Result<bool, Error> {
        self.run(Route::Key { key, write: true }, true, |c| {
            let (_, exists): (i64, bool) = redis::pipe().cmd("PERSIST").arg(key).cmd("EXISTS").arg(key).query(c)?;
            Ok(exists)
        })
    }

    /// INCRBY on an existing key only, atomically, its TTL kept. A value or result past 64 bits
    /// (which INCRBY refuses) goes on with WATCH/MULTI. `NotFound` when the key is missing,
    /// `NotNumeric` when its value is not an integer.
    pub fn incr(&self, key: &[u8], delta: i64) -> Result<Counter, Error> {
        let script = &self.incr;
        let reply = self.run(Route::Key { key, write: true }, false, |c| script.key(key).arg(delta).invoke::<Value>(c));
        match reply {
            Ok(Value::BulkString(digits)) => Ok(counter(&digits)),
            Ok(_) => Err(missing(key)),
            // INCRBY refused: not an integer, or past 64 bits. The slow path tells which.
            Err(e) if e.kind() == ErrorKind::Server => self.incr_big(key, delta),
            Err(e) => Err(e),
        }
    }

    /// Add `delta` to an integer of any size: WATCH, GET, then `SET ... KEEPTTL` in MULTI/EXEC,
    /// again until no other client changed the key in between.
    pub(crate) fn incr_big(&self, key: &[u8], delta: i64) -> Result<Counter, Error> {
        let outcome = self.run(Route::Key { key, write: true }, false, |c| {
            loop {
                redis::cmd("WATCH").arg(key).query::<()>(c)?;
                let current: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(c)?;
                let parsed = current
                    .as_deref()
                    .map(|b| std::str::from_utf8(b).ok().and_then(|s| s.trim().parse::<BigInt>().ok()));
                let n = match parsed {
                    None => {
                        redis::cmd("UNWATCH").query::<()>(c)?;
                        return Ok(None);
                    }
                    Some(None) => {
                        redis::cmd("UNWATCH").query::<()>(c)?;
                        return Ok(Some(None));
                    }
                    Some(Some(n)) => n,
                };
                let new = (n + delta).to_string();
                let done: Option<()> =
                    redis::pipe().atomic().cmd("SET").arg(key).arg(&new).arg("KEEPTTL").ignore().query(c)?;
                if done.is_some() {
                    return Ok(Some(Some(new)));
                }
            }
        })?;
        match outcome {
            None => Err(missing(key)),
            Some(None) => Err(Error::new(
                ErrorKind::NotNumeric,
                format!("cannot increment or decrement the non-integer value of '{}'", String::from_utf8_lossy(key)),
            )),
            Some(Some(digits)) => Ok(counter(digits.as_bytes())),
        }
    }

    /// RENAME `from` to `to` (atomic, the TTL kept); `NotFound` when `from` is missing.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> Result<(), Error> {
        let script = &self.rename;
        let route = Route::Key { key: from, write: true };
        match self.run(route, false, |c| script.key(from).key(to).invoke::<Value>(c))? {
            Value::Int(_) => Ok(()),
            _ => Err(missing(from)),
        }
    }

    /// Any command, as given: for the extension API (TTL, SCAN, EVAL, ...). Not retried on a
    /// stale connection unless `idempotent`.
    pub fn execute(&self, args: &[Vec<u8>], write: bool, idempotent: bool) -> Result<Value, Error> {
        let cmd = Self::command(args)?;
        let route = if write { Route::Primary } else { Route::AnyReplica };
        self.run(route, idempotent, |c| cmd.query::<Value>(c))
    }

    /// FLUSHDB.
    pub fn clear(&self) -> Result<(), Error> {
        self.run(Route::Primary, true, |c| redis::cmd("FLUSHDB").query::<()>(c))
    }
}

pub(crate) fn missing(key: &[u8]) -> Error {
    Error::new(ErrorKind::NotFound, format!("Key '{}' not found.", String::from_utf8_lossy(key)))
}

/// The digits a counter came to, as a number.
pub(crate) fn counter(digits: &[u8]) -> Counter {
    let text = String::from_utf8_lossy(digits);
    match text.trim().parse::<i64>() {
        Ok(n) => Counter::Small(n),
        Err(_) => Counter::Big(text.trim().to_owned()),
    }
}
