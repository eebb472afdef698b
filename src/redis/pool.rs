//! A bounded pool of `redis::Connection`s to one server, with connect and command deadlines.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redis::io::tcp::TcpSettings;
use redis::{Connection, ConnectionInfo, IntoConnectionInfo, RedisError};

use crate::error::{Error, ErrorKind};

/// Deadlines and bounds of one pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// To connect (and authenticate, select the db).
    pub connect_timeout: Duration,
    /// For each command's reply (and each write).
    pub socket_timeout: Duration,
    /// Connections open at once, in use or idle; a caller past the bound waits up to
    /// `connect_timeout` for one to come back.
    pub max_connections: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(1), socket_timeout: Duration::from_secs(3), max_connections: 64 }
    }
}

/// Map a `redis` crate error onto ours: connection-level problems (which make the connection
/// unusable) versus the server's own error replies.
pub fn convert(server: &str, e: &RedisError) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error() {
        ErrorKind::Io
    } else {
        ErrorKind::Server
    };
    Error::new(kind, format!("redis {server}: {e}"))
}

struct State {
    idle: Vec<Connection>,
    open: usize,
}

/// The pool of one server.
pub struct Pool {
    name: String,
    info: ConnectionInfo,
    config: PoolConfig,
    state: Mutex<State>,
    returned: Condvar,
}

/// A connection on loan; give it back with [`Pool::put`] only when its last exchange completed.
pub struct Loan {
    /// The connection.
    pub conn: Connection,
    /// Whether it came from the idle list (and may have gone stale since).
    pub pooled: bool,
}

impl Pool {
    /// A pool for `url` (`redis://`, `unix://`, ...): `db` overrides what the URL says;
    /// `username` and `password` apply where the URL gives none.
    pub fn new(
        url: &str,
        db: Option<i64>,
        username: Option<&str>,
        password: Option<&str>,
        config: PoolConfig,
    ) -> Result<Self, Error> {
        let info = url
            .into_connection_info()
            .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("redis LOCATION {url:?}: {e}")))?;
        let mut settings = info.redis_settings().clone();
        if let Some(db) = db {
            settings = settings.set_db(db);
        }
        // As in redis-py's `from_url`: credentials in the URL win over the ones in OPTIONS.
        if let Some(u) = username
            && settings.username().is_none()
        {
            settings = settings.set_username(u);
        }
        if let Some(p) = password
            && settings.password().is_none()
        {
            settings = settings.set_password(p);
        }
        let info = info.set_redis_settings(settings).set_tcp_settings(TcpSettings::default().set_nodelay(true));
        Ok(Self {
            name: info.addr().to_string(),
            info,
            config,
            state: Mutex::new(State { idle: Vec::new(), open: 0 }),
            returned: Condvar::new(),
        })
    }

    /// The server's address, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Borrow a connection: an idle one, a new one while under `max_connections`, or wait for
    /// one to come back (up to `connect_timeout`).
    pub fn take(&self) -> Result<Loan, Error> {
        let deadline = Instant::now() + self.config.connect_timeout;
        let mut state = self.state.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Loan { conn, pooled: true });
            }
            if state.open < self.config.max_connections {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(conn) => Ok(Loan { conn, pooled: false }),
                    Err(e) => {
                        self.forget();
                        Err(e)
                    }
                };
            }
            if self.returned.wait_until(&mut state, deadline).timed_out() {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("redis {}: all {} connections busy", self.name, self.config.max_connections),
                ));
            }
        }
    }

    /// A new connection in place of a stale one the caller dropped (its slot is reused).
    pub fn replace(&self) -> Result<Connection, Error> {
        self.connect().inspect_err(|_| self.forget())
    }

    fn connect(&self) -> Result<Connection, Error> {
        let client = redis::Client::open(self.info.clone()).map_err(|e| convert(&self.name, &e))?;
        let conn = client
            .get_connection_with_timeout(self.config.connect_timeout.max(Duration::from_millis(1)))
            .map_err(|e| convert(&self.name, &e))?;
        let timeout = Some(self.config.socket_timeout.max(Duration::from_millis(1)));
        conn.set_read_timeout(timeout).map_err(|e| convert(&self.name, &e))?;
        conn.set_write_timeout(timeout).map_err(|e| convert(&self.name, &e))?;
        Ok(conn)
    }

    /// Give back a connection whose last exchange completed.
    pub fn put(&self, conn: Connection) {
        self.state.lock().idle.push(conn);
        self.returned.notify_one();
    }

    /// A loaned connection was dropped (it failed): free its slot.
    pub fn forget(&self) {
        let mut state = self.state.lock();
        state.open = state.open.saturating_sub(1);
        drop(state);
        self.returned.notify_one();
    }

    /// Drop every idle connection (after a server failure they are likely all stale).
    pub fn drop_idle(&self) {
        let mut guard = self.state.lock();
        let stale = std::mem::take(&mut guard.idle);
        guard.open = guard.open.saturating_sub(stale.len());
        drop(guard);
        drop(stale);
        self.returned.notify_all();
    }

    /// Idle and open connection counts.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.idle.len(), state.open)
    }
}
