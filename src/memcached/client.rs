//! The memcached client: the commands Django needs, each written once over the dialect (text
//! or binary), the router (which server, and whether it is up) and the pool. Every call has one
//! deadline. Multi-key commands are pipelined per server, and every server involved is sent its
//! batch before any reply is read, so servers work in parallel within that one deadline.

use std::time::{Duration, Instant};

use super::conn::{Address, Conn, Timeouts};
use super::dialect::{Dialect, Reading, Simple, VECTORED_FROM};
use super::plan::{DeleteMany, GetMany, PerServer, Plan, Read, SetMany, prepare};
use super::pool::Pool;
use super::protocol::Store;
use super::ring::{Distribution, KeyHash};
use super::router::{FailurePolicy, Router};
use super::wire::{Frame, Frames, MemcachedWire};
use crate::error::{Error, ErrorKind};
use crate::net::Counters;
use crate::net::aio::Slots;

/// Multiplexed connections per server for the async calls: one carries hundreds of calls at
/// once; a second opens only while the first is busy.
pub const ASYNC_CONNECTIONS: usize = 2;

pub use super::dialect::{Item, Stored};
pub use crate::net::ClientStats;

/// One configured server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Where it listens.
    pub addr: Address,
    /// Relative weight, for weighted ketama.
    pub weight: u32,
}

/// Everything a client is made from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The servers, in the order routing numbers them.
    pub servers: Vec<ServerSpec>,
    /// How keys are spread.
    pub distribution: Distribution,
    /// The key hash.
    pub hash: KeyHash,
    /// The connect timeout and the deadline of one call.
    pub timeouts: Timeouts,
    /// After a silent server's failure (a deadline passed), the server is not contacted again
    /// for this long: calls fail at once.
    pub retry_timeout: Duration,
    /// Whether any connection failure (refused, reset, closed) starts that window too.
    pub window_on_any_failure: bool,
    /// 0: a failed server keeps its keys. N > 0: after N failures in a row it leaves the ring
    /// (its keys go to the others) for `dead_timeout`.
    pub remove_failed: u32,
    /// How long a server removed by `remove_failed` stays out of the ring.
    pub dead_timeout: Duration,
    /// Idle connections kept per server.
    pub max_idle: usize,
    /// Speak the binary protocol (needed for SASL; otherwise the text protocol is used).
    pub binary: bool,
    /// SASL PLAIN credentials (implies the binary protocol).
    pub credentials: Option<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            distribution: Distribution::Modula,
            hash: KeyHash::OneAtATime,
            timeouts: Timeouts::default(),
            retry_timeout: Duration::from_secs(2),
            window_on_any_failure: false,
            remove_failed: 0,
            dead_timeout: Duration::from_secs(10),
            max_idle: 32,
            binary: false,
            credentials: None,
        }
    }
}

/// Each server's address and its answer (or its error).
pub type ByServer<T> = Vec<(String, Result<T, Error>)>;

/// A server's health, as reported by `Client::servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// `host:port` or `unix:/path`.
    pub address: String,
    /// False while calls to it fail at once (after a failure, for `retry_timeout`).
    pub up: bool,
    /// True while `remove_failed` keeps it out of the ring.
    pub removed: bool,
    /// Connection-level failures since the client was made.
    pub errors: u64,
    /// The last such failure.
    pub last_error: Option<String>,
    /// Idle pooled connections.
    pub idle: usize,
    /// Open multiplexed connections (the async calls').
    pub async_connections: usize,
    /// Times the server was marked down, and found up again by a call.
    pub went_down: u64,
    pub came_back: u64,
}

/// Whether an exchange may run again on a new connection when a pooled one turns out dead: not
/// for `incr`/`decr`, whose first attempt may have applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    Yes,
    No,
}

/// The client. Thread-safe; meant to be shared by every backend instance of one configuration.
pub struct Client {
    config: Config,
    pub(super) dialect: Dialect,
    pub(super) router: Router,
    pub(super) pool: Pool,
    pub(super) counters: Counters,
    /// The multiplexed connections of the async calls, per server.
    pub(super) slots: Vec<Slots<MemcachedWire>>,
}

