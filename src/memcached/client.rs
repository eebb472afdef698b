//! The memcached client: routing, per-server pools, health, and the commands Django needs, on
//! bytes. Multi-key commands are pipelined per server (one write, then the replies), and every
//! server involved is sent its batch before any reply is read, so servers work in parallel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::binary::{self, Op, Packet, status};
use super::conn::{Address, Conn, Timeouts};
use super::protocol::{self, Reply, Store};
use super::ring::{Distribution, KeyHash, Node, Ring};
use crate::error::{Error, ErrorKind};

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
    /// Connect, send and receive deadlines.
    pub timeouts: Timeouts,
    /// After a failure, the server is not contacted again for this long: calls fail at once.
    pub retry_timeout: Duration,
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
            remove_failed: 0,
            dead_timeout: Duration::from_secs(10),
            max_idle: 32,
            binary: false,
            credentials: None,
        }
    }
}

/// A value as stored: the client flags and the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The 32-bit client flags (pylibmc's type and compression bits).
    pub flags: u32,
    /// The stored bytes.
    pub data: Vec<u8>,
    /// The CAS id, when asked for.
    pub cas: Option<u64>,
}

/// What a storage command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// `STORED`.
    Yes,
    /// `NOT_STORED`, `EXISTS` or `NOT_FOUND`: the condition of add/replace/cas did not hold.
    No,
    /// The server refused the item (e.g. larger than its item size limit).
    Refused(String),
}

/// Each server's index and its result (or its error).
pub type PerServer<T> = Vec<(usize, Result<T, Error>)>;

/// Each server's `version`, or its error.
pub type Versions = Vec<(String, Result<String, Error>)>;

/// Each server's `stats` output, or its error.
pub type ServerStats = Vec<(String, Result<Vec<(String, String)>, Error>)>;

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
}

#[derive(Default)]
struct Health {
    failures_in_a_row: u32,
    down_until: Option<Instant>,
    removed_until: Option<Instant>,
    errors: u64,
    last_error: Option<String>,
}

struct Server {
    addr: Address,
    idle: Mutex<Vec<Conn>>,
    health: Mutex<Health>,
}

struct Routing {
    ring: Ring,
    /// ring index -> server index
    members: Vec<usize>,
}

/// The client. Thread-safe; meant to be shared by every backend instance of one configuration.
pub struct Client {
    config: Config,
    servers: Vec<Server>,
    nodes: Vec<Node>,
    routing: RwLock<Routing>,
    /// Whether some server is out of the ring (so routing must check for its return).
    any_removed: AtomicBool,
    counters: Counters,
}

/// Client-side counters since the client was made.
#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    sets: AtomicU64,
    failures: AtomicU64,
}

/// A snapshot of the client-side counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Keys found by get/get_multi.
    pub hits: u64,
    /// Keys not found.
    pub misses: u64,
    /// Values stored.
    pub sets: u64,
    /// Calls that failed on a server (unreachable, timed out, marked down).
    pub failures: u64,
}

fn is_connection_failure(e: &Error) -> bool {
    e.is_connection_failure()
}

fn non_numeric(key: &[u8]) -> Error {
    Error::new(
        ErrorKind::NotNumeric,
        format!("cannot increment or decrement the non-numeric value of '{}'", String::from_utf8_lossy(key)),
    )
}

fn unexpected(addr: &Address, reply: &Reply) -> Error {
    match reply {
        Reply::Error(message) => Error::new(ErrorKind::Server, format!("memcached {addr}: {message}")),
        other => Error::new(ErrorKind::Protocol, format!("memcached {addr}: unexpected reply {other:?}")),
    }
}

