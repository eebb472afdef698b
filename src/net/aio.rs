//! The async side of the network clients: one process-wide I/O runtime, streams connected
//! (and TLS handshaken) under a deadline, and a multiplexed connection that carries many
//! requests at once, its replies matched to them in order.
//!
//! The runtime is a small tokio runtime made on first use. A forked child cannot use its
//! parent's (the worker threads do not exist there), so the runtime is made again in a child
//! and the parent's is left alone, never dropped: dropping it would wait for threads that are
//! gone.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, WriteHalf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};

use super::tls::{Tls, tls_error};
use super::{Address, SLICE};
use crate::error::{Error, ErrorKind};

/// The runtime of this process, its deadline watch, and the process they were made in.
static RUNTIME: Mutex<Option<(u32, &'static Runtime, &'static Watch)>> = Mutex::new(None);

/// How many I/O threads the runtime has: `DJANGO_RUSTCACHE_IO_THREADS` (1 to 8), else 1. One
/// thread carries thousands of calls in flight; the work per call is a few microseconds.
fn io_threads() -> usize {
    std::env::var("DJANGO_RUSTCACHE_IO_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(1, |n| n.clamp(1, 8))
}

/// The process's I/O runtime and deadline watch, made now if this process has none yet (the
/// first async call, or the first after a fork).
fn io() -> Result<(Handle, &'static Watch), Error> {
    let mut slot = RUNTIME.lock();
    let pid = std::process::id();
    if let Some((made_in, rt, watch)) = *slot
        && made_in == pid
    {
        return Ok((rt.handle().clone(), watch));
    }
    let rt = Builder::new_multi_thread()
        .worker_threads(io_threads())
        .max_blocking_threads(8)
        .thread_name("django-rustcache-io")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start the I/O runtime: {e}")))?;
    // Kept for the life of the process (a parent's, in a child, is never dropped: see above).
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    let watch: &'static Watch =
        Box::leak(Box::new(Watch { conns: Mutex::new(Vec::new()), idle: AtomicBool::new(false), wake: Notify::new() }));
    rt.spawn(watch.run());
    *slot = Some((pid, rt, watch));
    Ok((rt.handle().clone(), watch))
}

/// The process's I/O runtime, made now if this process has none yet.
pub fn runtime() -> Result<Handle, Error> {
    io().map(|(handle, _)| handle)
}

/// `fut`, or a `Timeout` naming `label` and `what` once `deadline` passes.
pub async fn within<T>(
    deadline: Instant,
    label: &str,
    what: &str,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(deadline.into(), fut).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(ErrorKind::Timeout, format!("{label}: {what}: timed out"))),
    }
}

/// A connected stream, plain or under TLS.
pub enum AsyncStream {
    /// TCP, with TCP_NODELAY.
    Tcp(TcpStream),
    /// A unix socket.
    Unix(UnixStream),
    /// TLS over TCP.
    TlsTcp(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS over a unix socket.
    TlsUnix(Box<tokio_rustls::client::TlsStream<UnixStream>>),
}

macro_rules! each_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            AsyncStream::Tcp($s) => $e,
            AsyncStream::Unix($s) => $e,
            AsyncStream::TlsTcp($s) => $e,
            AsyncStream::TlsUnix($s) => $e,
        }
    };
}

impl AsyncRead for AsyncStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for AsyncStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        each_stream!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

pub(crate) fn io_error(label: &str, what: &str, e: &std::io::Error) -> Error {
    // TLS 1.3 servers refuse a client certificate after the handshake: the alert comes with the
    // first read, and is a TLS error like the handshake's own.
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return tls_error(label, tls);
    }
    let kind = if e.kind() == std::io::ErrorKind::TimedOut { ErrorKind::Timeout } else { ErrorKind::Io };
    Error::new(kind, format!("{label}: {what}: {e}"))
}

