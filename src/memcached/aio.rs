//! The memcached client's async calls: the same commands, routing, deadlines, retry rule and
//! failure accounting as the blocking ones, over multiplexed connections (a few per server,
//! requests pipelined and their replies matched in order) on the process's I/O runtime. Each
//! command's reply is read by the same dialect code as the blocking path, from the frames the
//! connection cut for it.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::binary;
use super::client::{Client, Item, Retry, Stored};
use super::dialect::Simple;
use super::plan::{DeleteMany, GetMany, PerServer, Plan, Read, SetMany, prepare};
use super::protocol::Store;
use super::wire::{Expect, Frame, Frames, MemcachedWire};
use crate::error::{Error, ErrorKind};
use crate::net::aio::{self, Answer, Mux, within};

/// What gets a call's result.
pub type Done<T> = Box<dyn FnOnce(Result<T, Error>) + Send>;

/// What reads one server's answer from its frames (the dialect, on an I/O thread).
type ReadFrames<T> = Arc<dyn Fn(usize, &mut Frames<'_>) -> Result<T, Error> + Send + Sync>;

impl Client {
    /// A new multiplexed connection to server `si` (SASL where configured), before `deadline`
    /// and within the connect timeout.
    async fn connect_mux(&self, si: usize, deadline: Instant) -> Result<Mux<MemcachedWire>, Error> {
        let deadline = deadline.min(Instant::now() + self.pool.timeouts().connect);
        let label = self.server_label(si);
        let stream = aio::connect(self.router.addr(si), None, deadline, &label).await?;
        let mux = Mux::start(stream, &label)?;
        if let Some((username, password)) = &self.config().credentials {
            let mut request = Vec::new();
            binary::encode_sasl_plain(&mut request, username, password)?;
            let mut frames =
                within(deadline, &label, "SASL", mux.call(Arc::new(request), Expect::Frames(1), deadline)).await?;
            match frames.pop() {
                Some(Frame::Binary(p)) if p.status == binary::status::OK => {}
                Some(Frame::Binary(p)) => {
                    return Err(Error::new(
                        ErrorKind::Server,
                        format!("{label}: SASL authentication as {username:?} failed ({})", p.status_text()),
                    ));
                }
                _ => return Err(Error::new(ErrorKind::Protocol, format!("{label}: an unexpected SASL reply"))),
            }
        }
        Ok(mux)
    }

    /// Start one exchange with server `si`, within one deadline; `then` gets its answer's
    /// frames. With a connection open, the request is written now, on the caller's thread, and
    /// `then` runs on an I/O thread when the reply is in; otherwise the exchange connects first,
    /// on the I/O runtime.
    fn start(
        self: &Arc<Self>,
        si: usize,
        request: Vec<u8>,
        expect: Expect,
        retry: Retry,
        then: Box<dyn FnOnce(Result<Vec<Frame>, Error>) + Send>,
    ) {
        let started = Instant::now();
        let deadline = self.deadline();
        if let Err(e) = self.router.check_up(si) {
            return then(Err(e));
        }
        let request = Arc::new(request);
        if let Some(mux) = self.slots[si].ready() {
            let again = (retry == Retry::Yes && mux.made < started).then(|| request.clone());
            let (client, conn) = (self.clone(), mux.clone());
            let settle = move |answer: Answer<MemcachedWire>| match answer {
                Ok(frames) => {
                    client.router.record_success(si);
                    then(Ok(frames));
                }
                Err(e) => {
                    client.slots[si].forget(&conn);
                    if e.kind() == ErrorKind::Io
                        && let Some(request) = again
                    {
                        // Made before the call and gone stale since: once more, on a new one.
                        return client.spawn_exchange(si, request, expect, Retry::No, Instant::now(), deadline, then);
                    }
                    client.failed(si, &e);
                    then(Err(e));
                }
            };
            mux.send(request, expect, deadline, Box::new(settle));
            return;
        }
        self.spawn_exchange(si, request, expect, retry, started, deadline, then);
    }

    /// One exchange when no connection was ready: connect (or wait for room) first.
    #[allow(clippy::too_many_arguments)]
    fn spawn_exchange(
        self: &Arc<Self>,
        si: usize,
        request: Arc<Vec<u8>>,
        expect: Expect,
        retry: Retry,
        started: Instant,
        deadline: Instant,
        then: Box<dyn FnOnce(Result<Vec<Frame>, Error>) + Send>,
    ) {
        let handle = match aio::runtime() {
            Ok(handle) => handle,
            Err(e) => return then(Err(e)),
        };
        let client = self.clone();
        handle.spawn(async move {
            let attempt = async {
                let mut retried = false;
                loop {
                    let mux = client.slots[si].get(|| client.connect_mux(si, deadline)).await?;
                    match mux.call(request.clone(), expect, deadline).await {
                        Ok(frames) => {
                            client.router.record_success(si);
                            return Ok(frames);
                        }
                        Err(e) => {
                            client.slots[si].forget(&mux);
                            if retry == Retry::Yes && !retried && mux.made < started && e.kind() == ErrorKind::Io {
                                retried = true;
                                continue;
                            }
                            return Err(e);
                        }
                    }
                }
            };
            let label = client.server_label(si);
            let result = tokio::time::timeout_at(deadline.into(), attempt).await.unwrap_or_else(|_| {
                Err(Error::new(ErrorKind::Timeout, format!("{label}: no reply before the call's deadline")))
            });
            if let Err(e) = &result {
                client.failed(si, e);
            }
            then(result);
        });
    }

    /// One request to server `si`, its answer read by `read`.
    fn one_then<T: Send + 'static>(
        self: &Arc<Self>,
        si: usize,
        request: Vec<u8>,
        expect: Expect,
        retry: Retry,
        read: impl FnOnce(&mut Frames<'_>) -> Result<T, Error> + Send + 'static,
        done: Done<T>,
    ) {
        let client = self.clone();
        self.start(
            si,
            request,
            expect,
            retry,
            Box::new(move |frames| {
                done(frames.and_then(|frames| read(&mut Frames::new(frames, client.router.addr(si)))));
            }),
        );
    }

    /// One request about `key`, to the server that holds it: written by `encode`, its answer
    /// read by `read`.
    #[allow(clippy::too_many_arguments)]
    fn keyed_then<T: Send + 'static>(
        self: &Arc<Self>,
        key: &[u8],
        extra: usize,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), Error>,
        expect: Expect,
        retry: Retry,
        read: impl FnOnce(&mut Frames<'_>) -> Result<T, Error> + Send + 'static,
        done: Done<T>,
    ) {
        let mut request = Vec::with_capacity(key.len() + extra + 48);
        match self.router.route(key).and_then(|si| encode(&mut request).map(|()| si)) {
            Ok(si) => self.one_then(si, request, expect, retry, read, done),
            Err(e) => done(Err(e)),
        }
    }

    /// One request per server, all at once; `done` gets each server's answer (or error) once
    /// the last is in.
    fn fan_out_then<T: Send + 'static>(
        self: &Arc<Self>,
        requests: Vec<(usize, Vec<u8>, Expect)>,
        read: ReadFrames<T>,
        done: Done<PerServer<T>>,
    ) {
        if requests.is_empty() {
            return done(Ok(Vec::new()));
        }
        let joined = Arc::new(Mutex::new((Vec::with_capacity(requests.len()), requests.len(), Some(done))));
        for (si, request, expect) in requests {
            let (client, read, joined) = (self.clone(), read.clone(), joined.clone());
            self.start(
                si,
                request,
                expect,
                Retry::Yes,
                Box::new(move |frames| {
                    let result = frames.and_then(|frames| read(si, &mut Frames::new(frames, client.router.addr(si))));
                    let mut j = joined.lock();
                    j.0.push((si, result));
                    j.1 -= 1;
                    if j.1 == 0
                        && let Some(done) = j.2.take()
                    {
                        let results = std::mem::take(&mut j.0);
                        drop(j);
                        done(Ok(results));
                    }
                }),
            );
        }
    }

    /// Fetch one key.
    pub fn get_then(self: &Arc<Self>, key: &[u8], done: Done<Option<Item>>) {
        let (dialect, client) = (self.dialect, self.clone());
        self.keyed_then(
            key,
            0,
            |request| dialect.encode_get(request, &[key]),
            Expect::Answers(1),
            Retry::Yes,
            move |r| Ok(dialect.read_get(r)?.into_iter().next().map(|(_, item)| item)),
            Box::new(move |found: Result<Option<Item>, Error>| {
                if let Ok(f) = &found {
                    client.counters.lookups(usize::from(f.is_some()), usize::from(f.is_none()));
                }
                done(found);
            }),
        );
    }

    /// Fetch several keys: one request per server, all at once. The items in the order of
    /// `keys`, and the errors of the servers that failed (their keys read as misses).
    pub fn get_many_then(self: &Arc<Self>, keys: &[&[u8]], done: Done<(Vec<Option<Item>>, Vec<Error>)>) {
        if keys.is_empty() {
            return done(Ok((Vec::new(), Vec::new())));
        }
        self.start_plan(&GetMany(keys), done);
    }

    /// Run a multi-key plan: one pipelined request per server, all at once; `done` gets the
    /// answers put together once the last server's is in.
    fn start_plan<P: Plan>(self: &Arc<Self>, plan: &P, done: Done<<P::Read as Read>::Output>) {
        let (requests, reader) = match prepare(plan, &self.router, self.dialect) {
            Ok(prepared) => prepared,
            Err(e) => return done(Err(e)),
        };
        let reader = Arc::new(reader);
        let requests = requests.into_iter().map(|(si, r)| (si, r, reader.frames(si))).collect();
        let (reading, client) = (reader.clone(), self.clone());
        self.fan_out_then(
            requests,
            Arc::new(move |si, r: &mut Frames<'_>| reading.read(si, r)),
            Box::new(move |results| done(results.map(|rs| reader.gather(rs, &client.counters)))),
        );
    }

    /// One storage command.
    pub fn store_then(
        self: &Arc<Self>,
        cmd: Store,
        key: &[u8],
        flags: u32,
        exptime: i64,
        data: &[u8],
        done: Done<Stored>,
    ) {
        let (dialect, client) = (self.dialect, self.clone());
        self.keyed_then(
            key,
            data.len(),
            |request| dialect.encode_store(request, cmd, key, flags, exptime, data),
            Expect::Frames(1),
            Retry::Yes,
            move |r| dialect.read_stored(r),
            Box::new(move |stored: Result<Stored, Error>| {
                if let Ok(Stored::Yes) = stored {
                    client.counters.sets(1);
                }
                done(stored);
            }),
        );
    }

    /// Store every item, pipelined per server, all servers at once: one result per item.
    pub fn set_many_then(
        self: &Arc<Self>,
        items: &[(&[u8], u32, &[u8])],
        exptime: i64,
        done: Done<Vec<Result<Stored, Error>>>,
    ) {
        self.start_plan(&SetMany { items, exptime }, done);
    }

    /// Delete one key; whether it was there.
    pub fn delete_then(self: &Arc<Self>, key: &[u8], done: Done<bool>) {
        let dialect = self.dialect;
        let encode = |request: &mut Vec<u8>| dialect.encode_delete(request, key);
        self.keyed_then(key, 0, encode, Expect::Frames(1), Retry::Yes, move |r| dialect.read_deleted(r), done);
    }

    /// Delete several keys, pipelined per server: the errors of the servers that failed.
    pub fn delete_many_then(self: &Arc<Self>, keys: &[&[u8]], done: Done<Vec<Error>>) {
        self.start_plan(&DeleteMany(keys), done);
    }

    /// `incr`/`decr` by `delta`: the new value, or None when the key is missing. Not retried
    /// on a stale connection: the first attempt may have applied.
    pub fn incr_then(self: &Arc<Self>, key: &[u8], delta: u64, decr: bool, done: Done<Option<u64>>) {
        let (dialect, made) = (self.dialect, key.to_vec());
        let encode = |request: &mut Vec<u8>| dialect.encode_incr(request, key, delta, decr);
        let read = move |r: &mut Frames<'_>| dialect.read_counter(r, &made);
        self.keyed_then(key, 0, encode, Expect::Frames(1), Retry::No, read, done);
    }

    /// Give a key a new expiry; whether it was there.
    pub fn touch_then(self: &Arc<Self>, key: &[u8], exptime: i64, done: Done<bool>) {
        let dialect = self.dialect;
        let encode = |request: &mut Vec<u8>| dialect.encode_touch(request, key, exptime);
        self.keyed_then(key, 0, encode, Expect::Frames(1), Retry::Yes, move |r| dialect.read_touched(r), done);
    }

    /// `flush_all` on every server: the errors of the servers that failed.
    pub fn clear_then(self: &Arc<Self>, done: Done<Vec<Error>>) {
        let mut request = Vec::new();
        if let Err(e) = self.dialect.encode_simple(&mut request, Simple::Flush) {
            return done(Err(e));
        }
        let dialect = self.dialect;
        let requests = (0..self.router.len()).map(|si| (si, request.clone(), Expect::Frames(1))).collect();
        self.fan_out_then(
            requests,
            Arc::new(move |_, r: &mut Frames<'_>| dialect.read_flushed(r)),
            Box::new(move |results| done(results.map(|rs| rs.into_iter().filter_map(|(_, r)| r.err()).collect()))),
        );
    }
}