impl Client {
    /// A client for `config`. Connections are made on first use.
    pub fn new(mut config: Config) -> Result<Self, Error> {
        config.binary |= config.credentials.is_some();
        if config.servers.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no memcached server configured"));
        }
        let servers: Vec<(Address, u32)> = config.servers.iter().map(|s| (s.addr.clone(), s.weight)).collect();
        let policy = FailurePolicy {
            retry_timeout: config.retry_timeout,
            window_on_any_failure: config.window_on_any_failure,
            remove_failed: config.remove_failed,
            dead_timeout: config.dead_timeout,
        };
        Ok(Self {
            dialect: if config.binary { Dialect::Binary } else { Dialect::Text },
            router: Router::new(&servers, config.distribution, config.hash, policy),
            pool: Pool::new(servers.len(), config.max_idle, config.timeouts, config.credentials.clone()),
            counters: Counters::default(),
            slots: (0..servers.len()).map(|_| Slots::new(ASYNC_CONNECTIONS)).collect(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The client-side counters.
    pub fn client_stats(&self) -> ClientStats {
        self.counters.snapshot()
    }

    /// The index of the server that holds `key`.
    pub fn route(&self, key: &[u8]) -> Result<usize, Error> {
        self.router.route(key)
    }

    // --- one exchange, one deadline ----------------------------------------------------------

    /// The deadline of a call that starts now: connect, send and every reply together.
    pub(super) fn deadline(&self) -> Instant {
        Instant::now() + self.pool.timeouts().call
    }

    /// A failed exchange: a connection-level failure counts against the server (its retry
    /// window starts and its idle connections, likely dead too, are dropped).
    pub(crate) fn failed(&self, si: usize, e: &Error) {
        if e.is_connection_failure() {
            self.counters.failure();
            self.router.record_failure(si, e);
            self.pool.drop_idle(si);
        }
    }

    /// A connection to server `si`: a pooled one (flagged: it may have gone stale), or a new one.
    fn checkout(&self, si: usize, deadline: Instant) -> Result<(Conn, bool), Error> {
        self.router.check_up(si)?;
        if let Some(conn) = self.pool.take_live(si) {
            return Ok((conn, true));
        }
        self.connect(si, deadline).map(|conn| (conn, false))
    }

    fn connect(&self, si: usize, deadline: Instant) -> Result<Conn, Error> {
        self.pool.connect(self.router.addr(si), deadline).inspect_err(|e| self.failed(si, e))
    }

    /// Read the reply on a connection a request was sent on; it goes back to the pool only when
    /// the whole exchange completed (after any error, replies may still be on their way).
    fn finish<T>(
        &self,
        si: usize,
        mut conn: Conn,
        deadline: Instant,
        read: &mut impl FnMut(usize, &mut Conn, Instant) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let value = read(si, &mut conn, deadline)?;
        self.router.record_success(si);
        self.pool.put(si, conn);
        Ok(value)
    }

    /// Send `parts` to server `si` and read the reply with `read`. A pooled connection that
    /// fails on an I/O error (the server restarted since it was pooled) is, with `Retry::Yes`,
    /// replaced once by a new one before the failure counts against the server.
    fn exchange<T>(
        &self,
        si: usize,
        parts: &[&[u8]],
        retry: Retry,
        mut read: impl FnMut(&mut Conn, Instant) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let deadline = self.deadline();
        let mut read = |_: usize, conn: &mut Conn, deadline: Instant| read(conn, deadline);
        let (mut conn, pooled) = self.checkout(si, deadline)?;
        // A request that never went out whole reached no server: it may go on a new connection
        // whatever it is (an `incr` too).
        let (first, unsent) = match conn.send(parts, deadline) {
            Ok(()) => (self.finish(si, conn, deadline, &mut read), false),
            Err(e) => (Err(e), true),
        };
        match first {
            Err(e) if (retry == Retry::Yes || unsent) && pooled && e.kind() == ErrorKind::Io => {
                self.pool.drop_idle(si);
                let mut conn = self.connect(si, deadline)?;
                conn.send(parts, deadline)
                    .and_then(|()| self.finish(si, conn, deadline, &mut read))
                    .inspect_err(|e| self.failed(si, e))
            }
            Err(e) => {
                self.failed(si, &e);
                Err(e)
            }
            ok => ok,
        }
    }

    /// Run one pipelined exchange per server, all servers in flight at once within one deadline
    /// (a silent server costs it once, not once each): every request is written before any
    /// reply is read. A pooled connection found dead is replaced once, as in `exchange` (every
    /// fan-out command may be repeated). A signal handler that raises ends the whole call.
    fn fan_out<T>(
        &self,
        requests: &[(usize, Vec<u8>)],
        mut read: impl FnMut(usize, &mut Conn, Instant) -> Result<T, Error>,
    ) -> Result<PerServer<T>, Error> {
        if let [(si, request)] = requests {
            let result = self.exchange(*si, &[request], Retry::Yes, |conn, deadline| read(*si, conn, deadline));
            return match result {
                Err(e) if e.kind() == ErrorKind::Interrupted => Err(e),
                result => Ok(vec![(*si, result)]),
            };
        }
        let deadline = self.deadline();
        let mut out = Vec::with_capacity(requests.len());
        let mut sent = Vec::with_capacity(requests.len());
        let mut stale = Vec::new();
        let settle = |out: &mut PerServer<T>, stale: &mut Vec<usize>, ri: usize, pooled: bool, e: Error| {
            let si = requests[ri].0;
            if e.kind() == ErrorKind::Interrupted {
                return Err(e);
            }
            if pooled && e.kind() == ErrorKind::Io {
                stale.push(ri);
            } else {
                self.failed(si, &e);
                out.push((si, Err(e)));
            }
            Ok(())
        };
        for (ri, (si, request)) in requests.iter().enumerate() {
            match self.checkout(*si, deadline) {
                Ok((mut conn, pooled)) => match conn.send(&[request], deadline) {
                    Ok(()) => sent.push((ri, conn, pooled)),
                    Err(e) => settle(&mut out, &mut stale, ri, pooled, e)?,
                },
                Err(e) if e.kind() == ErrorKind::Interrupted => return Err(e),
                Err(e) => out.push((*si, Err(e))),
            }
        }
        for (ri, conn, pooled) in sent {
            let si = requests[ri].0;
            match self.finish(si, conn, deadline, &mut read) {
                Ok(v) => out.push((si, Ok(v))),
                Err(e) => settle(&mut out, &mut stale, ri, pooled, e)?,
            }
        }
        for ri in stale {
            let (si, request) = &requests[ri];
            self.pool.drop_idle(*si);
            // (A failure to connect is counted by `connect`; one of the exchange, here.)
            let result = self.connect(*si, deadline).and_then(|mut conn| {
                conn.send(&[request], deadline)
                    .and_then(|()| self.finish(*si, conn, deadline, &mut read))
                    .inspect_err(|e| self.failed(*si, e))
            });
            match result {
                Err(e) if e.kind() == ErrorKind::Interrupted => return Err(e),
                result => out.push((*si, result)),
            }
        }
        Ok(out)
    }

    // --- the commands ------------------------------------------------------------------------

    /// Fetch one key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Item>, Error> {
        let si = self.router.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 32);
        self.dialect.encode_get(&mut request, &[key])?;
        let dialect = self.dialect;
        let found = self.exchange(si, &[&request], Retry::Yes, |conn, deadline| {
            Ok(dialect.read_get(&mut Reading { conn, deadline })?.into_iter().next().map(|(_, item)| item))
        })?;
        self.counters.lookups(usize::from(found.is_some()), usize::from(found.is_none()));
        Ok(found)
    }

    /// Fetch several keys: one request per server, all servers at once. Returns the items in
    /// the order of `keys`, and the errors of the servers that failed (their keys read as misses).
    pub fn get_many(&self, keys: &[&[u8]]) -> Result<(Vec<Option<Item>>, Vec<Error>), Error> {
        if keys.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if let [key] = keys {
            // One key: one server, one exchange (a failure is that server's, as below).
            return match self.get(key) {
                Ok(item) => Ok((vec![item], Vec::new())),
                // As the many-key path: a bad key or no server raise, a server's failure is its.
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::InvalidKey | ErrorKind::Config) => {
                    Err(e)
                }
                Err(e) => Ok((vec![None], vec![e])),
            };
        }
        self.run_plan(&GetMany(keys))
    }