/// A failed handshake as ours: rustls's own error (with its hints) where there is one.
fn handshake_error(label: &str, e: &std::io::Error) -> Error {
    io_error(label, "TLS handshake", e)
}

async fn tls_over<S>(tls: &Tls, host: &str, label: &str, io: S) -> Result<tokio_rustls::client::TlsStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = tls.server_name(host, label)?;
    tokio_rustls::TlsConnector::from(tls.config()).connect(name, io).await.map_err(|e| handshake_error(label, &e))
}

/// Connect to `addr`, then (with `tls`) complete a TLS handshake, all before `deadline`.
pub async fn connect(addr: &Address, tls: Option<&Tls>, deadline: Instant, label: &str) -> Result<AsyncStream, Error> {
    within(deadline, label, "connect", async {
        match addr {
            Address::Tcp(host, port) => {
                let tcp =
                    TcpStream::connect((host.as_str(), *port)).await.map_err(|e| io_error(label, "connect", &e))?;
                tcp.set_nodelay(true).map_err(|e| io_error(label, "TCP_NODELAY", &e))?;
                Ok(match tls {
                    None => AsyncStream::Tcp(tcp),
                    Some(tls) => AsyncStream::TlsTcp(Box::new(tls_over(tls, host, label, tcp).await?)),
                })
            }
            Address::Unix(path) => {
                let unix = UnixStream::connect(Path::new(path)).await.map_err(|e| io_error(label, "connect", &e))?;
                Ok(match tls {
                    None => AsyncStream::Unix(unix),
                    // TLS over a unix socket: the certificate can only name the local host.
                    Some(tls) => AsyncStream::TlsUnix(Box::new(tls_over(tls, "localhost", label, unix).await?)),
                })
            }
        }
    })
    .await
}

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

/// What the deadline watch asks of a connection: end it when its oldest request is past its
/// deadline (the server is not answering); whether anything still waits on it.
trait Expire: Send + Sync {
    fn expire(&self, now: Instant) -> bool;
}

/// How often the deadline watch looks while requests are out: how late past its deadline a
/// request at worst fails. (One watch for every connection, instead of a timer per request:
/// a request costs no wake-up of an I/O thread until its reply.)
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// The deadline watch of one runtime.
struct Watch {
    /// The connections watched (dropped ones fall out).
    conns: Mutex<Vec<std::sync::Weak<dyn Expire>>>,
    /// Set while the watch sleeps because nothing waits anywhere: the next request wakes it.
    idle: AtomicBool,
    wake: Notify,
}

impl Watch {
    fn add(&self, conn: std::sync::Weak<dyn Expire>) {
        self.conns.lock().push(conn);
    }

