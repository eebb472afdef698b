//! The redis client and its blocking runner: a [`Command`] is placed by the [`Topology`], every
//! node's request is sent before any reply is read (a call over several shards costs about one
//! round trip, on one deadline), and each node's replies are settled into the call, following
//! redirections by the cluster policy. One pool per server; a pooled connection the server
//! dropped is replaced and, when the command may run twice, the exchange runs again on the new
//! one within the same deadline.

use std::sync::Arc;
use std::time::Instant;

use num_bigint::BigInt;
use redis::{ConnectionLike, Value};

use super::calls::{Runner, missing};
use super::commands::{Command, Request};
use super::conn::Conn;
use super::near::Near;
use super::pool::{Loan, Pool};
use super::topology::{Next, Node, Part, Topology};
use super::wire::{classify, is_read_only, read_only};
use crate::error::{Error, ErrorKind};
use crate::net::{ClientStats, Counters};

/// A redis client over one topology.
pub struct Client {
    topology: Topology,
    counters: Counters,
    near: Option<Near>,
}

/// An exchange sent to one server whose replies are still to be read.
struct InFlight<'a> {
    pool: &'a Pool,
    request: Request,
    idempotent: bool,
    deadline: Instant,
    sent: Result<(Loan, redis::RedisResult<()>), Error>,
}

impl Client {
    /// A client over `topology`.
    pub fn new(topology: Topology) -> Self {
        Self { topology, counters: Counters::default(), near: None }
    }

    /// A client over `topology` with a near cache.
    pub fn with_near(topology: Topology, near: Option<Near>) -> Self {
        Self { topology, counters: Counters::default(), near }
    }

    /// The near cache, when there is one.
    pub fn near(&self) -> Option<&Near> {
        self.near.as_ref()
    }

    /// Where commands go.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The client-side counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A snapshot of the counters.
    pub fn client_stats(&self) -> ClientStats {
        self.counters.snapshot()
    }

    /// Run `cmd` to its answer, blocking, within one deadline per attempt. The near cache's
    /// copies of what it changed are dropped when it is over (answered or failed).
    pub fn run<C: Command>(&self, cmd: &C) -> Result<C::Output, Error> {
        let result = self.run_to_answer(cmd);
        if let Some(near) = &self.near {
            near.changed(cmd.changes());
        }
        result
    }

    fn run_to_answer<C: Command>(&self, cmd: &C) -> Result<C::Output, Error> {
        let topology = &self.topology;
        if topology.needs_map() {
            self.refresh(false)?;
        }
        let mut call = topology.begin(cmd);
        loop {
            let mut parts = topology.parts(cmd, &mut call)?;
            if parts.len() > 1 {
                // Servers with a connection ready first: one that must connect (and log in) may
                // take the whole deadline, and must not take it from the others' sends.
                parts.sort_by_key(|p| !p.pool().has_idle());
            }
            let deadline = parts.first().map_or_else(Instant::now, |p| p.pool().deadline());
            let flights: Vec<InFlight<'_>> = parts.iter().map(|part| Self::send(part, cmd, deadline)).collect();
            for (part, flight) in parts.iter().zip(flights) {
                let outcome = self.finish(flight);
                topology.settle(cmd, &mut call, part, outcome);
            }
            match topology.next(&mut call) {
                Next::Done => {
                    let out = call.output();
                    cmd.count(&out, &self.counters);
                    return Ok(out);
                }
                Next::Fail(e) => return Err(e),
                Next::Again(plan) => {
                    if !plan.pause.is_zero() {
                        std::thread::sleep(plan.pause);
                    }
                    if plan.refresh {
                        let before = plan.fail_unless_moved.then(|| topology.owners());
                        let refreshed = self.refresh(plan.force);
                        if before.is_some_and(|b| b == topology.owners()) {
                            return Err(topology.stuck(&call));
                        }
                        if !plan.force {
                            refreshed?;
                        }
                    }
                }
            }
        }
    }

    /// Read the cluster's slot map again (see [`Topology::refresh`]).
    /// A slot that moved empties the near cache (its copies were vouched for by the old owner).
    pub fn refresh(&self, force: bool) -> Result<(), Error> {
        let before = self.near.as_ref().map(|_| self.topology.owners());
        let refreshed = self.topology.refresh(force, |node| self.cluster_slots(node));
        if let (Some(near), Some(before)) = (&self.near, before)
            && before != self.topology.owners()
        {
            near.flush();
        }
        refreshed
    }