    /// Run a multi-key plan: one pipelined request per server, all servers at once.
    fn run_plan<P: Plan>(&self, plan: &P) -> Result<<P::Read as Read>::Output, Error> {
        let (requests, reader) = prepare(plan, &self.router, self.dialect)?;
        let results = self.fan_out(&requests, |si, conn, deadline| reader.read(si, &mut Reading { conn, deadline }))?;
        Ok(reader.gather(results, &self.counters))
    }

    /// One storage command. Large values go out with a vectored write, not copied.
    pub fn store(&self, cmd: Store, key: &[u8], flags: u32, exptime: i64, data: &[u8]) -> Result<Stored, Error> {
        let si = self.router.route(key)?;
        let mut head = Vec::with_capacity(key.len() + 48);
        let dialect = self.dialect;
        let read = |conn: &mut Conn, deadline: Instant| dialect.read_stored(&mut Reading { conn, deadline });
        let stored = if data.len() < VECTORED_FROM {
            dialect.encode_store(&mut head, cmd, key, flags, exptime, data)?;
            self.exchange(si, &[&head], Retry::Yes, read)?
        } else {
            let trailer = dialect.encode_store_header(&mut head, cmd, key, flags, exptime, data.len())?;
            self.exchange(si, &[&head, data, trailer], Retry::Yes, read)?
        };
        self.counters.sets(usize::from(stored == Stored::Yes));
        Ok(stored)
    }

