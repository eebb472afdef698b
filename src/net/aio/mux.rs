//! A multiplexed connection: many requests at once on one stream, their replies matched to them in order.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::{tcp, unix};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};

use super::runtime::{Expire, Watch, io};
use super::stream::{AsyncStream, io_error};
use crate::error::{Error, ErrorKind};
use crate::net::{Address, SLICE};

/// How a protocol's replies are cut from the bytes a connection reads, and which of them end
/// the answer to one request.
pub trait Wire: Send + Sync + 'static {
    /// One reply frame (a redis value, a memcached reply line with its data).
    type Frame: Send + 'static;
    /// What a request waits for (how many replies, or up to which one).
    type Expect: Send + 'static;
    /// What the connection remembers between reads while a frame is incomplete.
    type Scan: Default + Send + 'static;

    /// The first whole frame of `buf` and the bytes it took; `None` until it has all arrived;
    /// an error (a hostile length, an unparsable reply) drops the connection.
    fn next_frame(scan: &mut Self::Scan, buf: &[u8]) -> Result<Option<(Self::Frame, usize)>, Error>;

    /// Whether `frame` is the last of its answer (`expect` keeps count as frames come).
    fn is_last(expect: &mut Self::Expect, frame: &Self::Frame) -> bool;

    /// How many bytes the frame starting `buf` will take, when its header tells (room is
    /// reserved for it at once, up to a bound).
    fn frame_len(buf: &[u8]) -> Option<usize> {
        let _ = buf;
        None
    }
}

/// A request's answer: its frames, or the error that ended the connection first.
pub type Answer<W> = Result<Vec<<W as Wire>::Frame>, Error>;

/// What gets a request's answer: called once, on an I/O thread (or on the caller's, at once,
/// when the request could not be sent at all).
pub type OnAnswer<W> = Box<dyn FnOnce(Answer<W>) + Send>;

struct Pending<W: Wire> {
    expect: W::Expect,
    frames: Vec<W::Frame>,
    deadline: Instant,
    on_answer: OnAnswer<W>,
    _permit: OwnedSemaphorePermit,
}

/// The most requests written (or queued) and still waiting for their replies on one
/// connection; past it a caller waits (within its deadline) for one to be answered.
pub const MAX_IN_FLIGHT: usize = 512;

/// Room reserved at most for a frame whose header announces its length; past it the buffer
/// grows as the bytes come.
const MAX_RESERVE: usize = 16 * 1024 * 1024;

/// The writer hands the socket at most this much per write.
const GATHER: usize = 256 * 1024;

/// A plain socket's sending side: written from any thread, without the runtime
/// (`try_write` takes `&self`).
enum Direct {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

impl Direct {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Direct::Tcp(w) => w.try_write_vectored(bufs),
            Direct::Unix(w) => w.try_write_vectored(bufs),
        }
    }

    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Direct::Tcp(w) => w.try_write(buf),
            Direct::Unix(w) => w.try_write(buf),
        }
    }

    async fn writable(&self) -> std::io::Result<()> {
        match self {
            Direct::Tcp(w) => w.writable().await,
            Direct::Unix(w) => w.writable().await,
        }
    }
}

/// Bytes still to send, shared (a request that may be sent again on another connection keeps
/// its bytes without a copy).
struct Chunk {
    bytes: Arc<Vec<u8>>,
    at: usize,
}

/// What is on its way out, in order.
struct Outgoing<W: Wire> {
    queue: VecDeque<Chunk>,
    /// The writer holds chunks it took from the queue and has not finished.
    writing: bool,
    /// The requests sent and not yet answered, oldest first: each is here before its bytes can
    /// reach the server. The reader takes them as their replies come (it is not woken for a new
    /// one: only the socket wakes it), and the deadline watch looks at the oldest.
    waiting: VecDeque<Pending<W>>,
    /// Nobody can send any more (the connection was dropped): it ends once nothing waits.
    closing: bool,
}

/// What the connection's tasks share with it.
struct Inner<W: Wire> {
    out: Mutex<Outgoing<W>>,
    wake_writer: Notify,
    ended: Mutex<Option<Error>>,
    dead: AtomicBool,
    stop: watch::Sender<bool>,
    label: String,
}