    /// A request was queued: wake the watch if it sleeps.
    fn waiting(&self) {
        if self.idle.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn any_waiting(&self, now: Instant) -> bool {
        let live: Vec<Arc<dyn Expire>> = {
            let mut conns = self.conns.lock();
            conns.retain(|w| w.strong_count() > 0);
            conns.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        live.iter().fold(false, |busy, conn| conn.expire(now) | busy)
    }

    /// While requests wait, look every [`WATCH_EVERY`]; asleep once nothing has waited for a
    /// second.
    async fn run(&self) {
        let mut busy_at = Instant::now();
        loop {
            let now = Instant::now();
            if self.any_waiting(now) {
                busy_at = now;
            } else if now.duration_since(busy_at) > Duration::from_secs(1) {
                self.idle.store(true, Ordering::SeqCst);
                // A request queued before the flag was seen is found by this look.
                if !self.any_waiting(Instant::now()) {
                    self.wake.notified().await;
                }
                self.idle.store(false, Ordering::SeqCst);
                busy_at = Instant::now();
                continue;
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }
}

/// A connection is shared with more callers before another one is opened until this many
/// requests are in flight on it.
const SHARE_UP_TO: usize = 32;

struct Slot<W: Wire> {
    conn: Mutex<Option<Arc<Mux<W>>>>,
    /// Held while the slot connects: one connect at a time, the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

/// The multiplexed connections to one server: a few slots, each empty or holding a connection.
/// A call takes the least busy connection; another slot is connected only when every open one
/// is busy, so a quiet site keeps one connection per server.
pub struct Slots<W: Wire> {
    slots: Vec<Slot<W>>,
    /// The process the slots were made in (see [`Slots::let_go`]).
    pid: u32,
}

impl<W: Wire> Slots<W> {
    /// `n` slots (at least one).
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n.max(1))
                .map(|_| Slot { conn: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) })
                .collect(),
            pid: std::process::id(),
        }
    }

    /// Let go of a connection. In a forked child a parent's connection is leaked, never
    /// dropped: dropping it wakes its tasks on the parent's runtime, whose threads are not in
    /// the child but whose locks may have been held at the fork (the child hung there), and
    /// takes its socket out of the reactor the child shares with the parent.
    fn let_go(&self, conn: Option<Arc<Mux<W>>>) {
        if self.pid != std::process::id() {
            std::mem::forget(conn);
        }
    }

    /// The least busy working connection, and the first empty slot (when there is one).
    fn pick(&self) -> (Option<Arc<Mux<W>>>, Option<usize>) {
        let mut best: Option<(usize, Arc<Mux<W>>)> = None;
        let mut empty = None;
        for (i, slot) in self.slots.iter().enumerate() {
            match slot.conn.lock().as_ref() {
                Some(c) if c.is_alive() => {
                    let load = c.in_flight();
                    if best.as_ref().is_none_or(|(l, _)| load < *l) {
                        best = Some((load, c.clone()));
                    }
                }
                _ => {
                    empty.get_or_insert(i);
                }
            }
        }
        match (best, empty) {
            (Some((load, _)), Some(i)) if load >= SHARE_UP_TO => (None, Some(i)),
            (best, empty) => (best.map(|(_, c)| c), empty),
        }
    }

    /// A working connection with room for a request, if one is open (no waiting).
    pub fn ready(&self) -> Option<Arc<Mux<W>>> {
        self.pick().0.filter(|c| c.has_room())
    }

    /// A working connection, made with `connect` when the slot chosen has none.
    pub async fn get<F, Fut>(&self, connect: F) -> Result<Arc<Mux<W>>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Mux<W>, Error>>,
    {
        let index = match self.pick() {
            (Some(c), _) => return Ok(c),
            (None, Some(i)) => i,
            (None, None) => 0,
        };
        let slot = &self.slots[index];
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = slot.conn.lock().as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let made = Arc::new(connect().await?);
        let old = slot.conn.lock().replace(made.clone());
        self.let_go(old);
        Ok(made)
    }

    /// Forget `conn` (it failed): its slot connects anew on next use.
    pub fn forget(&self, conn: &Arc<Mux<W>>) {
        for slot in &self.slots {
            let mut held = slot.conn.lock();
            if held.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                self.let_go(held.take());
            }
        }
    }

    /// Forget the connections to `peer` (it failed); calls in flight on them finish there.
    pub fn forget_peer(&self, peer: &Address) {
        for slot in &self.slots {
            let mut held = slot.conn.lock();
            if held.as_ref().is_some_and(|c| c.peer.as_ref() == Some(peer)) {
                self.let_go(held.take());
            }
        }
    }

    /// Forget every connection (their server is not the one to talk to any more); calls in
    /// flight on them finish there.
    pub fn clear(&self) {
        for slot in &self.slots {
            let old = slot.conn.lock().take();
            self.let_go(old);
        }
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.slots.iter().filter(|s| s.conn.lock().as_ref().is_some_and(|c| c.is_alive())).count()
    }
}

impl<W: Wire> Drop for Slots<W> {
    fn drop(&mut self) {
        for slot in &self.slots {
            let held = slot.conn.lock().take();
            self.let_go(held);
        }
    }
}
