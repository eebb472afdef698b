//! Idle connections per server: checked out for one exchange, given back only when that exchange
//! completed with nothing left unread, and made anew (connect, then SASL where configured) within
//! the call's deadline.

use std::time::Instant;

use parking_lot::Mutex;

use super::conn::{Address, Conn, Timeouts};
use crate::error::Error;

/// The idle connections of every server of one client.
pub struct Pool {
    idle: Vec<Mutex<Vec<Conn>>>,
    max_idle: usize,
    timeouts: Timeouts,
    credentials: Option<(String, String)>,
}

impl Pool {
    /// A pool for `servers` servers.
    pub fn new(servers: usize, max_idle: usize, timeouts: Timeouts, credentials: Option<(String, String)>) -> Self {
        Self { idle: (0..servers).map(|_| Mutex::new(Vec::new())).collect(), max_idle, timeouts, credentials }
    }

    /// The timeouts connections are made and used with.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// An idle connection to server `si` that the server has not closed since it was pooled
    /// (those are dropped here: a restart costs new connections, not failed calls).
    pub fn take_live(&self, si: usize) -> Option<Conn> {
        loop {
            let mut conn = self.idle[si].lock().pop()?;
            if !conn.is_stale() {
                return Some(conn);
            }
        }
    }

    /// A new connection to `addr` (server `si`'s), authenticated when credentials are
    /// configured, before `deadline` and within the connect timeout.
    pub fn connect(&self, addr: &Address, deadline: Instant) -> Result<Conn, Error> {
        let deadline = deadline.min(Instant::now() + self.timeouts.connect);
        let mut conn = Conn::connect(addr, &self.timeouts, deadline)?;
        if let Some((username, password)) = &self.credentials {
            conn.authenticate(username, password, deadline)?;
        }
        Ok(conn)
    }

    /// Give back a connection whose exchange completed. One with unread bytes is dropped: a late
    /// reply must never be read as the answer to another request.
    pub fn put(&self, si: usize, mut conn: Conn) {
        if conn.has_pending_input() {
            return;
        }
        conn.trim();
        let mut idle = self.idle[si].lock();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Drop server `si`'s idle connections (after a failure they are likely dead too).
    pub fn drop_idle(&self, si: usize) {
        let stale = std::mem::take(&mut *self.idle[si].lock());
        drop(stale);
    }

    /// How many idle connections server `si` has.
    pub fn idle_count(&self, si: usize) -> usize {
        self.idle[si].lock().len()
    }

    /// Drop every idle connection.
    pub fn clear(&self) {
        for si in 0..self.idle.len() {
            self.drop_idle(si);
        }
    }
}