impl<W: Wire> Inner<W> {
    fn end(&self, e: Error) {
        let mut ended = self.ended.lock();
        if ended.is_none() {
            *ended = Some(e);
        }
        drop(ended);
        self.dead.store(true, Ordering::Release);
        self.stop.send_replace(true);
    }

    fn error(&self) -> Error {
        self.ended
            .lock()
            .clone()
            .unwrap_or_else(|| Error::new(ErrorKind::Io, format!("{}: connection closed", self.label)))
    }

    /// The next chunks to write (the writer then holds them), or `None` when the queue is empty.
    fn take(&self) -> Option<VecDeque<Chunk>> {
        let mut out = self.out.lock();
        if out.queue.is_empty() {
            out.writing = false;
            return None;
        }
        out.writing = true;
        Some(std::mem::take(&mut out.queue))
    }

    /// Whether the writer should end: nobody can send any more and nothing is left.
    fn finished(&self) -> bool {
        let out = self.out.lock();
        out.closing && out.queue.is_empty()
    }
}

impl<W: Wire> Expire for Inner<W> {
    fn expire(&self, now: Instant) -> bool {
        let out = self.out.lock();
        let due = out.waiting.front().map(|p| p.deadline);
        drop(out);
        match due {
            Some(deadline) if deadline <= now => {
                self.end(Error::new(
                    ErrorKind::Timeout,
                    format!("{}: no reply before the call's deadline", self.label),
                ));
                false
            }
            Some(_) => true,
            None => false,
        }
    }
}

/// A multiplexed connection: requests are written in the order they are sent and their replies
/// matched in that order by a reader of its own. A request whose caller gave up (cancelled)
/// still has its reply read, and dropped: a reply never goes to another request. A request
/// still unanswered at its deadline closes the connection (its server is not answering): every
/// request on it fails then, rather than each waiting out its own deadline.
///
/// On a plain socket, a request sent while nothing else is in flight is written at once by the
/// caller's own thread (no hop to an I/O thread); under load, requests queue and the writer
/// sends them together.
pub struct Mux<W: Wire> {
    inner: Arc<Inner<W>>,
    direct: Option<Arc<Direct>>,
    room: Arc<Semaphore>,
    watch: &'static Watch,
    /// When the connection was made (a request that started before is on a connection that
    /// may have gone stale since).
    pub made: Instant,
    /// The server's address, where the pool needs it (a Sentinel-managed replica pool passes
    /// over a replica that failed).
    pub peer: Option<Address>,
}

impl<W: Wire> Mux<W> {
    /// Start the connection's writer and reader on the runtime.
    pub fn start(stream: AsyncStream, label: &str) -> Result<Self, Error> {
        let (handle, watch) = io()?;
        let (stop, stopped) = watch::channel(false);
        let inner = Arc::new(Inner {
            out: Mutex::new(Outgoing {
                queue: VecDeque::new(),
                writing: false,
                waiting: VecDeque::new(),
                closing: false,
            }),
            wake_writer: Notify::new(),
            ended: Mutex::new(None),
            dead: AtomicBool::new(false),
            stop,
            label: label.to_owned(),
        });
        let direct = match stream {
            AsyncStream::Tcp(tcp) => {
                let (read, write) = tcp.into_split();
                let direct = Arc::new(Direct::Tcp(write));
                handle.spawn(write_plain(inner.clone(), direct.clone(), stopped.clone()));
                handle.spawn(read_loop::<W, _>(read, inner.clone(), stopped));
                Some(direct)
            }
            AsyncStream::Unix(unix) => {
                let (read, write) = unix.into_split();
                let direct = Arc::new(Direct::Unix(write));
                handle.spawn(write_plain(inner.clone(), direct.clone(), stopped.clone()));
                handle.spawn(read_loop::<W, _>(read, inner.clone(), stopped));
                Some(direct)
            }
            tls => {
                let (read, write) = tokio::io::split(tls);
                handle.spawn(write_stream(inner.clone(), write, stopped.clone()));
                handle.spawn(read_loop::<W, _>(read, inner.clone(), stopped));
                None
            }
        };
        let watched: Arc<dyn Expire> = inner.clone();
        watch.add(Arc::downgrade(&watched));
        Ok(Self {
            inner,
            direct,
            room: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            watch,
            made: Instant::now(),
            peer: None,
        })
    }

