//! Which server holds a key: the ring (pylibmc's placement), and each server's health. A server
//! that failed is skipped for `retry_timeout` (calls to it fail at once); with `remove_failed`, one
//! that failed that many times in a row leaves the ring for `dead_timeout`, its keys going to the
//! others, and comes back after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::conn::Address;
use super::ring::{Distribution, KeyHash, Node, Ring};
use crate::error::{Error, ErrorKind};

/// How failures are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// After a failure, the server is not contacted again for this long.
    pub retry_timeout: Duration,
    /// Whether a refused, reset or closed connection starts that window too (pylibmc's rule,
    /// where its `retry_timeout` behavior asks for it), not only a silent server.
    pub window_on_any_failure: bool,
    /// 0: a failed server keeps its keys. N > 0: after N failures in a row it leaves the ring.
    pub remove_failed: u32,
    /// How long a removed server stays out of the ring.
    pub dead_timeout: Duration,
}

#[derive(Default)]
struct Health {
    failures_in_a_row: u32,
    down_until: Option<Instant>,
    removed_until: Option<Instant>,
    errors: u64,
    last_error: Option<String>,
    /// Times the server was marked down (from up), and found up again by a call.
    went_down: u64,
    came_back: u64,
}

struct Routing {
    ring: Ring,
    /// ring index -> server index
    members: Vec<usize>,
}

/// A server's health, as `Router::health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    /// False while calls to it fail at once (after a failure, for `retry_timeout`).
    pub up: bool,
    /// True while `remove_failed` keeps it out of the ring.
    pub removed: bool,
    /// Connection-level failures since the client was made.
    pub errors: u64,
    /// The last such failure.
    pub last_error: Option<String>,
    /// Times the server was marked down, and found up again by a call.
    pub went_down: u64,
    pub came_back: u64,
}

/// The ring over the servers and their health.
pub struct Router {
    addrs: Vec<Address>,
    nodes: Vec<Node>,
    distribution: Distribution,
    hash: KeyHash,
    policy: FailurePolicy,
    health: Vec<Mutex<Health>>,
    routing: RwLock<Routing>,
    /// Whether some server is out of the ring (so routing must check for its return).
    any_removed: AtomicBool,
}

impl Router {
    /// A router over `servers` (address and weight), in the order routing numbers them.
    pub fn new(servers: &[(Address, u32)], distribution: Distribution, hash: KeyHash, policy: FailurePolicy) -> Self {
        let nodes: Vec<Node> = servers
            .iter()
            .map(|(addr, weight)| match addr {
                Address::Tcp(host, port) => Node { host: host.clone(), port: *port, weight: *weight },
                Address::Unix(path) => Node { host: path.display().to_string(), port: 0, weight: *weight },
            })
            .collect();
        let ring = Ring::new(&nodes, distribution, hash);
        Self {
            addrs: servers.iter().map(|(a, _)| a.clone()).collect(),
            nodes,
            distribution,
            hash,
            policy,
            health: servers.iter().map(|_| Mutex::new(Health::default())).collect(),
            routing: RwLock::new(Routing { ring, members: (0..servers.len()).collect() }),
            any_removed: AtomicBool::new(false),
        }
    }

    /// How many servers there are.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether there are none (never, for a client).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Server `si`'s address.
    pub fn addr(&self, si: usize) -> &Address {
        &self.addrs[si]
    }

    /// The index of the server that holds `key`.
    pub fn route(&self, key: &[u8]) -> Result<usize, Error> {
        if self.addrs.len() == 1 {
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

    /// The positions of `keys`, grouped by the server that holds each.
    pub fn group<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Result<Vec<Vec<usize>>, Error> {
        let mut groups = vec![Vec::new(); self.addrs.len()];
        for (i, key) in keys.enumerate() {
            groups[self.route(key)?].push(i);
        }
        Ok(groups)
    }

    fn rebuild_ring(&self) {
        let now = Instant::now();
        let members: Vec<usize> = (0..self.addrs.len())
            .filter(|&i| self.health[i].lock().removed_until.is_none_or(|until| until <= now))
            .collect();
        let nodes: Vec<Node> = members.iter().map(|&i| self.nodes[i].clone()).collect();
        let ring = Ring::new(&nodes, self.distribution, self.hash);
        self.any_removed.store(members.len() < self.addrs.len(), Ordering::Relaxed);
        *self.routing.write() = Routing { ring, members };
    }

    fn readmit_returned(&self) {
        let now = Instant::now();
        let due = self.health.iter().any(|h| h.lock().removed_until.is_some_and(|until| until <= now));
        if due {
            for h in &self.health {
                let mut h = h.lock();
                if h.removed_until.is_some_and(|until| until <= now) {
                    h.removed_until = None;
                    h.failures_in_a_row = 0;
                }
            }
            self.rebuild_ring();
        }
    }

    /// Fail at once while server `si` is in its retry window.
    pub fn check_up(&self, si: usize) -> Result<(), Error> {
        let h = self.health[si].lock();
        match h.down_until {
            Some(until) if until > Instant::now() => Err(Error::new(
                ErrorKind::ServerDown,
                format!(
                    "memcached {} is marked down after a failure ({}); retrying in {:.1}s",
                    self.addrs[si],
                    h.last_error.as_deref().unwrap_or("unknown error"),
                    (until - Instant::now()).as_secs_f64()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A connection-level failure of server `si`: start its retry window (for a silent server, or
    /// for any failure where the policy says so), and take it out of the ring after
    /// `remove_failed` failures in a row.
    pub fn record_failure(&self, si: usize, e: &Error) {
        let mut h = self.health[si].lock();
        h.errors += 1;
        h.failures_in_a_row += 1;
        h.last_error = Some(e.to_string());
        let window = self.policy.window_on_any_failure || e.kind() == ErrorKind::Timeout;
        if window && !self.policy.retry_timeout.is_zero() {
            let now = Instant::now();
            if h.down_until.is_none_or(|was| was <= now) {
                h.went_down += 1;
            }
            h.down_until = Some(now + self.policy.retry_timeout);
        }
        let remove = self.policy.remove_failed > 0
            && h.failures_in_a_row >= self.policy.remove_failed
            && h.removed_until.is_none();
        if remove {
            h.removed_until = Some(Instant::now() + self.policy.dead_timeout);
        }
        drop(h);
        if remove && self.addrs.len() > 1 {
            self.rebuild_ring();
        }
    }

    /// Server `si` answered: it is up again.
    pub fn record_success(&self, si: usize) {
        let mut h = self.health[si].lock();
        if h.failures_in_a_row > 0 || h.down_until.is_some() {
            h.failures_in_a_row = 0;
            if h.down_until.take().is_some() {
                h.came_back += 1;
            }
        }
    }

    /// Server `si`'s health.
    pub fn health(&self, si: usize) -> HealthState {
        let now = Instant::now();
        let h = self.health[si].lock();
        HealthState {
            up: h.down_until.is_none_or(|until| until <= now),
            removed: h.removed_until.is_some_and(|until| until > now),
            errors: h.errors,
            last_error: h.last_error.clone(),
            went_down: h.went_down,
            came_back: h.came_back,
        }
    }
}