    /// Store every item, pipelined per server, all servers at once. One result per item, in
    /// order (a failed server's error for each of its items).
    pub fn set_many(&self, items: &[(&[u8], u32, &[u8])], exptime: i64) -> Result<Vec<Result<Stored, Error>>, Error> {
        self.run_plan(&SetMany { items, exptime })
    }

    /// Delete one key; whether it was there.
    pub fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        let si = self.router.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 32);
        self.dialect.encode_delete(&mut request, key)?;
        let dialect = self.dialect;
        self.exchange(si, &[&request], Retry::Yes, |conn, deadline| {
            dialect.read_deleted(&mut Reading { conn, deadline })
        })
    }

    /// Delete several keys, pipelined per server. The errors of the servers that failed.
    pub fn delete_many(&self, keys: &[&[u8]]) -> Result<Vec<Error>, Error> {
        self.run_plan(&DeleteMany(keys))
    }

    /// `incr`/`decr` by `delta`; the new value, or None when the key is missing (`NotNumeric`
    /// when its value is not a number). Not retried on a stale connection: the first attempt
    /// may have applied.
    pub fn incr(&self, key: &[u8], delta: u64, decr: bool) -> Result<Option<u64>, Error> {
        let si = self.router.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 48);
        self.dialect.encode_incr(&mut request, key, delta, decr)?;
        let dialect = self.dialect;
        self.exchange(si, &[&request], Retry::No, |conn, deadline| {
            dialect.read_counter(&mut Reading { conn, deadline }, key)
        })
    }

    /// Give a key a new expiry; whether it was there.
    pub fn touch(&self, key: &[u8], exptime: i64) -> Result<bool, Error> {
        let si = self.router.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 32);
        self.dialect.encode_touch(&mut request, key, exptime)?;
        let dialect = self.dialect;
        self.exchange(si, &[&request], Retry::Yes, |conn, deadline| {
            dialect.read_touched(&mut Reading { conn, deadline })
        })
    }

    /// A command without arguments on every server, in server order.
    fn on_every_server<T>(
        &self,
        command: Simple,
        read: impl FnMut(usize, &mut Conn, Instant) -> Result<T, Error>,
    ) -> Result<ByServer<T>, Error> {
        let mut request = Vec::new();
        self.dialect.encode_simple(&mut request, command)?;
        let requests: Vec<(usize, Vec<u8>)> = (0..self.router.len()).map(|si| (si, request.clone())).collect();
        let mut results = self.fan_out(&requests, read)?;
        results.sort_by_key(|(si, _)| *si);
        Ok(results.into_iter().map(|(si, r)| (self.router.addr(si).to_string(), r)).collect())
    }

    /// `flush_all` on every server. The errors of the servers that failed.
    pub fn clear(&self) -> Result<Vec<Error>, Error> {
        let dialect = self.dialect;
        let results = self.on_every_server(Simple::Flush, |_, conn, deadline| {
            dialect.read_flushed(&mut Reading { conn, deadline })
        })?;
        Ok(results.into_iter().filter_map(|(_, r)| r.err()).collect())
    }

    /// `version` of every server.
    pub fn versions(&self) -> Result<ByServer<String>, Error> {
        let dialect = self.dialect;
        self.on_every_server(Simple::Version, |_, conn, deadline| dialect.read_version(&mut Reading { conn, deadline }))
    }

    /// `stats` of every server.
    pub fn stats(&self) -> Result<ByServer<Vec<(String, String)>>, Error> {
        let dialect = self.dialect;
        self.on_every_server(Simple::Stats, |_, conn, deadline| dialect.read_stats(&mut Reading { conn, deadline }))
    }

    /// The health of every server.
    pub fn servers(&self) -> Vec<ServerState> {
        (0..self.router.len())
            .map(|si| {
                let h = self.router.health(si);
                ServerState {
                    address: self.router.addr(si).to_string(),
                    up: h.up,
                    removed: h.removed,
                    errors: h.errors,
                    last_error: h.last_error,
                    idle: self.pool.idle_count(si),
                    async_connections: self.slots[si].open(),
                    went_down: h.went_down,
                    came_back: h.came_back,
                }
            })
            .collect()
    }

    // --- an event loop's own connection (`bindings::on_loop`) ---------------------------------

    /// An idle connection to server `si`, if one is there now and the server is not marked
    /// down (never waits, never connects).
    pub fn take_idle(&self, si: usize) -> Option<Conn> {
        self.router.check_up(si).ok()?;
        self.pool.take_live(si)
    }

    /// Open one connection to server `si` into its idle list, where none is (blocking, within
    /// the connect timeout). A failure here is not counted: the next call finds it out.
    pub fn open_idle(&self, si: usize) {
        if self.router.check_up(si).is_err() || self.pool.idle_count(si) > 0 {
            return;
        }
        if let Ok(conn) = self.pool.connect(self.router.addr(si), self.deadline()) {
            self.pool.put(si, conn);
        }
    }

    /// Whether calls may go to server `si` now.
    pub fn is_up(&self, si: usize) -> bool {
        self.router.check_up(si).is_ok()
    }

    /// The timeout of one call.
    pub fn call_timeout(&self) -> Duration {
        self.pool.timeouts().call
    }

    /// The request of a `get` of `key`.
    pub fn get_request(&self, key: &[u8]) -> Result<Vec<u8>, Error> {
        let mut request = Vec::with_capacity(key.len() + 32);
        self.dialect.encode_get(&mut request, &[key])?;
        Ok(request)
    }

    /// What a `get` of server `si` answered, from its frames (counted as `get` counts it).
    pub fn read_get(&self, si: usize, frames: Vec<Frame>) -> Result<Option<Item>, Error> {
        let mut frames = Frames::new(frames, self.router.addr(si));
        let found = self.dialect.read_get(&mut frames)?.into_iter().next().map(|(_, item)| item);
        self.counters.lookups(usize::from(found.is_some()), usize::from(found.is_none()));
        Ok(found)
    }

    /// An exchange with server `si` completed.
    pub fn succeeded(&self, si: usize) {
        self.router.record_success(si);
    }

    /// The server's label, for errors.
    pub fn server_label(&self, si: usize) -> String {
        format!("memcached {}", self.router.addr(si))
    }

    /// Drop every pooled connection.
    pub fn disconnect_all(&self) {
        self.pool.clear();
    }
}
