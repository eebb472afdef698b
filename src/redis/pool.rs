//! A bounded pool of connections to one redis server, with its health: a server whose
//! connection failed is skipped for `retry_timeout` (calls fail at once) instead of costing
//! every call a timeout.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use redis::{ConnectionAddr, IntoConnectionInfo};

use super::conn::{Conn, Login};
use super::sentinel::{Role, Sentinel};
use super::wire::RedisWire;
use crate::error::{Error, ErrorKind};
use crate::net::aio::Slots;
use crate::net::{Address, SLICE, Tls, check_interrupt};

/// Multiplexed connections per server at most (and never more than `max_connections`): one
/// carries hundreds of calls at once; a second opens only while the first is busy.
pub const ASYNC_CONNECTIONS: usize = 2;

/// Deadlines and bounds of one pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// To connect and authenticate (within the call's deadline).
    pub connect_timeout: Duration,
    /// The whole call: waiting for a connection, connecting, sending and the whole reply.
    pub socket_timeout: Duration,
    /// Connections open at once, in use or idle; a caller past the bound waits (within its
    /// deadline) for one to come back.
    pub max_connections: usize,
    /// After a connection-level failure, calls to the server fail at once for this long.
    pub retry_timeout: Duration,
    /// Given to the server with CLIENT SETNAME on every new connection (shown by CLIENT LIST).
    pub client_name: Option<String>,
    /// Send READONLY on every new connection (a Redis Cluster replica, for reads).
    pub readonly: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            socket_timeout: Duration::from_secs(3),
            max_connections: 64,
            retry_timeout: Duration::from_secs(1),
            client_name: None,
            readonly: false,
        }
    }
}

struct State {
    idle: Vec<Conn>,
    open: usize,
    /// Blocking calls waiting for a connection to be given back.
    waiting: usize,
}

#[derive(Default)]
struct Health {
    down_until: Option<Instant>,
    last_error: Option<String>,
    errors: u64,
    /// Times the server was marked down (from up), and found up again by a call.
    went_down: u64,
    came_back: u64,
}

impl Health {
    /// Calls go to the server no more until `until` (counted when it was up).
    fn mark_down(&mut self, until: Instant) {
        if self.down_until.is_none_or(|was| was <= Instant::now()) {
            self.went_down += 1;
        }
        self.down_until = Some(until);
    }

    /// A call came through: the server is up (counted when it was marked down).
    fn mark_up(&mut self) {
        if self.down_until.take().is_some() {
            self.came_back += 1;
        }
    }
}

/// Where a pool's connections go.
pub enum Target {
    /// One server, at one address.
    Fixed(Address),
    /// Whichever server has `role` in the sentinels' service now.
    Sentinel(Arc<Sentinel>, Role),
}

/// Whether a failure starts the retry window, in which calls to the server fail at once. Only a
/// silent server (a deadline passed: it accepted and never answered, or never accepted) does:
/// the window exists so that such a server does not cost every call its whole deadline. A
/// refused, reset or closed connection costs nothing to try again, so the next call does
/// (a restarted server is used again the moment it is back).
pub fn opens_retry_window(e: &Error) -> bool {
    e.kind() == ErrorKind::Timeout
}

/// The pool of one server.
pub struct Pool {
    name: String,
    target: Target,
    /// The sentinels' epoch the pooled connections belong to.
    epoch: AtomicU64,
    tls: Option<Tls>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    config: PoolConfig,
    state: Mutex<State>,
    returned: Condvar,
    health: Mutex<Health>,
    /// The multiplexed connections of the async calls.
    slots: Slots<RedisWire>,
    label: String,
}

/// A connection on loan; give it back with [`Pool::put`] only when its last exchange completed.
pub struct Loan {
    /// The connection.
    pub conn: Conn,
    /// Whether it came from the idle list (and may have gone stale since).
    pub pooled: bool,
}