    /// CLUSTER SLOTS from a node's primary, within its own deadline.
    pub fn cluster_slots(&self, node: &Node) -> Result<Value, Error> {
        let pool = &node.pools()[0];
        let deadline = pool.deadline();
        let request = Request::one(redis::cmd("CLUSTER").arg("SLOTS"));
        let flight = Self::send_to(pool, request, true, deadline);
        let label = pool.label().to_owned();
        let mut replies = self.finish(flight)?;
        match replies.pop() {
            Some(Value::ServerError(e)) => Err(classify(&label, &e.into())),
            Some(value) => Ok(value),
            None => Err(Error::new(ErrorKind::Protocol, format!("{label}: no reply to CLUSTER SLOTS"))),
        }
    }

    fn send<'p, C: Command>(part: &'p Part, cmd: &C, deadline: Instant) -> InFlight<'p> {
        let request = cmd.request(&part.keys, part.each);
        let request = if part.ask { request.asking() } else { request };
        Self::send_to(part.pool(), request, cmd.idempotent(), deadline)
    }

    /// Send `request` to `pool`, before `deadline`, without waiting for its replies.
    fn send_to(pool: &Pool, request: Request, idempotent: bool, deadline: Instant) -> InFlight<'_> {
        if Instant::now() >= deadline {
            // The call's time went to other servers: this one is not to blame (nor charged).
            let late = Error::new(ErrorKind::Timeout, format!("{}: no time left for it in the call", pool.label()));
            return InFlight { pool, request, idempotent, deadline, sent: Err(late) };
        }
        let sent = pool.take(deadline).map(|mut loan| {
            loan.conn.begin(deadline);
            let result = loan.conn.send(&request.packed);
            (loan, result)
        });
        InFlight { pool, request, idempotent, deadline, sent }
    }

    /// Read an exchange's replies (every one, so the connection stays in step). A pooled
    /// connection that turned out stale runs the exchange again on a new one, within the same
    /// deadline, when it may run twice or nothing of it reached the server; so does a demoted
    /// master's READONLY (nothing was applied).
    fn finish(&self, flight: InFlight<'_>) -> Result<Vec<Value>, Error> {
        let InFlight { pool, request, idempotent, deadline, sent } = flight;
        let (Loan { mut conn, mut pooled }, sent) = sent?;
        let mut outcome = sent.and_then(|()| conn.read_replies(0, request.replies));
        let mut demoted = false;
        loop {
            match outcome {
                Ok(values) if pool.master_only() && !demoted && read_only(&values) => {
                    demoted = true;
                    let peer = conn.peer.clone();
                    drop(conn);
                    pool.demoted(Some(&peer));
                }
                Ok(values) => {
                    pool.put(conn);
                    return Ok(values);
                }
                Err(e) => {
                    if let Some(err) = self.failed(pool, conn, pooled, idempotent, &e) {
                        return Err(err);
                    }
                }
            }
            conn = pool.replace(deadline)?;
            pooled = false;
            conn.begin(deadline);
            outcome = conn.req_packed_commands(&request.packed, 0, request.replies);
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

    /// Run `f` on one connection of `pool` (a conversation of several round trips), within
    /// one deadline; not run again on a stale connection.
    fn converse<T>(&self, pool: &Pool, mut f: impl FnMut(&mut Conn) -> redis::RedisResult<T>) -> Result<T, Error> {
        let deadline = pool.deadline();
        let Loan { mut conn, mut pooled } = pool.take(deadline)?;
        loop {
            conn.begin(deadline);
            match f(&mut conn) {
                Ok(v) => {
                    pool.put(conn);
                    return Ok(v);
                }
                Err(e) => {
                    if let Some(err) = self.failed(pool, conn, pooled, false, &e) {
                        return Err(err);
                    }
                    conn = pool.replace(deadline)?;
                    pooled = false;
                }
            }
        }
    }

    /// Add `delta` to an integer of any size on the key's primary: WATCH, GET, then
    /// `SET ... KEEPTTL` in MULTI/EXEC, again until no other client changed the key in between.
    /// The digits it came to; `NotFound` when the key is missing, `NotNumeric` when its value is
    /// not an integer.
    pub fn increment_big(&self, key: &[u8], delta: i64) -> Result<String, Error> {
        let node = self.topology.node_of(key)?;
        let outcome = self.converse(&node.pools()[0], |c| {
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
            Some(Some(digits)) => Ok(digits),
        }
    }
}

/// The blocking runner: each command is done by the time it is awaited (see
/// [`super::commands::finish`]).
pub struct Blocking<'a>(pub &'a Client);

impl Runner for Blocking<'_> {
    fn call<C: Command>(&self, cmd: C) -> impl Future<Output = Result<C::Output, Error>> + Send {
        std::future::ready(self.0.run(&cmd))
    }

    fn topology(&self) -> &Topology {
        self.0.topology()
    }

    fn increment_big(&self, key: Vec<u8>, delta: i64) -> impl Future<Output = Result<String, Error>> + Send {
        std::future::ready(self.0.increment_big(&key, delta))
    }
}

/// A shared client, for the async runner's tasks.
pub type Shared = Arc<Client>;