impl Client {
    /// A client for `config`. Connections are made on first use.
    pub fn new(mut config: Config) -> Result<Self, Error> {
        config.binary |= config.credentials.is_some();
        if config.servers.is_empty() {
            return Err(Error::new(ErrorKind::InvalidKey, "no memcached server configured"));
        }
        let nodes: Vec<Node> = config
            .servers
            .iter()
            .map(|s| match &s.addr {
                Address::Tcp(host, port) => Node { host: host.clone(), port: *port, weight: s.weight },
                Address::Unix(path) => Node { host: path.display().to_string(), port: 0, weight: s.weight },
            })
            .collect();
        let servers = config
            .servers
            .iter()
            .map(|s| Server {
                addr: s.addr.clone(),
                idle: Mutex::new(Vec::new()),
                health: Mutex::new(Health::default()),
            })
            .collect();
        let ring = Ring::new(&nodes, config.distribution, config.hash);
        let members = (0..nodes.len()).collect();
        Ok(Self {
            config,
            servers,
            nodes,
            routing: RwLock::new(Routing { ring, members }),
            any_removed: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Count lookups: `hits` found, `misses` not found.
    pub fn count_lookups(&self, hits: usize, misses: usize) {
        self.counters.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.counters.misses.fetch_add(misses as u64, Ordering::Relaxed);
    }

    /// Count values stored.
    pub fn count_sets(&self, n: usize) {
        self.counters.sets.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Count a call that failed on a server.
    pub fn count_failure(&self) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The client-side counters.
    pub fn client_stats(&self) -> ClientStats {
        ClientStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            sets: self.counters.sets.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
        }
    }

    /// The index of the server that holds `key`.
    pub fn route(&self, key: &[u8]) -> Result<usize, Error> {
        if self.servers.len() == 1 {
            return Ok(0);
        }
        if self.any_removed.load(Ordering::Relaxed) {
            self.readmit_returned();
        }
        let routing = self.routing.read();
        let i = routing
            .ring
            .route(key)
            .ok_or_else(|| Error::new(ErrorKind::ServerDown, "every memcached server is down"))?;
        Ok(routing.members[i])
    }

    fn rebuild_ring(&self) {
        let now = Instant::now();
        let members: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].health.lock().removed_until.is_none_or(|until| until <= now))
            .collect();
        let nodes: Vec<Node> = members.iter().map(|&i| self.nodes[i].clone()).collect();
        let ring = Ring::new(&nodes, self.config.distribution, self.config.hash);
        self.any_removed.store(members.len() < self.servers.len(), Ordering::Relaxed);
        *self.routing.write() = Routing { ring, members };
    }

    fn readmit_returned(&self) {
        let now = Instant::now();
        let due = self.servers.iter().any(|s| s.health.lock().removed_until.is_some_and(|until| until <= now));
        if due {
            for s in &self.servers {
                let mut h = s.health.lock();
                if h.removed_until.is_some_and(|until| until <= now) {
                    h.removed_until = None;
                    h.failures_in_a_row = 0;
                }
            }
            self.rebuild_ring();
        }
    }

    fn check_up(&self, si: usize) -> Result<(), Error> {
        let h = self.servers[si].health.lock();
        match h.down_until {
            Some(until) if until > Instant::now() => Err(Error::new(
                ErrorKind::ServerDown,
                format!(
                    "memcached {} is marked down after a failure ({}); retrying in {:.1}s",
                    self.servers[si].addr,
                    h.last_error.as_deref().unwrap_or("unknown error"),
                    (until - Instant::now()).as_secs_f64()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn record_failure(&self, si: usize, e: &Error) {
        self.count_failure();
        let server = &self.servers[si];
        // Pooled connections to a failing server are likely dead too.
        let stale = std::mem::take(&mut *server.idle.lock());
        drop(stale);
        let mut h = server.health.lock();
        h.errors += 1;
        h.failures_in_a_row += 1;
        h.last_error = Some(e.to_string());
        if !self.config.retry_timeout.is_zero() {
            h.down_until = Some(Instant::now() + self.config.retry_timeout);
        }
        let remove = self.config.remove_failed > 0
            && h.failures_in_a_row >= self.config.remove_failed
            && h.removed_until.is_none();
        if remove {
            h.removed_until = Some(Instant::now() + self.config.dead_timeout);
        }
        drop(h);
        if remove && self.servers.len() > 1 {
            self.rebuild_ring();
        }
    }

    fn record_success(&self, si: usize) {
        let mut h = self.servers[si].health.lock();
        if h.failures_in_a_row > 0 || h.down_until.is_some() {
            h.failures_in_a_row = 0;
            h.down_until = None;
        }
    }

    /// A connection to server `si`: a pooled one, or a new one. The flag says whether it came
    /// from the pool (and so may have gone stale since).
    fn checkout(&self, si: usize, deadline: Instant) -> Result<(Conn, bool), Error> {
        self.check_up(si)?;
        if let Some(conn) = self.servers[si].idle.lock().pop() {
            return Ok((conn, true));
        }
        match self.connect(si, deadline) {
            Ok(conn) => Ok((conn, false)),
            Err(e) => {
                if is_connection_failure(&e) {
                    self.record_failure(si, &e);
                }
                Err(e)
            }
        }
    }

    /// A new connection to server `si`, authenticated when credentials are configured.
    fn connect(&self, si: usize, deadline: Instant) -> Result<Conn, Error> {
        let deadline = deadline.min(Instant::now() + self.config.timeouts.connect);
        let mut conn = Conn::connect(&self.servers[si].addr, &self.config.timeouts, deadline)?;
        if let Some((username, password)) = &self.config.credentials {
            conn.authenticate(username, password, deadline)?;
        }
        Ok(conn)
    }

    /// The deadline of a call that starts now: connect, send and every reply together.
    fn deadline(&self) -> Instant {
        Instant::now() + self.config.timeouts.call
    }

    fn checkin(&self, si: usize, mut conn: Conn) {
        if conn.has_pending_input() {
            return;
        }
        conn.trim();
        let mut idle = self.servers[si].idle.lock();
        if idle.len() < self.config.max_idle {
            idle.push(conn);
        }
    }

    /// Send `request` to server `si` and read its replies with `read`. A connection that
    /// fails is dropped, never reused. When a pooled connection fails on an I/O error (the
    /// server restarted since it was pooled) and `retry` is set, the exchange is tried once
    /// more on a new connection before the failure counts against the server.
    fn exchange<T>(
        &self,
        si: usize,
        request: &[u8],
        retry: bool,
        read: impl FnMut(&mut Conn, Instant) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.exchange_inner(si, &[request], retry, read)
    }

    /// [`Client::exchange`] for a request in several pieces (retried on a stale connection).
    fn exchange_parts<T>(
        &self,
        si: usize,
        parts: &[&[u8]],
        read: impl FnMut(&mut Conn, Instant) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.exchange_inner(si, parts, true, read)
    }

    fn exchange_inner<T>(
        &self,
        si: usize,
        parts: &[&[u8]],
        retry: bool,
        mut read: impl FnMut(&mut Conn, Instant) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let deadline = self.deadline();
        let (mut conn, mut pooled) = self.checkout(si, deadline)?;
        loop {
            let result = conn.send(parts, deadline).and_then(|()| read(&mut conn, deadline));
            match result {
                Ok(v) => {
                    self.record_success(si);
                    self.checkin(si, conn);
                    return Ok(v);
                }
                Err(e) if !is_connection_failure(&e) => {
                    // The server answered with an error. Replies may still be on their way (the
                    // read stopped early), so the connection is dropped, never pooled: a late
                    // reply must never be read as the answer to another request.
                    drop(conn);
                    return Err(e);
                }
                Err(e) => {
                    drop(conn);
                    if retry && pooled && e.kind() == ErrorKind::Io {
                        drop(std::mem::take(&mut *self.servers[si].idle.lock()));
                        match self.connect(si, deadline) {
                            Ok(fresh) => {
                                conn = fresh;
                                pooled = false;
                                continue;
                            }
                            Err(e) => {
                                self.record_failure(si, &e);
                                return Err(e);
                            }
                        }
                    }
                    self.record_failure(si, &e);
                    return Err(e);
                }
            }
        }
    }

    /// Fetch one key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Item>, Error> {
        if self.config.binary {
            return self.bin_get(key);
        }
        let si = self.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 6);
        protocol::encode_get(&mut request, &[key], false)?;
        self.exchange(si, &request, true, |conn, deadline| {
            let mut found = None;
            loop {
                match conn.read_reply(deadline)? {
                    Reply::Value { flags, data, cas, .. } => found = Some(Item { flags, data, cas }),
                    Reply::End => return Ok(found),
                    other => return Err(unexpected(conn.addr(), &other)),
                }
            }
        })
    }

    /// Group key indexes by server. Keys whose routing fails are reported in `errors`.
    fn group<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Result<Vec<Vec<usize>>, Error> {
        let mut groups = vec![Vec::new(); self.servers.len()];
        for (i, key) in keys.enumerate() {
            groups[self.route(key)?].push(i);
        }
        Ok(groups)
    }

    /// Run one pipelined exchange per server, all servers in flight at once: every request is
    /// written before any reply is read. `read` gets the server index and the connection.
    fn fan_out<T>(
        &self,
        requests: Vec<(usize, Vec<u8>)>,
        mut read: impl FnMut(usize, &mut Conn, Instant) -> Result<T, Error>,
    ) -> Result<PerServer<T>, Error> {
        if requests.len() == 1 {
            let (si, request) = &requests[0];
            let result = self.exchange(*si, request, true, |conn, deadline| read(*si, conn, deadline));
            return match result {
                Err(e) if e.kind() == ErrorKind::Interrupted => Err(e),
                result => Ok(vec![(*si, result)]),
            };
        }
        // One deadline for the whole fan-out: a silent server costs it once, not once each.
        let deadline = self.deadline();
        let mut sent = Vec::with_capacity(requests.len());
        let mut out = Vec::with_capacity(requests.len());
        for (si, request) in &requests {
            match self.checkout(*si, deadline) {
                Ok((mut conn, _)) => match conn.send(&[request], deadline) {
                    Ok(()) => sent.push((*si, conn)),
                    // A signal handler raised: the whole call ends (the connections in flight
                    // are dropped with `sent`).
                    Err(e) if e.kind() == ErrorKind::Interrupted => return Err(e),
                    Err(e) => {
                        if is_connection_failure(&e) {
                            self.record_failure(*si, &e);
                        }
                        out.push((*si, Err(e)));
                    }
                },
                Err(e) => out.push((*si, Err(e))),
            }
        }
        for (si, mut conn) in sent {
            match read(si, &mut conn, deadline) {
                Ok(v) => {
                    self.record_success(si);
                    self.checkin(si, conn);
                    out.push((si, Ok(v)));
                }
                Err(e) => {
                    // Dropped either way: replies may still be on their way (see `exchange`).
                    drop(conn);
                    if e.kind() == ErrorKind::Interrupted {
                        return Err(e);
                    }
                    if is_connection_failure(&e) {
                        self.record_failure(si, &e);
                    }
                    out.push((si, Err(e)));
                }
            }
        }
        Ok(out)
    }

    /// Fetch several keys: one `get` per server, all servers at once. Returns the items in the
    /// order of `keys`, and the errors of the servers that failed (their keys read as misses).
    pub fn get_multi(&self, keys: &[&[u8]]) -> Result<(Vec<Option<Item>>, Vec<Error>), Error> {
        if self.config.binary {
            return self.bin_get_multi(keys);
        }
        let mut found: Vec<Option<Item>> = vec![None; keys.len()];
        if keys.is_empty() {
            return Ok((found, Vec::new()));
        }
        let groups = self.group(keys.iter().copied())?;
        let mut requests = Vec::new();
        for (si, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut request = Vec::with_capacity(group.iter().map(|&i| keys[i].len() + 1).sum::<usize>() + 6);
            let group_keys: Vec<&[u8]> = group.iter().map(|&i| keys[i]).collect();
            protocol::encode_get(&mut request, &group_keys, false)?;
            requests.push((si, request));
        }
        let mut index: HashMap<&[u8], Vec<usize>> = HashMap::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            index.entry(*key).or_default().push(i);
        }
        let mut errors = Vec::new();
        let results = self.fan_out(requests, |_, conn, deadline| {
            let mut items = Vec::new();
            loop {
                match conn.read_reply(deadline)? {
                    Reply::Value { key, flags, data, cas } => items.push((key, Item { flags, data, cas })),
                    Reply::End => return Ok(items),
                    other => return Err(unexpected(conn.addr(), &other)),
                }
            }
        })?;
        for (_, result) in results {
            match result {
                Ok(items) => {
                    for (key, item) in items {
                        if let Some(positions) = index.get(key.as_slice()) {
                            for &i in positions {
                                found[i] = Some(item.clone());
                            }
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        Ok((found, errors))
    }

    fn stored(addr: &Address, reply: Reply) -> Result<Stored, Error> {
        match reply {
            Reply::Stored => Ok(Stored::Yes),
            Reply::NotStored | Reply::Exists | Reply::NotFound => Ok(Stored::No),
            Reply::Error(message) if message.starts_with("SERVER_ERROR") => Ok(Stored::Refused(message)),
            other => Err(unexpected(addr, &other)),
        }
    }

    /// One storage command. Large values go out with a vectored write, not copied.
    pub fn store(&self, cmd: Store, key: &[u8], flags: u32, exptime: i64, data: &[u8]) -> Result<Stored, Error> {
        if self.config.binary {
            return self.bin_store(cmd, key, flags, exptime, data);
        }
        let si = self.route(key)?;
        let mut header = Vec::with_capacity(key.len() + 48);
        if data.len() < 16 * 1024 {
            protocol::encode_store(&mut header, cmd, key, flags, exptime, data)?;
            return self.exchange(si, &header, true, |conn, deadline| {
                let reply = conn.read_reply(deadline)?;
                Self::stored(conn.addr(), reply)
            });
        }
        protocol::encode_store_header(&mut header, cmd, key, flags, exptime, data.len())?;
        self.exchange_parts(si, &[&header, data, b"\r\n"], |conn, deadline| {
            let reply = conn.read_reply(deadline)?;
            Self::stored(conn.addr(), reply)
        })
    }

    /// Several storage commands, pipelined per server, all servers at once. One result per
    /// item, in order.
    pub fn store_multi(
        &self,
        cmd: Store,
        items: &[(&[u8], u32, &[u8])],
        exptime: i64,
    ) -> Result<Vec<Result<Stored, Error>>, Error> {
        if self.config.binary {
            return self.bin_store_multi(cmd, items, exptime);
        }
        let groups = self.group(items.iter().map(|(k, _, _)| *k))?;
        let mut requests = Vec::new();
        for (si, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let size = group.iter().map(|&i| items[i].0.len() + items[i].2.len() + 48).sum();
            let mut request = Vec::with_capacity(size);
            for &i in group {
                let (key, flags, data) = items[i];
                protocol::encode_store(&mut request, cmd, key, flags, exptime, data)?;
            }
            requests.push((si, request));
        }
        let mut out: Vec<Result<Stored, Error>> = (0..items.len()).map(|_| Ok(Stored::No)).collect();
        let results = self.fan_out(requests, |si, conn, deadline| {
            let mut replies = Vec::with_capacity(groups[si].len());
            for _ in &groups[si] {
                let reply = conn.read_reply(deadline)?;
                replies.push(Self::stored(conn.addr(), reply)?);
            }
            Ok(replies)
        })?;
        scatter(&mut out, &groups, results);
        Ok(out)
    }

    /// Delete one key; whether it was there.
    pub fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        if self.config.binary {
            return self.bin_delete(key);
        }
        let si = self.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 9);
        protocol::encode_delete(&mut request, key)?;
        self.exchange(si, &request, true, |conn, deadline| match conn.read_reply(deadline)? {
            Reply::Deleted => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(unexpected(conn.addr(), &other)),
        })
    }

    /// Delete several keys, pipelined per server. Errors of the servers that failed.
    pub fn delete_multi(&self, keys: &[&[u8]]) -> Result<Vec<Error>, Error> {
        if self.config.binary {
            return self.bin_delete_multi(keys);
        }
        let groups = self.group(keys.iter().copied())?;
        let mut requests = Vec::new();
        for (si, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut request = Vec::new();
            for &i in group {
                protocol::encode_delete(&mut request, keys[i])?;
            }
            requests.push((si, request));
        }
        let results = self.fan_out(requests, |si, conn, deadline| {
            for _ in &groups[si] {
                match conn.read_reply(deadline)? {
                    Reply::Deleted | Reply::NotFound => {}
                    other => return Err(unexpected(conn.addr(), &other)),
                }
            }
            Ok(())
        })?;
        Ok(results.into_iter().filter_map(|(_, r)| r.err()).collect())
    }

    /// `incr`/`decr` by `delta`; the new value, or None when the key is missing. Not retried
    /// on a stale connection: the first attempt may have been applied.
    pub fn incr(&self, key: &[u8], delta: u64, decr: bool) -> Result<Option<u64>, Error> {
        if self.config.binary {
            return self.bin_incr(key, delta, decr);
        }
        let si = self.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 32);
        protocol::encode_incr(&mut request, key, delta, decr)?;
        self.exchange(si, &request, false, |conn, deadline| match conn.read_reply(deadline)? {
            Reply::Number(n) => Ok(Some(n)),
            Reply::NotFound => Ok(None),
            // The text protocol's only CLIENT_ERROR for a well-formed incr is a non-numeric value.
            Reply::Error(message) if message.starts_with("CLIENT_ERROR") => Err(non_numeric(key)),
            other => Err(unexpected(conn.addr(), &other)),
        })
    }

    /// Give a key a new expiry; whether it was there.
    pub fn touch(&self, key: &[u8], exptime: i64) -> Result<bool, Error> {
        if self.config.binary {
            return self.bin_touch(key, exptime);
        }
        let si = self.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 24);
        protocol::encode_touch(&mut request, key, exptime)?;
        self.exchange(si, &request, true, |conn, deadline| match conn.read_reply(deadline)? {
            Reply::Touched => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(unexpected(conn.addr(), &other)),
        })
    }

    fn all_servers<T>(
        &self,
        command: &str,
        read: impl FnMut(usize, &mut Conn, Instant) -> Result<T, Error>,
    ) -> Result<PerServer<T>, Error> {
        let mut request = Vec::new();
        protocol::encode_simple(&mut request, command);
        let requests = (0..self.servers.len()).map(|si| (si, request.clone())).collect();
        let mut results = self.fan_out(requests, read)?;
        results.sort_by_key(|(si, _)| *si);
        Ok(results)
    }

    /// `flush_all` on every server. Errors of the servers that failed.
    pub fn flush_all(&self) -> Result<Vec<Error>, Error> {
        if self.config.binary {
            return Ok(self.bin_all(Op::Flush)?.into_iter().filter_map(|(_, r)| r.err()).collect());
        }
        Ok(self
            .all_servers("flush_all", |_, conn, deadline| match conn.read_reply(deadline)? {
                Reply::Ok => Ok(()),
                other => Err(unexpected(conn.addr(), &other)),
            })?
            .into_iter()
            .filter_map(|(_, r)| r.err())
            .collect())
    }

    /// `version` of every server.
    pub fn versions(&self) -> Result<Versions, Error> {
        if self.config.binary {
            return Ok(self
                .bin_all(Op::Version)?
                .into_iter()
                .map(|(si, r)| {
                    (self.servers[si].addr.to_string(), r.map(|p| String::from_utf8_lossy(&p.value).into_owned()))
                })
                .collect());
        }
        Ok(self
            .all_servers("version", |_, conn, deadline| match conn.read_reply(deadline)? {
                Reply::Version(v) => Ok(v),
                other => Err(unexpected(conn.addr(), &other)),
            })?
            .into_iter()
            .map(|(si, r)| (self.servers[si].addr.to_string(), r))
            .collect())
    }

    /// `stats` of every server.
    pub fn stats(&self) -> Result<ServerStats, Error> {
        if self.config.binary {
            let mut request = Vec::new();
            binary::encode(&mut request, Op::Stat, b"", b"", b"", 0, 0)?;
            let requests = (0..self.servers.len()).map(|si| (si, request.clone())).collect();
            let mut results = self.fan_out(requests, |_, conn, deadline| {
                let mut stats = Vec::new();
                loop {
                    let p = conn.read_packet(deadline)?;
                    if p.status != status::OK {
                        return Err(bin_error(conn.addr(), &p));
                    }
                    if p.key.is_empty() {
                        return Ok(stats);
                    }
                    stats.push((
                        String::from_utf8_lossy(&p.key).into_owned(),
                        String::from_utf8_lossy(&p.value).into_owned(),
                    ));
                }
            })?;
            results.sort_by_key(|(si, _)| *si);
            return Ok(results.into_iter().map(|(si, r)| (self.servers[si].addr.to_string(), r)).collect());
        }
        Ok(self
            .all_servers("stats", |_, conn, deadline| {
                let mut stats = Vec::new();
                loop {
                    match conn.read_reply(deadline)? {
                        Reply::Stat(name, value) => stats.push((name, value)),
                        Reply::End => return Ok(stats),
                        other => return Err(unexpected(conn.addr(), &other)),
                    }
                }
            })?
            .into_iter()
            .map(|(si, r)| (self.servers[si].addr.to_string(), r))
            .collect())
    }

    /// The health of every server.
    pub fn servers(&self) -> Vec<ServerState> {
        let now = Instant::now();
        self.servers
            .iter()
            .map(|s| {
                let h = s.health.lock();
                ServerState {
                    address: s.addr.to_string(),
                    up: h.down_until.is_none_or(|until| until <= now),
                    removed: h.removed_until.is_some_and(|until| until > now),
                    errors: h.errors,
                    last_error: h.last_error.clone(),
                    idle: s.idle.lock().len(),
                }
            })
            .collect()
    }

    /// Drop every pooled connection.
    pub fn disconnect_all(&self) {
        for s in &self.servers {
            drop(std::mem::take(&mut *s.idle.lock()));
        }
    }
}

/// Put each server's per-item replies (or its error, for all its items) back in item order.
fn scatter<T>(out: &mut [Result<T, Error>], groups: &[Vec<usize>], results: Vec<(usize, Result<Vec<T>, Error>)>) {
    for (si, result) in results {
        match result {
            Ok(replies) => {
                for (&i, reply) in groups[si].iter().zip(replies) {
                    out[i] = Ok(reply);
                }
            }
            Err(e) => {
                for &i in &groups[si] {
                    out[i] = Err(e.clone());
                }
            }
        }
    }
}

fn bin_error(addr: &Address, packet: &Packet) -> Error {
    Error::new(ErrorKind::Server, format!("memcached {addr}: {}", packet.status_text()))
}

fn bin_stored(addr: &Address, packet: &Packet) -> Result<Stored, Error> {
    match packet.status {
        status::OK => Ok(Stored::Yes),
        status::NOT_FOUND | status::EXISTS | status::NOT_STORED => Ok(Stored::No),
        status::TOO_LARGE => Ok(Stored::Refused(packet.status_text())),
        _ => Err(bin_error(addr, packet)),
    }
}

fn store_op(cmd: Store) -> (Op, u64) {
    match cmd {
        Store::Set => (Op::Set, 0),
        Store::Add => (Op::Add, 0),
        Store::Replace => (Op::Replace, 0),
        Store::Cas(id) => (Op::Set, id),
    }
}

/// The binary protocol (used where SASL is configured): the same commands, the same results.
impl Client {
    fn bin_get(&self, key: &[u8]) -> Result<Option<Item>, Error> {
        let si = self.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 24);
        binary::encode(&mut request, Op::Get, key, b"", b"", 0, 0)?;
        self.exchange(si, &request, true, |conn, deadline| {
            let p = conn.read_packet(deadline)?;
            match p.status {
                status::OK => Ok(Some(Item { flags: p.flags(), cas: Some(p.cas), data: p.value })),
                status::NOT_FOUND => Ok(None),
                _ => Err(bin_error(conn.addr(), &p)),
            }
        })
    }

    fn bin_get_multi(&self, keys: &[&[u8]]) -> Result<(Vec<Option<Item>>, Vec<Error>), Error> {
        let mut found: Vec<Option<Item>> = vec![None; keys.len()];
        if keys.is_empty() {
            return Ok((found, Vec::new()));
        }
        let groups = self.group(keys.iter().copied())?;
        let mut requests = Vec::new();
        for (si, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut request = Vec::new();
            for &i in group {
                // The opaque carries the key's position; quiet gets answer hits only.
                let opaque = u32::try_from(i).map_err(|_| Error::new(ErrorKind::InvalidKey, "too many keys"))?;
                binary::encode(&mut request, Op::GetKQ, keys[i], b"", b"", opaque, 0)?;
            }
            binary::encode(&mut request, Op::Noop, b"", b"", b"", u32::MAX, 0)?;
            requests.push((si, request));
        }
        let mut errors = Vec::new();
        let results = self.fan_out(requests, |_, conn, deadline| {
            let mut hits = Vec::new();
            loop {
                let p = conn.read_packet(deadline)?;
                if p.opcode == Op::Noop as u8 {
                    return Ok(hits);
                }
                if p.status == status::OK {
                    hits.push(p);
                }
            }
        })?;
        for (_, result) in results {
            match result {
                Ok(hits) => {
                    for p in hits {
                        if let Some(i) = usize::try_from(p.opaque).ok().filter(|&i| i < keys.len() && keys[i] == p.key)
                        {
                            found[i] = Some(Item { flags: p.flags(), cas: Some(p.cas), data: p.value });
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        // A key asked for twice is answered once: copy the answer to its other positions.
        let mut first: HashMap<&[u8], usize> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            if found[i].is_some() {
                first.entry(*key).or_insert(i);
            }
        }
        for i in 0..keys.len() {
            if found[i].is_none()
                && let Some(&j) = first.get(keys[i])
            {
                let copy = found[j].clone();
                found[i] = copy;
            }
        }
        Ok((found, errors))
    }

    fn bin_store(&self, cmd: Store, key: &[u8], flags: u32, exptime: i64, data: &[u8]) -> Result<Stored, Error> {
        let si = self.route(key)?;
        let (op, cas) = store_op(cmd);
        let mut request = Vec::with_capacity(key.len() + data.len() + 32);
        binary::encode_store(&mut request, op, key, flags, exptime, data, cas)?;
        self.exchange(si, &request, true, |conn, deadline| {
            let p = conn.read_packet(deadline)?;
            bin_stored(conn.addr(), &p)
        })
    }

    fn bin_store_multi(
        &self,
        cmd: Store,
        items: &[(&[u8], u32, &[u8])],
        exptime: i64,
    ) -> Result<Vec<Result<Stored, Error>>, Error> {
        let groups = self.group(items.iter().map(|(k, _, _)| *k))?;
        let (op, cas) = store_op(cmd);
        let mut requests = Vec::new();
        for (si, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut request = Vec::new();
            for &i in group {
                let (key, flags, data) = items[i];
                binary::encode_store(&mut request, op, key, flags, exptime, data, cas)?;
            }
            requests.push((si, request));
        }
        let mut out: Vec<Result<Stored, Error>> = (0..items.len()).map(|_| Ok(Stored::No)).collect();
        let results = self.fan_out(requests, |si, conn, deadline| {
            let mut replies = Vec::with_capacity(groups[si].len());
            for _ in &groups[si] {
                let p = conn.read_packet(deadline)?;
                replies.push(bin_stored(conn.addr(), &p)?);
            }
            Ok(replies)
        })?;
        scatter(&mut out, &groups, results);
        Ok(out)
    }

    fn bin_delete(&self, key: &[u8]) -> Result<bool, Error> {
        let si = self.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 24);
        binary::encode(&mut request, Op::Delete, key, b"", b"", 0, 0)?;
        self.exchange(si, &request, true, |conn, deadline| {
            let p = conn.read_packet(deadline)?;
            match p.status {
                status::OK => Ok(true),
                status::NOT_FOUND => Ok(false),
                _ => Err(bin_error(conn.addr(), &p)),
            }
        })
    }

    fn bin_delete_multi(&self, keys: &[&[u8]]) -> Result<Vec<Error>, Error> {
        let groups = self.group(keys.iter().copied())?;
        let mut requests = Vec::new();
        for (si, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut request = Vec::new();
            for &i in group {
                binary::encode(&mut request, Op::Delete, keys[i], b"", b"", 0, 0)?;
            }
            requests.push((si, request));
        }
        let results = self.fan_out(requests, |si, conn, deadline| {
            for _ in &groups[si] {
                let p = conn.read_packet(deadline)?;
                if p.status != status::OK && p.status != status::NOT_FOUND {
                    return Err(bin_error(conn.addr(), &p));
                }
            }
            Ok(())
        })?;
        Ok(results.into_iter().filter_map(|(_, r)| r.err()).collect())
    }

    fn bin_incr(&self, key: &[u8], delta: u64, decr: bool) -> Result<Option<u64>, Error> {
        let si = self.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 48);
        binary::encode_incr(&mut request, key, delta, decr)?;
        self.exchange(si, &request, false, |conn, deadline| {
            let p = conn.read_packet(deadline)?;
            match p.status {
                status::OK => match p.value.get(..8) {
                    Some(b) => Ok(Some(u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))),
                    None => Err(Error::new(ErrorKind::Protocol, "memcached sent a short incr reply")),
                },
                status::NOT_FOUND => Ok(None),
                status::NON_NUMERIC => Err(non_numeric(key)),
                _ => Err(bin_error(conn.addr(), &p)),
            }
        })
    }

    fn bin_touch(&self, key: &[u8], exptime: i64) -> Result<bool, Error> {
        let si = self.route(key)?;
        let mut request = Vec::with_capacity(key.len() + 28);
        binary::encode_touch(&mut request, key, exptime)?;
        self.exchange(si, &request, true, |conn, deadline| {
            let p = conn.read_packet(deadline)?;
            match p.status {
                status::OK => Ok(true),
                status::NOT_FOUND => Ok(false),
                _ => Err(bin_error(conn.addr(), &p)),
            }
        })
    }

    fn bin_all(&self, op: Op) -> Result<PerServer<Packet>, Error> {
        let mut request = Vec::new();
        binary::encode(&mut request, op, b"", b"", b"", 0, 0)?;
        let requests = (0..self.servers.len()).map(|si| (si, request.clone())).collect();
        let mut results = self.fan_out(requests, |_, conn, deadline| {
            let p = conn.read_packet(deadline)?;
            if p.status == status::OK { Ok(p) } else { Err(bin_error(conn.addr(), &p)) }
        })?;
        results.sort_by_key(|(si, _)| *si);
        Ok(results)
    }
}