/// A snapshot of one pool, for `servers()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    /// The server's address.
    pub address: String,
    /// Idle connections.
    pub idle: usize,
    /// Open connections, idle or in use.
    pub open: usize,
    /// False while calls fail at once after a failure.
    pub up: bool,
    /// Connection-level failures since the pool was made.
    pub errors: u64,
    /// The last such failure.
    pub last_error: Option<String>,
    /// Blocking calls waiting for a connection now.
    pub waiting: usize,
    /// Times the server was marked down, and found up again by a call.
    pub went_down: u64,
    pub came_back: u64,
}

impl Pool {
    /// A pool for `url` (`redis://`, `unix://`, ...): `db` overrides what the URL says;
    /// `username` and `password` apply where the URL gives none (as in redis-py's `from_url`);
    /// with `tls`, every connection is under TLS (the URL's scheme stays `redis://`). With
    /// `sentinel`, the server is whichever has the role in the sentinels' service: `url` then
    /// gives the credentials and the db, not the address.
    pub fn new(
        url: &str,
        db: Option<i64>,
        username: Option<&str>,
        password: Option<&str>,
        tls: Option<Tls>,
        config: PoolConfig,
        sentinel: Option<(Arc<Sentinel>, Role)>,
    ) -> Result<Self, Error> {
        let info = url
            .into_connection_info()
            .map_err(|e| Error::new(ErrorKind::Config, format!("redis LOCATION {url:?}: {e}")))?;
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Address::Tcp(host.clone(), *port),
            ConnectionAddr::Unix(path) => Address::Unix(PathBuf::from(path)),
            _ => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("redis LOCATION {url:?}: give TLS settings with a redis:// URL"),
                ));
            }
        };
        let settings = info.redis_settings();
        let (name, target) = match sentinel {
            None => (addr.to_string(), Target::Fixed(addr)),
            Some((sentinel, role)) => {
                let what = if role == Role::Master { "master" } else { "replicas" };
                (format!("{} {what} (sentinel)", sentinel.service()), Target::Sentinel(sentinel, role))
            }
        };
        Ok(Self {
            label: if tls.is_some() { format!("redis {name} (TLS)") } else { format!("redis {name}") },
            name,
            epoch: AtomicU64::new(match &target {
                Target::Sentinel(s, _) => s.epoch(),
                Target::Fixed(_) => 0,
            }),
            target,
            tls,
            username: settings.username().map(str::to_owned).or_else(|| username.map(str::to_owned)),
            password: settings.password().map(str::to_owned).or_else(|| password.map(str::to_owned)),
            db: db.unwrap_or_else(|| settings.db()),
            state: Mutex::new(State { idle: Vec::new(), open: 0, waiting: 0 }),
            returned: Condvar::new(),
            health: Mutex::new(Health::default()),
            slots: Slots::new(config.max_connections.min(ASYNC_CONNECTIONS)),
            config,
        })
    }

    /// The server's address, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// "redis host:port", with "(TLS)" under TLS: how messages name the server.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The pool's deadlines and bounds.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Where the connections go.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The sentinels' service and the role this pool serves in it, if any.
    pub fn sentinel(&self) -> Option<(&Arc<Sentinel>, Role)> {
        match &self.target {
            Target::Sentinel(s, role) => Some((s, *role)),
            Target::Fixed(_) => None,
        }
    }

    /// The address a new connection goes to now, and the sentinels' epoch it belongs to
    /// (asking the sentinels, before `deadline`, when they were not asked yet or their answer
    /// is suspect).
    pub fn endpoint(&self, deadline: Instant) -> Result<(Address, u64), Error> {
        match &self.target {
            Target::Fixed(addr) => Ok((addr.clone(), 0)),
            Target::Sentinel(s, Role::Master) => s.master(deadline),
            Target::Sentinel(s, Role::Replica) => s.replica(deadline),
        }
    }

    /// Whether new connections must answer ROLE with master.
    pub(crate) fn master_only(&self) -> bool {
        matches!(self.target, Target::Sentinel(_, Role::Master))
    }

    /// The sentinels' epoch now (0 for a fixed server).
    pub(crate) fn current_epoch(&self) -> u64 {
        match &self.target {
            Target::Sentinel(s, _) => s.epoch(),
            Target::Fixed(_) => 0,
        }
    }

    /// The sentinels named another master since the pooled connections were made: they all go
    /// (a demoted master must not serve another call), and so does the old server's health.
    pub(crate) fn refresh(&self) {
        let Target::Sentinel(s, _) = &self.target else { return };
        let now = s.epoch();
        if self.epoch.swap(now, Ordering::AcqRel) == now {
            return;
        }
        self.drop_idle();
        self.slots.clear();
        let mut h = self.health.lock();
        h.down_until = None;
    }

    /// The server at `peer` answered READONLY: it is a replica now. If the sentinels still
    /// name it the master, they are asked again and every connection made before goes; if they
    /// named another since, only its connections go.
    pub(crate) fn demoted(&self, peer: Option<&Address>) {
        let Target::Sentinel(s, role) = &self.target else { return };
        if let Some(peer) = peer
            && self.is_former_master(peer)
        {
            self.drop_idle_of(peer);
            self.slots.forget_peer(peer);
            return;
        }
        if *role == Role::Master
            && let Some(master) = peer.cloned().or_else(|| s.known_master())
        {
            s.suspect(&master);
        }
        self.drop_idle();
        self.slots.clear();
    }

    /// Whether `peer`, of this master pool, is not the master the sentinels name now (they
    /// named another since its connection was made).
    fn is_former_master(&self, peer: &Address) -> bool {
        matches!(&self.target, Target::Sentinel(s, Role::Master) if s.known_master().is_some_and(|m| m != *peer))
    }

    /// The TLS configuration, if connections are under TLS.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The user name and password to log in with.
    pub fn credentials(&self) -> (Option<&str>, Option<&str>) {
        (self.username.as_deref(), self.password.as_deref())
    }

    /// The db selected on every connection.
    pub fn db(&self) -> i64 {
        self.db
    }

    /// The multiplexed connections of the async calls.
    pub(crate) fn slots(&self) -> &Slots<RedisWire> {
        &self.slots
    }

    /// An async exchange completed: the server is fine.
    pub(crate) fn mark_up(&self) {
        self.health.lock().mark_up();
    }

    /// The deadline of a call that starts now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.config.socket_timeout
    }

    /// Whether calls may go to the server now (it is not in its retry window).
    pub fn is_up(&self) -> bool {
        self.health.lock().down_until.is_none_or(|until| until <= Instant::now())
    }

    pub(crate) fn check_up(&self) -> Result<(), Error> {
        let h = self.health.lock();
        match h.down_until {
            Some(until) if until > Instant::now() => Err(Error::new(
                ErrorKind::ServerDown,
                format!(
                    "redis {} is marked down after a failure ({}); retrying in {:.1}s",
                    self.name,
                    h.last_error.as_deref().unwrap_or("unknown error"),
                    (until - Instant::now()).as_secs_f64()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A call failed on the connection to `peer` (not on the server's answer): skip the server
    /// for the retry window, and drop the idle connections (they are likely dead too). In a
    /// Sentinel-managed replica pool only that replica is passed over, and only its idle
    /// connections go, while another replica is there to take its reads. A former master's
    /// failure (a call still on it when the sentinels named another) costs only its own
    /// connections: the new master is not marked down for it, nor asked about again.
    pub fn record_failure(&self, e: &Error, peer: Option<&Address>) {
        let mut h = self.health.lock();
        h.errors += 1;
        h.last_error = Some(e.to_string());
        if let (Target::Sentinel(s, role), Some(peer)) = (&self.target, peer) {
            let only_its_own = match role {
                Role::Master => self.is_former_master(peer),
                Role::Replica => {
                    s.shun(peer, Instant::now() + self.config.retry_timeout);
                    s.has_usable_replica()
                }
            };
            if only_its_own {
                drop(h);
                self.drop_idle_of(peer);
                self.slots.forget_peer(peer);
                return;
            }
        }
        if opens_retry_window(e) && !self.config.retry_timeout.is_zero() {
            h.mark_down(Instant::now() + self.config.retry_timeout);
        }
        drop(h);
        self.drop_idle();
        if let Target::Sentinel(s, role) = &self.target {
            match role {
                Role::Master => {
                    if let Some(master) = peer.cloned().or_else(|| s.known_master()) {
                        s.suspect(&master);
                    }
                }
                Role::Replica => s.forget_replicas(),
            }
        }
    }

    /// Borrow a connection before `deadline`: an idle one, a new one while under
    /// `max_connections`, or one given back while we wait.
    pub fn take(&self, deadline: Instant) -> Result<Loan, Error> {
        self.refresh();
        self.check_up()?;
        let mut state = self.state.lock();
        loop {
            if let Some(mut conn) = state.idle.pop() {
                drop(state);
                // A server that went away while the connection sat idle (a restart, a timeout
                // of its own) costs a new connection here, not a failed call.
                if !conn.is_stale() {
                    return Ok(Loan { conn, pooled: true });
                }
                drop(conn);
                self.forget();
                state = self.state.lock();
                continue;
            }
            if state.open < self.config.max_connections {
                state.open += 1;
                drop(state);
                return Ok(Loan { conn: self.replace(deadline)?, pooled: false });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("redis {}: all {} connections busy", self.name, self.config.max_connections),
                ));
            }
            state.waiting += 1;
            self.returned.wait_for(&mut state, (deadline - now).min(SLICE));
            state.waiting -= 1;
            // The signal check takes the GIL: never while holding the pool's lock.
            MutexGuard::unlocked(&mut state, check_interrupt)?;
        }
    }

    /// An idle connection, if one is there now (never waits, never connects); `None` too when
    /// the server is marked down.
    /// Only while the pool could still open another: what is taken here is kept for a long
    /// time (an event loop's own connection), and must not leave the blocking calls waiting.
    pub fn take_idle(&self) -> Option<Loan> {
        self.refresh();
        self.check_up().ok()?;
        loop {
            let mut conn = {
                let mut state = self.state.lock();
                if state.open >= self.config.max_connections {
                    return None;
                }
                state.idle.pop()?
            };
            if !conn.is_stale() {
                return Some(Loan { conn, pooled: true });
            }
            drop(conn);
            self.forget();
        }
    }

    /// Open one connection into the idle list, for [`Pool::take_idle`] to find (an event loop
    /// asks for one where none is idle; this runs off the loop): only while none is idle and
    /// the pool could still open one more after it, within the connect timeout.
    pub fn open_idle(&self) {
        self.refresh();
        if self.check_up().is_err() {
            return;
        }
        {
            let mut state = self.state.lock();
            if !state.idle.is_empty() || state.open + 1 >= self.config.max_connections {
                return;
            }
            state.open += 1;
        }
        if let Ok(conn) = self.replace(self.deadline()) {
            self.put(conn);
        }
    }

    /// Whether a connection is idle (a call may send at once, without connecting first).
    pub fn has_idle(&self) -> bool {
        !self.state.lock().idle.is_empty()
    }

    /// A new connection in a slot already counted as open (it is freed if connecting fails).
    pub fn replace(&self, deadline: Instant) -> Result<Conn, Error> {
        let deadline = deadline.min(Instant::now() + self.config.connect_timeout);
        let login = Login {
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            db: self.db,
            client_name: self.config.client_name.as_deref(),
            master_only: self.master_only(),
            readonly: self.config.readonly,
        };
        // A Sentinel-managed pool's last address tried: failing to reach a master the
        // sentinels have replaced since costs only that server's connections.
        let mut tried = None;
        let connected = self.endpoint(deadline).and_then(|(addr, epoch)| {
            if self.sentinel().is_some() {
                tried = Some(addr.clone());
            }
            let made = match Conn::connect(&addr, self.tls.as_ref(), &login, deadline) {
                Err(e) if e.is_connection_failure() && self.sentinel().is_some() => {
                    // The sentinels may know better already (a failover this client missed).
                    self.suspect(&addr);
                    match self.endpoint(deadline) {
                        // With time left: the address they name now, once.
                        Ok((again, epoch)) if again != addr && Instant::now() < deadline => {
                            tried = Some(again.clone());
                            Conn::connect(&again, self.tls.as_ref(), &login, deadline).map(|c| (c, epoch))
                        }
                        _ => Err(e),
                    }
                }
                other => other.map(|c| (c, epoch)),
            };
            made.map(|(mut conn, epoch)| {
                conn.epoch = epoch;
                // Asking the sentinels may have moved the epoch: the pool follows it now (its
                // idle connections of an older one go), not at the next call.
                self.refresh();
                conn
            })
        });
        match connected {
            Ok(conn) => Ok(conn),
            Err(e) => {
                self.forget();
                if e.is_connection_failure() {
                    // The addresses that failed were passed over already (`suspect`).
                    self.record_failure(&e, tried.as_ref());
                }
                Err(e)
            }
        }
    }

    /// Give back a connection whose last exchange completed; it was fine, so is the server.
    pub fn put(&self, mut conn: Conn) {
        if conn.epoch != self.current_epoch() {
            // Made for a master the sentinels have replaced since.
            drop(conn);
            self.forget();
            return;
        }
        conn.trim();
        self.state.lock().idle.push(conn);
        self.returned.notify_one();
        self.health.lock().mark_up();
    }

    /// A loaned connection was dropped (it failed): free its slot.
    pub fn forget(&self) {
        let mut state = self.state.lock();
        state.open = state.open.saturating_sub(1);
        drop(state);
        self.returned.notify_one();
    }

    /// A connection to `addr` failed: the sentinels are asked again for the master's address,
    /// and a replica is passed over for the retry window.
    pub(crate) fn suspect(&self, addr: &Address) {
        if let Target::Sentinel(s, role) = &self.target {
            s.suspect(addr);
            if *role == Role::Replica {
                s.shun(addr, Instant::now() + self.config.retry_timeout);
            }
        }
    }

    /// Drop the idle connections to `peer` (the server failed; the others' are fine).
    fn drop_idle_of(&self, peer: &Address) {
        self.drop_idle_where(|c| c.peer == *peer);
    }

    /// Drop every idle connection (after a server failure they are likely all stale).
    pub fn drop_idle(&self) {
        self.drop_idle_where(|_| true);
    }

    /// Drop the idle connections `stale` picks (closed outside the pool's lock).
    fn drop_idle_where(&self, stale: impl Fn(&Conn) -> bool) {
        let mut guard = self.state.lock();
        let (gone, keep): (Vec<Conn>, Vec<Conn>) = std::mem::take(&mut guard.idle).into_iter().partition(stale);
        guard.idle = keep;
        guard.open = guard.open.saturating_sub(gone.len());
        drop(guard);
        drop(gone);
        self.returned.notify_all();
    }

    /// Counts and health, for `servers()`.
    pub fn state(&self) -> PoolState {
        let (idle, open, waiting) = {
            let state = self.state.lock();
            (state.idle.len(), state.open, state.waiting)
        };
        let h = self.health.lock();
        let address = match &self.target {
            Target::Sentinel(s, Role::Master) => match s.known_master() {
                Some(at) => format!("{} at {at}", self.name),
                None => self.name.clone(),
            },
            _ => self.name.clone(),
        };
        PoolState {
            address,
            idle,
            open,
            up: h.down_until.is_none_or(|until| until <= Instant::now()),
            errors: h.errors,
            last_error: h.last_error.clone(),
            waiting,
            went_down: h.went_down,
            came_back: h.came_back,
        }
    }
}