    /// Whether the connection still works (it has not failed, nor been closed).
    pub fn is_alive(&self) -> bool {
        !self.inner.dead.load(Ordering::Acquire)
    }

    /// Requests sent (or queued) and not yet answered.
    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - self.room.available_permits()
    }

    /// Whether another request can be sent without waiting.
    pub fn has_room(&self) -> bool {
        self.room.available_permits() > 0
    }

    /// Close the connection: every request still on it gets `e`.
    pub fn kill(&self, e: Error) {
        self.inner.end(e);
    }

    /// Send one request; `on_answer` gets its answer (the replies `expect` says are its), or
    /// the error that ended the connection first, or a timeout once `deadline` passes. Sent at
    /// once only when there is room: see [`Mux::has_room`] (else the answer is an error).
    pub fn send(&self, bytes: Arc<Vec<u8>>, expect: W::Expect, deadline: Instant, on_answer: OnAnswer<W>) {
        match self.room.clone().try_acquire_owned() {
            Ok(permit) => self.send_with(permit, bytes, expect, deadline, on_answer),
            Err(_) => on_answer(Err(Error::new(
                ErrorKind::Io,
                format!("{}: {MAX_IN_FLIGHT} requests in flight", self.inner.label),
            ))),
        }
    }

    fn send_with(
        &self,
        permit: OwnedSemaphorePermit,
        bytes: Arc<Vec<u8>>,
        expect: W::Expect,
        deadline: Instant,
        on_answer: OnAnswer<W>,
    ) {
        let mut out = self.inner.out.lock();
        if !self.is_alive() {
            drop(out);
            return on_answer(Err(self.inner.error()));
        }
        out.waiting.push_back(Pending { expect, frames: Vec::new(), deadline, on_answer, _permit: permit });
        self.watch.waiting();
        let idle = out.queue.is_empty() && !out.writing;
        let mut at = 0;
        if idle
            && let Some(direct) = &self.direct
            && self.in_flight() <= 1
        {
            while at < bytes.len() {
                match direct.try_write(&bytes[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        drop(out);
                        // The reader fails every request on the connection, this one too.
                        return self.inner.end(io_error(&self.inner.label, "send", &e));
                    }
                }
            }
            if at == bytes.len() {
                return;
            }
        }
        out.queue.push_back(Chunk { bytes, at });
        drop(out);
        if idle {
            self.inner.wake_writer.notify_one();
        }
    }

    /// Send one request and wait for its answer (see [`Mux::send`]); waits for room first.
    pub async fn call(&self, bytes: Arc<Vec<u8>>, expect: W::Expect, deadline: Instant) -> Answer<W> {
        let permit = self.room.clone().acquire_owned().await.map_err(|_| self.inner.error())?;
        let (tx, rx) = oneshot::channel();
        self.send_with(
            permit,
            bytes,
            expect,
            deadline,
            Box::new(move |answer| {
                let _ = tx.send(answer);
            }),
        );
        rx.await.unwrap_or_else(|_| Err(self.inner.error()))
    }
}

impl<W: Wire> Drop for Mux<W> {
    fn drop(&mut self) {
        // Nobody can send any more: the writer ends once it has written what it holds, and the
        // reader once the last reply is in.
        let mut out = self.inner.out.lock();
        out.closing = true;
        let idle = out.waiting.is_empty() && out.queue.is_empty() && !out.writing;
        drop(out);
        if idle {
            self.inner.end(Error::new(ErrorKind::Io, format!("{}: connection closed", self.inner.label)));
        }
        self.inner.wake_writer.notify_one();
    }
}

