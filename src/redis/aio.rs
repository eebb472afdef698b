//! The async runner: the same [`Command`]s, topology, deadlines, retry rule, redirection policy
//! and failure accounting as the blocking runner, over multiplexed connections (a few per
//! server, shared by every call in flight) on the process's I/O runtime.
//!
//! A call on one node whose connection is open writes its request at once, on the caller's
//! thread, and is settled on an I/O thread when the reply is in; anything more (connecting,
//! several nodes, a redirection, a stale connection) continues as a task on the runtime.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use redis::Value;
use tokio::sync::oneshot;

use super::calls::Runner;
use super::client::Client;
use super::commands::{Changes, Command};
use super::conn::{Login, handshake, is_master};
use super::pool::{Pool, Target};
use super::sentinel::Role;
use super::topology::{Call, Next, Part, Topology};
use super::wire::{RedisWire, no_error_reply, read_only};
use crate::error::{Error, ErrorKind};
use crate::net::Address;
use crate::net::aio::{self, Mux, within};

/// What gets a call's result.
pub type Done<T> = Box<dyn FnOnce(Result<T, Error>) + Send>;

impl Pool {
    /// A new multiplexed connection, logged in, before `deadline` (and within the connect
    /// timeout). A Sentinel-managed pool that cannot reach the address it had asks the
    /// sentinels again, and tries the new answer once.
    ///
    /// `tried` gets the address of a Sentinel-managed pool's last attempt: a failure to reach
    /// a master the sentinels have replaced since costs only that server's connections.
    async fn connect_mux(&self, deadline: Instant, tried: &Mutex<Option<Address>>) -> Result<Mux<RedisWire>, Error> {
        let deadline = deadline.min(Instant::now() + self.config().connect_timeout);
        let sentinel = self.sentinel().is_some();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (addr, epoch) = self.endpoint_async(deadline).await?;
            if sentinel {
                *tried.lock() = Some(addr.clone());
            }
            let (made, epoch) = match self.connect_mux_to(&addr, deadline).await {
                Err(e) if e.is_connection_failure() && sentinel => {
                    self.suspect(&addr);
                    match self.endpoint_async(deadline).await {
                        // With time left: the address the sentinels name now, once.
                        Ok((again, epoch)) if again != addr && Instant::now() < deadline => {
                            *tried.lock() = Some(again.clone());
                            (self.connect_mux_to(&again, deadline).await, epoch)
                        }
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
                let mux = self.slots().get(|| self.connect_mux(deadline, &peer)).await?;
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

/// A call's progress, carried from the caller's thread to an I/O thread and on to a task.
struct Pending<C: Command> {
    cmd: Arc<C>,
    call: Call<C::Output>,
    done: Done<C::Output>,
}

impl Client {
    /// Run `cmd`; `done` gets its answer (on an I/O thread, or at once on the caller's when it
    /// failed before anything was sent).
    pub fn start<C: Command>(self: &Arc<Self>, cmd: C, done: Done<C::Output>) {
        // The near cache's copies of what it changes go when it is over (answered or failed).
        let done = match (self.near(), cmd.changes()) {
            (Some(_), Changes::None) | (None, _) => done,
            (Some(_), changes) => {
                let (client, stale) = (self.clone(), changes.owned());
                Box::new(move |answer| {
                    if let Some(near) = client.near() {
                        near.changed(stale.borrowed());
                    }
                    done(answer);
                })
            }
        };
        let topology = self.topology();
        let cmd = Arc::new(cmd);
        let mut call = topology.begin(&*cmd);
        if topology.needs_map() {
            return self.spawn(Pending { cmd, call, done }, None, None);
        }
        let parts = match topology.parts(&*cmd, &mut call) {
            Ok(parts) => parts,
            Err(e) => return done(Err(e)),
        };
        let pending = Pending { cmd, call, done };
        let [part] = parts.as_slice() else { return self.spawn(pending, Some(parts), None) };
        let pool = part.pool();
        pool.refresh();
        let Some(mux) = pool.slots().ready() else { return self.spawn(pending, Some(parts), None) };
        let started = Instant::now();
        let deadline = started + pool.config().socket_timeout;
        if let Err(e) = pool.check_up() {
            return self.conclude(pending, parts, vec![Err(e)]);
        }
        let request = pending.cmd.request(&part.keys, part.each);
        let request = if part.ask { request.asking() } else { request };
        let (packed, replies) = (Arc::new(request.packed), request.replies);
        // A connection made before the call started may have gone stale: then it runs again.
        let retry = pending.cmd.idempotent() && mux.made < started;
        let (client, conn, again) = (self.clone(), mux.clone(), packed.clone());
        mux.send(
            packed,
            replies,
            deadline,
            Box::new(move |answer| {
                let pool = parts[0].pool();
                let outcome = match answer {
                    Ok(values) if pool.master_only() && read_only(&values) => {
                        // A demoted master refused: nothing was applied; once more on the new one.
                        pool.demoted(conn.peer.as_ref());
                        return client.spawn(pending, Some(parts), Some((again, replies, deadline)));
                    }
                    Ok(values) => {
                        pool.mark_up();
                        Ok(values)
                    }
                    Err(e) => {
                        pool.slots().forget(&conn);
                        if e.kind() == ErrorKind::Io && retry {
                            return client.spawn(pending, Some(parts), Some((again, replies, deadline)));
                        }
                        client.account(pool, &e, conn.peer.as_ref());
                        Err(e)
                    }
                };
                client.conclude(pending, parts, vec![outcome]);
            }),
        );
    }

    /// Settle an attempt's outcomes; answer, or go on as a task.
    fn conclude<C: Command>(
        self: &Arc<Self>,
        mut pending: Pending<C>,
        parts: Vec<Part>,
        outcomes: Vec<Result<Vec<Value>, Error>>,
    ) {
        let topology = self.topology();
        for (part, outcome) in parts.iter().zip(outcomes) {
            topology.settle(&*pending.cmd, &mut pending.call, part, outcome);
        }
        match topology.next(&mut pending.call) {
            Next::Done => {
                let out = pending.call.output();
                pending.cmd.count(&out, self.counters());
                (pending.done)(Ok(out));
            }
            Next::Fail(e) => (pending.done)(Err(e)),
            Next::Again(plan) => {
                let client = self.clone();
                let Pending { cmd, mut call, done } = pending;
                Self::on_runtime(done, move |done| async move {
                    let answer = async {
                        client.prepare(&call, plan).await?;
                        client.drive(&cmd, &mut call, None).await
                    }
                    .await;
                    (done)(answer.map(|()| {
                        let out = call.output();
                        cmd.count(&out, client.counters());
                        out
                    }));
                });
            }
        }
    }

    /// Go on as a task: with the parts already placed (`parts`), a request to send again on a
    /// new connection of the first part's pool (`resend`).
    #[allow(clippy::type_complexity)]
    fn spawn<C: Command>(
        self: &Arc<Self>,
        pending: Pending<C>,
        parts: Option<Vec<Part>>,
        resend: Option<(Arc<Vec<u8>>, usize, Instant)>,
    ) {
        let client = self.clone();
        let Pending { cmd, mut call, done } = pending;
        Self::on_runtime(done, move |done| async move {
            let answer = async {
                if let (Some(parts), Some((packed, replies, deadline))) = (&parts, resend) {
                    let pool = parts[0].pool();
                    let (outcome, peer) = pool.exchange(false, Instant::now(), packed, replies, deadline).await;
                    if let Err(e) = &outcome {
                        client.account(pool, e, peer.as_ref());
                    }
                    client.topology().settle(&*cmd, &mut call, &parts[0], outcome);
                    match client.topology().next(&mut call) {
                        Next::Done => return Ok(()),
                        Next::Fail(e) => return Err(e),
                        Next::Again(plan) => client.prepare(&call, plan).await?,
                    }
                    return client.drive(&cmd, &mut call, None).await;
                }
                client.drive(&cmd, &mut call, parts).await
            }
            .await;
            done(answer.map(|()| {
                let out = call.output();
                cmd.count(&out, client.counters());
                out
            }));
        });
    }

    /// Run `work(done)` on the I/O runtime; `done` gets the runtime's failure if it cannot.
    fn on_runtime<T, F, Fut>(done: Done<T>, work: F)
    where
        T: Send + 'static,
        F: FnOnce(Done<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match aio::runtime() {
            Ok(handle) => {
                handle.spawn(work(done));
            }
            Err(e) => done(Err(e)),
        }
    }

    /// What a plan asks before the next attempt: a pause, the slot map read again (failing when
    /// a node is down and nobody took over its slots).
    async fn prepare<O>(self: &Arc<Self>, call: &Call<O>, plan: crate::redis::cluster::Plan) -> Result<(), Error> {
        if !plan.pause.is_zero() {
            tokio::time::sleep(plan.pause).await;
        }
        if plan.refresh {
            let before = plan.fail_unless_moved.then(|| self.topology().owners());
            let refreshed = self.refresh_async(plan.force).await;
            if before.is_some_and(|b| b == self.topology().owners()) {
                return Err(self.topology().stuck(call));
            }
            if !plan.force {
                refreshed?;
            }
        }
        Ok(())
    }

    /// Read the slot map again, off the I/O threads.
    async fn refresh_async(self: &Arc<Self>, force: bool) -> Result<(), Error> {
        let client = self.clone();
        tokio::task::spawn_blocking(move || client.refresh(force))
            .await
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "redis cluster: the slot map reading was cancelled")))
    }

    /// Attempts until the call is answered: every part's exchange at once, each settled.
    async fn drive<C: Command>(
        self: &Arc<Self>,
        cmd: &Arc<C>,
        call: &mut Call<C::Output>,
        mut parts: Option<Vec<Part>>,
    ) -> Result<(), Error> {
        let topology = self.topology();
        loop {
            if topology.needs_map() {
                self.refresh_async(false).await?;
            }
            let parts = match parts.take() {
                Some(parts) => parts,
                None => topology.parts(&**cmd, call)?,
            };
            let started = Instant::now();
            let mut tasks = Vec::with_capacity(parts.len());
            for part in &parts {
                let request = cmd.request(&part.keys, part.each);
                let request = if part.ask { request.asking() } else { request };
                let (client, node, server, idempotent) =
                    (self.clone(), part.node.clone(), part.server, cmd.idempotent());
                let deadline = started + part.pool().config().socket_timeout;
                tasks.push(tokio::spawn(async move {
                    let pool = &node.pools()[server];
                    pool.refresh();
                    pool.check_up()?;
                    let packed = Arc::new(request.packed);
                    let (outcome, peer) = pool.exchange(idempotent, started, packed, request.replies, deadline).await;
                    if let Err(e) = &outcome {
                        client.account(pool, e, peer.as_ref());
                    }
                    outcome
                }));
            }
            for (part, task) in parts.iter().zip(tasks) {
                let outcome =
                    task.await.unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "redis: the I/O runtime stopped")));
                topology.settle(&**cmd, call, part, outcome);
            }
            match topology.next(call) {
                Next::Done => return Ok(()),
                Next::Fail(e) => return Err(e),
                Next::Again(plan) => self.prepare(call, plan).await?,
            }
        }
    }

    /// A call failed on the connection (not on the server's answer): it counts, and the server
    /// is skipped for the retry window.
    fn account(&self, pool: &Pool, e: &Error, peer: Option<&Address>) {
        if e.is_connection_failure() {
            self.counters().failure();
            pool.record_failure(e, peer);
        }
    }
}

/// The async runner: each command started at once, its answer awaited.
pub struct Async(pub Arc<Client>);

impl Runner for Async {
    fn call<C: Command>(&self, cmd: C) -> impl Future<Output = Result<C::Output, Error>> + Send {
        let (tx, rx) = oneshot::channel();
        self.0.start(
            cmd,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        async move { rx.await.unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "redis: the I/O runtime stopped"))) }
    }

    fn topology(&self) -> &Topology {
        self.0.topology()
    }

    fn increment_big(&self, key: Vec<u8>, delta: i64) -> impl Future<Output = Result<String, Error>> + Send {
        let client = self.0.clone();
        async move {
            tokio::task::spawn_blocking(move || client.increment_big(&key, delta))
                .await
                .map_err(|e| Error::new(ErrorKind::Io, format!("redis incr: {e}")))?
        }
    }
}