/// The writer of a plain socket: what the callers queued, gathered into few system calls.
async fn write_plain<W: Wire>(inner: Arc<Inner<W>>, direct: Arc<Direct>, mut stopped: watch::Receiver<bool>) {
    loop {
        let Some(mut chunks) = inner.take() else {
            if inner.finished() {
                return;
            }
            tokio::select! {
                () = inner.wake_writer.notified() => continue,
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        };
        while !chunks.is_empty() {
            let mut size = 0;
            let slices: Vec<IoSlice<'_>> = chunks
                .iter()
                .take_while(|c| {
                    let fits = size < GATHER;
                    size += c.bytes.len() - c.at;
                    fits
                })
                .map(|c| IoSlice::new(&c.bytes[c.at..]))
                .collect();
            let written = match direct.try_write_vectored(&slices) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::select! {
                        ready = direct.writable() => if let Err(e) = ready {
                            return inner.end(io_error(&inner.label, "send", &e));
                        },
                        _ = stopped.wait_for(|stop| *stop) => return,
                    }
                    continue;
                }
                Err(e) => return inner.end(io_error(&inner.label, "send", &e)),
            };
            drop(slices);
            let mut left = written;
            while left > 0 {
                let Some(front) = chunks.front_mut() else { break };
                let n = (front.bytes.len() - front.at).min(left);
                front.at += n;
                left -= n;
                if front.at == front.bytes.len() {
                    chunks.pop_front();
                }
            }
        }
    }
}

/// The writer of a TLS stream (rustls holds one session for both directions, so nobody else
/// writes to it).
async fn write_stream<W: Wire>(
    inner: Arc<Inner<W>>,
    mut write: WriteHalf<AsyncStream>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let Some(chunks) = inner.take() else {
            if inner.finished() {
                break;
            }
            tokio::select! {
                () = inner.wake_writer.notified() => continue,
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        };
        for chunk in chunks {
            tokio::select! {
                written = write.write_all(&chunk.bytes[chunk.at..]) => if let Err(e) = written {
                    return inner.end(io_error(&inner.label, "send", &e));
                },
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
        if let Err(e) = write.flush().await {
            return inner.end(io_error(&inner.label, "send", &e));
        }
    }
    // Closed from our side: TLS says goodbye; a failure here changes nothing.
    let _ = tokio::time::timeout(SLICE, write.shutdown()).await;
}

async fn read_loop<W: Wire, R: AsyncRead + Unpin>(
    mut read: R,
    inner: Arc<Inner<W>>,
    mut stopped: watch::Receiver<bool>,
) {
    let label = inner.label.clone();
    let mut scan = W::Scan::default();
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut start = 0usize;
    let failure = 'run: loop {
        // Every whole frame read so far goes to the request it answers (the oldest waiting).
        while start < buf.len() {
            let (frame, used) = match W::next_frame(&mut scan, &buf[start..]) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => break 'run e,
            };
            start += used;
            let mut out = inner.out.lock();
            let Some(head) = out.waiting.front_mut() else {
                drop(out);
                break 'run Error::new(ErrorKind::Protocol, format!("{label}: a reply to no request"));
            };
            let last = W::is_last(&mut head.expect, &frame);
            head.frames.push(frame);
            if last && let Some(done) = out.waiting.pop_front() {
                let closed = out.closing && out.waiting.is_empty();
                drop(out);
                let Pending { frames, on_answer, _permit: permit, .. } = done;
                // The request is done before its caller hears of it (the caller's next request
                // then finds the connection idle).
                drop(permit);
                on_answer(Ok(frames));
                if closed {
                    break 'run Error::new(ErrorKind::Io, format!("{label}: connection closed"));
                }
            }
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
            if buf.capacity() > 4 * 1024 * 1024 {
                buf = Vec::with_capacity(16 * 1024);
            }
        } else if start > 0 && (start > buf.len() / 2 || buf.capacity() - buf.len() < 4096) {
            buf.drain(..start);
            start = 0;
        }
        if let Some(total) = W::frame_len(&buf[start..]) {
            let want = total.min(MAX_RESERVE).saturating_sub(buf.len() - start);
            buf.reserve(want);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => break 'run inner.error(),
            n = read.read_buf(&mut buf) => match n {
                Ok(0) => break 'run Error::new(ErrorKind::Io, format!("{label}: the server closed the connection")),
                Ok(_) => {}
                Err(e) => break 'run io_error(&label, "receive", &e),
            },
        }
    };
    inner.end(failure);
    let failure = inner.error();
    let waiting = std::mem::take(&mut inner.out.lock().waiting);
    for p in waiting {
        (p.on_answer)(Err(failure.clone()));
    }
}
